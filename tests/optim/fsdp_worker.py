"""The 2-process FSDP2 runs of ``test_fsdp.py`` (gloo on CPU), and their one-process reference.

A small LLaMA, every decoder layer and the root ``fully_shard``-ed, trains with each recipe on
its half of every global batch; the test compares the gathered weights with one process on the
whole batch, the per-rank state bytes with the one-process state, and counts the collectives."""

from __future__ import annotations

import datetime
import warnings

import torch
import torch.distributed as dist

import slimtrain.optim as so

from . import spawn

WORLD = spawn.WORLD
STEPS = int(__import__("os").environ.get("FSDP_TEST_STEPS", 12))
GLOBAL_BATCH = 4
SEQ = 16
# dims: q/k/v/o 64×64 and gate/up 144×64 project on the right (rows local), down 64×144 on the
# left (R summed over the ranks); every shard is a whole number of 256-element blocks
SHAPE = dict(vocab_size=256, hidden=64, layers=2)
PROJ = dict(rank=8, refresh_every=5)  # refreshes at steps 0, 5, 10
RECIPES = {
    "torch-adamw": dict(lr=1e-3),
    "adamw": dict(lr=1e-3),
    "adamw8bit": dict(lr=1e-3),
    "galore-adamw": dict(lr=1e-2, **PROJ),
    "galore-adamw:svd": dict(lr=1e-2, basis="svd", **PROJ),
    "galore-adamw8bit": dict(lr=1e-2, **PROJ),
    "apollo": dict(lr=1e-2, **PROJ),
    "apollo-mini": dict(lr=1e-2, refresh_every=5),
    "fira": dict(lr=1e-2, **PROJ),
    "frugal": dict(lr=1e-3, refresh_every=5),
    "q-galore": dict(lr=1e-2, **PROJ),
    "q-galore:dense": dict(lr=1e-2, projector_bits=None, **PROJ),
    "natural-galore": dict(lr=1e-2, history=4, **PROJ),
    "galore-adafactor": dict(lr=1e-2, **PROJ),
    "galore-adafactor:rest": dict(lr=1e-2, rest="adafactor", **PROJ),
    "galore-lion": dict(lr=1e-3, **PROJ),
    # the seeds' optimizers (issue 18) whose sharded step differs from one process': reductions
    # over a tensor (Adam-mini's blocks, SGD-SaI's SNR, AdaClip's max and AdaGN's norm). The
    # elementwise ones (lion, adabelief, adan, sophia, spam's clamp) run the same code on a shard
    # as on a tensor, projected or not (galore-lion above).
    "adam-mini": dict(lr=1e-3),
    "sgd-sai": dict(lr=1e-3),
    "stable-spam": dict(lr=1e-3, reset_every=4),
    # issue 19: Muon gathers each matrix's update for the Newton–Schulz iteration (bit for bit;
    # projected, R's sum over the ranks rounds differently and a bfloat16 iteration turns that
    # last bit into bfloat16's 4e-3: compare in float32 — measured once, not kept for time)
    "muon": dict(lr=1e-3),
    # SCALE's embedding norm spans the ranks; COSMOS sums GᵀGP and (GP)ᵀGP and gathers its
    # residual (float32 here for the reason above)
    "scale": dict(lr=1e-3),
    "cosmos": dict(lr=1e-3, rank=8, ns_dtype="float32"),
    "gradnorm-lorp": dict(lr=1e-2, **PROJ),  # row norms: local to a row-sharded shard
}


def model():
    from tests.helpers import tiny_llama

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = tiny_llama(vocab_size=SHAPE["vocab_size"], hidden=SHAPE["hidden"], layers=SHAPE["layers"])
    return net


def optimizer(name: str, net):
    recipe = name.split(":")[0]
    if recipe == "torch-adamw":
        return torch.optim.AdamW(net.parameters(), **RECIPES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return so.create(recipe, net, **RECIPES[name])


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, SHAPE["vocab_size"], (GLOBAL_BATCH, SEQ), generator=g)


def state_bytes(opt) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                total += (v.to_local() if isinstance(v, DTensor) else v).nbytes
    return total


def fixed_grads(step: int, net) -> dict:
    """The gradients of the ``same_grads`` runs: random, a function of the step alone, so that
    neither run's trajectory feeds back into them."""
    g = torch.Generator().manual_seed(1000 + step)
    return {n: torch.randn(p.shape, generator=g) * 1e-2 for n, p in net.named_parameters()}


def train(name: str, rank: int | None, same_grads: bool = False, ddp: bool = False) -> dict:
    """rank None: one process on the whole global batch. ``same_grads``: every step's gradient
    is ``fixed_grads`` (sharded under FSDP), so the optimizers' arithmetic alone is compared —
    not FSDP's reduction order, whose last-bit differences Adam's first steps amplify."""
    from slimtrain.optim.sharded.context import COMM

    net = model()
    wrapped = net
    if rank is not None and ddp:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(net)  # the optimizer is built on the unwrapped model
    elif rank is not None:
        from torch.distributed.fsdp import fully_shard

        for layer in net.model.layers:
            fully_shard(layer)
        fully_shard(net)
    opt = optimizer(name, net)
    comm, losses = [], []
    for step in range(STEPS):
        ids = batch(step)
        if same_grads:
            grads = fixed_grads(step, net)
            for n, p in net.named_parameters():
                if rank is None:
                    p.grad = grads[n]
                else:
                    from torch.distributed.tensor import distribute_tensor

                    p.grad = distribute_tensor(grads[n], p.device_mesh, p.placements)
        else:
            if rank is not None:
                half = GLOBAL_BATCH // WORLD
                ids = ids[rank * half:(rank + 1) * half]
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            loss = loss.detach().clone()
            if rank is not None:  # the global batch's loss: the mean of the halves' means
                dist.all_reduce(loss)
                loss /= WORLD
            losses.append(loss.item())
        COMM.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        comm.append(dict(COMM.bytes))
        opt.zero_grad()
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
               for n, p in net.named_parameters()}
    return {"weights": weights, "state_bytes": state_bytes(opt), "comm": comm, "losses": losses,
            "planned_comm": _planned(opt, name)}


def _planned(opt, name: str):
    from slimtrain.optim.sharded.plan import step_bytes

    if name == "torch-adamw":
        return None
    planned = step_bytes(opt, WORLD)
    # the target, matrix by matrix: 2·r/min(m, n) of its m·n·elem naive bytes
    planned["bound"] = sum(2 * opt.plan_of(p).rank * max(p.shape) * p.element_size()
                           for g in opt.param_groups for p in g["params"] if opt.plan_of(p).projected)
    return planned


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        results = {}
        for name in RECIPES:
            for same in (False, True):
                results[name, same] = train(name, rank, same_grads=same)
            results[name, "ddp"] = train(name, rank, ddp=True)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_workers(out_dir: str, target=worker, timeout: float = 300.0) -> None:
    spawn.run_workers(target, out_dir, timeout)


# ------------------------------------------------------------------ DCP: save on 2, load on 1 and 2
DCP_RECIPES = ["adamw", "adamw8bit", "galore-adamw", "galore-adamw8bit", "apollo", "apollo-mini",
               "fira", "frugal", "q-galore", "galore-adafactor", "natural-galore", "galore-lion",
               "adam-mini", "stable-spam", "cosmos", "gradnorm-lorp"]
SAVE_AT = 6


def sharded_model():
    from torch.distributed.fsdp import fully_shard

    net = model()
    for layer in net.model.layers:
        fully_shard(layer)
    fully_shard(net)
    return net


def run_steps(net, opt, start: int, stop: int, sharded: bool) -> None:
    for step in range(start, stop):
        grads = fixed_grads(step, net)
        for n, p in net.named_parameters():
            if sharded:
                from torch.distributed.tensor import distribute_tensor

                p.grad = distribute_tensor(grads[n], p.device_mesh, p.placements)
            else:
                p.grad = grads[n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        opt.zero_grad()


def whole(net) -> dict:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in net.named_parameters()}


def whole_state(opt) -> dict:
    from torch.distributed.tensor import DTensor

    names = {p: n for g in opt.param_groups for p, n in zip(g["params"], g["param_names"])}
    return {names[p]: {k: (v.full_tensor() if isinstance(v, DTensor) else v).clone()
                       for k, v in opt.state_dict()["state"][i].items() if torch.is_tensor(v)}
            for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}


def dcp_save_load(name: str, out_dir: str, rank: int) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)

    path = f"{out_dir}/{name}"
    net = sharded_model()
    opt = optimizer(name, net)
    run_steps(net, opt, 0, SAVE_AT, sharded=True)
    dcp.save({"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)},
             checkpoint_id=path)
    saved = whole_state(opt)
    run_steps(net, opt, SAVE_AT, STEPS, sharded=True)
    uninterrupted = whole(net)

    net = sharded_model()
    opt = optimizer(name, net)
    state = {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(net, state["model"])
    set_optimizer_state_dict(net, opt, state["optim"])
    run_steps(net, opt, SAVE_AT, STEPS, sharded=True)
    return {"saved_state": saved, "uninterrupted": uninterrupted, "resumed": whole(net)}


def dcp_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        results = {name: dcp_save_load(name, out_dir, rank) for name in DCP_RECIPES}
        torch.save(results, f"{out_dir}/dcp-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def load_on_one_process(name: str, out_dir: str) -> dict:
    """The 2-rank checkpoint loaded into one process (no FSDP, no process group), continued."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)

    net = model()
    opt = optimizer(name, net)
    state = {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}
    dcp.load(state, checkpoint_id=f"{out_dir}/{name}")
    set_model_state_dict(net, state["model"])
    set_optimizer_state_dict(net, opt, state["optim"])
    loaded = whole_state(opt)
    run_steps(net, opt, SAVE_AT, STEPS, sharded=False)
    return {"loaded_state": loaded, "resumed": whole(net)}


# ------------------------------------------------------------------ layer-wise updates on FSDP2
FUSED_RECIPES = ["adamw", "adamw8bit", "galore-adamw", "apollo", "fira", "galore-adafactor",
                 "adam-mini", "stable-spam"]


def layerwise(name: str, rank: int, fused: bool, grad_accum: int) -> dict:
    net = sharded_model()
    opt = optimizer(name, net)
    handle = so.fuse_backward(net, opt, grad_accum=grad_accum) if fused else None
    half = GLOBAL_BATCH // WORLD
    for step in range(6):
        for micro in range(grad_accum):
            ids = batch(10 * step + micro)[rank * half:(rank + 1) * half]
            (net(input_ids=ids, labels=ids).loss / grad_accum).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        opt.zero_grad()
    return {"weights": whole(net), "norm": opt.grad_norm,
            "live": None if handle is None else handle.accumulator_bytes()}


def layerwise_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        results = {(name, fused, accum): layerwise(name, rank, fused, accum)
                   for name in FUSED_RECIPES for fused in (False, True) for accum in (1, 2)}
        torch.save(results, f"{out_dir}/fused-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
