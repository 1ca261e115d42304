"""Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models", TPAMI 2024), as the authors' code (sail-sg/Adan) and pytorch-optimizer compute it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule, decay_


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
    elementwise = True
    Hyper = AdanHyper
    reprojectable = {"exp_avg": "first", "exp_avg_diff": "first", "previous_grad": "first",
                     "exp_avg_sq": "second"}
    nonnegative = ("exp_avg_sq",)
    implementations = ("forloop", "foreach")

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        return {"exp_avg": shape, "exp_avg_diff": shape, "exp_avg_sq": shape,
                "previous_grad": shape}

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        """One pass as pytorch-optimizer's (the previous gradient's buffer holds Δ, then G + β₂Δ,
        then G: no temporary but the denominator). ``params`` given: applied in place
        (proximal weight decay unless ``no_prox``); else (directions, 1/bc1)."""
        beta1, beta2, beta3 = group["betas"]
        m = [x["exp_avg"] for x in moments]
        d = [x["exp_avg_diff"] for x in moments]
        n = [x["exp_avg_sq"] for x in moments]
        prev = [x["previous_grad"] for x in moments]
        for g, b, c in zip(grads, prev, counts):
            if int(c.item()) == 0:
                b.copy_(g)  # Δ = 0 at the first step
            c += 1
        t = [float(c.item()) for c in counts]
        bc1 = [1 - beta1 ** x for x in t]
        bc2 = [1 - beta2 ** x for x in t]
        bc3 = [(1 - beta3 ** x) ** 0.5 for x in t]
        if impl == "foreach":
            torch._foreach_neg_(prev)
            torch._foreach_add_(prev, grads)                     # Δ
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_lerp_(d, prev, 1 - beta2)
            torch._foreach_mul_(prev, beta2)
            torch._foreach_add_(prev, grads)                     # G + β₂Δ
            torch._foreach_mul_(n, beta3)
            torch._foreach_addcmul_(n, prev, prev, 1 - beta3)
            torch._foreach_copy_(prev, grads)
            denom = torch._foreach_sqrt(n)
            torch._foreach_div_(denom, bc3)
            torch._foreach_add_(denom, group["eps"])
        else:
            denom = []
            for g, mi, di, ni, b, s3 in zip(grads, m, d, n, prev, bc3):
                b.neg_().add_(g)
                mi.lerp_(g, 1 - beta1)
                di.lerp_(b, 1 - beta2)
                b.mul_(beta2).add_(g)
                ni.mul_(beta3).addcmul_(b, b, value=1 - beta3)
                b.copy_(g)
                denom.append(ni.sqrt().div_(s3).add_(group["eps"]))
        if params is None:  # D = (M + β₂·(bc1/bc2)·D_diff) / denom, factor 1/bc1
            out = [torch.add(mi, di, alpha=beta2 * b1 / b2).div_(q)
                   for mi, di, q, b1, b2 in zip(m, d, denom, bc1, bc2)]
            return out, [1 / b1 for b1 in bc1]
        lr, wd = group["lr"], group["weight_decay"]
        if group["no_prox"]:
            decay_(params, lr, wd, foreach=impl == "foreach")
        for p, mi, di, q, b1, b2 in zip(params, m, d, denom, bc1, bc2):
            p.addcdiv_(mi, q, value=-lr / b1)
            p.addcdiv_(di, q, value=-lr * beta2 / b2)
        if wd and not group["no_prox"]:
            for p in params:
                p.div_(1 + lr * wd)
        return None
