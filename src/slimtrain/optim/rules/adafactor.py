"""Adafactor (Shazeer & Stern 2018): a factored second moment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule, decay_

_CHUNK = 1 << 20  # elements per row chunk: temporaries stay small enough for the allocator to reuse


def _row_chunks(rows: int, cols: int):
    step = max(1, _CHUNK // max(cols, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


@dataclass
class AdafactorHyper(Hyper):
    beta1: float | None = option(None, "first-moment decay; None keeps no first moment", low=0,
                                 high=1, open_high=True, none_ok=True,
                                 message="a number in [0, 1) or None (no first moment)")
    decay_rate: float = option(-0.8, "β₂ₜ = 1 − t^decay_rate", low=-1, high=0, open_high=True,
                               message="a number in [-1, 0)")
    clip_threshold: float = option(1.0, "RMS bound of the update", low=0, open_low=True)
    eps: float = option(1e-30, "ε₁, added to G² before averaging", low=0)


class AdafactorRule(Rule):
    """Adafactor as in ``transformers``' and galore-torch's ``Adafactor`` with
    ``relative_step=False, scale_parameter=False`` (the settings GaLore's scripts and the HF
    Trainer use): β₂ₜ = 1 − t^decay_rate; the second moment of a matrix is kept as row and column
    means of G² + ε₁ (m + n numbers), of a vector in full; the update U = G/√V̂ (V̂ = r cᵀ / mean(r))
    is clipped to RMS ≤ ``clip_threshold``; with ``beta1`` a first moment averages U.

    Differences from the references: they scale by lr before the first moment (so a changing lr
    enters the average); here the moment averages lr-free updates and lr is applied after, which is
    the same for a constant lr. Relative steps and parameter-scale updates need the parameter and
    are not offered (the rule never sees it on the projected path).

    U is never formed as a full m×n tensor for a matrix: the statistics and the clipping norm are
    reductions, and the update is applied in row chunks (an embedding's m×n temporaries would cost
    more than the whole Adam step on CPU).
    """

    name = "adafactor"
    Hyper = AdafactorHyper
    nonnegative = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")

    def shard_bytes(self, shape, group, dim, world):
        if len(shape) < 2:
            return 4  # the update's norm
        along = shape[1] if dim == 0 else shape[0]  # the statistic summed over the split rows
        return 4 * (along + (dim == 0) + 1)  # + the row mean + the RMS

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        moments = ({"exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}
                   if len(shape) >= 2 else {"exp_avg_sq": shape})
        if group["beta1"] is not None:
            moments["exp_avg"] = shape
        return moments

    @staticmethod
    def _factors(g, m, beta2t, eps1, part=None):
        """Update the row/column statistics; return the row and column factors of 1/√V̂.
        ``part``: g is this rank's rows (dim 0) or columns (dim 1) of a sharded matrix — the
        statistic summed along the split dimension, and the row mean, span the ranks."""
        rows, cols = g.shape if part is None else part.whole_shape
        row, col = m["exp_avg_sq_row"], m["exp_avg_sq_col"]
        col_sq = torch.zeros_like(col)
        for a, b in _row_chunks(*g.shape):
            col_sq.add_(g[a:b].square().sum(dim=0))
        row_sq = torch.linalg.vector_norm(g, dim=-1).square_()
        if part is not None:
            part.sum_(col_sq if part.dim == 0 else row_sq)
        row.mul_(beta2t).add_(row_sq.div_(cols).add_(eps1), alpha=1 - beta2t)
        col.mul_(beta2t).add_(col_sq.div_(rows).add_(eps1), alpha=1 - beta2t)
        mean = row.mean() if part is None or part.dim == 1 else part.sum_(row.sum()) / rows
        return (row / mean).rsqrt_(), col.rsqrt()

    @staticmethod
    def _rms(g, r, c, part=None):
        """RMS of g ⊙ r cᵀ without forming it: Σᵢ rᵢ² (gᵢ² · c²)."""
        total = g.new_zeros(())
        c2 = c * c
        for a, b in _row_chunks(*g.shape):
            total += ((g[a:b].square() @ c2) * r[a:b].square()).sum()
        if part is not None:
            return (part.sum_(total) / part.numel).sqrt().item()
        return (total / g.numel()).sqrt().item()

    def _one(self, g, m, count, group, param=None, part=None):
        """(direction, factor) — or None after applying the update to ``param`` itself."""
        eps1, clip, beta1 = group["eps"], group["clip_threshold"], group["beta1"]
        count += 1
        beta2t = 1.0 - float(count.item()) ** group["decay_rate"]
        if "exp_avg_sq" in m:  # a vector: the second moment in full
            v = m["exp_avg_sq"]
            v.mul_(beta2t).addcmul_(g, g, value=1 - beta2t).add_(eps1 * (1 - beta2t))
            u = v.rsqrt().mul_(g)
            norm = (torch.linalg.vector_norm(u) if part is None
                    else part.sum_(u.square().sum()).sqrt())
            numel = u.numel() if part is None else part.numel
            shrink = 1.0 / max(norm.item() / numel ** 0.5 / clip, 1.0)
            if beta1 is None:
                return u, shrink
            m["exp_avg"].mul_(beta1).add_(u, alpha=(1 - beta1) * shrink)
            return m["exp_avg"], 1.0
        r, c = self._factors(g, m, beta2t, eps1, part)
        shrink = 1.0 / max(self._rms(g, r, c, part) / clip, 1.0)
        target = m.get("exp_avg") if beta1 is not None else param
        if target is None:  # the projected path: a small r×n direction
            return (g * r.unsqueeze(-1)).mul_(c), shrink
        if beta1 is not None:
            target.mul_(beta1)
            value = (1 - beta1) * shrink
        else:
            value = -group["lr"] * shrink
        for a, b in _row_chunks(*g.shape):
            target[a:b].addcmul_(g[a:b], torch.outer(r[a:b], c), value=value)
        return (target, 1.0) if beta1 is not None else None

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        pairs = [self._one(g, m, c, group, part=part)
                 for g, m, c, part in zip(grads, moments, counts, parts)]
        return [d for d, _ in pairs], [f for _, f in pairs]

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        if params is None:
            return self.directions(grads, moments, counts, group, impl, inputs)
        lr = group["lr"]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        for p, g, m, c, part in zip(params, grads, moments, counts, parts):
            decay_([p], lr, group["weight_decay"])  # decay first, then the update (as AdamW)
            out = self._one(g, m, c, group, param=p, part=part)
            if out is not None:
                p.add_(out[0].to(p.dtype), alpha=-lr * out[1])
        return None
