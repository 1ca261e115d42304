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
| lion | ``Lion`` | ``lion.py`` |
| adafactor | ``Adafactor`` | ``adafactor.py`` |
| adabelief | ``AdaBelief`` | ``adabelief.py`` |
| adan | ``Adan`` | ``adan.py`` |
| adam-mini | ``AdamMini`` | ``adam_mini.py`` |
| sgd-sai | ``SGDSaI`` | ``sgd_sai.py`` |
| sophia | ``Sophia`` | ``sophia.py`` |
| spam, stable-spam | ``SPAM``, ``StableSPAM`` | ``spam.py`` |
| muon | ``Muon`` | ``muon.py`` |
| scale | ``SCALE`` | ``scale.py`` |
| cosmos | ``COSMOS`` | ``cosmos.py`` |
| gradnorm-lorp | ``GradNormLoRP`` (weight norm: ``weight_norm.py``) | ``gradnorm_lorp.py`` |
| lisa, owlore | ``LISA``, ``OwLore`` (layer sampling: ``sampling.py``) | ``lisa.py`` |

Each file opens with a table of where its math lives; ``base.py`` holds the config blocks and the
recipe base classes, ``rest.py`` the rules of the parameters outside ``targets``.
"""

from .adabelief import AdaBelief
from .adafactor import Adafactor
from .adam_mini import AdamMini
from .adamw import AdamW, AdamW4bit, AdamW8bit
from .adan import Adan
from .apollo import APOLLO, APOLLOMini
from .base import ProjectedRecipe, Recipe, RuleRecipe
from .cosmos import COSMOS
from .fira import Fira
from .frugal import FRUGAL
from .gradnorm_lorp import GradNormLoRP
from .galore import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, GaLoreLion
from .lion import Lion
from .lisa import LISA, OwLore
from .muon import Muon
from .natural_galore import NaturalGaLore
from .q_galore import QGaLore
from .scale import SCALE
from .rest import register_rest, rest_keys, rest_names
from .sgd_sai import SGDSaI
from .sophia import Sophia
from .spam import SPAM, StableSPAM

__all__ = ["APOLLO", "COSMOS", "FRUGAL", "GradNormLoRP", "LISA", "OwLore", "SCALE", "SPAM", "APOLLOMini", "AdaBelief", "Adafactor", "AdamMini",
           "AdamW", "AdamW4bit", "AdamW8bit", "Adan", "Fira", "Lion", "Muon", "RuleRecipe", "SGDSaI",
           "Sophia", "StableSPAM",
           "GaLoreAdafactor", "GaLoreAdamW", "GaLoreAdamW8bit", "GaLoreLion", "NaturalGaLore",
           "ProjectedRecipe", "QGaLore", "Recipe", "register_rest", "rest_keys", "rest_names"]
