"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
ICML 2018).

| part | where |
|---|---|
| rule: factored second moment, update clipping, optional first moment | ``rules/adafactor.py`` |
| optional projection (``rank=``: GaLore-Adafactor's math) | ``recipes/base.RuleRecipe`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adafactor import AdafactorHyper
from .base import Base, OptionalProjection, RuleRecipe, Runtime, Subspace, like


@dataclass
class AdafactorConfig(Runtime, Subspace, OptionalProjection, AdafactorHyper, Base):
    lr: float = like(Base, "lr", 1e-3)


class Adafactor(RuleRecipe):
    r"""Adafactor as ``transformers.optimization.Adafactor(relative_step=False,
    scale_parameter=False, warmup_init=False)`` — the form the HF Trainer's ``optim="adafactor"``
    runs: β₂ₜ = 1 − t^decay_rate, a matrix's second moment kept as its row and column means
    (m + n numbers), the update clipped to RMS ≤ ``clip_threshold``, a first moment only with
    ``beta1``. Relative steps and parameter-scaled updates are not offered."""

    Config = AdafactorConfig
    rule = "adafactor"
    state_formula = ("m×n matrix: m + n factored moments; vector: numel; + numel with beta1; + one "
                     "fp32 step counter per parameter")
