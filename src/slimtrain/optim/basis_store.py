"""How a subspace basis lives in optimizer state (always as plain tensors).

* dense: ``basis``, float32, r × min(m, n) numbers (GaLore, Fira, FRUGAL, …);
* seed: ``seed``, one int64 — the basis is regenerated from it at every step (APOLLO's Gaussian
  sketch; the paper's "store the seed, not the matrix", which apollo-torch does not do);
* packed: ``basis_codes`` (uint8) + per-group ``basis_scale`` and ``basis_min`` (float32) —
  asymmetric min–max quantization in groups of ``projector_group`` numbers (Q-GaLore). At 4 bits two
  codes share a byte (low nibble first), so the codes take exactly half the bytes of 8-bit codes;
  Q-GaLore keeps one 4-bit code per byte, which saves nothing over 8 bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .selectors import gaussian_basis
from .subspace import basis_shape

PROJECTOR_BITS = (None, 4, 8)
BASIS_KEYS = ("basis", "seed", "basis_codes", "basis_scale", "basis_min")


def storage(group) -> str:
    if group["basis"] == "gaussian":
        return "seed"
    return "dense" if group["projector_bits"] is None else "packed"


def _groups(numel: int, group_size: int) -> int:
    return -(-numel // group_size)


def _code_bytes(numel: int, bits: int) -> int:
    return -(-numel * bits // 8)


def planned_bytes(shape, rank: int, side: str, group) -> int:
    """Bytes ``store`` keeps for one basis, from shapes alone."""
    kind = storage(group)
    if kind == "seed":
        return 8
    numel = math.prod(basis_shape(shape, rank, side))
    if kind == "dense":
        return numel * 4
    return _code_bytes(numel, group["projector_bits"]) + 2 * 4 * _groups(numel, group["projector_group"])


def quantize(basis: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    flat = basis.reshape(-1).float()
    numel = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, _groups(numel, group_size) * group_size - numel))
    blocks = padded.view(-1, group_size)
    lo, hi = blocks.min(dim=1).values, blocks.max(dim=1).values
    if numel % group_size:  # the padding must not widen the last group's range
        tail = flat[(numel // group_size) * group_size:]
        lo[-1], hi[-1] = tail.min(), tail.max()
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_(min=torch.finfo(torch.float32).tiny)
    codes = ((blocks - lo[:, None]) / scale[:, None]).round_().clamp_(0, levels)
    codes = codes.reshape(-1)[:numel].to(torch.uint8)
    if bits == 4:
        if numel % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        codes = codes[0::2] | (codes[1::2] << 4)
    return codes, scale, lo


def dequantize(codes: Tensor, scale: Tensor, lo: Tensor, bits: int, group_size: int,
               shape: tuple[int, int]) -> Tensor:
    numel = shape[0] * shape[1]
    if bits == 4:
        codes = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(-1)
    padded = _groups(numel, group_size) * group_size
    values = torch.nn.functional.pad(codes[:numel].float(), (0, padded - numel)).view(-1, group_size)
    values = values.mul_(scale[:, None]).add_(lo[:, None])
    return values.reshape(-1)[:numel].reshape(shape)


def store(state: dict, basis: Tensor | None, group, *, seed: int | None = None) -> None:
    kind = storage(group)
    if kind == "seed":
        state["seed"] = torch.tensor(seed, dtype=torch.int64)
    elif kind == "dense":
        state["basis"] = basis
    else:
        codes, scale, lo = quantize(basis, group["projector_bits"], group["projector_group"])
        state["basis_codes"], state["basis_scale"], state["basis_min"] = codes, scale, lo


def load(state: dict, shape, rank: int, side: str, group, device) -> Tensor:
    """The float32 basis this state holds (regenerated or dequantized when not dense)."""
    kind = storage(group)
    if kind == "dense":
        return state["basis"]
    if kind == "seed":
        return gaussian_basis(shape, rank, side, int(state["seed"].item()), device)
    return dequantize(state["basis_codes"], state["basis_scale"], state["basis_min"],
                      group["projector_bits"], group["projector_group"],
                      basis_shape(shape, rank, side))


def expected_shapes(shape, rank: int, side: str, group) -> dict[str, tuple]:
    """Shapes a restored state must have (checked on load)."""
    kind = storage(group)
    if kind == "seed":
        return {"seed": ()}
    bshape = basis_shape(shape, rank, side)
    if kind == "dense":
        return {"basis": tuple(bshape)}
    numel = math.prod(bshape)
    return {"basis_codes": (_code_bytes(numel, group["projector_bits"]),),
            "basis_scale": (_groups(numel, group["projector_group"]),)}
