"""Byte sizes with explicit units: GiB (2³⁰) and GB (10⁹) are never confused."""

from __future__ import annotations

import re

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'24GiB' → 25769803776; '24GB' → 24000000000. A bare 'G' is ambiguous and rejected."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 24GiB or 80GB")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown or ambiguous unit {match.group(2)!r} in {text!r}; use GiB (2^30 bytes) "
                         "or GB (10^9 bytes), MiB or MB, or B")
    value = number * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(value)


def gib(n_bytes: int | float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def mib(n_bytes: int | float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"
