"""Declarative options: one dataclass field per knob, with its help text and its bounds.

Rules declare their hyperparameters this way (``rules/``), the pipeline its group keys
(``groups.PipelineOptions``) and every recipe its configuration (``recipes/``). The CLI
(``--optim-arg``, ``slimtrain optimizers NAME``), the memory planner and the benchmark read the same
dataclasses, so what a recipe accepts is written once::

    @dataclass
    class LionHyper(Hyper):
        betas: tuple = option((0.9, 0.99), "decay rates of the interpolation and of the moment",
                              kind="betas")
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..userinput import did_you_mean


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           open_low: bool = False, open_high: bool = False, integer: bool = False, none_ok: bool = False,
           choices: tuple | None = None, kind: str = "", message: str = "") -> Any:
    """A dataclass field with its help text and the checks ``check`` applies to its value.

    ``low``/``high``: bounds of a number (``open_low``/``open_high``: excluded); ``integer``: a
    whole number; ``none_ok``: None is allowed too; ``choices``: the allowed values; ``kind="betas"``:
    a pair of numbers in [0, 1) (``"betas3"``: three); ``kind="numbers3"``: three finite numbers;
    ``message``: what the value must be, said instead of the bounds."""
    meta = dict(help=help, low=low, high=high, open_low=open_low, open_high=open_high, integer=integer, none_ok=none_ok,
                choices=choices, kind=kind, message=message)
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One option as the CLI and the docs show it."""

    name: str
    default: Any
    help: str


def options_of(cls) -> list[Option]:
    return [Option(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def names_of(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def defaults_of(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def check_value(name: str, value: Any, meta: dict) -> None:
    """ValueError naming ``name`` when ``value`` breaks the field's declared checks."""
    if value is None and meta.get("none_ok"):
        return
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return
    if meta.get("kind") in ("betas", "betas3"):
        count = 3 if meta["kind"] == "betas3" else 2
        ok = (isinstance(value, (tuple, list)) and len(value) == count
              and all(_is_number(b) and 0.0 <= b < 1.0 for b in value))
        if not ok:
            raise ValueError(f"{name} must be {('two', 'three')[count - 2]} numbers in [0, 1), "
                             f"got {value!r}")
        return
    if meta.get("kind") == "numbers3":
        if not (isinstance(value, (tuple, list)) and len(value) == 3
                and all(_is_number(x) and math.isfinite(x) for x in value)):
            raise ValueError(f"{name} must be three finite numbers, got {value!r}")
        return
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None and not meta.get("integer"):
        return
    ok = _is_number(value) and (not meta.get("integer") or isinstance(value, int))
    if ok and low is not None:
        ok = value > low if meta.get("open_low") else value >= low
    if ok and high is not None:
        ok = value < high if meta.get("open_high") else value <= high
    if not ok and meta.get("message"):
        raise ValueError(f"{name} must be {meta['message']}, got {value!r}")
    if not ok:
        bound = "" if low is None else f" {'>' if meta.get('open_low') else '>='} {low}"
        bound += "" if high is None else f" and {'<' if meta.get('open_high') else '<='} {high}"
        kind = "an integer" if meta.get("integer") else "a number"
        extra = " (or None)" if meta.get("none_ok") else ""
        raise ValueError(f"{name} must be {kind}{bound}{extra}, got {value!r}")


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not (isinstance(value, float) and math.isnan(value)))


def check(cls, values: dict[str, Any]) -> None:
    """Check every field of ``cls`` present in ``values``."""
    for f in dataclasses.fields(cls):
        if f.name in values:
            check_value(f.name, values[f.name], f.metadata)


def build(cls, options: dict[str, Any], owner: str):
    """``cls(**options)`` with an unknown name reported as Python does for a keyword, plus the
    names that are close; betas given as a list (YAML, JSON) become a tuple; values are checked."""
    names = names_of(cls)
    for key in options:
        if key not in names:
            raise TypeError(f"{owner} got an unexpected keyword argument {key!r}."
                            f"{did_you_mean(key, names)} It takes: {', '.join(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    config = cls(**values)
    check(cls, dataclasses.asdict(config))
    return config


class Hyper:
    """Marker base of a rule's hyperparameter dataclass (its fields are the group keys the rule
    reads). A rule whose Hyper subclasses another's shares those fields' values in a recipe: the
    AdamW ``rest`` group of Natural GaLore takes its betas and eps."""
