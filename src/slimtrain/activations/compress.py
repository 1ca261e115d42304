"""Compressed saved activations (Mesa, COAT): ``compressed_activations(model, bits=8 | "fp8")``.

Inside the context, the floating tensors the decoder layers save for backward (linear inputs,
attention and MLP activations; ``saved.py`` says which) are stored as 8-bit codes in blocks of
256 elements plus one float32 scale per block, and decoded back to their dtype when backward reads
them. The math is the optimizer states' (``optim/lowbit/codec.py``): ``bits=8`` the signed dynamic
tree map scaled by each block's absolute maximum, ``bits="fp8"`` float8 e4m3 codes scaled by
448 / absmax (COAT's layout). A storage of n elements costs ``compressed_bytes(n)`` =
⌈n/256⌉·(256 + 4) bytes instead of n·(4 or 2). Gradients differ from exact ones by the codes'
rounding (bound measured in ``tests/activations/test_compress.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..optim.lowbit import codec
from .saved import StorageHooks

BITS = (8, "fp8")
BLOCK = codec.block_size(8)
DEFAULT_MIN_NUMEL = 2**14  # smaller storages (per-token norms, tiny batches) are kept exact
_KIND = {8: "signed", "fp8": "e4m3"}


def parse_bits(bits) -> int | str | None:
    """8, "8", "fp8" → the setting; None, 16, 32, "none" → None (no compression)."""
    if bits in (None, 16, 32, "16", "32", "none"):
        return None
    if bits in (8, "8"):
        return 8
    if bits == "fp8":
        return "fp8"
    raise ValueError(f"activation bits must be 8 or fp8 (or none), got {bits!r}")


def compressed_bytes(numel: int) -> int:
    """Bytes one compressed storage of ``numel`` elements keeps: codes padded to whole blocks of
    256 plus a float32 scale per block."""
    blocks = math.ceil(numel / BLOCK)
    return blocks * (BLOCK + 4)


class _Compressed:
    __slots__ = ("codes", "scale", "dtype", "numel", "__weakref__")

    def __init__(self, codes, scale, dtype, numel):
        self.codes, self.scale, self.dtype, self.numel = codes, scale, dtype, numel


class CompressedActivations(StorageHooks):
    def __init__(self, model: nn.Module | None = None, bits=8, min_numel: int = DEFAULT_MIN_NUMEL):
        bits = parse_bits(bits)
        if bits is None:
            raise ValueError("compressed_activations needs bits=8 or bits='fp8'")
        if min_numel < 1:
            raise ValueError(f"min_numel must be >= 1, got {min_numel}")
        super().__init__(model)
        self.bits, self.kind, self.min_numel = bits, _KIND[bits], min_numel

    def _store(self, flat: torch.Tensor) -> _Compressed:
        n = flat.numel()
        padded = torch.nn.functional.pad(flat.detach().float(), (0, -n % BLOCK))
        codes, scale = codec.quantize_blocks(padded.view(-1, BLOCK), self.kind, 8)
        return _Compressed(codes, scale, flat.dtype, n)

    def _restore(self, stored: _Compressed) -> torch.Tensor:
        values = codec.dequantize_blocks(stored.codes, stored.scale, self.kind, 8)
        return values.reshape(-1)[:stored.numel].to(stored.dtype)

    def _held(self, stored: _Compressed) -> list[torch.Tensor]:
        return [stored.codes, stored.scale]


def compressed_activations(model: nn.Module | None = None, bits=8,
                           min_numel: int = DEFAULT_MIN_NUMEL) -> CompressedActivations:
    """A reusable context manager: forward passes run inside it save their decoder layers'
    activations compressed (``bits`` 8 or "fp8"; storages of at least ``min_numel`` elements).
    Without ``model``, every eligible saved tensor in the context is compressed."""
    return CompressedActivations(model, bits, min_numel)
