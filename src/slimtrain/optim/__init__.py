"""slimtrain.optim: memory-efficient optimizers built from one composable pipeline.

Use a recipe class (``AdamW``, ``GaLoreAdamW``, ``APOLLO``, ``Fira``, …) or the registry::

    opt = slimtrain.optim.create("galore-adamw", model, rank=128)
    slimtrain.optim.available()   # ['adamw', 'galore-adamw', ...]
    fused = slimtrain.optim.fuse_backward(model, opt)   # layer-wise updates (fused_backward.py)
"""

from .core import GROUP_DEFAULTS, STATE_FORMAT, PipelineOptimizer
from .family import APOLLO, FRUGAL, APOLLOMini, Fira
from .fused_backward import FusedBackward, fuse_backward
from .family_galore import GaLoreAdafactor, GaLoreLion, NaturalGaLore, QGaLore
from .recipes import AdamW, AdamW4bit, AdamW8bit, GaLoreAdamW, GaLoreAdamW8bit
from .rest import register_rest, rest_names
from .registry import available, create, recipe, register
from .targets import DEFAULT_TARGETS

__all__ = [
    "AdamW", "AdamW4bit", "AdamW8bit", "GaLoreAdamW", "GaLoreAdamW8bit",
    "APOLLO", "APOLLOMini", "Fira", "FRUGAL", "QGaLore", "NaturalGaLore",
    "GaLoreAdafactor", "GaLoreLion", "PipelineOptimizer", "register_rest", "rest_names",
    "available", "create", "recipe", "register", "fuse_backward", "FusedBackward",
    "DEFAULT_TARGETS", "GROUP_DEFAULTS", "STATE_FORMAT",
]
