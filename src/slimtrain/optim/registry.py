"""The recipe registry: ``create(name, model_or_params, **kw)``, ``available()``, ``recipe(name)``.

A registered factory is usually a recipe class (``recipes/``), whose ``Config`` says what it
accepts; any callable ``(model_or_params, **kw) → torch.optim.Optimizer`` may be registered too
(its options are then unknown to the CLI's checks and pass through as given)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..userinput import did_you_mean
from .config import Option, options_of
from .recipes import (APOLLO, COSMOS, FRUGAL, LISA, SCALE, SPAM, OwLore, AdaBelief, Adafactor,
                      AdamMini, AdamW, AdamW4bit, AdamW8bit, Adan, APOLLOMini, Fira,
                      GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, GaLoreLion, GradNormLoRP,
                      Lion, Muon, NaturalGaLore, QGaLore, SGDSaI, Sophia, StableSPAM)
from .zo import RECIPES as ZO_RECIPES


@dataclass(frozen=True)
class Recipe:
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    summary: str

    @property
    def state_formula(self) -> str:
        return getattr(self.factory, "state_formula", "")

    @property
    def config(self) -> type | None:
        """The recipe's ``Config`` dataclass, or None for a factory that declares none."""
        return getattr(self.factory, "Config", None)

    def options(self) -> list[Option] | None:
        """Every argument with its default and help text (None: not declared)."""
        return None if self.config is None else options_of(self.config)

    def default(self, name: str, fallback=None):
        """The default of option ``name`` (``fallback`` when the recipe has no such option)."""
        return next((o.default for o in self.options() or () if o.name == name), fallback)

    @property
    def zeroth_order(self) -> bool:
        """Trains from forward passes only (``optim/zo/``: ``step(closure)``, no gradients)."""
        return bool(getattr(self.factory, "zeroth_order", False))

    def accepts(self, name: str) -> bool:
        options = self.options()
        return options is None or any(o.name == name for o in options)


_RECIPES: dict[str, Recipe] = {}


def register(name: str, factory: Callable[..., torch.optim.Optimizer], summary: str) -> None:
    """Add a recipe under a kebab-case name (``galore-adamw``)."""
    if name != name.lower() or "_" in name or " " in name:
        raise ValueError(f"recipe names are kebab-case, got {name!r}")
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered")
    _RECIPES[name] = Recipe(name, factory, summary)


KINDS = ("all", "gradient", "zeroth-order")


def available(kind: str = "all") -> list[str]:
    """Registered names: ``"gradient"`` those that step on ``.grad`` after a backward pass,
    ``"zeroth-order"`` those that step on forward passes of a closure, ``"all"`` both."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return sorted(n for n, r in _RECIPES.items()
                  if kind == "all" or r.zeroth_order == (kind == "zeroth-order"))


def recipe(name: str) -> Recipe:
    key = name.strip().lower().replace("_", "-")
    if key not in _RECIPES:
        raise ValueError(f"unknown optimizer {name!r}.{did_you_mean(key, _RECIPES)} Available: "
                         f"{', '.join(available())}")
    return _RECIPES[key]


def create(name: str, model_or_params, **kwargs) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` (kebab case, e.g. ``"galore-adamw"``)."""
    return recipe(name).factory(model_or_params, **kwargs)


register("adamw", AdamW, "AdamW through slimtrain's pipeline (equals torch.optim.AdamW)")
register("galore-adamw", GaLoreAdamW, "GaLore: Adam in a low-rank gradient subspace (Zhao et al. 2024)")
register("adamw8bit", AdamW8bit, "AdamW with 8-bit block-wise quantized moments (Dettmers et al. 2022)")
register("adamw4bit", AdamW4bit, "AdamW with 4-bit block-wise quantized moments (Li et al. 2023)")
register("galore-adamw8bit", GaLoreAdamW8bit, "GaLore with 8-bit Adam moments (Zhao et al. 2024)")
register("apollo", APOLLO, "APOLLO: channel-wise scaling of G from Adam on a random sketch (Zhu et al. 2025)")
register("apollo-mini", APOLLOMini, "APOLLO-Mini: rank-1 sketch, one tensor-wise scale (Zhu et al. 2025)")
register("fira", Fira, "Fira: GaLore + norm-scaled full-rank residual + limiter (Chen et al. 2024)")
register("frugal", FRUGAL, "FRUGAL: Adam in a subspace + state-free signSGD outside it (Zmushko et al. 2025)")
register("q-galore", QGaLore, "Q-GaLore: packed 4-bit projector, lazy refresh (Zhang et al. 2024)")
register("natural-galore", NaturalGaLore, "Natural GaLore: Woodbury natural gradient, then Adam (Das 2024)")
register("galore-adafactor", GaLoreAdafactor, "GaLore with Adafactor's factored second moment")
register("galore-lion", GaLoreLion, "GaLore with Lion (sign of interpolated momentum)")
register("lion", Lion, "Lion: sign of interpolated momentum, one moment (Chen et al. 2023)")
register("adafactor", Adafactor, "Adafactor: factored second moment, m+n numbers per matrix (Shazeer & Stern 2018)")
register("adabelief", AdaBelief, "AdaBelief: Adam with the variance of G around M (Zhuang et al. 2020)")
register("adan", Adan, "Adan: adaptive Nesterov momentum from gradient differences (Xie et al. 2024)")
register("adam-mini", AdamMini, "Adam-mini: one second moment per head / neuron / token (Zhang et al. 2025)")
register("sgd-sai", SGDSaI, "SGD-SaI: SGD momentum, lr scaled once by the first gradients' SNR (Xu et al. 2024)")
register("sophia", Sophia, "SophiaG: clipped, curvature-preconditioned sign momentum (Liu et al. 2024)")
register("spam", SPAM, "SPAM: Adam with momentum resets and spike clipping (Huang et al. 2025)")
register("muon", Muon, "Muon: orthogonalised Nesterov momentum on the matrices, AdamW on the "
         "rest (Jordan et al. 2024)")
register("scale", SCALE, "SCALE: column-normalised SGD, momentum on the last layer only "
         "(Glentis et al. 2025)")
register("cosmos", COSMOS, "COSMOS: Adam in the leading eigen-subspace, Newton-Schulz on the "
         "rest (Liu et al. 2025)")
register("gradnorm-lorp", GradNormLoRP, "GradNormLoRP: weight-normalised matrices, GaLore on the "
         "direction (Huang et al. 2025)")
register("lisa", LISA, "LISA: AdamW on γ sampled blocks at a time, plus embeddings and head "
         "(Pan et al. 2024)")
register("owlore", OwLore, "OwLore: blocks sampled by outlier ratio, GaLore on them "
         "(Li et al. 2024)")
register("stable-spam", StableSPAM, "Stable-SPAM: Adam with adaptive spike clipping and norm scaling (Huang et al. 2025)")

_ZO_SUMMARIES = {
    "mezo": "MeZO: zeroth-order SGD, two forward passes a step, no gradient (Malladi et al. 2023)",
    "zo-sgd-sign": "ZO-SGD-Sign: the sign of MeZO's estimate (ZO-Bench, Zhang et al. 2024)",
    "zo-sgd-momentum": "ZO-SGD-MMT: heavy-ball momentum on MeZO's estimate (ZO-Bench)",
    "zo-sgd-conservative": "ZO-SGD-Cons: keeps the best of θ, θ ± lr·G (ZO-Bench)",
    "zo-adam": "ZO-Adam: Adam on MeZO's estimate, low-bit states optional (ZO-Bench)",
    "sparse-mezo": "Sparse MeZO: perturbs and updates the small-magnitude weights only (Liu et al. 2024)",
}
for _zo in ZO_RECIPES:
    register(_zo.name, _zo, _ZO_SUMMARIES[_zo.name])
