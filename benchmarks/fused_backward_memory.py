"""Peak memory of ordinary vs layer-wise (fused-backward) training on the GaLore paper's LLaMA-60M.

    python benchmarks/fused_backward_memory.py [--batch 1] [--seq-len 128] [--steps 2]

Each row runs in a fresh process (1 thread, fp32 weights): build the model and the optimizer, then
``steps`` real training steps on random tokens (``slimtrain.memory.measure``; the first one
allocates the states and refreshes every basis); with accumulation a step is 4 micro-batches. The
process runs with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the
system and its resident set follows the live memory. Exact tensor bytes:
weights, gradients (the most alive at any gradient's arrival, counted with weak references, plus
the layer-wise low-rank accumulators) and optimizer states + projectors; process level: the peak
resident set size during the steps (VmHWM, reset after building) and its growth over the RSS before
them. RSS also holds activations, allocator caches and Python, so compare rows, not parts; the
micro-batch is small so that activations (whose peak, at the start of backward, layer-wise updates
do not change) stay below the gradients.
The planner's figure for the gradients (``slimtrain plan --fused-backward``) is printed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, warnings, torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from transformers import LlamaForCausalLM
from slimtrain import optim
from slimtrain.memory import measure, plan
from slimtrain.memory.measure import peak_rss_bytes, reset_peak_rss
from slimtrain.models import preset_config
recipe, fused, accum, refresh_from, batch, seq, steps, kwargs = (
    sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
    int(sys.argv[6]), int(sys.argv[7]), json.loads(sys.argv[8]))
torch.manual_seed(0)
model = LlamaForCausalLM(preset_config("60m"))
opt = optim.create(recipe, model, **kwargs)
extra = dict(fused_backward=True, refresh_from=refresh_from) if fused else {}
reset_peak_rss()
before = peak_rss_bytes()
m = measure(model, opt, batch_size=batch, seq_len=seq, steps=steps, grad_accum=accum, **extra)
planned = plan("60m", recipe, batch_size=batch, seq_len=seq, fused_backward=fused, grad_accum=accum,
               fused_refresh_from=refresh_from, **kwargs).gradients
print(json.dumps({"measured": m, "rss_before": before, "planned_gradients": planned}))
"""

ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
RANK = {"rank": 128}  # the GaLore paper's 60M setting (hidden 512 / 4)


def rows(available: list[str]) -> list[tuple[str, dict, int, list[tuple[bool, str]]]]:
    """(recipe, kwargs, grad_accum, [(fused, refresh_from), …])"""
    out = [("adamw", {}, 1, [(False, "-"), (True, "-")]),
           ("galore-adamw", RANK, 1, [(False, "-"), (True, "-")])]
    if "galore-adamw8bit" in available:
        out.append(("galore-adamw8bit", RANK, 1, [(False, "-"), (True, "-")]))
    out.append(("galore-adamw", RANK, 4, [(False, "-"), (True, "accumulated"), (True, "first")]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    from slimtrain.optim import available

    recipes = available()
    mib = 2**20
    print(f"LLaMA-60M, fp32, micro-batch {args.batch} × {args.seq_len}, {args.steps} steps, 1 thread\n")
    print("| recipe | grad accum | backward | weights | gradients: measured / planned | states + projectors "
          "| weights + gradients + states | peak RSS | peak RSS − RSS before steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, kwargs, accum, modes in rows(recipes):
        for fused, refresh_from in modes:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, recipe, "1" if fused else "0", str(accum),
                 "accumulated" if refresh_from == "-" else refresh_from, str(args.batch),
                 str(args.seq_len), str(args.steps), json.dumps(kwargs)],
                capture_output=True, text=True, check=True, env=ENV)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            m = r["measured"]
            states = m["optimizer_states"] + m["projectors"]
            total = m["weights"] + m["gradients"] + states
            mode = "ordinary" if not fused else (
                "fused" if accum == 1 else f"fused, refresh_from={refresh_from}")
            print(f"| {recipe} | {accum} | {mode} | {m['weights'] / mib:.1f} | "
                  f"{m['gradients'] / mib:.1f} / {r['planned_gradients'] / mib:.1f} | {states / mib:.1f} | "
                  f"{total / mib:.1f} | {m['peak_rss'] / mib:.0f} | "
                  f"{(m['peak_rss'] - r['rss_before']) / mib:.0f} |", flush=True)
    if "galore-adamw8bit" not in recipes:
        print("\ngalore-adamw8bit: not registered in this checkout (low-bit states, issue 4, pending)")


if __name__ == "__main__":
    main()
