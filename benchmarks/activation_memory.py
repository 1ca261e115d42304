"""Activation memory lever by lever: measured against planned, with the step's time.

    python benchmarks/activation_memory.py [--models 60m,130m] [--seqs 1024,2048] [--batch-size 1]
                                           [--levers all] [--threads 2] [--device cpu]

Each (model, sequence, levers) runs in its own fresh process: the preset in fp32 (its positions
raised to the sequence where it is longer than the preset's 1,024), the levers
applied (``slimtrain.activations``), two AdamW steps of ``memory.measure`` on random tokens;
printed are the activations it measured (the unique storages autograd saved — through the lever's
hooks, what the lever keeps on the device — plus the logits returned), the planner's figure for
the same settings (``memory.plan`` of that config; recomputation not counted, as it is not saved), the process's
peak resident set (CPU; on CUDA the allocator's peak) and the median forward + backward +
step time, as a ratio to the plain run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LEVERS = {
    "plain": {},
    "chunked loss": dict(loss="chunked"),
    "checkpointing all": dict(activation_checkpointing="all"),
    "checkpointing every:2": dict(activation_checkpointing="every:2"),
    "checkpointing mlp": dict(activation_checkpointing="mlp"),
    "8-bit activations": dict(activation_bits=8),
    "fp8 activations": dict(activation_bits="fp8"),
    "chunked + all": dict(loss="chunked", activation_checkpointing="all"),
    "chunked + every:2 + 8-bit": dict(loss="chunked", activation_checkpointing="every:2",
                                      activation_bits=8),
}


def one(model_name: str, seq: int, batch: int, levers: dict, device: str) -> dict:
    """Measure and plan one setting in this process."""
    import warnings

    import torch
    from transformers import LlamaForCausalLM

    import slimtrain.optim as so
    from slimtrain.activations import (apply_activation_checkpointing, compressed_activations,
                                       use_chunked_loss)
    from slimtrain.memory import plan
    from slimtrain.memory.measure import measure
    from slimtrain.models import preset_config

    config = preset_config(model_name)
    # the papers' presets stop at 1,024 positions; a longer sequence only needs more rotary
    # positions to measure its memory (not to train well)
    config.max_position_embeddings = max(config.max_position_embeddings, seq)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    apply_activation_checkpointing(model, levers.get("activation_checkpointing"))
    if levers.get("loss") == "chunked":
        use_chunked_loss(model)
    bits = levers.get("activation_bits")
    lever = compressed_activations(model, bits) if bits else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = so.create("adamw", model)
    started = time.perf_counter()
    measured = measure(model, opt, batch_size=batch, seq_len=seq, steps=2, lever=lever)
    seconds = (time.perf_counter() - started) / 2
    planned = plan(config, "adamw", batch_size=batch, seq_len=seq, **levers)
    return {"activations": measured["activations"],
            "planned": planned.activations - planned.details.get("recompute", 0),
            "peak": measured["peak_allocated"] or measured["peak_rss"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="60m,130m")
    parser.add_argument("--seqs", default="1024,2048")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--levers", default="all", help="comma-separated names of LEVERS, or all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child's JSON job
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        job = json.loads(args.one)
        print(json.dumps(one(job["model"], job["seq"], job["batch"], job["levers"], args.device)))
        return
    names = list(LEVERS) if args.levers == "all" else args.levers.split(",")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed tensors go back to the system
    mib = 2**20
    print(f"batch {args.batch_size}, fp32, {args.threads} thread(s), {args.device}; activations = "
          "saved for backward + logits (MiB); peak = process peak RSS (CPU) / allocated (CUDA)\n")
    print("| model | seq | levers | measured MiB | planned MiB | planned / measured | peak MiB "
          "| s/step | × plain |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        for seq in map(int, args.seqs.split(",")):
            plain_s = None
            for name in names:
                job = json.dumps({"model": model, "seq": seq, "batch": args.batch_size,
                                  "levers": LEVERS[name]})
                done = subprocess.run([sys.executable, __file__, "--one", job, "--threads",
                                       str(args.threads), "--device", args.device],
                                      capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    print(f"| {model} | {seq} | {name} | failed: "
                          f"{done.stderr.strip().splitlines()[-1][:120]} ||||||", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                plain_s = r["seconds"] if name == "plain" else plain_s
                ratio = f"{r['seconds'] / plain_s:.2f}" if plain_s else "–"
                print(f"| {model} | {seq} | {name} | {r['activations'] / mib:,.1f} | "
                      f"{r['planned'] / mib:,.1f} | {r['planned'] / r['activations']:.3f} | "
                      f"{(r['peak'] or 0) / mib:,.0f} | {r['seconds']:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
