"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule


@dataclass
class LionHyper(Hyper):
    betas: tuple = option((0.9, 0.99), "β₁ interpolates the update's momentum, β₂ decays the "
                          "moment (Lion's defaults)", kind="betas")


class LionRule(Rule):
    """``D = sign(β₁M + (1−β₁)G)``; ``M ← β₂M + (1−β₂)G``; factor 1. One moment."""

    name = "lion"
    elementwise = True
    Hyper = LionHyper
    implementations = ("forloop", "foreach")
    reprojectable = {"exp_avg": "first"}

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape)}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2 = group["betas"]
        exp_avgs = [m["exp_avg"] for m in moments]
        for c in counts:
            c += 1
        if impl == "forloop":
            directions = []
            for g, m in zip(grads, exp_avgs):
                directions.append(torch.lerp(m, g, 1 - beta1).sign_())
                m.lerp_(g, 1 - beta2)
        else:
            directions = list(torch._foreach_lerp(exp_avgs, grads, 1 - beta1))
            torch._foreach_sign_(directions)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)
        return directions, [1.0] * len(grads)
