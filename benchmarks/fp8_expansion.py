"""FP8 optimizer states: what COAT's dynamic range expansion buys, on real moments.

    python benchmarks/fp8_expansion.py [--model tiny] [--steps 100] [--at 5 20 100]

A LLaMA preset is trained with fp32 AdamW (lr 1e-3, batch 8 × 128 byte tokens of the standard
library's ``json`` package sources, one thread). At the chosen steps each moment tensor of at least
4096 elements is quantized and decoded in blocks of 256 — the moments themselves are left exact, so
every format sees the same moments — and the error of Adam's update m / (√v + eps) is measured,
relative to its norm: the mean over tensors and the worst tensor. Formats: plain e4m3 (scaled by
448/absmax, torchao's AdamWFp8 codes), slimtrain's ``state_bits="fp8"`` (expansion with k = j/4,
``optim/lowbit/fp8.py``), and COAT's real-valued k (torch.pow, here only for comparison).
"""

from __future__ import annotations

import argparse
import glob
import math
import os

import torch

from slimtrain.models import preset_config
from slimtrain.optim.lowbit import fp8

BLOCK = 256


def blocks_of(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = x.reshape(-1)
    pad = (-flat.numel()) % BLOCK
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, BLOCK), flat.numel()


def round_trip(x: torch.Tensor, fmt: str, nonneg: bool) -> torch.Tensor:
    blocks, n = blocks_of(x)
    if fmt == "coat":
        back = coat_round_trip(blocks, nonneg)
    else:
        kind = ("e4m3" if fmt == "plain" else "e4m3x") + ("+" if nonneg else "")
        parts = fp8.quantize_blocks(blocks, kind)
        back = fp8.dequantize_blocks(parts[0], parts[1], kind, expand=parts[2] if len(parts) > 2 else None)
    return back.reshape(-1)[:n].view(x.shape)


def coat_round_trip(blocks: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """COAT: k = log(R_e4m3) / log(R_block) as a real number (R_e4m3 = 448 / 2⁻⁹)."""
    a = blocks.abs()
    absmax = a.amax(1, keepdim=True).clamp_min(1e-30)
    absmin = torch.where(a > 0, a, torch.full_like(a, math.inf)).amin(1, keepdim=True)
    k = math.log(448 / 2**-9) / torch.log((absmax / absmin).clamp_min(1 + 1e-6))
    codes = (448 * (a / absmax).pow(k)).to(torch.float8_e4m3fn).float()
    if nonneg:
        codes = codes.clamp_min(2**-9)
    return (codes / 448).pow(1 / k) * absmax * (1 if nonneg else blocks.sign())


def batches(steps: int, batch: int = 8, length: int = 128):
    root = os.path.dirname(__import__("json").__file__)
    data = b"".join(open(f, "rb").read() for f in sorted(glob.glob(os.path.join(root, "*.py"))))
    tokens = torch.tensor(list(data), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        start = torch.randint(0, tokens.numel() - length - 1, (batch,), generator=g)
        yield torch.stack([tokens[i:i + length] for i in start])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--at", type=int, nargs="+", default=[5, 20, 100])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(preset_config(args.model))
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    print(f"LLaMA {args.model}, fp32 AdamW lr {lr}, moments of tensors ≥ 4096 elements quantized in "
          "blocks of 256; error of Adam's update m/(√v+eps), relative to its norm")
    print("| step | format | mean over tensors | worst tensor |")
    print("|---|---|---|---|")
    for t, x in enumerate(batches(args.steps), 1):
        model(input_ids=x, labels=x).loss.backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                m[i].mul_(b1).add_(p.grad, alpha=1 - b1)
                v[i].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p -= lr * (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
                p.grad = None
        if t not in args.at:
            continue
        for fmt, label in [("plain", "plain e4m3 (torchao AdamWFp8)"),
                           ("expanded", "slimtrain fp8 (k = j/4)"), ("coat", "COAT real-valued k")]:
            errors = []
            for i, p in enumerate(params):
                if p.numel() < 4096:
                    continue
                scale = 1 / math.sqrt(1 - b2**t)
                exact = m[i] / (v[i].sqrt() * scale + eps)
                mq, vq = round_trip(m[i], fmt, False), round_trip(v[i], fmt, True)
                approx = mq / (vq.sqrt() * scale + eps)
                errors.append(((approx - exact).norm() / exact.norm()).item())
            print(f"| {t} | {label} | {sum(errors) / len(errors):.4f} | {max(errors):.4f} |", flush=True)


if __name__ == "__main__":
    main()
