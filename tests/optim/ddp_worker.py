"""The 2-process DDP run of ``test_fused_ddp.py`` (gloo on CPU), and its single-process reference.

Each process trains the same small model on its half of every global batch, layer-wise and
ordinarily, with gradient accumulation (the first micro-batch under ``no_sync``) and previous-norm
clipping, and saves the weights and norms for the test to compare."""

from __future__ import annotations

import contextlib
import datetime

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import slimtrain.optim as so

from . import spawn
from .fused_helpers import train as run_steps

WORLD = spawn.WORLD
STEPS = 4
GRAD_ACCUM = 2
GLOBAL_BATCH = 8
MAX_NORM = 0.3
RECIPES = {"adamw": dict(lr=1e-2), "galore-adamw": dict(lr=1e-2, rank=2, refresh_every=2,
                                                        targets=r"(up|down)\.weight$")}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(8, 24)
        self.down = torch.nn.Linear(24, 6)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def data(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 * step + micro)
    return torch.randn(GLOBAL_BATCH, 8, generator=g), torch.randn(GLOBAL_BATCH, 6, generator=g)


def train(recipe: str, *, rank: int | None, fused: bool) -> dict:
    """rank None: one process on the whole global batch (ordinary training)."""
    net = Net()
    model = net if rank is None else DistributedDataParallel(net)
    opt = so.create(recipe, net, **RECIPES[recipe])
    handle = so.fuse_backward(model, opt, grad_accum=GRAD_ACCUM, max_grad_norm=MAX_NORM) if fused else None

    def loss_fn(model, step: int, micro: int, grad_accum: int) -> torch.Tensor:
        x, y = data(step, micro)
        if rank is not None:
            half = GLOBAL_BATCH // WORLD
            x, y = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        # DDP decides in the forward pass whether the backward all-reduces
        local = rank is not None and micro < grad_accum - 1
        with model.no_sync() if local else contextlib.nullcontext():
            return torch.nn.functional.mse_loss(model(x), y) / grad_accum

    norms = run_steps(model, opt, None, STEPS, GRAD_ACCUM, handle=handle, loss_fn=loss_fn,
                      max_grad_norm=None if fused else MAX_NORM)
    return {"weights": [p.detach().clone() for p in net.parameters()], "norms": norms}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        results = {f"{recipe}/{'fused' if fused else 'ordinary'}": train(recipe, rank=rank, fused=fused)
                   for recipe in RECIPES for fused in (False, True)}
        try:
            net = Net()
            so.fuse_backward(DistributedDataParallel(net, find_unused_parameters=True),
                             so.create("adamw", net))
            results["unused_error"] = ""
        except ValueError as err:
            results["unused_error"] = str(err)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_workers(out_dir: str, timeout: float = 180.0) -> None:
    spawn.run_workers(worker, out_dir, timeout)
