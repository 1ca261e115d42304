"""Peak memory and time of the LM-head loss: naive logits vs chunked (``linear_cross_entropy``) vs
cut-cross-entropy (when installed).

    python benchmarks/linear_ce_memory.py [--tokens 4096] [--vocab 32000] [--dim 256] [--dtype float32]

Each variant runs one forward + backward in its own fresh process, one after the other, 1 thread
(``slimtrain.activations.peak_memory``: on CPU the peak resident set over the one before the loss,
with glibc returning freed tensors to the system; on CUDA the allocator's peak). The figure holds
the gradients of hidden and weight, which every variant allocates. cut-cross-entropy runs its
``torch_compile`` implementation off CUDA (its Triton kernel needs a GPU); its compilation happens
in a warm-up run before the measurement.
"""

from __future__ import annotations

import argparse
import importlib.util

from slimtrain.activations.peak_memory import run_isolated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    variants = ["naive", "chunked"]
    if importlib.util.find_spec("cut_cross_entropy") is not None:
        variants.append("cce")
    results = run_isolated(variants, args.tokens, args.vocab, args.dim, args.dtype, args.device)
    mib = 2**20
    logits = args.tokens * args.vocab * 4 / mib
    print(f"{args.tokens} tokens × {args.vocab} vocab × d {args.dim}, {args.dtype}, {args.device}, "
          f"1 thread; one fp32 logits tensor = {logits:.1f} MiB\n")
    print("| variant | peak extra MiB | × naive | forward + backward s | loss |")
    print("|---|---|---|---|---|")
    naive = results[0]["peak_extra_bytes"]
    for r in results:
        peak = r["peak_extra_bytes"]
        print(f"| {r['variant']} | {peak / mib:.1f} | {peak / naive:.3f} | {r['seconds']:.2f} "
              f"| {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
