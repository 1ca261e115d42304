"""Inner rules and their registry: ``register_rule(name, rule)`` adds one from anywhere.

| rule | file | moments |
|---|---|---|
| ``adam`` | ``adam.py`` (rule and kernels) | exp_avg, exp_avg_sq |
| ``lion`` | ``lion.py`` | exp_avg |
| ``adafactor`` | ``adafactor.py`` | exp_avg_sq_row/_col (or exp_avg_sq), exp_avg with beta1 |
| ``natural`` | ``natural.py`` (Woodbury, then Adam) | Adam's + history |
| ``adabelief`` | ``adabelief.py`` (RAdam rectification optional) | exp_avg, exp_avg_var |
| ``adan`` | ``adan.py`` | exp_avg, exp_avg_diff, exp_avg_sq, previous_grad |
| ``adam-mini`` | ``adam_mini.py`` (blocks: rows / heads / tensor) | exp_avg, one exp_avg_sq per block |
| ``sgd`` | ``sgd.py`` (torch.optim.SGD's heavy ball; the ZO recipes) | momentum_buffer when momentum > 0 |
| ``sgd-sai`` | ``sgd_sai.py`` | momentum_buffer, gsnr (one number) |
| ``sophia`` | ``sophia.py`` (SophiaG; reads ``hessian_grads``) | exp_avg, hessian |
| ``muon`` | ``muon.py`` (Newton–Schulz; matrices only) | momentum_buffer |
| ``colnorm`` | ``colnorm.py`` (SCALE's; matrices only) | exp_avg when momentum > 0 |
| ``cosmos`` | ``cosmos.py`` (eigen-subspace Adam + Newton–Schulz; matrices only) | exp_avg, exp_avg_sq (m×r), eigenbasis, eigen_gram |

The interface is in ``base.py``. A registered rule trains, checkpoints and resumes like these: its
moments are allocated, stored in low bits, planned and checked on load from ``moment_shapes``.
"""

from __future__ import annotations

import dataclasses

from ...userinput import did_you_mean
from .adabelief import AdaBeliefRule
from .adafactor import AdafactorRule
from .adam import ADAM, AdamRule
from .adam_mini import AdamMiniRule
from .adan import AdanRule
from .base import Rule, decay_, decay_factor
from .colnorm import ColumnNormRule
from .cosmos import CosmosRule
from .lion import LionRule
from .muon import MuonRule
from .natural import NaturalRule
from .sgd import SGDRule
from .sgd_sai import SGDSaIRule
from .sophia import SophiaRule

RULES: dict[str, Rule] = {}


def register_rule(name: str, rule: Rule | type[Rule]) -> None:
    """Make ``rule`` (an instance, or a class with a no-argument constructor) available to every
    param group as ``rule=name``. Its ``Hyper`` dataclass fields become the group keys it reads."""
    if isinstance(rule, type):
        rule = rule()
    if not isinstance(rule, Rule):
        raise TypeError(f"a rule must be a slimtrain.optim.Rule, got {type(rule).__name__}")
    if not name or name != name.strip() or name in RULES:
        raise ValueError(f"rule name {name!r} is empty or already registered")
    if not dataclasses.is_dataclass(rule.Hyper):
        raise TypeError(f"rule {name!r}: Hyper must be a dataclass of its hyperparameters")
    if rule.unprojected is not None and rule.unprojected not in RULES:
        raise ValueError(f"rule {name!r}: unprojected={rule.unprojected!r} is not a registered rule")
    rule.name = name
    RULES[name] = rule


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}.{did_you_mean(str(name), RULES)} Rules: "
                         f"{', '.join(RULES)}")
    return RULES[name]


def unprojected_rule(name: str) -> str:
    """The rule a parameter of a ``name`` group runs when it is not projected."""
    return get_rule(name).unprojected or name


for _rule in (ADAM, LionRule(), AdafactorRule(), NaturalRule(), AdaBeliefRule(), AdanRule(),
              AdamMiniRule(), SGDRule(), SGDSaIRule(), SophiaRule(), MuonRule(),
              ColumnNormRule(), CosmosRule()):
    register_rule(_rule.name, _rule)

__all__ = ["ADAM", "RULES", "AdamRule", "Rule", "decay_", "decay_factor", "get_rule",
           "register_rule", "unprojected_rule"]
