"""SophiaG (Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", ICLR 2024), as the authors' code (sophia-opt 0.2.2) computes it."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Hyper, option
from ..sharded.context import local
from .base import Rule

INPUT = "hessian_grads"


@dataclass
class SophiaHyper(Hyper):
    betas: tuple = option((0.965, 0.99), "decay rates of the momentum and of the curvature "
                          "estimate", kind="betas")
    rho: float = option(0.04, "ρ: the clipping scale of the preconditioned step", low=0)
    bs: float = option(5120, "tokens per step (SophiaG's bs: the estimate is of a mean loss)",
                       low=0, open_low=True)


class SophiaRule(Rule):
    """``M ← β₁M + (1−β₁)G``; ``W ← W·(1 − lr·λ) − lr·sign(M)·min(|M| / (ρ·bs·H + 1e-15), 1)``.
    On the steps that bring an estimate — the input ``hessian_grads`` (per parameter: the
    gradient, at the weights the step starts from, of the loss on labels sampled from the model's
    own predictions: the Gauss-Newton-Bartlett estimator) — the curvature is updated first,
    ``H ← β₂H + (1−β₂)Ĝ²``, and the step uses it: the authors' loop computes Ĝ at the same weights
    (right after the previous step) and calls ``update_hessian()`` before the next. Two moments."""

    name = "sophia"
    elementwise = True
    Hyper = SophiaHyper
    needs = (INPUT,)
    nonnegative = ("hessian",)

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape), "hessian": tuple(shape)}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2 = group["betas"]
        scale = group["rho"] * group["bs"]
        estimates = (inputs or {}).get(INPUT) or [None] * len(grads)
        directions = []
        for g, m, count, est in zip(grads, moments, counts, estimates):
            count += 1
            exp_avg, h = m["exp_avg"], m["hessian"]
            if est is not None:
                est = local(est).to(h.dtype)  # an FSDP2 gradient: this rank's shard
                if est.shape != h.shape:
                    raise ValueError(f"{INPUT}: an estimate of shape {tuple(est.shape)} for a "
                                     f"parameter of shape {tuple(h.shape)}")
                h.mul_(beta2).addcmul_(est, est, value=1 - beta2)
            exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
            ratio = (exp_avg.abs() / (h * scale + 1e-15)).clamp_(max=1)
            directions.append(ratio.mul_(exp_avg.sign()))
        return directions, [1.0] * len(grads)
