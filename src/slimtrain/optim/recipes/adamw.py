"""AdamW and its 8-bit / 4-bit states.

| part | where |
|---|---|
| rule: Adam (for-loop, foreach, torch's fused kernel) | ``rules/adam.py`` |
| weight decay | ``rules/base.decay_`` |
| 8/4-bit moments: codec, storage, one-pass step, C kernel | ``lowbit/codec.py``, ``storage.py``, ``kernel.py``, ``native.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rules.adam import ADAMW_LR, AdamHyper
from .base import Base, Recipe, Runtime, like


@dataclass
class AdamWConfig(Runtime, AdamHyper, Base):
    lr: float = like(Base, "lr", ADAMW_LR)
    weight_decay: float = like(Base, "weight_decay", 1e-2)


class AdamW(Recipe):
    r"""AdamW (Loshchilov & Hutter, 2019) through slimtrain's pipeline with no projection.

    Per parameter: ``W ← W·(1 − lr·λ)``; ``M ← β₁M + (1−β₁)G``; ``V ← β₂V + (1−β₂)G²``;
    ``W ← W − lr · (M/(1−β₁ᵗ)) / (√(V/(1−β₂ᵗ)) + ε)``. Equals ``torch.optim.AdamW`` bit for bit
    (same defaults) — it exists so every recipe shares one Adam and one state format.
    """

    Config = AdamWConfig
    state_formula = "2·numel moments (parameter dtype) + one fp32 step counter per parameter"


@dataclass
class AdamW8bitConfig(AdamWConfig):
    state_bits: int | str | None = like(Runtime, "state_bits", 8)


class AdamW8bit(AdamW):
    r"""AdamW with 8-bit block-wise quantized moments (Dettmers et al., "8-bit Optimizers via
    Block-wise Quantization", ICLR 2022): blocks of 256, absmax per block, dynamic tree map (signed
    for M, unsigned without zero for V); tensors under ``quantize_min_numel`` (4096) elements keep
    fp32 moments. Each step dequantizes, runs the one Adam in fp32 and requantizes, in one pass per
    tensor (the C kernel on CPUs, torch.compile elsewhere; ``fused=False``: the same step eagerly).
    ~0.254× AdamW's fp32 state."""

    Config = AdamW8bitConfig
    state_formula = ("numel ≥ 4096: 2·(numel + 4·⌈numel/256⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")


@dataclass
class AdamW4bitConfig(AdamWConfig):
    state_bits: int | str | None = like(Runtime, "state_bits", 4)


class AdamW4bit(AdamW):
    r"""AdamW with 4-bit block-wise quantized moments (Li et al., "Memory Efficient Optimizers with
    4-bit States", NeurIPS 2023; blocks of 128 as torchao): M with the signed dynamic tree map, V
    with a linear map without zero (a zero V code would divide by eps). Two codes per byte."""

    Config = AdamW4bitConfig
    state_formula = ("numel ≥ 4096: 2·(⌈numel/2⌉ + 4·⌈numel/128⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")
