"""The low-bit C kernel alone, without the optimizer around it: nanoseconds per element of one
Adam step on one large tensor, against torch's fused fp32 AdamW kernel on the same tensor.

    python benchmarks/fp8_kernel.py [--elements 8388608] [--rounds 9] [--threads 1]

``benchmarks/lowbit_step.py`` times whole optimizer steps over LLaMA-60M's tensors (Python, the
state layout, every parameter); this isolates the kernel (``optim/lowbit/native.adam_step``): the
8-bit tree maps, fp8 with expansion (``e4m3x``), plain fp8 (``e4m3``, ``fp8_expansion=False``),
each on its SIMD path and on the portable plain-C one (``SLIMTRAIN_NATIVE=portable``). Float32
parameters updated in place, float32 gradients of scale 1e-3, moments from random codes. The
calls take turns round by round; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from slimtrain.optim.lowbit import native


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=int, default=1 << 23, help="a multiple of 256")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not native.available():
        raise SystemExit("the C kernel did not build here (no C compiler?); nothing to time")
    torch.set_num_threads(args.threads)
    n = args.elements // 256 * 256
    blocks = n // 256
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(n, generator=gen) * 1e-3
    hp = torch.tensor([0.9, 0.1, 0.999, 0.001, 1.0, 1e-8, 1.0, -1e-3])  # kernel._block_step's eight

    def codes(low=0):
        return torch.randint(low, 120, (n,), dtype=torch.uint8, generator=gen)

    def moments(expanded):
        j = (torch.randint(1, 17, (blocks,), dtype=torch.uint8, generator=gen),) if expanded else ()
        return ((codes(), torch.rand(blocks, generator=gen) * 1e-3, *j),
                (codes(1), torch.rand(blocks, generator=gen) * 1e-6, *j))

    def lowbit(kinds, expanded=False, portable=False):
        param, (m, v) = torch.randn(n, generator=gen), moments(expanded)

        def step():
            os.environ["SLIMTRAIN_NATIVE"] = "portable" if portable else "1"
            native.adam_step(8, blocks, param, None, grad, m, v, hp, 0, False, kinds)
        return step

    p, m, v, t = torch.randn(n, generator=gen), torch.zeros(n), torch.zeros(n), torch.zeros(())
    steps = {
        "torch fused AdamW (fp32 states)": lambda: torch._fused_adamw_(
            [p], [grad], [m], [v], [], [t], lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0,
            eps=1e-8, amsgrad=False, maximize=False),
        "8-bit tree maps": lowbit(None),
        "fp8 expanded": lowbit(("e4m3x", "e4m3x+"), expanded=True),
        "fp8 plain (fp8_expansion=False)": lowbit(("e4m3", "e4m3+")),
        "8-bit tree maps, portable C": lowbit(None, portable=True),
        "fp8 expanded, portable C": lowbit(("e4m3x", "e4m3x+"), expanded=True, portable=True),
        "fp8 plain, portable C": lowbit(("e4m3", "e4m3+"), portable=True),
    }
    times = {name: [] for name in steps}
    for r in range(args.rounds + 2):  # two warm-up rounds (first-use build, page faults)
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if r >= 2:
                times[name].append(time.perf_counter() - start)
    os.environ.pop("SLIMTRAIN_NATIVE", None)
    base = statistics.median(times["torch fused AdamW (fp32 states)"])
    print(f"{n:,} elements, {args.threads} thread(s); SIMD widths: tree maps "
          f"{native.simd_width()}, fp8 {native.fp8_simd_width()} (0: plain C only)")
    print(f"{'kernel':34s} {'ns/element':>10s} {'x fused AdamW':>14s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:34s} {med * 1e9 / n:10.2f} {med / base:14.2f}")


if __name__ == "__main__":
    main()
