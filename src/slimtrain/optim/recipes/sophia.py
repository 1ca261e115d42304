"""SophiaG (Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", ICLR 2024).

| part | where |
|---|---|
| rule: clipped sign-preconditioned momentum, GNB curvature EMA from ``hessian_grads`` | ``rules/sophia.py`` |
| the estimate (labels sampled from the model, one extra backward every k steps) | ``train/sophia.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..rules.sophia import SophiaHyper
from .base import Base, Recipe, Runtime, like


@dataclass
class SophiaConfig(Runtime, SophiaHyper, Base):
    lr: float = like(Base, "lr", 1e-4)
    weight_decay: float = like(Base, "weight_decay", 0.1)
    hessian_every: int = option(10, "k: steps between curvature estimates (read by the trainer; "
                                "your own loop passes hessian_grads every k steps)", low=1,
                                integer=True)


class Sophia(Recipe):
    r"""SophiaG with the authors' defaults (lr 1e-4, betas (0.965, 0.99), ρ 0.04, weight decay
    0.1, bs 5120): ``W ← W·(1 − lr·λ) − lr·sign(M)·min(|M|/(ρ·bs·H + 1e-15), 1)``. H, the
    diagonal Gauss-Newton estimate, is updated from ``step(hessian_grads={param: Ĝ})`` — the
    gradients of the loss on labels sampled from the model's own logits, every k (10) steps:
    ``H ← β₂H + (1−β₂)Ĝ²``. Until the first estimate H = 0 and the step is lr·sign(M) (signSGD
    with momentum). Two moments, like AdamW. No ``rank=``: the estimate comes per parameter, in
    its own coordinates."""

    Config = SophiaConfig
    rule = "sophia"
    state_formula = "2·numel moments (parameter dtype) + one fp32 step counter per parameter"
