"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023).

| part | where |
|---|---|
| rule: sign of the interpolated momentum | ``rules/lion.py`` |
| optional projection (``rank=``: GaLore-Lion) | ``recipes/base.RuleRecipe`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.lion import LionHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class LionConfig(Runtime, Subspace, OptionalProjection, LionHyper, Base):
    lr: float = like(Base, "lr", 1e-4)


class Lion(RuleRecipe):
    r"""Lion, with lion-pytorch's defaults (lr 1e-4, betas (0.9, 0.99), weight decay 0):
    ``W ← W·(1 − lr·λ) − lr·sign(β₁M + (1−β₁)G)``; ``M ← β₂M + (1−β₂)G``. One moment — half of
    AdamW's state. Its lr is typically 3–10× below AdamW's and its λ as much above."""

    Config = LionConfig
    rule = "lion"
    state_formula = "numel moment (parameter dtype) + one fp32 step counter per parameter"
