"""Checkpoints: ``<run>/checkpoints/step-00000100/`` holds the model in Hugging Face layout
(``config.json``, ``model.safetensors``, the tokenizer — so a checkpoint is also a model directory
that ``--model`` and ``from_pretrained`` accept) and ``trainer_state.pt``: optimizer, scheduler,
RNG states and data position, tensors and plain numbers only (loads with ``weights_only=True``).

Each checkpoint is written into a temporary directory and renamed into place, so a process killed
mid-write leaves the previous checkpoints intact and only a temporary directory behind (swept on the
next start). An existing checkpoint is never replaced.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.cache import new_temp_dir, publish, sweep_temps
from ..errors import UserError, first_line

STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"
STATE_KIND = "slimtrain-trainer-state"
# 2: the run's settings ("config"), its data ("data"), the weights' fingerprint ("weights")
STATE_VERSION = 2
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": torch.tensor(py[1], dtype=torch.int64), "python_gauss": py[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": (int(np_state[3]), float(np_state[4]))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         *state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_fingerprint(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per parameter the float64 sum of its values and of their magnitudes: written with the
    trainer state, compared after the weights are loaded, so weights and optimizer state of a
    checkpoint are known to belong together (a replaced model.safetensors is caught) — two
    reductions per tensor, no hashing of gigabytes."""
    return fingerprint_of(dict(model.named_parameters()))


def fingerprint_of(tensors: dict) -> dict[str, list[float]]:
    """``weights_fingerprint`` of named tensors (e.g. a gathered state dict)."""
    return {name: [float(p.detach().double().sum()), float(p.detach().double().abs().sum())]
            for name, p in tensors.items()}


def _same_fingerprint(a: dict, b: dict) -> bool:
    """Equal up to the reduction order (threads, devices): 1e-9 of the magnitudes."""
    return a.keys() == b.keys() and all(
        abs(a[k][0] - b[k][0]) <= 1e-9 * max(a[k][1], b[k][1]) + 1e-30 for k in a)


def save(run_dir: Path, step: int, model, tokenizer, trainer_state: dict[str, Any],
         keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step:08d}"
    if final.exists():
        raise UserError(f"checkpoint {final} already exists and is never overwritten; resume the "
                        f"run with --resume {run_dir} or choose another --out")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the middle of our own
    state = {"kind": STATE_KIND, "version": STATE_VERSION, **trainer_state,
             "weights": weights_fingerprint(model)}
    tmp = None
    try:
        tmp = new_temp_dir(final)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        torch.save(state, tmp / STATE_FILE)
        publish(tmp, final)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(err):
            raise UserError(f"could not write checkpoint {final} ({first_line(err, 100)}); free disk "
                            f"space (or fix the permissions of {root}) and continue with --resume "
                            f"{run_dir} — the earlier checkpoints are intact") from None
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def _is_write_error(err: BaseException) -> bool:
    """A failed write (a full disk, a quota, permissions), as the writers report it: an OSError,
    safetensors' I/O error, or a RuntimeError of torch.save's zip writer."""
    from safetensors import SafetensorError

    text = str(err)
    if isinstance(err, OSError):
        return True
    if isinstance(err, SafetensorError):
        return "I/O error" in text
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("unexpected pos", "PytorchStreamWriter", "file write failed"))


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {ckpt} has no {STATE_FILE}; it was not written by slimtrain")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {ckpt} is damaged ({STATE_FILE} is empty); delete that "
                        "checkpoint directory to resume from the one before it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign pickles fail in many ways
        raise UserError(f"checkpoint {ckpt} is damaged ({STATE_FILE}: {first_line(err, 120)}); "
                        "delete that checkpoint directory to resume from the one before it") from None
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise UserError(f"{path} was not written by slimtrain's trainer; resume only runs that "
                        "slimtrain started")
    if state.get("version", 0) > STATE_VERSION:
        raise UserError(f"checkpoint {ckpt} has trainer-state version {state['version']}, newer than "
                        f"this slimtrain ({STATE_VERSION}); upgrade slimtrain")
    return state


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Copy the checkpoint's weights into ``model`` (built from the run's config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = ckpt / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {ckpt} has no {WEIGHTS_FILE}; delete it to resume from the one before it")
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"checkpoint {ckpt} is damaged ({WEIGHTS_FILE}: {err}); delete that checkpoint "
                        "directory to resume from the one before it") from None
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"checkpoint {ckpt} holds weights for a different model "
                        f"({str(err).splitlines()[-1].strip()[:160]})") from None
    # Tied weights (e.g. an LM head sharing the embedding) are saved once; the rest must be there.
    shared = {n for n, p in model.named_parameters(remove_duplicate=False)
              if any(p is q for m, q in model.named_parameters() if m in weights)}
    missing = [k for k in result.missing_keys if k not in shared]
    if missing or result.unexpected_keys:
        raise UserError(f"checkpoint {ckpt} holds weights for a different model (missing "
                        f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise UserError(f"checkpoint {ckpt} holds NaN/Inf weights ({bad[0]}{' …' if len(bad) > 1 else ''}): "
                        "it was saved from a diverged or damaged run; resume from an earlier "
                        "checkpoint, or start a new run")


def check_weights_belong(ckpt: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """The loaded weights (of the whole model, before any sharding) are the ones the trainer state
    was written with."""
    saved = state.get("weights")
    if saved is not None and not _same_fingerprint(saved, weights_fingerprint(model)):
        raise UserError(f"checkpoint {ckpt}: {WEIGHTS_FILE} is not the file its {STATE_FILE} was "
                        "written with (replaced or edited); restore it, or delete that checkpoint "
                        "directory to resume from the one before it")


def check_finite_state(ckpt: Path, optimizer_state: dict[str, Any]) -> None:
    """The optimizer state is finite (checked before anything is trained on it)."""
    from torch.distributed.tensor import DTensor

    for key, values in optimizer_state.get("state", {}).items():
        for name, value in values.items():
            if isinstance(value, DTensor):
                value = value.to_local()
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise UserError(f"checkpoint {ckpt} holds NaN/Inf optimizer state ({name} of "
                                f"parameter {key}): it was saved from a diverged or damaged run; "
                                "resume from an earlier checkpoint, or start a new run")


def sweep_unfinished(run_dir: Path) -> None:
    """Remove checkpoint directories whose writer was killed before the rename."""
    sweep_temps(checkpoints_dir(run_dir))
