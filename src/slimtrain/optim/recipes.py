"""Recipes: named configurations of the pipeline with their authors' defaults."""

from __future__ import annotations

from .core import PipelineOptimizer
from .targets import build_param_groups

# ``rest=`` of the projected recipes: the state precision of the parameters outside ``targets``.
REST_STATE_BITS = {"adamw": None, "adamw32": 32, "adamw16": 16, "adamw8bit": 8, "adamw4bit": 4}


def _rest_groups(groups, rest):
    """Give the unprojected groups (embeddings, head, norms) the precision ``rest`` names."""
    if rest is None:
        return groups
    if rest not in REST_STATE_BITS:
        raise ValueError(f"rest must be one of {sorted(REST_STATE_BITS)} (or None: the same "
                         f"state_bits as the projected matrices), got {rest!r}")
    return [g if "rank" in g else {**g, "state_bits": REST_STATE_BITS[rest]} for g in groups]


class AdamW(PipelineOptimizer):
    r"""AdamW (Loshchilov & Hutter, 2019) through slimtrain's pipeline with no projection.

    Per parameter: ``W ← W·(1 − lr·λ)``; ``M ← β₁M + (1−β₁)G``; ``V ← β₂V + (1−β₂)G²``;
    ``W ← W − lr · (M/(1−β₁ᵗ)) / (√(V/(1−β₂ᵗ)) + ε)``. Equals ``torch.optim.AdamW`` bit for bit
    (same defaults) — it exists so every recipe shares one Adam and one state format.
    """

    state_formula = "2·numel moments (parameter dtype) + one fp32 step counter per parameter"

    def __init__(self, model_or_params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, eps_mode: str = "torch", foreach: bool = True,
                 fused: bool | None = None, check_finite: bool = True, state_bits: int | None = None,
                 quantize_min_numel: int = 4096, stochastic_rounding: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        eps_mode=eps_mode, foreach=foreach, fused=fused, check_finite=check_finite,
                        state_bits=state_bits, quantize_min_numel=quantize_min_numel,
                        stochastic_rounding=stochastic_rounding)
        super().__init__(build_param_groups(model_or_params, projection=None), defaults)


class AdamW8bit(AdamW):
    r"""AdamW with 8-bit block-wise quantized moments (Dettmers et al., "8-bit Optimizers via
    Block-wise Quantization", ICLR 2022): blocks of 256, absmax per block, dynamic tree map (signed
    for M, unsigned for V); tensors under ``quantize_min_numel`` (4096) elements keep fp32 moments.
    Each step dequantizes, runs the same Adam in fp32 and requantizes, in one compiled pass per
    tensor (``fused=False``: the eager reference). ~0.254× AdamW's fp32 state."""

    state_formula = ("numel ≥ 4096: 2·(numel + 4·⌈numel/256⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")

    def __init__(self, model_or_params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **kwargs):
        kwargs.setdefault("state_bits", 8)
        super().__init__(model_or_params, lr, betas, eps, weight_decay, **kwargs)


class AdamW4bit(AdamW):
    r"""AdamW with 4-bit block-wise quantized moments (Li et al., "Memory Efficient Optimizers with
    4-bit States", NeurIPS 2023; blocks of 128 as torchao): M with the signed dynamic tree map, V
    with a linear map without zero (a zero V code would divide by eps). Two codes per byte."""

    state_formula = ("numel ≥ 4096: 2·(⌈numel/2⌉ + 4·⌈numel/128⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")

    def __init__(self, model_or_params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **kwargs):
        kwargs.setdefault("state_bits", 4)
        super().__init__(model_or_params, lr, betas, eps, weight_decay, **kwargs)


class GaLoreAdamW(PipelineOptimizer):
    r"""GaLore with Adam (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection", ICML 2024, Alg. 2).

    For each target matrix W (m×n), every ``refresh_every`` steps the basis P (the top-``rank``
    singular vectors of the current gradient on the smaller side) is recomputed; every step
    ``R = PᵀG`` (or ``G Qᵀ``), Adam runs on R (state r × max(m, n)), and
    ``W ← W·(1 − lr·λ) − lr·α·P·Adam(R)``. Parameters outside ``targets`` train with AdamW.

    Differences from galore-torch 1.0, all deliberate: the default basis is a warm-started
    randomized SVD (``basis="svd"`` gives galore-torch's exact SVD); eps is added after bias
    correction as in torch's AdamW (``eps_mode="hf"`` reproduces galore-torch's placement);
    weight decay is applied before the update, as torch does (galore-torch applies it after).
    Matrices with ``rank >= min(m, n)`` fall back to AdamW with a warning instead of keeping a
    full-size "low-rank" state.

    Param groups written for ``galore_torch.GaLoreAdamW`` (``rank``, ``update_proj_gap``,
    ``scale``, ``proj_type``) are accepted unchanged.
    """

    state_formula = ("projected m×n: 2·r·max(m,n) moments + r·min(m,n) fp32 basis + 2 fp32 "
                     "counters; others: as AdamW")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, basis: str = "randomized", switch: str = "keep", targets=None,
                 betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0, *,
                 side: str = "auto", stagger: bool = False, power_iters: int = 1,
                 oversample: int = 8, eps_mode: str = "torch", foreach: bool = True,
                 fused: bool | None = None, check_finite: bool = True,
                 state_bits: int | None = None, rest: str | None = None,
                 quantize_min_numel: int = 4096, stochastic_rounding: bool = False):
        projection = dict(rank=rank, refresh_every=refresh_every, scale=scale)
        # Group-level options that only matter for projected groups are defaults for all groups,
        # so galore-style groups (which carry just rank/update_proj_gap/scale/proj_type) get them.
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        eps_mode=eps_mode, refresh_every=refresh_every, scale=scale, basis=basis,
                        switch=switch, side=side, stagger=stagger, power_iters=power_iters,
                        oversample=oversample, foreach=foreach, fused=fused,
                        check_finite=check_finite, state_bits=state_bits,
                        quantize_min_numel=quantize_min_numel,
                        stochastic_rounding=stochastic_rounding)
        groups = build_param_groups(model_or_params, projection=projection, targets=targets)
        super().__init__(_rest_groups(groups, rest), defaults)


class GaLoreAdamW8bit(GaLoreAdamW):
    r"""GaLore with 8-bit Adam states (the GaLore paper's "8-bit GaLore"): the low-rank moments
    (r × max(m, n)) and, by default, the moments of the parameters outside ``targets`` are
    block-wise 8-bit (``rest="adamw"`` keeps those in the parameter dtype). Unlike galore-torch's
    GaLoreAdamW8bit it runs on CPU, leaves ``p.grad`` untouched and clones no weights."""

    state_formula = ("projected m×n: 2·(r·max(m,n) + 4·⌈r·max(m,n)/256⌉) bytes + r·min(m,n) fp32 "
                     "basis + 2 fp32 counters; others: as AdamW8bit")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, **kwargs):
        kwargs.setdefault("state_bits", 8)
        super().__init__(model_or_params, lr, rank, **kwargs)
