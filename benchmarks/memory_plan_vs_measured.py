"""The planner next to measurement, in one run.

    python benchmarks/memory_plan_vs_measured.py [--models tiny small 60m] [--batch 4] [--seq-len 256]
        [--recipes adamw galore-adamw:rank=64 lisa:layers_active=2 …]

For each model and recipe: planned bytes per part; measured exact tensor bytes (weights, gradients,
optimizer state, tensors saved for backward + logits) after real steps; and the growth of the process's peak RSS
over the steps, next to the planned total minus the weights (which were resident before): on CPU
RSS also holds allocator caches and library buffers, so it is a loose check, not an exact one. Each measurement runs in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
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
model_name, recipe, batch, seq, kwargs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
torch.manual_seed(0)
model = LlamaForCausalLM(preset_config(model_name))
opt = optim.create(recipe, model, **kwargs)
reset_peak_rss()
base = peak_rss_bytes()
m = measure(model, opt, batch_size=batch, seq_len=seq, steps=2)
p = plan(model_name, recipe, batch_size=batch, seq_len=seq, **kwargs).to_dict()
print(json.dumps({"plan": p, "measured": m, "rss_before": base}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "60m"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--recipes", nargs="+", default=["adamw", "galore-adamw:rank=64"],
                        help="NAME or NAME:KEY=VALUE:… (recipe options)")
    args = parser.parse_args()
    from slimtrain.userinput import key_values

    recipes = [(spec.split(":")[0], key_values(spec.split(":")[1:], "--recipes"))
               for spec in args.recipes]
    print("| model | recipe | weights+grads+states+proj: plan / measured | activations: plan / measured "
          "| planned total | planned total − weights / peak RSS growth |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for recipe, kwargs in recipes:
            out = subprocess.run([sys.executable, "-c", CHILD, model, recipe, str(args.batch), str(args.seq_len),
                                  json.dumps(kwargs)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            p, m = r["plan"], r["measured"]
            static_p = sum(p[k] for k in ("weights", "gradients", "optimizer_states", "projectors"))
            static_m = sum(m[k] for k in ("weights", "gradients", "optimizer_states", "projectors"))
            act_p = p["activations"] - p["details"]["recompute"]
            growth = (m["peak_rss"] - r["rss_before"]) if m["peak_rss"] else None
            mib = 2**20
            label = ":".join([recipe] + [f"{k}={v}" for k, v in kwargs.items()])
            print(f"| {model} | {label} | {static_p / mib:.1f} / {static_m / mib:.1f} MiB | {act_p / mib:.1f} / "
                  f"{m['activations'] / mib:.1f} MiB | {p['total'] / mib:.1f} MiB | "
                  f"{(p['total'] - p['weights']) / mib:.1f} / {'n/a' if growth is None else f'{growth / mib:.1f}'} MiB |")


if __name__ == "__main__":
    main()
