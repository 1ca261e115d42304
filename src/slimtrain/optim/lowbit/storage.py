"""State precision (DESIGN §1): how an inner rule's moments are stored, and the one-pass low-bit step.

``state_bits`` of a param group:

* ``None`` — moments in the parameter's dtype: the unchanged kernels of ``adam.py`` (torch's AdamW);
* ``32`` / ``16`` — float32 / bfloat16 moments;
* ``8`` / ``4`` — block-wise quantized moments (``codec.py``): uint8 codes + one float32 absmax per
  block. Tensors with fewer than ``quantize_min_numel`` elements (4096, as bitsandbytes and torchao)
  keep float32 moments: codes would save a few bytes for their error.
* ``"fp8"`` — float8 e4m3 codes in the 8-bit layout with COAT's dynamic range expansion (``fp8.py``):
  kinds ``"e4m3x"`` for signed moments, ``"e4m3x+"`` (no zero code) for nonnegative ones; one more
  uint8 per block, the expansion exponent (``{name}_expand``); ``fp8_expansion=False``: plain
  ``"e4m3"`` / ``"e4m3+"`` codes (torchao's AdamWFp8's), no third part.

Moments stored in the parameter's dtype take the unchanged path; Adam's others take the one-pass
one-pass kernel of ``kernel.py`` (the C kernel of ``native.py`` on CPUs) (bf16 parameters optionally with stochastic rounding).

``state_bits`` applies to every inner rule's moments (``rules.py``): which moments a rule keeps comes
from its ``moment_shapes``, which are never negative from ``Rule.nonnegative`` (unsigned maps).
Only Adam has the one-pass kernel; the other rules run on float32 copies of their moments
(``run_rule_``: dequantize → the rule's own update → requantize).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import stages
from ..rules import get_rule
from ..util import ceil_div, pad_flat
from .codec import block_size, dequantize_blocks, quantize_blocks
from .fp8 import EXPANDED
from .kernel import seed_key, stochastic_round_bf16, update_tensor_

STATE_BITS = (None, 32, 16, 8, 4, "fp8")


@dataclass(frozen=True)
class Storage:
    """How one moment tensor is kept: a plain ``dtype``, or ``bits``-bit codes with map ``kind``
    (``codec.MAPS``; fp8's e4m3 kinds have ``bits`` 8)."""

    dtype: torch.dtype | None = None
    bits: int = 0
    kind: str = ""

    @property
    def quantized(self) -> bool:
        return self.dtype is None

    @property
    def expanded(self) -> bool:
        """fp8 codes with a per-block expansion exponent (a third part)."""
        return self.kind in EXPANDED

    def keys(self, name: str) -> tuple[str, ...]:
        """The state keys that hold the moment ``name``."""
        if not self.quantized:
            return (name,)
        return (f"{name}_codes", f"{name}_absmax") + ((f"{name}_expand",) if self.expanded else ())

    def parts(self, state: dict, name: str) -> tuple[Tensor, ...]:
        """The state tensors that hold the moment ``name``: (codes, absmax[, expand]) or (moment,)."""
        return tuple(state[k] for k in self.keys(name))

    def shapes(self, name: str, shape) -> dict[str, tuple[int, ...]]:
        shape = tuple(shape)
        if not self.quantized:
            return {name: shape}
        blocks = ceil_div(math.prod(shape), block_size(self.bits))
        return dict(zip(self.keys(name), (_codes_shape(shape, self.bits), (blocks,), (blocks,))))

    def dtypes(self) -> tuple[torch.dtype, ...]:
        if not self.quantized:
            return (self.dtype,)
        return (torch.uint8, torch.float32) + ((torch.uint8,) if self.expanded else ())

    def nbytes(self, shape) -> int:
        return sum(math.prod(s) * d.itemsize
                   for s, d in zip(self.shapes("m", shape).values(), self.dtypes()))

    def zeros(self, name: str, shape, device) -> dict[str, Tensor]:
        """Zero moments: code 0 with absmax 0 decodes to 0 in every map."""
        return {k: torch.zeros(s, dtype=d, device=device)
                for (k, s), d in zip(self.shapes(name, shape).items(), self.dtypes())}


def _codes_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """8-bit codes have the moment's shape; 4-bit ones pair consecutive elements in a byte, so the
    last dimension halves (flat when it is odd: then pairs cross rows)."""
    if bits == 8:
        return shape
    if shape and shape[-1] % 2 == 0:
        return (*shape[:-1], shape[-1] // 2)
    return ((math.prod(shape) + 1) // 2,)


def _storage(group: dict, dtype: torch.dtype, numel: int, signed: bool) -> Storage:
    bits = group["state_bits"]
    if bits is None:
        return Storage(dtype)
    if bits in (32, 16):
        return Storage(torch.float32 if bits == 32 else torch.bfloat16)
    if numel < group["quantize_min_numel"]:
        return Storage(torch.float32)
    if bits == "fp8":
        kind = "e4m3x" if group.get("fp8_expansion", True) else "e4m3"
        return Storage(bits=8, kind=kind if signed else kind + "+")
    return Storage(bits=bits, kind="signed" if signed else "unsigned" if bits == 8 else "linear")


Layout = dict  # moment key → (Storage, moment shape)


def layout(group: dict, rule: str, like: Tensor, shape, global_shape=None) -> Layout:
    """How each moment of ``rule`` for an update of ``shape`` is stored (``like``: the parameter,
    or a tensor of its dtype); derived from the group, never stored. ``global_shape``: the whole
    update's shape when ``shape`` is a shard's — whether a moment is quantized depends on the
    whole tensor's size, so every rank (and one process) decides alike."""
    kernel = get_rule(rule)
    extra = stages.moment_shapes(group)  # the spike stages' scalars are moments too
    moments = {**kernel.moment_shapes(tuple(shape), group), **extra}
    whole = moments if global_shape is None else {
        **kernel.moment_shapes(tuple(global_shape), group), **extra}
    return {key: (_storage(group, like.dtype, math.prod(whole[key]), key not in kernel.nonnegative)
                  if key not in kernel.exact else _exact(group, like.dtype), tuple(s))
            for key, s in moments.items()}


def _exact(group: dict, dtype: torch.dtype) -> Storage:
    """A moment the rule keeps unquantized (a basis must stay orthonormal): the parameter's dtype,
    or float32 when the others are stored in fewer bits."""
    return Storage(dtype if group["state_bits"] is None else torch.promote_types(dtype, torch.float32))


def native(group: dict, like: Tensor, lay: Layout) -> bool:
    """Whether the rule can run on the stored moments as they are (all in the parameter's dtype,
    and no stochastic rounding to do)."""
    rounded = group["stochastic_rounding"] and like.dtype == torch.bfloat16
    return not rounded and all(s.dtype == like.dtype for s, _ in lay.values())


def init_moments(state: dict, lay: Layout, device) -> None:
    for key, (storage, shape) in lay.items():
        state.update(storage.zeros(key, shape, device))


def stored_shapes(lay: Layout) -> dict[str, tuple[int, ...]]:
    """State key → shape of every tensor that holds the moments."""
    return {k: v for key, (s, shape) in lay.items() for k, v in s.shapes(key, shape).items()}


def moment_bytes(lay: Layout) -> int:
    return sum(s.nbytes(shape) for s, shape in lay.values())


def load_moment(state: dict, name: str, storage: Storage, shape, dtype=torch.float32) -> Tensor:
    """A moment in ``shape``: a float32 copy (``dtype``) when quantized; a plain one converted to
    ``dtype``, or itself with ``dtype=None``."""
    if not storage.quantized:
        return state[name] if dtype is None else state[name].to(dtype)
    codes, absmax, *expand = storage.parts(state, name)
    numel, B = math.prod(shape), block_size(storage.bits)
    flat = pad_flat(codes.reshape(-1), absmax.numel() * B * storage.bits // 8)
    values = dequantize_blocks(flat.view(absmax.numel(), -1), absmax, storage.kind, storage.bits,
                               dtype or torch.float32, *expand)
    return values.reshape(-1)[:numel].reshape(shape)


def store_moment_(state: dict, name: str, storage: Storage, value: Tensor) -> None:
    if not storage.quantized:
        if value is not state[name]:
            state[name].copy_(value)
        return
    codes, *per_block = storage.parts(state, name)
    B = block_size(storage.bits)
    blocks = pad_flat(value.reshape(-1), per_block[0].numel() * B).view(-1, B)
    new_codes, *new_per_block = quantize_blocks(blocks, storage.kind, storage.bits)
    codes.view(-1).copy_(new_codes.view(-1)[:codes.numel()])
    for dst, src in zip(per_block, new_per_block):
        dst.copy_(src)


def run_rule_(group: dict, rule: str, lay: Layout, grad: Tensor, state: dict, count_key: str,
              param: Tensor | None, *, name: str, impl: str, inputs: dict | None = None):
    """One step of ``rule`` for one tensor whose moments are not in the parameter's dtype.
    Returns (direction, factor) on the projected path (``param`` None), else None.

    Adam takes the one-pass kernel (``kernel.py``); any other rule runs on float32 copies of its
    moments (dequantize → rule → requantize) and of a lower-precision parameter. ``inputs``: the
    rule's extra inputs for this tensor (one-element lists)."""
    if rule == "adam":
        direction, factor = update_tensor_(group, {k: s for k, (s, _) in lay.items()}, param, grad,
                                           state, state[count_key], name)
        return (direction, factor) if param is None else None
    compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
    moments = {k: load_moment(state, k, s, shape, compute) for k, (s, shape) in lay.items()}
    work = None if param is None else (param if param.dtype == compute else param.to(compute))
    out = get_rule(rule).update([grad.to(compute)], [moments], [state[count_key]], group, impl,
                                params=None if work is None else [work], inputs=inputs)
    for key, (storage, _) in lay.items():
        store_moment_(state, key, storage, moments[key])
    if param is None:
        return out[0][0], out[1][0]
    if work is not param:
        write_rounded_(group, param, work, name, state[count_key])
    return None


def write_rounded_(group: dict, param: Tensor, value: Tensor, name: str, step: Tensor) -> None:
    """param ← value (higher precision), rounded to nearest, or stochastically for bf16 parameters
    with ``stochastic_rounding``."""
    if group["stochastic_rounding"] and param.dtype == torch.bfloat16:
        seed = torch.tensor([seed_key(name, step), 0], dtype=torch.int64, device=param.device)
        param.copy_(stochastic_round_bf16(value.to(torch.float32), seed))
    else:
        param.copy_(value)
