"""FP8 (e4m3) optimizer-state codes, COAT-style (Xi et al., "COAT: Compressing Optimizer States and
Activation for Memory-Efficient FP8 Training", ICLR 2025): ``state_bits="fp8"``.

A moment is cut into blocks of 256 like the 8-bit tree map (``codec.block_size(8)``); each block is
multiplied by 448 / its absolute maximum (448: e4m3's largest finite value; one division per block,
a multiply per element) and every number is stored as the byte of the nearest float8 e4m3fn value
(1 sign, 4 exponent bits of bias 7, 3 mantissa bits; subnormals m·2⁻⁹; no infinities, 0x7F / 0xFF
are NaN). Decoding multiplies the e4m3 value by absmax / 448. Codes are uint8 — the bits of
``torch.float8_e4m3fn`` — plus the float32 absmax per block: the 8-bit layout exactly.

The conversion is a few integer operations on the float32 bits, not a table search:

* encode: for |y| ≥ 2⁻⁶ the code is the top 3 mantissa bits and the exponent of |y|'s float32 bits,
  rounded to nearest even by adding 0x7FFFF + (bit 20) before dropping 20 bits (a carry moves into
  the exponent as it should), rebiased by 120 (= 127 − 7); below 2⁻⁶ it is rint(|y|·2⁹), exact
  (a power-of-two scale; ``cpu.c`` adds 2¹⁴, whose ulp is 2⁻⁹), and 8 there is the smallest
  normal's code. This is torch's
  ``y.to(torch.float8_e4m3fn)`` bit for bit for every |y| ≤ 448 and NaN (tested); beyond ±448 —
  which the block scaling never produces — it saturates to ±448 (as torch 2.13's CPU conversion
  does; the e4m3fn format itself has no infinity).
* decode: exponent and mantissa moved into float32's fields (rebiased by 120); subnormals m·2⁻⁹;
  0x7F/0xFF NaN. Equal to ``codes.view(torch.float8_e4m3fn).float()`` for all 256 codes (tested).

``quantize_blocks`` / ``dequantize_blocks`` are what ``codec``'s block functions run for these kinds
(no per-element division, unlike the tree maps' x / absmax); ``encode`` / ``decode`` are the codes of
values already in [-1, 1] and the map values e4m3 / 448, for ``codec``'s per-value interface.

Kinds: ``"e4m3"`` (signed; the first moment) and ``"e4m3+"`` (a nonnegative moment, Adam's V): the
same codes, except that code 0 is never written — a value that would round to 0 gets the smallest
subnormal (absmax · 2⁻⁹/448 ≈ absmax · 4.4e-6). That is codec's "zero-point problem": a V flushed to
0 while M is not makes Adam divide by eps; rounding a tiny V up can only shrink that one update.
Zero codes with zero absmax (fresh or reset moments) still decode to 0.

Dynamic range expansion (COAT §4; kinds ``"e4m3x"`` / ``"e4m3x+"``, what ``state_bits="fp8"``
stores): a block's magnitudes span absmax/absmin, usually far less than e4m3's 448/2⁻⁹ = 229376, so
plain scaling leaves most codes unused. Each block stores an exponent k as well, and codes
sign(x)·448·(|x|/absmax)^k: k is chosen so that the block's smallest nonzero magnitude lands at or
just above e4m3's smallest subnormal 2⁻⁹ (k > 1 spreads a narrow block over all the codes; k < 1
squeezes a block wider than e4m3 into it instead of flushing its small values). Decoding is
absmax·(e4m3/448)^(1/k). COAT takes k = log(R_e4m3)/log(R_block) as a real number; here k = j/4 with
j an integer 1…16 (one uint8 per block, the ``expand`` part), the largest that keeps the smallest
magnitude at or above 2⁻⁹ — so both directions are exact IEEE float32 operations that any
implementation reproduces bit for bit (no pow, whose last bit differs between libms):

* encode: with j = n·2^t (t ≤ 2 the trailing zero bits), q = |x|·(1/absmax) and, for t < 2, its
  square root taken 2 − t times, then q^n by binary exponentiation (r·b for each set bit of n, low
  bit first, b squared between), times 448, rounded to e4m3 as above;
* decode: a table look-up — ``expanded_table()[j, code]`` ≈ (e4m3(code)/448)^(4/j), defined as the
  float32 product of an exponent factor and a mantissa factor (``expansion_factors``; a definition
  kept so that saved states decode to the same bits as before) — times absmax (j 0, a state
  written before expansion, is k = 1).

Measured (``python benchmarks/fp8_expansion.py``: a tiny LLaMA trained with fp32 AdamW on real
text, the moments quantized at steps 5, 20 and 100; relative error of Adam's update m/√v, mean over
tensors / worst tensor): plain e4m3 0.031 / 0.082 at step 5 and 0.037 / 0.26 at step 20; expanded
0.020 / 0.024 and 0.020 / 0.029; COAT's real-valued k 0.019 / 0.022 and 0.019 / 0.027 (quarter
steps lose little). Over 50 synthetic AdamW steps (tests/optim/test_fp8_states.py), worst tensor
against fp32: 0.029 expanded, 0.052 plain (torchao's AdamWFp8 0.052), 0.020 the 8-bit tree.

The math is plain torch ops (CPU, CUDA, torch.compile; CUDA not run here: no GPU); ``cpu_fp8.h``
does the same integer and float operations in C (plain C and AVX2; both decode by scalar look-ups
of the block's table row), giving the same bits (tested; decoding for every code and every j).
Square roots are correctly rounded on both sides (``rules.adam.sqrt_rn``: torch's eager float32
sqrt can be an ulp off).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rules.adam import sqrt_rn  # torch's eager float32 sqrt can be an ulp off

E4M3_MAX = 448.0
EXPANDED = ("e4m3x", "e4m3x+")  # with dynamic range expansion: codes, absmax and expand per block
KINDS = ("e4m3", "e4m3+", *EXPANDED)
NONNEGATIVE = ("e4m3+", "e4m3x+")
_QUARTERS = 16          # k = j/4 for j in 1 … 16
_SMALLEST_SUBNORMAL = 2.0**-9
_POW_FLOOR = 2.0**-60
_SMALLEST_NORMAL = 2.0**-6
_REBIAS = 120 << 3  # float32's exponent bias 127 − e4m3's 7, in code units (3 mantissa bits)
_ABSMAX_FLOOR = 2.0**-110  # 448 / absmax stays finite; an all-zero block stays 0 (not 0·inf)


def e4m3_bits(y: Tensor) -> Tensor:
    """The float8 e4m3fn bytes (uint8) of ``y``: round to nearest even, saturating at ±448."""
    y = y.to(torch.float32)
    a = y.abs()
    b = a.view(torch.int32)
    normal = ((b + 0x7FFFF + ((b >> 20) & 1)) >> 20) - _REBIAS
    sub = torch.round(a * 512.0).to(torch.int32)
    magnitude = torch.where(a < _SMALLEST_NORMAL, sub, normal).clamp_max(0x7E)
    magnitude = torch.where(a != a, 0x7F, magnitude)                           # NaN stays NaN
    return (magnitude | ((y.view(torch.int32) >> 24) & 0x80)).to(torch.uint8)  # the sign bit


def e4m3_values(codes: Tensor, dtype=torch.float32) -> Tensor:
    """The values (float32) of float8 e4m3fn bytes."""
    c = codes.to(torch.int32)
    magnitude = c & 0x7F
    normal = ((magnitude + _REBIAS) << 20).view(torch.float32)
    value = torch.where(magnitude < 8, magnitude.to(torch.float32) * 2.0**-9, normal)
    value = torch.where(magnitude == 0x7F, float("nan"), value)
    return torch.where(c >= 0x80, -value, value).to(dtype)


def decode(codes: Tensor, kind: str, dtype=torch.float32) -> Tensor:
    """Map values in [-1, 1]: e4m3 / 448 (both kinds)."""
    return (e4m3_values(codes) / E4M3_MAX).to(dtype)


def encode(y: Tensor, kind: str) -> Tensor:
    """Codes of ``y`` in [-1, 1] (a block divided by its absmax): e4m3 of y·448; ``"e4m3+"`` (y ≥ 0)
    never writes code 0."""
    if kind in NONNEGATIVE:
        return e4m3_bits(y.to(torch.float32).abs() * E4M3_MAX).clamp_min(1)
    return e4m3_bits(y.to(torch.float32) * E4M3_MAX)


def expansion_index(absmax: Tensor, absmin: Tensor) -> Tensor:
    """j (uint8, 1 … 16; k = j/4) per block: the most of 16 quarter steps for which 448·(absmin /
    absmax)^(j/4), multiplied out step by step, stays ≥ 2⁻⁹ (absmin: the smallest nonzero
    magnitude, inf in a block with none). At least 1."""
    q = sqrt_rn(sqrt_rn(absmin / absmax))
    p = torch.full_like(q, E4M3_MAX)
    count = torch.zeros(q.shape, dtype=torch.int32, device=q.device)
    for _ in range(_QUARTERS):
        p = p * q
        count += (p >= _SMALLEST_SUBNORMAL).to(torch.int32)
    return count.clamp_min(1).to(torch.uint8)


def expand_magnitudes(a: Tensor, j: Tensor) -> Tensor:
    """448·a^(j/4) for a in [0, 1] (rows) and j per row. With j = n·2^t, t the trailing zero bits
    of j up to 2: a itself (t = 2), √a (t = 1) or √√a (t = 0), then its n-th power by binary
    exponentiation — the operations ``cpu_fp8.h`` does, in the same order (correctly rounded square
    roots; a j with factors of 2 skips square roots, the costly operation there)."""
    j = j.to(torch.int32).unsqueeze(1)
    t = torch.where(j % 4 == 0, 2, torch.where(j % 2 == 0, 1, 0))
    n = j >> t
    root = sqrt_rn(a)
    b = torch.where(t == 2, a, torch.where(t == 1, root, sqrt_rn(root)))
    r = torch.ones_like(b)
    for bit in range(4):  # n ≤ 15
        r = torch.where(((n >> bit) & 1).bool(), r * b, r)
        b = (b * b).clamp_min(_POW_FLOOR)  # cpu_fp8.h: no subnormal squares (a used one is ≥ 2⁻⁹/448)
    return r * E4M3_MAX


def expansion_factors() -> Tensor:
    """(17, 32) float32: per row j (k = j/4; row 0 is row 4, k = 1) the factors of the expanded
    values, each (…)^(4/j) in float64 rounded to float32: [0:16] A[e] = (2^(e−7)/448)^(4/j) for the
    exponent field e, [16:24] B[f] = (1 + f/8)^(4/j) for the mantissa field f, [24:32]
    S[f] = (f·2⁻⁹/448)^(4/j) for the subnormals. The table is defined by these products (not by a
    pow per entry) so that it has one exact float32 value everywhere."""
    j = torch.arange(_QUARTERS + 1, dtype=torch.float64)
    j[0] = 4
    power = (4 / j).unsqueeze(1)
    e, f = torch.arange(16, dtype=torch.float64), torch.arange(8, dtype=torch.float64)
    a = (2.0 ** (e - 7) / E4M3_MAX) ** power
    b = (1 + f / 8) ** power
    sub = (f * 2.0**-9 / E4M3_MAX) ** power
    return torch.cat([a, b, sub], dim=1).float().contiguous()


def expanded_table(device=None) -> Tensor:
    """(17, 256) float32: row j, column code → the expanded value, (e4m3(code)/448)^(4/j) with the
    code's sign, as the product of ``expansion_factors`` A[e]·B[f] in float32 (S[f] for the
    subnormals, NaN for 0x7F / 0xFF)."""
    if device not in _TABLES:
        factors = expansion_factors()
        codes = torch.arange(256)
        e, f = (codes >> 3) & 15, codes & 7
        table = torch.where(e == 0, factors[:, 24 + f], factors[:, e] * factors[:, 16 + f])
        table = torch.where((codes & 0x7F) == 0x7F, float("nan"), table)
        table = torch.where(codes >= 0x80, -table, table)
        _TABLES[device] = table.to(device).contiguous()
    return _TABLES[device]


_TABLES: dict = {}


def quantize_blocks(x: Tensor, kind: str) -> tuple[Tensor, ...]:
    """x: (blocks, 256) → (uint8 codes, float32 absmax (blocks,)), and for the expanded kinds
    uint8 j (blocks,) as well."""
    x = x.to(torch.float32)
    a = x.abs()
    absmax = a.amax(dim=1, keepdim=True)
    if kind in EXPANDED:
        absmin = torch.where(a > 0, a, float("inf")).amin(dim=1, keepdim=True)  # NaN excluded too
        j = expansion_index(absmax, absmin).squeeze(1)
        inv = torch.ones_like(absmax) / absmax.clamp_min(_ABSMAX_FLOOR)  # the C kernel's division
        codes = e4m3_bits(expand_magnitudes(a * inv, j))
        codes = codes.clamp_min(1) if kind in NONNEGATIVE else codes | (
            (x.view(torch.int32) >> 24) & 0x80).to(torch.uint8)
        return codes, absmax.squeeze(1), j
    # a true division (the C kernel's): a Python number over a tensor is reciprocal × number in torch
    scaled = x * (torch.full_like(absmax, E4M3_MAX) / absmax.clamp_min(_ABSMAX_FLOOR))
    codes = e4m3_bits(scaled.abs()).clamp_min(1) if kind in NONNEGATIVE else e4m3_bits(scaled)
    return codes, absmax.squeeze(1)


def dequantize_blocks(codes: Tensor, absmax: Tensor, kind: str, dtype=torch.float32,
                      expand: Tensor | None = None) -> Tensor:
    if kind in EXPANDED:
        table = expanded_table(codes.device)
        j = torch.zeros_like(absmax, dtype=torch.int64) if expand is None else expand.to(torch.int64)
        values = table.view(-1)[j.unsqueeze(1) * 256 + codes.to(torch.int64)]
        return (values * absmax.to(torch.float32).unsqueeze(1)).to(dtype)
    return (e4m3_values(codes) * (absmax.to(torch.float32) / E4M3_MAX).unsqueeze(1)).to(dtype)
