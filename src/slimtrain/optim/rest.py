"""Rules for the parameters outside ``targets`` (embeddings, LM head, norms, biases): ``rest=``.

At 60M parameters the embeddings and the head hold ~80% of GaLore's optimizer state, so this choice
matters as much as the rank. A rest rule is one registration: the group keys it sets, and the
hyperparameters it uses when the recipe's own inner rule is a different one (a GaLore-Lion run
must not hand Lion's betas to the AdamW of its embeddings), as below::

    register_rest("adamw8bit", {"rule": "adam", "state_bits": 8}, {"betas": (0.9, 0.999), "eps": 1e-8})

The AdamW rest rules name their state precision: ``"adamw"`` keeps the parameter's dtype whatever
the recipe's ``state_bits``, ``"adamw8bit"`` / ``"adamw4bit"`` quantize (lowbit.py).
"""

from __future__ import annotations

from typing import Any

from .rules import plain_rule

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
    """Group keys for the rest group of a recipe whose projected rule is ``recipe_rule`` (the
    natural rule counts as Adam: it is Adam with a preconditioner)."""
    if name not in _REST:
        raise ValueError(f"unknown rest={name!r}; choose one of {', '.join(rest_names())}")
    keys, own_defaults = _REST[name]
    return dict(keys) if keys["rule"] == plain_rule(recipe_rule) else {**own_defaults, **keys}


_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}
register_rest("adamw", {"rule": "adam", "state_bits": None}, _ADAM_DEFAULTS)
register_rest("adamw8bit", {"rule": "adam", "state_bits": 8}, _ADAM_DEFAULTS)
register_rest("adamw4bit", {"rule": "adam", "state_bits": 4}, _ADAM_DEFAULTS)
register_rest("adafactor", {"rule": "adafactor"})
