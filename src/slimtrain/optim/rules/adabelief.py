"""AdaBelief (Zhuang et al., NeurIPS 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief
in Observed Gradients"), as adabelief-pytorch 0.2.1 computes it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Hyper, option
from .adam import ADAM, bias_corrections
from .base import Rule


@dataclass
class AdaBeliefHyper(Hyper):
    betas: tuple = option((0.9, 0.999), "decay rates of the first moment and of the belief "
                          "(the variance of G around it)", kind="betas")
    eps: float = option(1e-16, "added to the belief every step and to its root (the package's "
                        "default since 0.1)", low=0)
    rectify: bool = option(True, "RAdam's rectification of the early steps (the package's default)")
    degenerated_to_sgd: bool = option(True, "rectify: steps whose variance estimate is not yet "
                                      "usable take an SGD-momentum step (False: none)")


def rectified_step(t: int, beta1: float, beta2: float, to_sgd: bool) -> tuple[bool, float]:
    """RAdam's rectification at step t: (whether the adaptive step applies, its step size)."""
    beta2_t = beta2 ** t
    n_max = 2 / (1 - beta2) - 1
    n = n_max - 2 * t * beta2_t / (1 - beta2_t)
    bc1 = 1 - beta1 ** t
    if n >= 5:
        return True, math.sqrt((1 - beta2_t) * (n - 4) / (n_max - 4) * (n - 2) / n
                               * n_max / (n_max - 2)) / bc1
    return False, (1.0 / bc1 if to_sgd else 0.0)


class AdaBeliefRule(Rule):
    """``M ← β₁M + (1−β₁)G``; ``S ← β₂S + (1−β₂)(G−M)² + ε``; the update is Adam's with S for V
    (``M/(1−β₁ᵗ) / (√(S/(1−β₂ᵗ)) + ε)``); with ``rectify`` RAdam's variance rectification
    replaces the bias corrections, and its first steps (ρₜ < 5) move by ``M/(1−β₁ᵗ)``. Decoupled
    weight decay before the update, as the package's ``weight_decouple=True`` default. Two
    moments (amsgrad is not offered)."""

    name = "adabelief"
    elementwise = True
    Hyper = AdaBeliefHyper
    reprojectable = {"exp_avg": "first", "exp_avg_var": "second"}
    nonnegative = ("exp_avg_var",)

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape), "exp_avg_var": tuple(shape)}

    def step_size(self, count, group):
        return ADAM.step_size(count, group)

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        directions, factors = [], []
        for g, m, count in zip(grads, moments, counts):
            count += 1
            t = int(count.item())
            exp_avg, var = m["exp_avg"], m["exp_avg_var"]
            exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
            residual = g - exp_avg
            var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
            bc1, bc2 = bias_corrections(t, beta1, beta2)
            if not group["rectify"]:
                directions.append(exp_avg / (var.sqrt() / math.sqrt(bc2)).add_(eps))
                factors.append(1 / bc1)
                continue
            adaptive, size = rectified_step(t, beta1, beta2, group["degenerated_to_sgd"])
            directions.append(exp_avg / var.sqrt().add_(eps) if adaptive else exp_avg.clone())
            factors.append(size)
        return directions, factors
