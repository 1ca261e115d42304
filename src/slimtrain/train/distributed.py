"""The trainer on several processes: torch.distributed is the engine, torchrun the launcher.

``slimtrain pretrain --nproc N --parallel ddp|fsdp`` re-runs itself under
``torch.distributed.run`` (torchrun's own code, ``launch``); ``torchrun --nproc-per-node N -m
slimtrain pretrain --parallel …`` does the same by hand (multi-node: torchrun's ``--nnodes`` and
``--rdzv-*`` flags). Each worker joins the process group from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): gloo on CPUs, NCCL with one GPU per local rank.

What the ranks agree on, so that none hangs and all stop alike: the losses and token counts (one
all-reduce where a step is logged), the stop request (Ctrl-C/SIGTERM on any rank: one all-reduce
per step), divergence (decided on the all-reduced losses). A rank that fails on its own (an
error, a kill) ends the job: torchrun then stops the others.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

WORKER_ENV = "SLIMTRAIN_WORKER"  # set by ``launch``: this process is one of its workers


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    parallel: str            # "ddp" or "fsdp"
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        dist.all_reduce(t, op=op)
        return t

    def any(self, flag: bool, device) -> bool:
        """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        return bool(self.all_reduce_(t, dist.ReduceOp.MAX).item())

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(parallel: str, nproc: int, device_name: str) -> Dist | None:
    """Join (or, for one rank, create) the process group; None for an ordinary one-process run."""
    if parallel == "none":
        if in_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise UserError("this process runs under torchrun with several ranks, but --parallel "
                            "is none; pass --parallel ddp or --parallel fsdp")
        return None
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()) or (
            backend == "nccl" and not dist.is_nccl_available()):
        raise UserError(f"--parallel {parallel} needs torch.distributed with the {backend} backend, "
                        "which this torch build lacks; install a torch with it or train on one "
                        "process (--parallel none)")
    if not in_torchrun():  # one rank (e.g. resuming an FSDP run on one process)
        if nproc > 1:
            raise AssertionError("launch() runs the workers under torchrun")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} "
                            "or fewer per node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Dist(rank=rank, world=world, local_rank=local_rank, parallel=parallel, backend=backend)


def teardown(d: Dist | None) -> None:
    if d is not None and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``slimtrain <argv>`` on ``nproc`` local workers with torchrun's own launcher; returns
    the job's exit code (a worker's: 2 for a user error, 130 when stopped)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc > (os.cpu_count() or 1) and not torch.cuda.is_available():
        raise UserError(f"--nproc {nproc} exceeds the {os.cpu_count()} CPU cores of this machine; "
                        f"use at most {os.cpu_count()}")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc} exceeds the {torch.cuda.device_count()} GPUs of this "
                        "machine (one GPU per rank)")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                       "-m", "slimtrain", *argv])
    os.environ[WORKER_ENV] = "1"
    # torchrun sets 1 thread per worker itself, with a banner; each worker sets its own count
    omp_was_set = "OMP_NUM_THREADS" in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        run(args)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c in (2, 130)), codes[0] if codes else 1) or 1
    finally:
        os.environ.pop(WORKER_ENV, None)
        if not omp_was_set:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def reexec_argv(kind: str, flags: dict, config_file: str | None, resume: str | None,
                allow_data_change: bool) -> list[str]:
    """The command line a worker runs: the same command without --nproc (torchrun's world)."""
    argv = [kind]
    for name, value in flags.items():
        if value is None or name == "nproc":  # torchrun's world; argparse would also take it
            continue                            # for an abbreviation of its --nproc-per-node
        flag = "--" + name.replace("_", "-")
        if name == "optim_args":
            for key, v in value.items():
                argv += ["--optim-arg", f"{key}={v}"]
        elif isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    if config_file:
        argv += ["--config", config_file]
    if resume:
        argv += ["--resume", resume]
    if allow_data_change:
        argv.append("--allow-data-change")
    return argv


def quiet_stdio() -> None:
    """Ranks other than 0 write nothing to the console (rank 0 speaks for the job)."""
    sys.stdout = open(os.devnull, "w")


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """The module the training forward goes through: ``DistributedDataParallel`` over the model
    (the optimizer keeps the unwrapped one, so names carry no ``module.`` prefix), or the model
    itself after FSDP2's ``fully_shard`` of every decoder layer and the root (in place)."""
    if d.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                       else None)
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UserError(f"--parallel fsdp shards each decoder layer, but {type(model).__name__} has "
                        "no model.layers; use --parallel ddp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model
