"""Spike stages: what SPAM and Stable-SPAM do to the update before the inner rule sees it.

They run in ``PipelineOptimizer._run_rule`` on the update the rule receives (the gradient, or
R = PᵀG on the projected path), so every rule, projection, state precision, the layer-wise mode
and FSDP2 shards take them. Each is off unless its group key is set:

* ``reset_every`` = ΔT — every ΔT steps the rule's moments are zeroed (SPAM, Stable-SPAM);
  ``reset_count`` restarts the rule's step count too (Stable-SPAM: its bias correction starts
  again), ``reset_warmup`` = T scales the update by SPAM's cosine warm-up for T steps after each
  reset: ``1 − 0.99·(1 + cos(π(k+1)/(T+1)))/2`` at the k-th step after it.
* ``spike_threshold`` = θ — SPAM's spike-aware clipping: where ``g² > θ·V`` (V the rule's second
  moment before this step) ``g ← sign(g)·√(θ·V)``; from step ``spike_after`` on, and not in the
  first ``spike_after`` steps after a reset (V is young then).
* ``clip_decay`` = γ₃ — Stable-SPAM's AdaClip: ``m ← γ₃m + (1−γ₃)·max|g|``, ``m̂ = m/(1−γ₃ᵗ)``;
  where ``|g| > m̂``: ``g ← g/max|g| · m̂``.
* ``norm_decays`` = (γ₁, γ₂) — Stable-SPAM's AdaGN: with ``n = ‖g‖``, ``a ← γ₁a + (1−γ₁)n``,
  ``b ← γ₂b + (1−γ₂)n²``; ``g ← g/n · (a/(1−γ₁ᵗ)) / (√(b/(1−γ₂ᵗ)) + norm_eps)``.

t counts the parameter's steps (``stage_step``, never reset). Their scalars (``clip_max``,
``norm_avg``, ``norm_sq_avg``) are moments of the parameter like the rule's: allocated, stored,
planned, checked and sharded (replicated) by the same code. Maxima and norms of a shard span the
ranks. Stable-SPAM's cosine decay of β₁ and γ₁ (``t_max``) is not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

COUNTER = "stage_step"
_SCALARS = {"clip_decay": ("clip_max",), "norm_decays": ("norm_avg", "norm_sq_avg")}
KEYS = ("reset_every", "reset_warmup", "reset_count", "spike_threshold", "spike_after",
        "clip_decay", "norm_decays", "norm_eps")


def active(group: dict[str, Any]) -> bool:
    return (group.get("reset_every") is not None or group.get("spike_threshold") is not None
            or group.get("clip_decay") is not None or group.get("norm_decays") is not None)


def moment_shapes(group: dict[str, Any]) -> dict[str, tuple]:
    """The stages' own scalars (moments of shape ())."""
    return {k: () for key, names in _SCALARS.items() if group.get(key) is not None for k in names}


def check(group: dict[str, Any], rule) -> None:
    if group.get("spike_threshold") is not None and "exp_avg_sq" not in rule.moment_shapes((2, 2), group):
        raise ValueError(f"spike_threshold clips against the rule's second moment, and rule "
                         f"{group['rule']!r} keeps none for matrices; use clip_decay (Stable-SPAM's "
                         "adaptive clipping) instead")
    if group.get("reset_warmup") and group.get("reset_every") is None:
        raise ValueError("reset_warmup warms the update up after each moment reset: set "
                         "reset_every too (or reset_warmup=0)")
    if group.get("reset_count") and group.get("reset_every") is None:
        raise ValueError("reset_count restarts the step count at each moment reset: set "
                         "reset_every too")


def warmup_scale(group: dict[str, Any], t: int) -> float:
    """SPAM's cosine warm-up factor of the update at step t (1-based)."""
    every, T = group["reset_every"], group["reset_warmup"]
    if not every or not T or t < every:
        return 1.0
    k = t % every
    return 1.0 if k >= T else 1.0 - 0.99 * (1 + math.cos(math.pi * (k + 1) / (T + 1))) / 2


def _read(state, lay, key) -> Tensor:
    from .lowbit import storage as lowbit  # lowbit's layout reads this module

    storage, shape = lay[key]
    return lowbit.load_moment(state, key, storage, shape, dtype=None if not storage.quantized
                              else torch.float32)


def _write(state, lay, key, value: Tensor) -> None:
    from .lowbit import storage as lowbit

    lowbit.store_moment_(state, key, lay[key][0], value)


def _norm(t: Tensor, part) -> Tensor:
    if part is None:
        return torch.linalg.vector_norm(t)
    return part.sum_(t.square().sum()).sqrt()


def apply(group: dict[str, Any], rule_moments: tuple[str, ...], grad: Tensor, state: dict,
          lay, count_key: str, part=None) -> tuple[Tensor, float]:
    """One tensor's update through the active stages: (the update the rule is to see, the
    warm-up factor of its step). Resets the rule's moments (and count) when one is due."""
    counter = state[COUNTER]
    counter += 1
    t = int(counter.item())
    every = group["reset_every"]
    if every is not None and t % every == 0:
        for key in rule_moments:
            for tensor in lay[key][0].parts(state, key):
                tensor.zero_()
        if group["reset_count"]:
            state[count_key].zero_()
    owned = False  # whether grad is our own copy yet (the user's gradient is never written)
    threshold, after = group["spike_threshold"], group["spike_after"]
    if threshold is not None and t >= after and (every is None or t % every >= after):
        # g² > θV ⇔ |g| > √(θV): the clip sign(g)·√(θV) is a clamp to ±√(θV)
        limit = _read(state, lay, "exp_avg_sq").to(grad.dtype).mul(threshold).sqrt_()
        grad = torch.minimum(grad, limit)
        torch.maximum(grad, limit.neg_(), out=grad)
        owned = True
    if group["clip_decay"] is not None:
        decay = group["clip_decay"]
        size = grad.abs()
        top = size.max()
        if part is not None:
            top = part.max_(top)
        m = _read(state, lay, "clip_max")
        m.lerp_(top.to(m.dtype), 1 - decay)
        _write(state, lay, "clip_max", m)
        bound = m.to(grad.dtype) / (1 - decay ** t)
        # where |g| > bound: g·bound/max|g|; elsewhere g (factor 1 + 0·(…) = 1 exactly)
        ratio = torch.where(top > 0, bound / top, torch.ones_like(bound))  # a zero gradient stays
        factor = size.gt_(bound).mul_(ratio - 1).add_(1)
        grad = factor.mul_(grad)
        owned = True
    if group["norm_decays"] is not None:
        g1, g2 = group["norm_decays"]
        n = _norm(grad, part)
        if n.item() > 0:
            a, b = _read(state, lay, "norm_avg"), _read(state, lay, "norm_sq_avg")
            a.lerp_(n.to(a.dtype), 1 - g1)
            b.lerp_(n.square().to(b.dtype), 1 - g2)
            _write(state, lay, "norm_avg", a)
            _write(state, lay, "norm_sq_avg", b)
            target = (a / (1 - g1 ** t)) / ((b / (1 - g2 ** t)).sqrt() + group["norm_eps"])
            scale = (target / n).to(grad.dtype)
            grad = grad.mul_(scale) if owned else grad * scale
    return grad, warmup_scale(group, t)
