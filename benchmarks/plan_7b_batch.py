"""The largest batch of 2,048-token sequences that the planner fits in a memory budget for LLaMA-7B
trained with GaLore-AdamW 8-bit and layer-wise updates, bf16 weights, lever by lever.

    python benchmarks/plan_7b_batch.py [--budget-gib 24] [--seq-len 2048] [--model 7b]

Planned, not measured (no machine here holds a 7B run): ``slimtrain.memory.plan`` — the same
numbers as ``slimtrain plan --model 7b --optimizer galore-adamw8bit --fused-backward
--param-dtype bfloat16 --seq-len 2048 --batch-size N [levers]``, whose parts are checked against
measurements on small presets (tests/memory).
"""

from __future__ import annotations

import argparse

from slimtrain.memory import plan

LEVERS = {
    "none": {},
    "checkpointing all": dict(activation_checkpointing="all"),
    "chunked loss": dict(loss="chunked"),
    "chunked loss + checkpointing all": dict(loss="chunked", activation_checkpointing="all"),
    "chunked loss + checkpointing all + 8-bit activations": dict(
        loss="chunked", activation_checkpointing="all", activation_bits=8),
}


def total(model: str, seq: int, batch: int, levers: dict) -> int:
    return plan(model, "galore-adamw8bit", batch_size=batch, seq_len=seq, param_dtype="bfloat16",
                fused_backward=True, **levers).total


def largest_batch(model: str, seq: int, budget: int, levers: dict) -> tuple[int, int]:
    """(the largest batch that fits, its planned bytes); (0, batch 1's bytes) when none does."""
    low, high = 0, 1
    while total(model, seq, high, levers) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if total(model, seq, mid, levers) <= budget else (low, mid)
    return low, total(model, seq, max(low, 1), levers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--model", default="7b")
    args = parser.parse_args()
    budget = int(args.budget_gib * 2**30)
    print(f"{args.model}, galore-adamw8bit, layer-wise updates, bf16 weights, sequences of "
          f"{args.seq_len}, budget {args.budget_gib:g} GiB (planned)\n")
    print("| levers | largest batch | planned GiB at it |")
    print("|---|---:|---:|")
    for name, levers in LEVERS.items():
        batch, nbytes = largest_batch(args.model, args.seq_len, budget, levers)
        print(f"| {name} | {batch} | {nbytes / 2**30:.2f} |", flush=True)


if __name__ == "__main__":
    main()
