"""SGD-SaI (Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All You Need",
arXiv 2412.11768).

| part | where |
|---|---|
| rule: SNR of the first gradient fixes a per-tensor lr scale; SGD momentum | ``rules/sgd_sai.py`` |
| optional projection (``rank=``) | ``recipes/base.RuleRecipe`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.sgd_sai import SGDSaIHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class SGDSaIConfig(Runtime, Subspace, OptionalProjection, SGDSaIHyper, Base):
    lr: float = like(Base, "lr", 1e-2)
    weight_decay: float = like(Base, "weight_decay", 1e-2)


class SGDSaI(RuleRecipe):
    r"""SGD-SaI with the authors' defaults (sgd-sai 1.0.3: lr 1e-2, momentum 0.9, eps 1e-8,
    weight decay 1e-2): at each tensor's first step ``s = ‖G‖/(std(G) + ε)``, kept for good;
    ``B ← βB + (1−β)G`` (B = G at first); ``W ← W·(1 − lr·λ) − lr·s·B``. State: one buffer and
    one number per tensor — half of AdamW's.

    pytorch-optimizer's ``SGDSaI`` differs from the authors' package twice: its buffer starts
    at zero (first step (1−β)G), and 1-D tensors get ``s = ‖G‖``; this follows the authors."""

    Config = SGDSaIConfig
    rule = "sgd-sai"
    state_formula = "numel momentum buffer + one scale + one fp32 step counter per parameter"
