"""Inner rules: the stateful part of the pipeline, run on the (projected) update.

A rule never sees the parameter on the projected path. Its state ("moments") is sized from the
update it receives, so a rank-r projection gives r×max(m, n) moments. Every rule has the same shape:

* ``moment_shapes(shape, group)`` — the state tensors it keeps for an update of ``shape`` (the core
  allocates them, in the parameter's dtype, and plans their bytes from this alone);
* ``update(grads, moments, counts, group, impl, params=None)`` — advances the state by one step and
  returns ``(directions, factors)`` such that the rule's update of tensor i is
  ``-lr · factors[i] · directions[i]``; with ``params`` given it applies the update itself (decoupled
  weight decay first) and returns None. ``moments`` is one dict per tensor, keyed as
  ``moment_shapes`` says: the core builds it in one place (``PipelineOptimizer._run_rule``), which is
  where low-bit storage wraps every rule (dequantize → rule → requantize);
* ``step_size(count, group)`` — the step size the authors' code multiplies its direction by (Adam:
  √(1−β₂ᵗ)/(1−β₁ᵗ)); the norm-growth limiter measures norms in those units so that it matches
  the reference implementations whatever kernel produced the direction.

Rules: ``adam`` (``adam.py``, the one copy of Adam), ``adafactor`` (factored second moment),
``lion`` (sign of an interpolated momentum), ``natural`` (Woodbury natural gradient over a short
history of updates, then Adam).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .adam import adam_


def _decay_and_apply(params, directions, factors, lr, weight_decay):
    """Decoupled weight decay, then the update (as torch's AdamW orders them)."""
    for p, d, f in zip(params, directions, factors):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        p.add_(d.to(p.dtype), alpha=-lr * f)


class Rule:
    name = ""
    #: moments that reprojection may carry to a new basis: key → "first" (linear) / "second"
    reprojectable: dict[str, str] = {}
    #: moments that are never negative (low-bit storage gives them an unsigned map)
    nonnegative: tuple[str, ...] = ()

    def moment_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        raise NotImplementedError

    def step_size(self, count: float, group: dict[str, Any]) -> float:
        return 1.0

    def directions(self, grads, moments, counts, group, impl) -> tuple[list[Tensor], list[float]]:
        raise NotImplementedError

    def update(self, grads, moments, counts, group, impl, params=None):
        directions, factors = self.directions(grads, moments, counts, group, impl)
        if params is None:
            return directions, factors
        _decay_and_apply(params, directions, factors, group["lr"], group["weight_decay"])
        return None


class AdamRule(Rule):
    """Adam (``adam.py``); on the unprojected path bit-identical to ``torch.optim.AdamW``."""

    name = "adam"
    reprojectable = {"exp_avg": "first", "exp_avg_sq": "second"}
    nonnegative = ("exp_avg_sq",)

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape), "exp_avg_sq": tuple(shape)}

    def step_size(self, count, group):
        beta1, beta2 = group["betas"]
        return math.sqrt(1 - beta2**count) / (1 - beta1**count)

    def update(self, grads, moments, counts, group, impl, params=None):
        beta1, beta2 = group["betas"]
        return adam_(
            grads, [m["exp_avg"] for m in moments], [m["exp_avg_sq"] for m in moments], counts,
            beta1=beta1, beta2=beta2, eps=group["eps"], eps_mode=group["eps_mode"], params=params,
            lr=group["lr"], weight_decay=group["weight_decay"], impl=impl)


class LionRule(Rule):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2):
    ``D = sign(β₁M + (1−β₁)G)``; ``M ← β₂M + (1−β₂)G``; factor 1. One moment."""

    name = "lion"
    reprojectable = {"exp_avg": "first"}

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape)}

    def directions(self, grads, moments, counts, group, impl):
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


_CHUNK = 1 << 20  # elements per row chunk: temporaries stay small enough for the allocator to reuse


def _row_chunks(rows: int, cols: int):
    step = max(1, _CHUNK // max(cols, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


class AdafactorRule(Rule):
    """Adafactor (Shazeer & Stern 2018) as in ``transformers``' and galore-torch's ``Adafactor``
    with ``relative_step=False, scale_parameter=False`` (the settings GaLore's scripts and the HF
    Trainer use): β₂ₜ = 1 − t^decay_rate; the second moment of a matrix is kept as row and column
    means of G² + ε₁ (m + n numbers), of a vector in full; the update U = G/√V̂ (V̂ = r cᵀ / mean(r))
    is clipped to RMS ≤ ``clip_threshold``; with ``adafactor_beta1`` a first moment averages U.

    Differences from the references: they scale by lr before the first moment (so a changing lr
    enters the average); here the moment averages lr-free updates and lr is applied after, which is
    the same for a constant lr. Relative steps and parameter-scale updates need the parameter and
    are not offered (the rule never sees it on the projected path).

    U is never formed as a full m×n tensor for a matrix: the statistics and the clipping norm are
    reductions, and the update is applied in row chunks (an embedding's m×n temporaries would cost
    more than the whole Adam step on CPU).
    """

    name = "adafactor"
    nonnegative = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        moments = ({"exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}
                   if len(shape) >= 2 else {"exp_avg_sq": shape})
        if group["adafactor_beta1"] is not None:
            moments["exp_avg"] = shape
        return moments

    @staticmethod
    def _factors(g, m, beta2t, eps1):
        """Update the row/column statistics; return the row and column factors of 1/√V̂."""
        rows, cols = g.shape
        row, col = m["exp_avg_sq_row"], m["exp_avg_sq_col"]
        col_sq = torch.zeros_like(col)
        for a, b in _row_chunks(rows, cols):
            col_sq.add_(g[a:b].square().sum(dim=0))
        row_sq = torch.linalg.vector_norm(g, dim=-1).square_()
        row.mul_(beta2t).add_(row_sq.div_(cols).add_(eps1), alpha=1 - beta2t)
        col.mul_(beta2t).add_(col_sq.div_(rows).add_(eps1), alpha=1 - beta2t)
        return (row / row.mean()).rsqrt_(), col.rsqrt()

    @staticmethod
    def _rms(g, r, c):
        """RMS of g ⊙ r cᵀ without forming it: Σᵢ rᵢ² (gᵢ² · c²)."""
        total = g.new_zeros(())
        c2 = c * c
        for a, b in _row_chunks(*g.shape):
            total += ((g[a:b].square() @ c2) * r[a:b].square()).sum()
        return (total / g.numel()).sqrt().item()

    def _one(self, g, m, count, group, param=None):
        """(direction, factor) — or None after applying the update to ``param`` itself."""
        eps1, clip, beta1 = group["factored_eps"], group["clip_threshold"], group["adafactor_beta1"]
        count += 1
        beta2t = 1.0 - float(count.item()) ** group["decay_rate"]
        if "exp_avg_sq" in m:  # a vector: the second moment in full
            v = m["exp_avg_sq"]
            v.mul_(beta2t).addcmul_(g, g, value=1 - beta2t).add_(eps1 * (1 - beta2t))
            u = v.rsqrt().mul_(g)
            shrink = 1.0 / max(torch.linalg.vector_norm(u).item() / u.numel() ** 0.5 / clip, 1.0)
            if beta1 is None:
                return u, shrink
            m["exp_avg"].mul_(beta1).add_(u, alpha=(1 - beta1) * shrink)
            return m["exp_avg"], 1.0
        r, c = self._factors(g, m, beta2t, eps1)
        shrink = 1.0 / max(self._rms(g, r, c) / clip, 1.0)
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

    def directions(self, grads, moments, counts, group, impl):
        pairs = [self._one(g, m, c, group) for g, m, c in zip(grads, moments, counts)]
        return [d for d, _ in pairs], [f for _, f in pairs]

    def update(self, grads, moments, counts, group, impl, params=None):
        if params is None:
            return self.directions(grads, moments, counts, group, impl)
        lr, weight_decay = group["lr"], group["weight_decay"]
        for p, g, m, c in zip(params, grads, moments, counts):
            if weight_decay != 0:
                p.mul_(1 - lr * weight_decay)
            out = self._one(g, m, c, group, param=p)  # decay first, then the update (as AdamW)
            if out is not None:
                p.add_(out[0].to(p.dtype), alpha=-lr * out[1])
        return None


class NaturalRule(Rule):
    """Natural GaLore (Das, arXiv 2410.16029): precondition the low-rank gradient g by the inverse
    empirical Fisher of the last s updates, F = λI + H Hᵀ (H: the s most recent low-rank gradients,
    the current one included), via Woodbury —

        ĝ = g/λ − H (λ²I + λ HᵀH)⁻¹ Hᵀ g     (an s×s Cholesky solve; never a d×d matrix)

    — then run Adam on ĝ. State: Adam's moments plus the history (s × the update's shape), a ring
    buffer indexed by the moment step counter (so a moment reset also empties the history).
    """

    name = "natural"
    nonnegative = ("exp_avg_sq",)

    def moment_shapes(self, shape, group):
        shape = tuple(shape)
        return {"exp_avg": shape, "exp_avg_sq": shape, "history": (group["natural_history"],) + shape}

    def step_size(self, count, group):
        return ADAM.step_size(count, group)

    def update(self, grads, moments, counts, group, impl, params=None):
        if params is not None:
            raise AssertionError("the natural rule runs on projected updates only")
        damping = group["natural_damping"]
        natural = []
        for g, m, count in zip(grads, moments, counts):
            history = m["history"]
            s = history.shape[0]
            seen = int(count.item())  # steps already in the history (counts is incremented by Adam)
            history[seen % s].copy_(g)
            H = history[: min(seen + 1, s)].reshape(min(seen + 1, s), -1)
            flat = g.reshape(-1)
            # The s×s system in float64: HHᵀ spans many orders of magnitude when λ is small.
            system = (H @ H.t()).double().mul_(damping)
            system.diagonal().add_(damping * damping)
            rhs = (H @ flat).double().unsqueeze(1)
            y = torch.cholesky_solve(rhs, torch.linalg.cholesky(system)).to(g.dtype).squeeze(1)
            natural.append((flat / damping - H.t() @ y).reshape(g.shape))
        return ADAM.update(natural, moments, counts, group, impl)


ADAM = AdamRule()
RULES: dict[str, Rule] = {r.name: r for r in (ADAM, LionRule(), AdafactorRule(), NaturalRule())}


def plain_rule(name: str) -> str:
    """The rule for a matrix of a projected group that is not projected (1-D, or rank too large):
    the same rule without the projection — except the natural rule, whose history would then be
    s full-size copies of the gradient: Adam there."""
    return "adam" if name == "natural" else name
