"""SPAM (Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR
2025) and Stable-SPAM (Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
Adam", arXiv 2502.17055): Adam with the spike stages.

| part | where |
|---|---|
| rule: Adam | ``rules/adam.py`` |
| momentum reset, cosine warm-up, spike clipping, AdaClip, AdaGN | ``stages.py`` (every recipe takes them) |

Their options are the pipeline's stage keys; pytorch-optimizer 4.1 spells them differently:
SPAM's ``update_proj_gap`` is ``reset_every``, ``warmup_epoch`` ``reset_warmup``, ``threshold``
``spike_threshold``, ``grad_accu_steps`` ``spike_after``; Stable-SPAM's ``update_proj_gap`` is
``reset_every`` (with ``reset_count``), ``theta`` ``clip_decay``, ``(gamma1, gamma2)``
``norm_decays``. (``update_proj_gap`` is GaLore's ``refresh_every`` here.) Not offered: SPAM's
random sparse masks (``density``), Stable-SPAM's cosine decay of β₁ (``t_max``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adam import AdamHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class SPAMConfig(Runtime, Subspace, OptionalProjection, AdamHyper, Base):
    lr: float = like(Base, "lr", 1e-3)
    eps: float = like(AdamHyper, "eps", 1e-6)
    eps_mode: str = like(AdamHyper, "eps_mode", "hf")
    reset_every: int | None = like(Runtime, "reset_every", 500)
    reset_warmup: int = like(Runtime, "reset_warmup", 150)
    spike_threshold: float | None = like(Runtime, "spike_threshold", 5000.0)
    spike_after: int = like(Runtime, "spike_after", 20)


class SPAM(RuleRecipe):
    r"""SPAM with the authors' defaults (lr 1e-3, eps 1e-6 added to √V before bias correction,
    ΔT 500, warm-up 150, θ 5000, 20 steps before clipping): every ΔT steps M and V restart from
    zero (the bias correction does not) and the update is warmed up again over 150 steps by a
    cosine; where ``G² > θ·V``, G is clipped to ``sign(G)·√(θ·V)``. State: AdamW's."""

    Config = SPAMConfig
    rule = "adam"
    state_formula = "2·numel moments (parameter dtype) + two fp32 counters per parameter"


@dataclass
class StableSPAMConfig(Runtime, Subspace, OptionalProjection, AdamHyper, Base):
    lr: float = like(Base, "lr", 1e-3)
    reset_every: int | None = like(Runtime, "reset_every", 1000)
    reset_count: bool = like(Runtime, "reset_count", True)
    clip_decay: float | None = like(Runtime, "clip_decay", 0.999)
    norm_decays: tuple | None = like(Runtime, "norm_decays", (0.7, 0.9))


class StableSPAM(RuleRecipe):
    r"""Stable-SPAM with the authors' defaults (lr 1e-3, eps 1e-8, γ₁ 0.7, γ₂ 0.9, θ 0.999, reset
    every 1000 steps): AdaClip bounds |G| by the bias-corrected running max of max|G|; AdaGN
    rescales G to the running mean of ‖G‖ over its running RMS; Adam; every 1000 steps M, V and
    Adam's step count restart. AdaGN's ``norm_eps`` is its own option (the authors' code uses
    Adam's eps; both default to 1e-8). State: AdamW's + three numbers per parameter."""

    Config = StableSPAMConfig
    rule = "adam"
    state_formula = "2·numel moments + 3 scalars (parameter dtype) + two fp32 counters per parameter"
