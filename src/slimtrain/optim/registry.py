"""The recipe registry: ``create(name, model_or_params, **kw)`` and ``available()``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .family import APOLLO, FRUGAL, APOLLOMini, Fira
from .family_galore import GaLoreAdafactor, GaLoreLion, NaturalGaLore, QGaLore
from .recipes import AdamW, AdamW4bit, AdamW8bit, GaLoreAdamW, GaLoreAdamW8bit


@dataclass(frozen=True)
class Recipe:
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    summary: str

    @property
    def state_formula(self) -> str:
        return getattr(self.factory, "state_formula", "")


_RECIPES: dict[str, Recipe] = {}


def register(name: str, factory: Callable[..., torch.optim.Optimizer], summary: str) -> None:
    """Add a recipe under a kebab-case name (``galore-adamw``)."""
    if name != name.lower() or "_" in name or " " in name:
        raise ValueError(f"recipe names are kebab-case, got {name!r}")
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered")
    _RECIPES[name] = Recipe(name, factory, summary)


def available() -> list[str]:
    return sorted(_RECIPES)


def recipe(name: str) -> Recipe:
    key = name.strip().lower().replace("_", "-")
    if key not in _RECIPES:
        close = difflib.get_close_matches(key, _RECIPES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}.{hint} Available: {', '.join(available())}")
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
