"""Recipes: named configurations of the pipeline with their authors' defaults.

``AdamW`` and ``GaLoreAdamW`` live here; the rest of the GaLore family is in ``family.py``. A
projected recipe passes two dicts to ``ProjectedRecipe._setup``: the keys only its projected group
carries (rank, refresh period, scale) and the options every group shares (the rule and its
hyperparameters), which are also the defaults of param groups written by hand.
"""

from __future__ import annotations

import inspect
from typing import Any

from .core import PipelineOptimizer
from .rest import rest_keys
from .targets import build_param_groups


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



def _adamw_signature(state_bits: int) -> inspect.Signature:
    """AdamW's signature with another default ``state_bits``: what the low-bit AdamWs accept (the
    memory planner reads recipe signatures)."""
    sig = inspect.signature(AdamW)
    return sig.replace(parameters=[p.replace(default=state_bits) if p.name == "state_bits" else p
                                   for p in sig.parameters.values()])


class AdamW8bit(AdamW):
    r"""AdamW with 8-bit block-wise quantized moments (Dettmers et al., "8-bit Optimizers via
    Block-wise Quantization", ICLR 2022): blocks of 256, absmax per block, dynamic tree map (signed
    for M, unsigned without zero for V); tensors under ``quantize_min_numel`` (4096) elements keep
    fp32 moments. Each step dequantizes, runs the one Adam in fp32 and requantizes, in one compiled
    pass per tensor (``fused=False``: the same function eagerly). ~0.254× AdamW's fp32 state."""

    state_formula = ("numel ≥ 4096: 2·(numel + 4·⌈numel/256⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")
    default_state_bits = 8

    def __init__(self, model_or_params, *args, **kwargs):
        kwargs.setdefault("state_bits", self.default_state_bits)
        super().__init__(model_or_params, *args, **kwargs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _adamw_signature(cls.default_state_bits)


class AdamW4bit(AdamW8bit):
    r"""AdamW with 4-bit block-wise quantized moments (Li et al., "Memory Efficient Optimizers with
    4-bit States", NeurIPS 2023; blocks of 128 as torchao): M with the signed dynamic tree map, V
    with a linear map without zero (a zero V code would divide by eps). Two codes per byte."""

    state_formula = ("numel ≥ 4096: 2·(⌈numel/2⌉ + 4·⌈numel/128⌉) bytes; smaller: 2·numel fp32 "
                     "moments; + one fp32 step counter per parameter")
    default_state_bits = 4


AdamW8bit.__signature__ = _adamw_signature(8)

class ProjectedRecipe(PipelineOptimizer):
    """Base of the recipes that project their target matrices.

    Recipes take the runtime options as ``**options``; their signatures advertise them as explicit
    keyword-only parameters (``__init_subclass__``), so ``inspect.signature(recipe)`` — which the
    memory planner uses to ask what a recipe accepts — lists exactly what a call may pass.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            init.__signature__ = _expanded_signature(cls, init)

    #: how the state of one projected m×n matrix (m ≤ n after choosing the side) is made up
    state_formula = ""

    def _setup(self, model_or_params, *, targets, rest: str, rank: int | None, refresh_every: int,
               scale: float, options: dict[str, Any], density: float | None = None, **shared) -> None:
        """Build the groups: the targets get ``rank``/``density``, ``refresh_every`` and ``scale``;
        ``shared`` (the rule and its hyperparameters) and the runtime ``options`` are defaults for
        every group, so galore-style groups written by hand (which carry just rank /
        update_proj_gap / scale / proj_type) get them too."""
        if "betas" in shared:
            shared["betas"] = tuple(shared["betas"])
        projected = dict(rank=rank, density=density, refresh_every=refresh_every, scale=scale)
        defaults = {**shared, **runtime_options(**options), "refresh_every": refresh_every, "scale": scale}
        groups = build_param_groups(model_or_params, projection=projected, targets=targets,
                                    rest=rest_keys(rest, shared["rule"]))
        PipelineOptimizer.__init__(self, groups, defaults)


def _expanded_signature(cls, init) -> inspect.Signature:
    """``init``'s signature with ``**kwargs`` replaced by what it forwards to: the parent recipe's
    parameters, or the runtime options for a direct subclass of ``ProjectedRecipe``."""
    sig = inspect.signature(init)
    fixed = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    if len(fixed) == len(sig.parameters):
        return sig
    parent = next((b for b in cls.__mro__[1:] if "__init__" in b.__dict__
                   and issubclass(b, ProjectedRecipe) and b is not ProjectedRecipe), None)
    source = inspect.signature(parent.__init__ if parent else runtime_options).parameters.values()
    taken = {p.name for p in fixed} | {"self", "model_or_params"}
    extra = [p.replace(kind=p.KEYWORD_ONLY) for p in source
             if p.name not in taken and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return sig.replace(parameters=fixed + extra)


def runtime_options(*, side: str = "auto", stagger: bool = False, power_iters: int = 1,
                    oversample: int = 8, eps_mode: str = "torch", foreach: bool = True,
                    fused: bool | None = None, check_finite: bool = True,
                    state_bits: int | None = None, quantize_min_numel: int = 4096,
                    stochastic_rounding: bool = False) -> dict[str, Any]:
    """The keyword-only options every projected recipe accepts, with the same meaning everywhere
    (see ``groups.GROUP_DEFAULTS``); an unknown name is a TypeError, as for any keyword.
    ``state_bits`` sets the precision of the projected matrices' moments (and of ``rest``'s when
    the rest rule names none: ``rest="adamw"`` keeps the parameter dtype, ``"adamw8bit"`` 8 bits)."""
    return dict(side=side, stagger=stagger, power_iters=power_iters, oversample=oversample,
                eps_mode=eps_mode, foreach=foreach, fused=fused, check_finite=check_finite,
                state_bits=state_bits, quantize_min_numel=quantize_min_numel,
                stochastic_rounding=stochastic_rounding)


class GaLoreAdamW(ProjectedRecipe):
    r"""GaLore with Adam (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection", ICML 2024, Alg. 2).

    For each target matrix W (m×n), every ``refresh_every`` steps the basis P (the top-``rank``
    singular vectors of the current gradient on the smaller side) is recomputed; every step
    ``R = PᵀG`` (or ``G Qᵀ``), Adam runs on R (state r × max(m, n)), and
    ``W ← W·(1 − lr·λ) − lr·α·P·Adam(R)``. Parameters outside ``targets`` train with the ``rest``
    rule (AdamW by default, ``"adafactor"`` for a factored second moment).

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
                     "counters; others: as the rest rule")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, refresh_every: int = 200,
                 scale: float = 0.25, basis: str = "randomized", switch: str = "keep", targets=None,
                 betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0, rest: str = "adamw",
                 *, side: str = "auto", stagger: bool = False, power_iters: int = 1,
                 oversample: int = 8, eps_mode: str = "torch", foreach: bool = True,
                 fused: bool | None = None, check_finite: bool = True,
                 state_bits: int | None = None, quantize_min_numel: int = 4096,
                 stochastic_rounding: bool = False):
        self._setup(model_or_params, targets=targets, rest=rest, rank=rank,
                    refresh_every=refresh_every, scale=scale, rule="adam", lr=lr, betas=betas, eps=eps,
                    weight_decay=weight_decay, basis=basis, switch=switch,
                    options=dict(side=side, stagger=stagger, power_iters=power_iters,
                                 oversample=oversample, eps_mode=eps_mode, foreach=foreach,
                                 fused=fused, check_finite=check_finite, state_bits=state_bits,
                                 quantize_min_numel=quantize_min_numel,
                                 stochastic_rounding=stochastic_rounding))


class GaLoreAdamW8bit(GaLoreAdamW):
    r"""GaLore with 8-bit Adam states (the GaLore paper's "8-bit GaLore"): the low-rank moments
    (r × max(m, n)) and, with the default ``rest="adamw8bit"``, the moments of the parameters
    outside ``targets`` are block-wise 8-bit (``rest="adamw"`` keeps those in the parameter dtype).
    Unlike galore-torch's GaLoreAdamW8bit it runs on CPU, leaves ``p.grad`` untouched and clones
    no weights."""

    state_formula = ("projected m×n: 2·(r·max(m,n) + 4·⌈r·max(m,n)/256⌉) bytes + r·min(m,n) fp32 "
                     "basis + 2 fp32 counters; others: as the rest rule (AdamW8bit)")

    def __init__(self, model_or_params, lr: float = 0.01, rank: int = 128, *,
                 rest: str = "adamw8bit", state_bits: int | None = 8, **kwargs):
        super().__init__(model_or_params, lr, rank, rest=rest, state_bits=state_bits, **kwargs)
