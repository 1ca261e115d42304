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

No dynamic range expansion (COAT's per-block x → sign(x)·|x/absmax|^k, k = log R_e4m3 / log R_block)
yet. Measured on a plain Adam simulation (8 LLaMA-like matrices, 50 steps, lr 1e-3, worst tensor's
‖p − p_fp32‖ / ‖p_fp32 − p_0‖): plain e4m3 0.052 (torchao's AdamWFp8 the same), expansion on M only
0.040, on V only 0.046, on both 0.032 (the 8-bit dynamic tree, on the tiny LLaMA of the tests where
plain e4m3 is also 0.052: 0.020). It needs a per-block k in
the state and a pow (log2 + exp2) per element in both directions, which the C kernel would have to
compute bit-identically to the torch reference; not done (see DESIGN.md, low-bit section).

The math is plain torch ops (CPU, CUDA, torch.compile; CUDA not run here: no GPU); ``cpu.c`` does
the same integer and float operations in C (decoding from the bits on AVX-512, from a table of
``e4m3_values`` in plain C), giving the same bits (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

E4M3_MAX = 448.0
KINDS = ("e4m3", "e4m3+")
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
    if kind == "e4m3+":
        return e4m3_bits(y.to(torch.float32).abs() * E4M3_MAX).clamp_min(1)
    return e4m3_bits(y.to(torch.float32) * E4M3_MAX)


def quantize_blocks(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """x: (blocks, 256) → (uint8 codes of x · 448/absmax, float32 absmax (blocks,))."""
    x = x.to(torch.float32)
    absmax = x.abs().amax(dim=1, keepdim=True)
    # a true division (the C kernel's): a Python number over a tensor is reciprocal × number in torch
    scaled = x * (torch.full_like(absmax, E4M3_MAX) / absmax.clamp_min(_ABSMAX_FLOOR))
    codes = e4m3_bits(scaled.abs()).clamp_min(1) if kind == "e4m3+" else e4m3_bits(scaled)
    return codes, absmax.squeeze(1)


def dequantize_blocks(codes: Tensor, absmax: Tensor, kind: str, dtype=torch.float32) -> Tensor:
    return (e4m3_values(codes) * (absmax.to(torch.float32) / E4M3_MAX).unsqueeze(1)).to(dtype)
