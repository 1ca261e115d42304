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

Encoding and decoding are arithmetic (compares, selects, one multiply-add), not table look-ups:
under torch.compile a gather becomes a scalar loop on CPU, while these vectorize, and they run the
same on CPU and GPU. ``S_e`` (the cell width) is rounded to 16 significant bits so that ``C + j·S``
is exact in its product: decoding gives the same bits with or without fused multiply-add.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

MAPS = ("signed", "unsigned", "linear")
_BLOCK = {8: 256, 4: 128}


def block_size(bits: int) -> int:
    return _BLOCK[bits]


def _round_significand(x: float, bits: int = 16) -> float:
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * 2**bits) / 2**bits, exponent)


def _tree_constants(kind: str, bits: int) -> dict:
    """Per-decade constants of the dynamic tree map: decades, first value C, cell width S, the
    thresholds between decades, and the zero / one rounding thresholds."""
    signed = kind == "signed"
    F = bits - 1 if signed else bits
    first = 0 if signed else 1          # unsigned: magnitude 1 is reserved for 1.0
    C, S = {}, {}
    for e in range(first, F):
        scale = 10.0 ** (e - F + 1)
        S[e] = _round_significand(0.9 * scale / 2**e)
        C[e] = float(torch.tensor(0.1 * scale + 0.5 * S[e], dtype=torch.float32))
    if not signed:
        C[0], S[0] = 1.0, 0.0
    top = {e: C[e] + (2**e - 1) * S[e] for e in range(first, F)}
    between = [(top[e - 1] + C[e]) / 2 for e in range(first + 1, F)]
    smallest = 0.0 if signed else C[first] / 2  # the value of magnitude 0 (see module docstring)
    return dict(F=F, first=first, C=C, S=S, between=between, smallest=smallest,
                zero=(smallest + C[first]) / 2, one=(top[F - 1] + 1.0) / 2)


# Built once at import: torch.compile traces plain dict reads, not cache wrappers.
_TREES = {(kind, bits): _tree_constants(kind, bits)
          for kind, bits in (("signed", 8), ("unsigned", 8), ("signed", 4), ("unsigned", 4))}


def _tree(kind: str, bits: int) -> dict:
    return _TREES[kind, bits]


def _select(e: Tensor, values: dict[int, float], dtype) -> Tensor:
    """values[e] elementwise, by a chain of selects (vectorizes; a gather would not)."""
    keys = sorted(values)
    out = torch.full_like(e, values[keys[-1]], dtype=dtype)
    for k in keys[:-1]:
        out = torch.where(e == k, values[k], out)
    return out


def decode(codes: Tensor, kind: str, bits: int, dtype=torch.float32) -> Tensor:
    """Map values (in [-1, 1]) of integer codes; ``codes`` are unpacked (one code per element)."""
    u = codes.to(torch.int32)
    if kind == "linear":
        return (u + 1).to(dtype) / 2**bits
    t = _tree(kind, bits)
    F = t["F"]
    sign = u >> F if kind == "signed" else None
    u = u & (2**F - 1)
    e = torch.zeros_like(u)
    for i in range(1, F):  # e = floor(log2 u): the position of the indicator bit
        e = e + (u >= 2**i).to(torch.int32)
    j = u - torch.bitwise_left_shift(torch.ones_like(u), e)
    value = _select(e, t["C"], dtype) + j.to(dtype) * _select(e, t["S"], dtype)
    if sign is None:
        return torch.where(u == 0, t["smallest"], value)
    value = torch.where(sign == 1, -value, value)
    return torch.where(u == 0, sign.to(dtype), value)  # "negative zero" is 1.0


def encode(y: Tensor, kind: str, bits: int) -> Tensor:
    """Codes (int32, unpacked) of the map values nearest to ``y`` in [-1, 1] (``[0, 1]`` for the
    unsigned maps). Exact ties between two codes may go either way."""
    a = y.abs()
    if kind == "linear":
        return (torch.round(a * 2**bits) - 1).clamp(0, 2**bits - 1).to(torch.int32)
    t = _tree(kind, bits)
    F, first = t["F"], t["first"]
    e = torch.full_like(a, first, dtype=torch.int32)
    for threshold in t["between"]:
        e = e + (a > threshold).to(torch.int32)
    lower = {k: t["C"][k] - t["S"][k] / 2 for k in t["S"] if k >= first}
    inverse = {k: 1.0 / t["S"][k] for k in t["S"] if k >= first}
    j = torch.floor((a - _select(e, lower, y.dtype)) * _select(e, inverse, y.dtype)).to(torch.int32)
    count = torch.bitwise_left_shift(torch.ones_like(e), e)
    u = count + torch.minimum(j.clamp_min(0), count - 1)
    zero = a <= t["zero"]
    if kind == "signed":
        negative = y < 0
        code = torch.where(negative, u | 2**F, u)
        code = torch.where((a > t["one"]) & ~negative, torch.full_like(u, 2**F), code)
        return torch.where(zero, torch.zeros_like(u), code)
    code = torch.where(a > t["one"], torch.ones_like(u), u)
    return torch.where(zero, torch.zeros_like(u), code)


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


# ----------------------------------------------------------------------------------- blocks
def quantize_blocks(x: Tensor, kind: str, bits: int) -> tuple[Tensor, Tensor]:
    """x: (blocks, block_size) → (uint8 codes (blocks, block_size·bits/8), float32 absmax (blocks,))."""
    absmax = x.abs().amax(dim=1, keepdim=True)
    # A block of zeros has absmax 0: dividing by the smallest normal float keeps it at 0, not NaN.
    codes = encode(x / absmax.clamp_min(torch.finfo(x.dtype).tiny), kind, bits)
    codes = pack4(codes) if bits == 4 else codes.to(torch.uint8)
    return codes, absmax.squeeze(1).to(torch.float32)


def dequantize_blocks(codes: Tensor, absmax: Tensor, kind: str, bits: int,
                      dtype=torch.float32) -> Tensor:
    if bits == 4:
        codes = unpack4(codes)
    return decode(codes, kind, bits, dtype) * absmax.to(dtype).unsqueeze(1)
