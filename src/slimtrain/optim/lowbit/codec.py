"""Block-wise quantization of optimizer states (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022), 8-bit and 4-bit.

A tensor is cut into blocks of ``block_size(bits)`` consecutive elements (256 for 8-bit, 128 for
4-bit as in Li et al., "Memory Efficient Optimizers with 4-bit States", 2023); each block is divided
by its absolute maximum and every value is replaced by the code of the nearest entry of a map of
2**bits values in [-1, 1]. State = uint8 codes + one float32 absmax per block.

Maps (``MAPS``):

* ``"signed"`` / ``"unsigned"``: the *dynamic tree* map. A code is laid out as the paper's tree:
  [sign] [e leading zeros …] [indicator 1] [e fraction bits]. The e fraction bits pick one of 2**e
  equal cells of the decade [0.1, 1]·10**(e - F + 1) (F = magnitude bits), and the value is the
  cell's centre — the same values as bitsandbytes' ``create_dynamic_map`` (to fp32 rounding), dense
  near zero. The code "negative zero" (signed) or magnitude 1 (unsigned) is 1.0. Magnitude 0 is 0
  in the signed map; in the unsigned one (Adam's V) it is half the smallest code (1.6e-7), not 0.
* ``"linear"``: (u + 1) / 2**bits, no zero — the 4-bit second moment.

Why V has no zero (the "zero-point problem", Li et al. §4): a V flushed to 0 while M is not (a row
of an embedding that got no gradient this step) makes Adam divide by eps, a step ~1e3× too large —
measured here on a tiny LLaMA's embedding with a zero in the map. Rounding a tiny V up to a small
positive value instead can only shrink that one update. This is the only departure from
bitsandbytes' unsigned map.

Encoding and decoding are arithmetic (float bit fields, compares, selects, a few multiply-adds), not
table look-ups: under torch.compile a gather becomes a scalar loop on CPU, while these vectorize, and
they run the same on CPU and GPU. The map *is* ``decode``'s float32 arithmetic (within 1e-6 of the
paper's values); on CPU eager and compiled code round it alike (no contraction), a GPU compiler that
fuses multiply-adds may move a value by an ulp.

The subspace bases of Q-GaLore are quantized here too (``quantize_minmax``: asymmetric min–max in
groups), with the same 4-bit packing: two codes per byte, element 2i in the high nibble.

``"e4m3"`` / ``"e4m3+"`` are float8 e4m3 codes in the same 8-bit blocks, and ``"e4m3x"`` /
``"e4m3x+"`` (``state_bits="fp8"``) the same with COAT's dynamic range expansion (one more uint8
per block); their math is ``fp8.py``'s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..util import ceil_div, pad_flat
from . import fp8

MAPS = ("signed", "unsigned", "linear", *fp8.KINDS)
_BLOCK = {8: 256, 4: 128}


def block_size(bits: int) -> int:
    return _BLOCK[bits]


def _tree_constants(kind: str, bits: int) -> dict:
    """Constants of a dynamic tree map: per decade e its scale P = 10**(e-F+1) and the encoder's
    cell slope R, offset K and first code; the thresholds between decades; the zero / one ones."""
    signed = kind == "signed"
    F = bits - 1 if signed else bits
    first = 0 if signed else 1          # unsigned: magnitude 1 is reserved for 1.0
    P = {e: float(torch.tensor(10.0 ** (e - F + 1), dtype=torch.float32)) for e in range(first, F)}
    t = dict(F=F, first=first, P=P)
    table = _tree_values(torch.arange(2**F, dtype=torch.float32), t).double()
    C = {e: table[2**e].item() for e in P}                      # first value of decade e
    top = {e: table[2**(e + 1) - 1].item() for e in P}          # last value of decade e
    S = {e: 0.9 * P[e] / 2**e for e in P}                       # cell width
    R = {e: 1.0 / S[e] for e in P}
    # u = floor(a·R + K) with K = 2**e − (C − S/2)·R: the cell index j, offset by the decade's 2**e.
    K = {e: 2**e - (C[e] - S[e] / 2) * R[e] for e in P}
    smallest = 0.0 if signed else C[first] / 2  # the value of magnitude 0 (see module docstring)
    return dict(t, R=R, K=K, smallest=smallest,
                between={e: (top[e - 1] + C[e]) / 2 for e in range(first + 1, F)},
                zero=(smallest + C[first]) / 2, one=(top[F - 1] + 1.0) / 2)


def _tree_values(f: Tensor, t: dict) -> Tensor:
    """Values of magnitude codes f = 2**e + j (float32, ≥ 1): the centre of cell j of decade e,
    P·(0.1 + 0.9·(j + ½)/2**e) = P·((0.9·f + 0.45)·2**-e − 0.8). The exponent e and 2**-e are read
    from f's float bits (no log, no table)."""
    biased = f.view(torch.int32) >> 23                      # 127 + e
    inverse = ((254 - biased) << 23).view(torch.float32)    # 2**-e
    P = t["P"]
    scale = torch.full_like(f, P[max(P)])
    for e in sorted(P)[:-1]:
        scale = torch.where(biased == 127 + e, P[e], scale)
    return ((0.9 * f + 0.45) * inverse - 0.8) * scale


# Built once at import: torch.compile traces plain dict reads, not cache wrappers.
TREES = {(kind, bits): _tree_constants(kind, bits)
          for kind, bits in (("signed", 8), ("unsigned", 8), ("signed", 4), ("unsigned", 4))}


def decode(codes: Tensor, kind: str, bits: int, dtype=torch.float32) -> Tensor:
    """Map values (in [-1, 1]) of integer codes; ``codes`` are unpacked (one code per element)."""
    if kind in fp8.KINDS:
        return fp8.decode(codes, kind, dtype)
    u = codes.to(torch.int32)
    if kind == "linear":
        return ((u + 1).to(torch.float32) / 2**bits).to(dtype)
    t = TREES[kind, bits]
    F = t["F"]
    magnitude = u & (2**F - 1)
    f = magnitude.to(torch.float32)
    value = _tree_values(f.clamp_min(1.0), t)
    if kind == "signed":
        value = torch.where(u >= 2**F, -value, value)
        value = torch.where(u == 2**F, 1.0, torch.where(u == 0, 0.0, value))  # "-0" is 1.0
    else:
        value = torch.where(u == 1, 1.0, torch.where(u == 0, t["smallest"], value))
    return value.to(dtype)


def encode(y: Tensor, kind: str, bits: int) -> Tensor:
    """Codes (uint8, unpacked) of the map values nearest to ``y`` in [-1, 1] (``[0, 1]`` for the
    unsigned maps). Values within float32 rounding of the midpoint between two codes may get either."""
    if kind in fp8.KINDS:
        return fp8.encode(y, kind)
    a = y.abs().to(torch.float32)
    if kind == "linear":
        return (torch.round(a * 2**bits) - 1).clamp(0, 2**bits - 1).to(torch.uint8)
    t = TREES[kind, bits]
    F, first = t["F"], t["first"]
    # The decade's constants, chosen by the thresholds between decades (monotone: top-down selects).
    slope = torch.full_like(a, t["R"][first])
    offset = torch.full_like(a, t["K"][first])
    low = torch.full_like(a, 2.0**first)
    for e, threshold in t["between"].items():
        above = a > threshold
        slope = torch.where(above, t["R"][e], slope)
        offset = torch.where(above, t["K"][e], offset)
        low = torch.where(above, 2.0**e, low)
    u = torch.minimum(torch.floor(a * slope + offset).clamp_min(low), 2 * low - 1)
    if kind == "signed":
        u = torch.where((a > t["one"]) & (y > 0), 0.0, u) + torch.where(
            (y < 0) | (a > t["one"]), 2.0**F, 0.0)   # sign bit; "-0" codes 1.0
    else:
        u = torch.where(a > t["one"], 1.0, u)
    return torch.where(a <= t["zero"], 0.0, u).to(torch.uint8)


def code_table(kind: str, bits: int) -> Tensor:
    """Every map value, indexed by code (for tests and inspection)."""
    return decode(torch.arange(2**bits), kind, bits)


# ----------------------------------------------------------------------------------- packing
def pack4(codes: Tensor) -> Tensor:
    """Two 4-bit codes per byte along the last dimension (even length): element 2i in the high
    nibble, 2i+1 in the low one."""
    pairs = codes.to(torch.uint8).unflatten(-1, (-1, 2))
    return (pairs[..., 0] << 4) | pairs[..., 1]


def unpack4(packed: Tensor) -> Tensor:
    return torch.stack((packed >> 4, packed & 15), dim=-1).flatten(-2)


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes of ``bits`` bits (4-bit codes two per byte)."""
    return ceil_div(numel * bits, 8)


# ----------------------------------------------------------------------------------- min–max
def quantize_minmax(values: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric min–max quantization of the flattened ``values`` in groups of ``group_size``:
    (codes (uint8, 4-bit ones packed), float32 scale per group, float32 minimum per group)."""
    flat = values.reshape(-1).float()
    numel = flat.numel()
    groups = ceil_div(numel, group_size)
    blocks = pad_flat(flat, groups * group_size).view(-1, group_size)
    lo, hi = blocks.min(dim=1).values, blocks.max(dim=1).values
    if numel % group_size:  # the padding must not widen the last group's range
        tail = flat[(numel // group_size) * group_size:]
        lo[-1], hi[-1] = tail.min(), tail.max()
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_(min=torch.finfo(torch.float32).tiny)
    codes = ((blocks - lo[:, None]) / scale[:, None]).round_().clamp_(0, levels)
    codes = codes.reshape(-1)[:numel].to(torch.uint8)
    if bits == 4:
        codes = pack4(pad_flat(codes, ceil_div(numel, 2) * 2))
    return codes, scale, lo


def dequantize_minmax(codes: Tensor, scale: Tensor, lo: Tensor, bits: int, group_size: int,
                      shape) -> Tensor:
    numel = math.prod(shape)
    if bits == 4:
        codes = unpack4(codes)
    values = pad_flat(codes[:numel].float(), scale.numel() * group_size).view(-1, group_size)
    values = values.mul_(scale[:, None]).add_(lo[:, None])
    return values.reshape(-1)[:numel].reshape(shape)


def swap_nibbles(codes: Tensor) -> Tensor:
    """Packed 4-bit codes in the other nibble order (state format 1 packed bases low nibble first)."""
    return (codes >> 4) | ((codes & 15) << 4)


# ----------------------------------------------------------------------------------- blocks
def quantize_blocks(x: Tensor, kind: str, bits: int) -> tuple[Tensor, ...]:
    """x: (blocks, block_size) → (uint8 codes (blocks, block_size·bits/8), float32 absmax (blocks,)),
    and for fp8's expanded kinds a third part, the uint8 exponent index per block (``fp8.py``)."""
    if kind in fp8.KINDS:
        return fp8.quantize_blocks(x, kind)
    absmax = x.abs().amax(dim=1, keepdim=True)
    # A block of zeros has absmax 0: dividing by the smallest normal float keeps it at 0, not NaN.
    codes = encode(x / absmax.clamp_min(torch.finfo(x.dtype).tiny), kind, bits)
    codes = pack4(codes) if bits == 4 else codes
    return codes, absmax.squeeze(1).to(torch.float32)


def dequantize_blocks(codes: Tensor, absmax: Tensor, kind: str, bits: int,
                      dtype=torch.float32, expand: Tensor | None = None) -> Tensor:
    """The inverse of ``quantize_blocks``; ``expand``: its third part, for the expanded kinds."""
    if kind in fp8.KINDS:
        return fp8.dequantize_blocks(codes, absmax, kind, dtype, expand)
    if bits == 4:
        codes = unpack4(codes)
    return decode(codes, kind, bits, dtype) * absmax.to(dtype).unsqueeze(1)
