"""What users type, parsed one way everywhere: ``KEY=VALUE`` options (``--optim-arg``, the bench's
``method:key=value``, Hugging Face's ``optim_args="rank=64,scale=0.25"``) and the "did you mean"
hint for an unknown name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def typed(text: str) -> Any:
    """A value as the type it spells: 32 → int, 2e-2 → float (YAML 1.1 alone would keep that a
    string), true → bool, null → None, [0.9, 0.99] → a list, anything else a string."""
    import yaml

    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def key_value(item: str) -> tuple[str, Any] | None:
    """``"rank=64"`` → ("rank", 64); None when ``item`` is not of the form KEY=VALUE."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), typed(value)


def key_values(items: list[str] | None, flag: str = "--optim-arg") -> dict[str, Any]:
    """``["rank=64", "lr=1e-3"]`` → {"rank": 64, "lr": 0.001}; a ValueError naming ``flag`` for an
    item that is not KEY=VALUE."""
    out = {}
    for item in items or ():
        parsed = key_value(item)  # 200 → int, 0.25 and 1e-6 → float, true → bool
        if parsed is None:
            raise ValueError(f"{flag} {item!r} must look like KEY=VALUE, e.g. refresh_every=200")
        out[parsed[0]] = parsed[1]
    return out


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """" Did you mean a, b?" (with a leading space) for close matches of ``name``, else ""."""
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""
