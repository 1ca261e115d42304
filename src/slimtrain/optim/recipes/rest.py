"""Rules for the parameters outside ``targets`` (embeddings, LM head, norms, biases): ``rest=``.

At 60M parameters the embeddings and the head hold ~80% of GaLore's state, so this choice matters
as much as the rank. A rest rule is one registration — the group keys it sets::

    register_rest("adamw8bit", {"rule": "adam", "state_bits": 8})

Its hyperparameters are its rule's defaults unless the recipe's own rule is the same (or related:
Natural GaLore's Adam hyperparameters reach its AdamW rest), so a GaLore-Lion run never hands
Lion's betas to the AdamW of its embeddings; ``own_defaults`` sets others. A matrix-only recipe
rule (Muon-like) leaves its lr to the rest too: the rest trains at AdamW's own lr (1e-3).

The AdamW rest rules name their state precision: ``"adamw"`` keeps the parameter's dtype whatever
the recipe's ``state_bits``, ``"adamw8bit"`` / ``"adamw4bit"`` quantize (lowbit/).
"""

from __future__ import annotations

from typing import Any

from ..rules import get_rule
from ..rules.adam import ADAMW_LR

_REST: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}


def register_rest(name: str, keys: dict[str, Any], own_defaults: dict[str, Any] | None = None) -> None:
    if name in _REST:
        raise ValueError(f"rest rule {name!r} is already registered")
    if "rule" not in keys:
        raise ValueError("a rest rule must name its inner rule: keys={'rule': ...}")
    _REST[name] = (dict(keys), dict(own_defaults or {}))


def rest_names() -> list[str]:
    return sorted(_REST)


def rest_keys(name: str, recipe_rule: str) -> dict[str, Any]:
    """Group keys for the rest group of a recipe whose projected rule is ``recipe_rule``."""
    if name not in _REST:
        raise ValueError(f"unknown rest={name!r}; choose one of {', '.join(rest_names())}")
    keys, own_defaults = _REST[name]
    ours, theirs = get_rule(keys["rule"]), get_rule(recipe_rule)
    related = issubclass(ours.Hyper, theirs.Hyper) or issubclass(theirs.Hyper, ours.Hyper)
    out = dict(keys) if related else {**own_defaults, **keys}
    if theirs.matrix_only:
        out.setdefault("lr", ADAMW_LR)
    return out


register_rest("adamw", {"rule": "adam", "state_bits": None})
register_rest("adamw8bit", {"rule": "adam", "state_bits": 8})
register_rest("adamw4bit", {"rule": "adam", "state_bits": 4})
register_rest("adafactor", {"rule": "adafactor"})
