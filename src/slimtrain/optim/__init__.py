"""slimtrain.optim: memory-efficient optimizers built from one composable pipeline.

Use a recipe class (``AdamW``, ``GaLoreAdamW``, ``APOLLO``, ``Fira``, …) or the registry::

    opt = slimtrain.optim.create("galore-adamw", model, rank=128)
    slimtrain.optim.available()   # ['adamw', 'galore-adamw', ...]
    fused = slimtrain.optim.fuse_backward(model, opt)   # layer-wise updates (layerwise/)

The house: ``optimizer.py`` (the pipeline optimizer), ``groups.py`` (group keys, plans),
``targets.py`` (groups from names), ``state_io.py`` (state bytes, checkpoints), ``config.py``
(declared options), ``registry.py``; ``rules/`` (inner rules, ``register_rule``), ``subspace/``
(selectors, refresh, bases, back-maps), ``lowbit/`` (low-bit states), ``layerwise/`` (fused
backward), ``recipes/`` (one file per paper).
"""

from .config import Hyper, option
from .groups import GROUP_DEFAULTS
from .layerwise import FusedBackward, fuse_backward
from .optimizer import STATE_FORMAT, PipelineOptimizer
from .recipes import (APOLLO, COSMOS, FRUGAL, LISA, SCALE, SPAM, OwLore, AdaBelief, Adafactor,
                      AdamMini, AdamW, AdamW4bit, AdamW8bit, Adan, APOLLOMini, Fira,
                      GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, GaLoreLion, GradNormLoRP,
                      Lion, Muon, NaturalGaLore, ProjectedRecipe, QGaLore, Recipe, RuleRecipe,
                      SGDSaI, Sophia, StableSPAM, register_rest, rest_names)
from .registry import available, create, recipe, register
from .rules import Rule, get_rule, register_rule
from .targets import DEFAULT_TARGETS

__all__ = [
    "AdamW", "AdamW4bit", "AdamW8bit", "GaLoreAdamW", "GaLoreAdamW8bit",
    "APOLLO", "APOLLOMini", "Fira", "FRUGAL", "QGaLore", "NaturalGaLore",
    "GaLoreAdafactor", "GaLoreLion", "Lion", "Adafactor", "AdaBelief", "Adan", "AdamMini",
    "SGDSaI", "Sophia", "SPAM", "StableSPAM", "Muon", "SCALE", "LISA", "OwLore", "COSMOS",
    "GradNormLoRP", "PipelineOptimizer", "Recipe", "ProjectedRecipe",
    "RuleRecipe",
    "register_rest", "rest_names", "available", "create", "recipe", "register", "Rule", "Hyper",
    "option", "register_rule", "get_rule", "fuse_backward", "FusedBackward", "DEFAULT_TARGETS",
    "GROUP_DEFAULTS", "STATE_FORMAT",
]
