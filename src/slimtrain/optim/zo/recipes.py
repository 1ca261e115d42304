"""The zeroth-order recipes: MeZO (ZO-SGD), the ZO-Bench variants and Sparse MeZO.

| recipe | update | state | source |
|---|---|---|---|
| ``mezo`` | θ ← θ − lr·(G + λθ) | none | Malladi et al. 2023, ``large_models/trainer.py`` |
| ``zo-sgd-sign`` | θ ← θ − lr·(sign G + λθ) | none | ZO-Bench (Zhang et al. 2024) |
| ``zo-sgd-momentum`` | SGD heavy ball on G (``rules/sgd.py``) | one buffer | ZO-Bench's ZO-SGD-MMT |
| ``zo-sgd-conservative`` | the best of θ, θ ∓ lr·G by one more forward each | none | ZO-Bench's ZO-SGD-Cons |
| ``zo-adam`` | Adam on G (``rules/adam.py``, low-bit with ``state_bits``) | Adam's | ZO-Bench's ZO-Adam |
| ``sparse-mezo`` | MeZO on the small-magnitude weights only | none (a bit mask during a step) | Liu et al. 2024 |

G is the averaged estimate (1/q)·Σ ĝᵢzᵢ (``optimizer.py``). Defaults are the MeZO paper's (ε
1e-3, one query, two-sided, constant lr 1e-6 for full fine-tuning, weight decay 0 and never on
biases and norms).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..groups import PipelineOptions
from ..recipes.base import Base, like
from ..rules.adam import AdamHyper
from ..rules.sgd import SGDHyper
from .optimizer import ZOOptimizer


@dataclass
class Perturbation:
    eps: float = option(1e-3, "perturbation scale ε of θ ± εz (MeZO: 1e-3)", low=0, open_low=True)
    q: int = option(1, "queries per step: random directions whose estimates are averaged (each "
                    "costs 2 forward passes, or 1 one-sided)", low=1, integer=True)
    sided: str = option("two", "two: ĝ = (L(θ+εz) − L(θ−εz))/2ε; one: (L(θ+εz) − L(θ))/ε, one "
                        "forward at θ a step plus one per query", choices=("two", "one"))
    seed: int = option(0, "seed of the directions: query i of step t draws z from mix(seed, t, i) "
                       "and the parameter's name", low=0, integer=True)


@dataclass
class ZOConfig(Base, Perturbation):
    lr: float = like(Base, "lr", 1e-6)
    weight_decay: float = like(Base, "weight_decay", 0.0)
    no_decay: object = like(Base, "no_decay", ("bias", "norm"))


@dataclass
class ZOState:
    """How the stateful variants keep their state (the gradient pipeline's options)."""

    state_bits: int | str | None = like(PipelineOptions, "state_bits")
    quantize_min_numel: int = like(PipelineOptions, "quantize_min_numel")
    stochastic_rounding: bool = like(PipelineOptions, "stochastic_rounding")
    foreach: bool = like(PipelineOptions, "foreach")


class MeZO(ZOOptimizer):
    name = "mezo"
    Config = ZOConfig
    state_formula = "0 (seeds and ĝ logged: 16·q bytes a step)"


class ZOSGDSign(ZOOptimizer):
    name = "zo-sgd-sign"
    sign = True
    Config = ZOConfig
    converging_lr = (1e-8, 1e-5)  # each element moves by lr a step, as Adam-normalised updates
    state_formula = "0"


@dataclass
class ZOConservativeConfig(ZOConfig):
    """ZO-SGD-Cons: one forward at θ and one after each trial move, so 2q + 3 forwards a step."""


class ZOSGDConservative(ZOOptimizer):
    name = "zo-sgd-conservative"
    conservative = True
    Config = ZOConservativeConfig
    state_formula = "0"


@dataclass
class ZOMomentumConfig(ZOConfig, ZOState):
    momentum: float = like(SGDHyper, "momentum", 0.9)


class ZOSGDMomentum(ZOOptimizer):
    name = "zo-sgd-momentum"
    stateful = True
    Config = ZOMomentumConfig
    state_formula = "1 buffer (state_bits: 8 or 4 bits)"


@dataclass
class ZOAdamConfig(ZOConfig, ZOState):
    lr: float = like(Base, "lr", 1e-5)
    betas: tuple = like(AdamHyper, "betas")
    adam_eps: float = option(1e-8, "Adam's ε added to √v (named adam_eps: eps is the perturbation)",
                             low=0)


class ZOAdam(ZOOptimizer):
    name = "zo-adam"
    rule = "adam"
    stateful = True
    Config = ZOAdamConfig
    converging_lr = (1e-7, 1e-4)  # Adam-normalised steps: an lr per element, as first-order Adam
    state_formula = "2 moments (state_bits: 8 or 4 bits)"


@dataclass
class SparseConfig(ZOConfig):
    sparsity: float = option(0.75, "share of each parameter's weights left out of perturbation and "
                             "update: those of largest |w| (the mask is recomputed every step from "
                             "the weights and held as bits for the step only)", low=0, high=1,
                             open_high=True)


class SparseMeZO(ZOOptimizer):
    name = "sparse-mezo"
    Config = SparseConfig
    state_formula = "0 (a 1-bit mask of the weights during a step)"


RECIPES = (MeZO, ZOSGDSign, ZOSGDMomentum, ZOSGDConservative, ZOAdam, SparseMeZO)
