"""Checkpoints of a multi-process run.

* DDP: the replicas are identical, so rank 0 writes today's checkpoint (weights, optimizer state
  whole) while the others wait; it loads on any number of ranks, or on one process.
* FSDP: ``checkpoints/step-N/`` is still a Hugging Face model directory — the weights gathered to
  rank 0 as one ``model.safetensors`` (for inference, ``--model``, and resuming the weights) — plus
  ``dcp/``, the optimizer state written by every rank through ``torch.distributed.checkpoint``
  (``get_optimizer_state_dict``), which reshards: a run saved on N ranks resumes on M. Rank 0 makes
  the temporary directory, every rank writes its shard into it, rank 0 publishes it by a rename.

Every rank's RNG state is kept (``rng_ranks``); a resume on as many ranks restores each one's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..data.cache import new_temp_dir, publish
from ..errors import UserError
from . import checkpoint
from .checkpoint import STATE_FILE, STATE_KIND, STATE_VERSION

DCP_DIR = "dcp"


def gathered_rng(d) -> list:
    import torch.distributed as dist

    states = [None] * d.world
    dist.all_gather_object(states, checkpoint.rng_state())
    return states


def save(run, trainer_state: dict) -> Path | None:
    """Write checkpoint ``run.step`` with every rank taking part; returns its path on rank 0."""
    d = run.dist
    trainer_state = {**trainer_state, "rng_ranks": gathered_rng(d)}
    if d.parallel == "ddp":
        path = None
        if d.main:
            path = checkpoint.save(run.run_dir, run.step, run.model, run.tokenizer, trainer_state,
                                   run.config.keep_last)
        d.barrier()
        return path
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    final = checkpoint.checkpoints_dir(run.run_dir) / f"step-{run.step:08d}"
    tmp = d.broadcast(str(new_temp_dir(final)) if d.main else None)
    try:
        dcp_save(get_optimizer_state_dict(run.model, run.optimizer),
                 checkpoint_id=str(Path(tmp) / DCP_DIR))
        weights = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True,
                                                                           cpu_offload=True))
        if d.main:
            state = {"kind": STATE_KIND, "version": STATE_VERSION,
                     **{k: v for k, v in trainer_state.items() if k != "optimizer"},
                     "weights": checkpoint.fingerprint_of(weights), "sharded_optimizer": DCP_DIR}
            run.model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
            torch.save(state, Path(tmp) / STATE_FILE)
        d.barrier()
        if d.main:
            publish(Path(tmp), final)
            for old in checkpoint.list_checkpoints(run.run_dir)[:-run.config.keep_last]:
                shutil.rmtree(old)
    except BaseException:
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    d.barrier()
    return final if d.main else None


def load_optimizer(ckpt: Path, model, optimizer) -> None:
    """The optimizer state of an FSDP checkpoint, resharded onto this job's ranks."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    path = ckpt / DCP_DIR
    if not (path / ".metadata").is_file():
        raise UserError(f"checkpoint {ckpt} has no sharded optimizer state ({DCP_DIR}/); delete it "
                        "to resume from the one before it")
    template = get_optimizer_state_dict(model, optimizer)
    dcp_load(template, checkpoint_id=str(path))
    set_optimizer_state_dict(model, optimizer, template)
