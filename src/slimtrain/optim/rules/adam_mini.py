"""Adam-mini (Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", ICLR 2025), as the
authors' package adam-mini 1.1.1 computes it: one second moment per Hessian block."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Hyper, option
from .adam import ADAM, bias_corrections
from .base import Rule

BLOCKS = ("rows", "heads", "tensor")


@dataclass
class AdamMiniHyper(Hyper):
    betas: tuple = option((0.9, 0.999), "decay rates of the first moment and of the block means "
                          "of G²", kind="betas")
    eps: float = option(1e-8, "added to the denominator", low=0)
    block: str = option("tensor", "one second moment per: rows (output neurons, tokens), heads "
                        "(head_numel elements each), tensor", choices=BLOCKS)
    head_numel: int | None = option(None, "elements per attention head (block='heads')", low=1,
                                    integer=True, none_ok=True)


def _blocks(shape, group) -> tuple:
    shape = tuple(shape)
    if group["block"] == "tensor":
        return ()
    if group["block"] == "rows":
        return shape[:1]
    numel, size = math.prod(shape), group["head_numel"]
    if size is None or numel % size:
        raise ValueError(f"Adam-mini's head blocks need head_numel dividing the tensor's {numel} "
                         f"elements, got {size} (a shard must hold whole heads)")
    return (numel // size,)


class AdamMiniRule(Rule):
    """``M ← β₁M + (1−β₁)G``; per block b, ``v_b ← β₂v_b + (1−β₂)·mean_b(G²)``;
    ``W ← W·(1 − lr·λ) − lr·(M/(1−β₁ᵗ)) / (√(v_b/(1−β₂ᵗ)) + ε)``. The blocks (``block`` of the
    group) are the recipe's partition of the model (``recipes/adam_mini.py``); state: M and one
    number per block."""

    name = "adam-mini"
    Hyper = AdamMiniHyper
    nonnegative = ("exp_avg_sq",)

    def shard_bytes(self, shape, group, dim, world):
        return 4 if group["block"] == "tensor" else 0  # Σ G² over the tensor

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape), "exp_avg_sq": _blocks(shape, group)}

    def step_size(self, count, group):
        return ADAM.step_size(count, group)

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2 = group["betas"]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        directions, factors = [], []
        for g, m, count, part in zip(grads, moments, counts, parts):
            count += 1
            bc1, bc2 = bias_corrections(float(count.item()), beta1, beta2)
            v = m["exp_avg_sq"]
            if group["block"] == "tensor":
                sq = g.square().sum()
                mean = (sq if part is None else part.sum_(sq)) / (g.numel() if part is None
                                                                   else part.numel)
            elif group["block"] == "rows" and g.dim() >= 2:
                mean = g.square().mean(dim=tuple(range(1, g.dim())))
            elif group["block"] == "rows":
                mean = g.square()
            else:
                mean = g.reshape(v.shape[0], -1).square().mean(dim=1)
            v.mul_(beta2).add_(mean.to(v.dtype), alpha=1 - beta2)
            m["exp_avg"].lerp_(g, 1 - beta1)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
            if group["block"] == "heads":
                d = (m["exp_avg"].reshape(v.shape[0], -1) / denom.unsqueeze(1)).reshape(g.shape)
            else:
                d = m["exp_avg"] / denom.reshape(denom.shape + (1,) * (g.dim() - denom.dim()))
            directions.append(d)
            factors.append(1 / bc1)
        return directions, factors
