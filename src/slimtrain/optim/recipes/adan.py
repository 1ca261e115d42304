"""Adan (Xie et al., TPAMI 2024).

| part | where |
|---|---|
| rule: Nesterov momentum from the gradient difference, proximal weight decay | ``rules/adan.py`` |
| optional projection (``rank=``) | ``recipes/base.RuleRecipe`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adan import AdanHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class AdanConfig(Runtime, Subspace, OptionalProjection, AdanHyper, Base):
    lr: float = like(Base, "lr", 1e-3)


class Adan(RuleRecipe):
    r"""Adan with the authors' defaults (lr 1e-3, betas (0.98, 0.92, 0.99), eps 1e-8, proximal
    weight decay): ``M``, ``D`` (of G − G_prev) and ``N`` (of (G + β₂Δ)²) averaged;
    ``W ← (W − lr·(M̂ + β₂D̂)/(√N̂ + ε)) / (1 + lr·λ)``. Four tensors per parameter — twice AdamW's
    state: Adan trades memory for fewer steps."""

    Config = AdanConfig
    rule = "adan"
    state_formula = "4·numel (three moments + the previous gradient) + one fp32 step counter"
