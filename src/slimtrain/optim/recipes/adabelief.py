"""AdaBelief (Zhuang et al., NeurIPS 2020).

| part | where |
|---|---|
| rule: belief S = EMA((G − M)²) + ε, RAdam rectification | ``rules/adabelief.py`` |
| optional projection (``rank=``) | ``recipes/base.RuleRecipe`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adabelief import AdaBeliefHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class AdaBeliefConfig(Runtime, Subspace, OptionalProjection, AdaBeliefHyper, Base):
    lr: float = like(Base, "lr", 1e-3)


class AdaBelief(RuleRecipe):
    r"""AdaBelief with adabelief-pytorch 0.2.1's defaults (lr 1e-3, eps 1e-16, decoupled weight
    decay, ``rectify=True``): Adam with the belief ``S ← β₂S + (1−β₂)(G−M)² + ε`` in place of V.
    Two moments, like AdamW."""

    Config = AdaBeliefConfig
    rule = "adabelief"
    state_formula = "2·numel moments (parameter dtype) + one fp32 step counter per parameter"
