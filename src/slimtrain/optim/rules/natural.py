"""The natural-gradient rule of Natural GaLore (Das, arXiv 2410.16029): Woodbury, then Adam."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from .adam import ADAM, AdamHyper
from .base import Rule


@dataclass
class NaturalHyper(AdamHyper):
    history: int = option(20, "s: low-rank gradients kept for the empirical Fisher", low=1,
                          integer=True)
    damping: float = option(1e-3, "λ of F = λI + HHᵀ", low=0, open_low=True)


class NaturalRule(Rule):
    """Precondition the low-rank gradient g by the inverse empirical Fisher of the last s updates,
    F = λI + H Hᵀ (H: the s most recent low-rank gradients, the current one included), via
    Woodbury —

        ĝ = g/λ − H (λ²I + λ HᵀH)⁻¹ Hᵀ g     (an s×s Cholesky solve; never a d×d matrix)

    — then run Adam on ĝ. State: Adam's moments plus the history (s × the update's shape), a ring
    buffer indexed by the moment step counter (so a moment reset also empties the history).
    Unprojected parameters run Adam (their history would be s full-size gradients).
    """

    name = "natural"
    Hyper = NaturalHyper
    unprojected = "adam"
    implementations = ("forloop", "foreach")  # Adam's, without the fused kernel (never used here)
    nonnegative = ("exp_avg_sq",)

    def shard_bytes(self, shape, group, dim, world):
        s = group["history"]
        return 4 * (s * s + s)  # the Gram matrix and the projections

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        return {"exp_avg": shape, "exp_avg_sq": shape, "history": (group["history"],) + shape}

    def step_size(self, count, group):
        return ADAM.step_size(count, group)

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        if params is not None:
            raise AssertionError("the natural rule runs on projected updates only")
        damping = group["damping"]
        natural = []
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        for g, m, count, part in zip(grads, moments, counts, parts):
            history = m["history"]
            s = history.shape[0]
            seen = int(count.item())  # steps already in the history (counts is incremented by Adam)
            history[seen % s].copy_(g)
            H = history[: min(seen + 1, s)].reshape(min(seen + 1, s), -1)
            flat = g.reshape(-1)
            # The s×s system in float64: HHᵀ spans many orders of magnitude when λ is small.
            gram, proj = H @ H.t(), H @ flat
            if part is not None:  # g is this rank's part of R: the sums run over every rank
                gram, proj = part.sum_(gram), part.sum_(proj)
            system = gram.double().mul_(damping)
            system.diagonal().add_(damping * damping)
            rhs = proj.double().unsqueeze(1)
            y = torch.cholesky_solve(rhs, torch.linalg.cholesky(system)).to(g.dtype).squeeze(1)
            natural.append((flat / damping - H.t() @ y).reshape(g.shape))
        return ADAM.update(natural, moments, counts, group, impl)
