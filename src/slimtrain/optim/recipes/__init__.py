"""Recipes: named configurations of the pipeline with their authors' defaults, one file per paper.

| recipe | class | file |
|---|---|---|
| adamw, adamw8bit, adamw4bit | ``AdamW``, ``AdamW8bit``, ``AdamW4bit`` | ``adamw.py`` |
| galore-adamw, galore-adamw8bit, galore-adafactor, galore-lion | ``GaLoreAdamW``, ``GaLoreAdamW8bit``, ``GaLoreAdafactor``, ``GaLoreLion`` | ``galore.py`` |
| apollo, apollo-mini | ``APOLLO``, ``APOLLOMini`` | ``apollo.py`` |
| fira | ``Fira`` | ``fira.py`` |
| frugal | ``FRUGAL`` | ``frugal.py`` |
| q-galore | ``QGaLore`` | ``q_galore.py`` |
| natural-galore | ``NaturalGaLore`` | ``natural_galore.py`` |

Each file opens with a table of where its math lives; ``base.py`` holds the config blocks and the
recipe base classes, ``rest.py`` the rules of the parameters outside ``targets``.
"""

from .adamw import AdamW, AdamW4bit, AdamW8bit
from .apollo import APOLLO, APOLLOMini
from .base import ProjectedRecipe, Recipe
from .fira import Fira
from .frugal import FRUGAL
from .galore import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, GaLoreLion
from .natural_galore import NaturalGaLore
from .q_galore import QGaLore
from .rest import register_rest, rest_keys, rest_names

__all__ = ["APOLLO", "FRUGAL", "APOLLOMini", "AdamW", "AdamW4bit", "AdamW8bit", "Fira",
           "GaLoreAdafactor", "GaLoreAdamW", "GaLoreAdamW8bit", "GaLoreLion", "NaturalGaLore",
           "ProjectedRecipe", "QGaLore", "Recipe", "register_rest", "rest_keys", "rest_names"]
