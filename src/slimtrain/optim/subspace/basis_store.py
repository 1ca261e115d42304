"""How a subspace basis lives in optimizer state (always as plain tensors).

* dense: ``basis``, float32, r × min(m, n) numbers (GaLore, Fira, FRUGAL, …);
* seed: ``seed``, one int64 — the basis is regenerated from it at every step (APOLLO's Gaussian
  sketch; the paper's "store the seed, not the matrix", which apollo-torch does not do);
* packed: ``basis_codes`` (uint8) + per-group ``basis_scale`` and ``basis_min`` (float32) —
  asymmetric min–max quantization in groups of ``projector_group`` numbers (Q-GaLore;
  ``lowbit/codec.py``). At 4 bits two codes share a byte, so the codes take exactly half the bytes
  of 8-bit codes; Q-GaLore keeps one 4-bit code per byte, which saves nothing over 8 bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..lowbit.codec import dequantize_minmax, packed_bytes, quantize_minmax
from ..util import ceil_div
from .geometry import basis_shape
from .selectors import gaussian_basis

PROJECTOR_BITS = (None, 4, 8)
BASIS_KEYS = ("basis", "seed", "basis_codes", "basis_scale", "basis_min")


def storage(group) -> str:
    if group["basis"] == "gaussian":
        return "seed"
    return "dense" if group["projector_bits"] is None else "packed"


def planned_bytes(shape, rank: int, side: str, group) -> int:
    """Bytes ``store`` keeps for one basis, from shapes alone."""
    kind = storage(group)
    if kind == "seed":
        return 8
    numel = math.prod(basis_shape(shape, rank, side))
    if kind == "dense":
        return numel * 4
    return (packed_bytes(numel, group["projector_bits"])
            + 2 * 4 * ceil_div(numel, group["projector_group"]))


def placeholder(state: dict, shape, rank: int, side: str, group, device) -> None:
    """Zeros in the place of the basis, before the first refresh (see lifecycle.init_state)."""
    kind = storage(group)
    if kind == "seed":
        state["seed"] = torch.tensor(0, dtype=torch.int64)
        return
    bshape = basis_shape(shape, rank, side)
    if kind == "dense":
        state["basis"] = torch.zeros(bshape, dtype=torch.float32, device=device)
        return
    numel = math.prod(bshape)
    groups = ceil_div(numel, group["projector_group"])
    state["basis_codes"] = torch.zeros(packed_bytes(numel, group["projector_bits"]),
                                       dtype=torch.uint8, device=device)
    state["basis_scale"] = torch.zeros(groups, dtype=torch.float32, device=device)
    state["basis_min"] = torch.zeros(groups, dtype=torch.float32, device=device)


def store(state: dict, basis: Tensor | None, group, *, seed: int | None = None) -> None:
    kind = storage(group)
    if kind == "seed":
        state["seed"] = torch.tensor(seed, dtype=torch.int64)
    elif kind == "dense":
        state["basis"] = basis
    else:
        codes, scale, lo = quantize_minmax(basis, group["projector_bits"], group["projector_group"])
        state["basis_codes"], state["basis_scale"], state["basis_min"] = codes, scale, lo


def load(state: dict, shape, rank: int, side: str, group, device) -> Tensor:
    """The float32 basis this state holds (regenerated or dequantized when not dense)."""
    kind = storage(group)
    if kind == "dense":
        return state["basis"]
    if kind == "seed":
        return gaussian_basis(shape, rank, side, int(state["seed"].item()), device)
    return dequantize_minmax(state["basis_codes"], state["basis_scale"], state["basis_min"],
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
    return {"basis_codes": (packed_bytes(numel, group["projector_bits"]),),
            "basis_scale": (ceil_div(numel, group["projector_group"]),)}
