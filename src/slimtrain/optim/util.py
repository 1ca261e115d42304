"""Small helpers several parts of the optimizer share (one copy each)."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pad_flat(flat: Tensor, length: int) -> Tensor:
    """A 1-D tensor zero-padded at the end to ``length`` elements (itself when already that long)."""
    if flat.numel() == length:
        return flat
    return torch.cat((flat, flat.new_zeros(length - flat.numel())))


def name_seed(name: str, step: int) -> int:
    """A seed from a parameter's *name* and a step: reproducible and resume-safe whatever the
    parameter order, without touching the global RNG (random bases, APOLLO's sketch, the bits of
    stochastic rounding)."""
    return zlib.crc32(name.encode()) * 1_000_003 + step
