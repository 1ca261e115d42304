"""The optimizer step on FSDP2 (2 processes, gloo, this CPU), LLaMA-60M shapes.

    python benchmarks/fsdp_step.py [--recipes adamw,galore-adamw,...] [--rank 128] [--rounds 5]

Each process holds half of every parameter (``fully_shard`` on every decoder layer and the root).
Gradients are pre-filled (random, sharded), then every optimizer steps in turn, interleaved, so
machine noise hits them alike. Printed per recipe: optimizer state per rank (MiB, and as a
fraction of one process's), bytes communicated by an ordinary step and by a refresh step (counted
at the collectives), the naive alternative (replicating each projected gradient before its step:
m·n per projected matrix, what a DTensor does for an SVD), and the median step time as a ratio to
torch's AdamW on the same FSDP2 model.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RECIPES = ["adamw", "adamw8bit", "galore-adamw", "galore-adamw8bit", "apollo", "apollo-mini",
           "fira", "galore-adafactor"]


def llama_60m():
    sys.path.insert(0, os.path.dirname(__file__))
    from optimizer_step import llama_60m as build

    return build()


def build(name: str, net, rank: int, refresh_every: int):
    import slimtrain.optim as so

    if name == "torch-adamw":
        return torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=True)
    recipe = so.recipe(name)
    kwargs = {} if not recipe.accepts("rank") else dict(refresh_every=refresh_every)
    if recipe.default("rank", 0) and recipe.default("rank") > 1:  # APOLLO-Mini keeps its rank 1
        kwargs["rank"] = rank
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return so.create(name, net, **kwargs)


def fill(net, step: int) -> None:
    from torch.distributed.tensor import DTensor

    g = torch.Generator().manual_seed(step)
    for p in net.parameters():
        local = torch.randn(p.to_local().shape, generator=g) * 1e-3
        p.grad = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                    shape=p.shape, stride=p.stride())


def worker(rank: int, port: int, args, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from slimtrain.optim.sharded.context import COMM
    from slimtrain.optim.sharded.plan import step_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=600))
    names = ["torch-adamw"] + args.recipes
    runs = {}
    for name in names:
        net = llama_60m()
        for layer in net.model.layers:
            fully_shard(layer)
        fully_shard(net)
        runs[name] = (net, build(name, net, args.rank, args.refresh_every))
    times = {n: [] for n in names}
    refresh_times = {n: [] for n in names}
    comm = {n: {} for n in names}
    steps = args.rounds * args.refresh_every
    for step in range(steps):
        for name in names:
            net, opt = runs[name]
            fill(net, step)
            COMM.reset()
            dist.barrier()
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()
            dist.barrier()
            elapsed = time.perf_counter() - start
            (refresh_times if step % args.refresh_every == 0 else times)[name].append(elapsed)
            kind = "first" if step == 0 else "refresh" if step % args.refresh_every == 0 else "ordinary"
            comm[name].setdefault(kind, COMM.total())
            opt.zero_grad()
    result = {}
    for name in names:
        net, opt = runs[name]
        state = sum((v.to_local() if hasattr(v, "to_local") else v).nbytes
                    for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
        planned = step_bytes(opt, 2) if hasattr(opt, "plan_of") else None
        result[name] = dict(state=state, step=statistics.median(times[name]),
                            refresh=statistics.median(refresh_times[name]), comm=comm[name],
                            naive=None if planned is None else planned["naive"])
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def one_process_state(names, rank: int, refresh_every: int) -> dict:
    out = {}
    for name in names:
        net = llama_60m()
        opt = build(name, net, rank, refresh_every)
        out[name] = sum(opt.planned_state_bytes().values()) if hasattr(opt, "planned_state_bytes") \
            else 2 * sum(p.nbytes for p in net.parameters())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--refresh-every", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.recipes = [r for r in args.recipes.split(",") if r]
    out = os.path.join(tempfile.mkdtemp(), "fsdp_step.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, args, out), nprocs=2, start_method="spawn")
    result = torch.load(out, weights_only=True)
    single = one_process_state(["torch-adamw"] + args.recipes, args.rank, args.refresh_every)
    base = result["torch-adamw"]["step"]
    mib = 2**20
    print(f"LLaMA-60M on FSDP2, 2 ranks (gloo, CPU, 1 thread each), rank {args.rank}, refresh every "
          f"{args.refresh_every}; medians of {args.rounds * (args.refresh_every - 1)} ordinary and "
          f"{args.rounds} refresh steps")
    print("| optimizer | state MiB / rank | × one process | ordinary step MiB | refresh step MiB "
          "| naive MiB | ordinary ÷ naive | step × torch AdamW | refresh step × torch AdamW |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result.items():
        naive = r["naive"]
        ordinary, refresh = r["comm"].get("ordinary", 0), r["comm"].get("refresh", 0)
        ratio = f"{ordinary / naive:.4f}" if naive else "–"
        print(f"| {name} | {r['state'] / mib:.1f} | {r['state'] / single[name]:.3f} | "
              f"{ordinary / mib:.2f} | {refresh / mib:.2f} | "
              f"{'–' if not naive else f'{naive / mib:.1f}'} | {ratio} | {r['step'] / base:.2f} | "
              f"{r['refresh'] / base:.2f} |")


if __name__ == "__main__":
    main()
