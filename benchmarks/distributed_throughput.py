"""Training throughput of 1 vs 2 processes on this CPU (the `small` preset, one thread each).

    python benchmarks/distributed_throughput.py [--steps 40] [--optimizers adamw,galore-adamw]

Each run is the real command line (`python -m slimtrain pretrain`), on the embedded corpus, at the
same global batch (1 process × 16 or 2 ranks × 8 sequences of 256 tokens); the tokens/s of the
whole job come from the run's summary.json (training time only: data preparation and start-up
are excluded). Printed: tokens/s per setting and the 2-rank / 1-process ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def run(optimizer: str, nproc: int, parallel: str, steps: int, out: str) -> float:
    per_rank = 16 // nproc
    args = [sys.executable, "-m", "slimtrain", "pretrain", "--model", "small", "--optimizer", optimizer,
            "--steps", str(steps), "--batch-size", str(per_rank), "--seq-len", "256",
            "--eval-every", str(steps), "--save-every", str(steps), "--threads", "1", "--out", out]
    if nproc > 1:
        args += ["--nproc", str(nproc), "--parallel", parallel]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ,
                                                                     "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(open(os.path.join(out, "summary.json")).read())["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--optimizers", default="adamw,galore-adamw")
    args = parser.parse_args()
    root = tempfile.mkdtemp()
    print(f"`small` preset (hidden 256, 6 layers, vocab 8192), global batch 16 × 256, {args.steps} "
          "steps, one thread per process")
    print("| optimizer | 1 process tokens/s | 2 ranks DDP tokens/s | ratio | 2 ranks FSDP2 tokens/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.optimizers.split(","):
        one = run(name, 1, "none", args.steps, os.path.join(root, f"{name}-1"))
        ddp = run(name, 2, "ddp", args.steps, os.path.join(root, f"{name}-ddp"))
        fsdp = run(name, 2, "fsdp", args.steps, os.path.join(root, f"{name}-fsdp"))
        print(f"| {name} | {one:,.0f} | {ddp:,.0f} | {ddp / one:.2f} | {fsdp:,.0f} | {fsdp / one:.2f} |")


if __name__ == "__main__":
    main()
