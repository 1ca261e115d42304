"""Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models", TPAMI 2024), as the authors' code (sail-sg/Adan) and pytorch-optimizer compute it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule


@dataclass
class AdanHyper(Hyper):
    betas: tuple = option((0.98, 0.92, 0.99), "decay rates of the gradient, of its difference "
                          "and of the squared Nesterov term (the authors' convention; "
                          "adan-pytorch writes 1 − β)", kind="betas3")
    eps: float = option(1e-8, "added to the denominator", low=0)
    no_prox: bool = option(False, "False: weight decay as the proximal step W ← W/(1 + lr·λ) after "
                           "the update (the authors' default); True: W·(1 − lr·λ) before it")


class AdanRule(Rule):
    """With Δ = G − G_prev (0 at the first step):
    ``M ← β₁M + (1−β₁)G``; ``D ← β₂D + (1−β₂)Δ``; ``N ← β₃N + (1−β₃)(G + β₂Δ)²``;
    ``W ← (W − lr·(M/(1−β₁ᵗ) + β₂·D/(1−β₂ᵗ)) / (√(N/(1−β₃ᵗ)) + ε)) / (1 + lr·λ)``.
    Four tensors of the update's shape: M, D, N and the previous gradient.

    adan-pytorch 0.1.0 differs at the first step: it updates no moment there (only records the
    gradient) yet counts the step in its bias corrections; this follows the paper."""

    name = "adan"
    Hyper = AdanHyper
    reprojectable = {"exp_avg": "first", "exp_avg_diff": "first", "previous_grad": "first",
                     "exp_avg_sq": "second"}
    nonnegative = ("exp_avg_sq",)

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        return {"exp_avg": shape, "exp_avg_diff": shape, "exp_avg_sq": shape,
                "previous_grad": shape}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2, beta3 = group["betas"]
        directions = []
        for g, m, count in zip(grads, moments, counts):
            first = int(count.item()) == 0
            count += 1
            t = int(count.item())
            prev = m["previous_grad"]
            diff = torch.zeros_like(g) if first else g - prev
            m["exp_avg"].lerp_(g, 1 - beta1)
            m["exp_avg_diff"].lerp_(diff, 1 - beta2)
            nesterov = diff.mul_(beta2).add_(g)
            m["exp_avg_sq"].mul_(beta3).addcmul_(nesterov, nesterov, value=1 - beta3)
            denom = (m["exp_avg_sq"].sqrt() / math.sqrt(1 - beta3 ** t)).add_(group["eps"])
            d = m["exp_avg"] / (1 - beta1 ** t)
            d.add_(m["exp_avg_diff"], alpha=beta2 / (1 - beta2 ** t)).div_(denom)
            directions.append(d)
            prev.copy_(g)
        return directions, [1.0] * len(grads)

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        if params is None or group["no_prox"]:
            return super().update(grads, moments, counts, group, impl, params, inputs)
        directions, _ = self.directions(grads, moments, counts, group, impl, inputs)
        lr, wd = group["lr"], group["weight_decay"]
        for p, d in zip(params, directions):
            p.add_(d.to(p.dtype), alpha=-lr)
            if wd:
                p.div_(1 + lr * wd)
        return None

