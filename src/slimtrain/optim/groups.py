"""Param groups: the pipeline's keys, each group's rule keys, validation, and the per-parameter plan.

A group carries the pipeline's keys (``PipelineOptions``: lr, weight decay, the projection, the
subspace, the state precision, …) and the keys of its own rule (its ``Hyper`` dataclass: Adam's
betas / eps / eps_mode, Lion's betas, Adafactor's beta1 / decay_rate / clip_threshold / eps, …) —
nothing of the other rules. Defaults come from, in order: the dataclasses, the optimizer's
defaults (a recipe's settings; when they name a rule, their rule keys reach only the groups of
that rule or of one related to it by ``Hyper`` inheritance), the group itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._warnings import warn
from . import stages
from .config import check, defaults_of, names_of, option
from .lowbit.storage import STATE_BITS
from .rules import get_rule, unprojected_rule
from .rules.adam import ADAMW_LR, AdamHyper
from .subspace.backmap import BACKMAPS, RESIDUALS
from .subspace.basis_store import PROJECTOR_BITS
from .subspace.geometry import SIDES, SWITCH_POLICIES, choose_side
from .subspace.refresh import REFRESH_POLICIES
from .subspace.selectors import ORTHONORMAL_SELECTORS, SELECTORS


@dataclass
class PipelineOptions:
    """Every pipeline key a group carries, with its default."""

    lr: float = option(1e-3, "learning rate", low=0)
    weight_decay: float = option(0.0, "decoupled weight decay λ: W ← W·(1 − lr·λ)", low=0)
    rule: str = option("adam", "inner rule (rules/: adam, lion, adafactor, natural, or one added "
                       "with register_rule)")
    rank: int | None = option(None, "projection rank; None: no projection (the rule runs on the "
                              "gradient itself)", low=1, integer=True, none_ok=True,
                              message="a positive integer (or None for no projection)")
    density: float | None = option(None, "instead of rank: rank = round(density · min(m, n)) per "
                                   "matrix (FRUGAL)", low=0, open_low=True, high=1, none_ok=True)
    refresh_every: int = option(200, "T: steps between subspace refreshes", low=1, integer=True)
    refresh: str = option("fixed", "fixed every T, or lazy (Q-GaLore's similarity test)",
                          choices=REFRESH_POLICIES)
    scale: float = option(1.0, "α: multiplies the back-mapped update (GaLore's / APOLLO's scale)",
                          low=0, open_low=True)
    basis: str = option("randomized", "subspace selector (subspace/selectors.py)", choices=SELECTORS)
    switch: str = option("keep", "the moments at a refresh: keep / reset / reproject",
                         choices=SWITCH_POLICIES)
    side: str = option("auto", "which side to project: auto (state r×max(m,n)) / left / right / "
                       "reverse", choices=SIDES)
    stagger: bool = option(False, "spread the refreshes of a group's matrices over the T steps")
    power_iters: int = option(1, "randomized selector: power iterations (a warm start counts as "
                              "one)", low=0, integer=True)
    oversample: int = option(8, "randomized selector: extra columns of the range finder", low=0,
                             integer=True)
    backmap: str = option("project", "project (α·P·D) / channel / tensor (APOLLO's norm-ratio "
                          "scaling)", choices=BACKMAPS)
    residual: str = option("none", "none / fira / sign / sgd: the part of G outside the subspace",
                           choices=RESIDUALS)
    residual_scale: float = option(1.0, "FRUGAL: the state-free residual's lr is lr·α·residual_scale",
                                   low=0)
    limiter: float | None = option(None, "norm-growth limiter γ (1.01 in Fira/APOLLO); None: off",
                                   low=1, none_ok=True)
    projector_bits: int | None = option(None, "store the basis quantized: 8 or 4 bits (two per "
                                        "byte); None: float32", choices=PROJECTOR_BITS)
    projector_group: int = option(256, "numbers per quantization group of the basis", low=1,
                                  integer=True)
    lazy_threshold: float = option(0.4, "lazy refresh: mean |cos| at or above which the gap grows",
                                   low=0, high=1)
    lazy_queue: int = option(5, "lazy refresh: similarities averaged per decision", low=1,
                             integer=True)
    lazy_growth: float = option(2, "lazy refresh: factor by which the gap grows / shrinks", low=1,
                                open_low=True)
    foreach: bool = option(True, "multi-tensor kernels for the elementwise parts (False: for-loop)")
    fused: bool | None = option(None, "torch's fused Adam kernel (and the low-bit kernels); None: "
                                "where it applies")
    check_finite: bool = option(True, "skip (and report) parameters whose gradient has NaN/Inf")
    state_bits: int | str | None = option(None, "the rule's moments in the parameter's dtype "
                                          "(None), fp32 / bf16 (32 / 16), block-wise quantized "
                                          "(8 / 4) or float8 e4m3 codes per block (\"fp8\", COAT)",
                                          choices=STATE_BITS)
    fp8_expansion: bool = option(True, "state_bits=\"fp8\": COAT's dynamic range expansion (a "
                                 "per-block exponent; finer codes, a slower CPU step); False: "
                                 "plain e4m3 codes scaled by 448/absmax, as torchao's AdamWFp8")
    quantize_min_numel: int = option(4096, "tensors with fewer elements keep fp32 moments when "
                                     "quantizing", low=0, integer=True)
    stochastic_rounding: bool = option(False, "bf16 parameters: round each update stochastically")
    reset_every: int | None = option(None, "zero the rule's moments every this many steps (SPAM's "
                                     "ΔT, Stable-SPAM's update_proj_gap); None: never (stages.py)",
                                     low=1, integer=True, none_ok=True)
    reset_warmup: int = option(0, "SPAM: cosine warm-up of the update over this many steps after "
                               "each reset", low=0, integer=True)
    reset_count: bool = option(False, "a reset restarts the rule's step count (bias correction) too "
                               "(Stable-SPAM)")
    spike_threshold: float | None = option(None, "SPAM's spike clipping θ: g² > θ·V is clipped to "
                                           "√(θ·V); None: off", low=0, open_low=True, none_ok=True)
    spike_after: int = option(20, "SPAM: steps (from the start and after each reset) before spike "
                              "clipping begins", low=0, integer=True)
    clip_decay: float | None = option(None, "Stable-SPAM's AdaClip: decay γ₃ of the running "
                                      "max|g|; None: off", low=0, high=1, open_high=True,
                                      none_ok=True)
    norm_decays: tuple | None = option(None, "Stable-SPAM's AdaGN: decays (γ₁, γ₂) of the running "
                                       "gradient norm and its square; None: off", kind="betas",
                                       none_ok=True)
    norm_eps: float = option(1e-8, "AdaGN: added to the running norm's root mean square", low=0)
    weight_norm: bool = option(False, "keep each matrix as diag(g)·V/‖V‖ and train the direction "
                               "V through the pipeline, the magnitudes g with Adam (GradNormLoRP; "
                               "weight_norm.py)")
    fallback: dict | None = option(None, "a matrix-only rule's non-matrix parameters train with "
                                   "AdamW at AdamW's own lr/betas/eps; keys here override them")


GROUP_DEFAULTS: dict[str, Any] = defaults_of(PipelineOptions)
PIPELINE_KEYS = frozenset(GROUP_DEFAULTS)


@dataclass(frozen=True)
class ParamPlan:
    """How one parameter is handled; derived from its group and shape, never stored."""

    name: str
    rank: int | None        # None → not projected
    rule: str = "adam"      # the inner rule that runs for this parameter
    side: str = ""
    index: int = 0          # position among the group's projected parameters (for staggering)
    count: int = 1

    @property
    def projected(self) -> bool:
        return self.rank is not None


def rule_keys(rule: str) -> tuple[str, ...]:
    return names_of(get_rule(rule).Hyper)


def fill_group(group: dict[str, Any], defaults: dict[str, Any], recipe_rule: str | None = None
               ) -> dict[str, Any]:
    """``group`` with every key of the pipeline and of its rule, defaulted (module docstring).
    ``recipe_rule``: the rule the ``defaults`` were written for (None: any rule that has the key
    takes the default)."""
    rule = get_rule(group.get("rule", recipe_rule or "adam"))
    related = True
    if recipe_rule is not None:
        recipe = get_rule(recipe_rule)
        related = issubclass(rule.Hyper, recipe.Hyper) or issubclass(recipe.Hyper, rule.Hyper)
    own = set(names_of(rule.Hyper))
    values = {**GROUP_DEFAULTS, **defaults_of(rule.Hyper)}
    values.update({k: v for k, v in defaults.items()
                   if k in PIPELINE_KEYS or (related and k in own)})
    values.update(group)
    if isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])
    return values


def split_matrix_only(group: dict[str, Any], names: list[str]) -> list[tuple[dict, list[str]]]:
    """(group, names) pairs: a group whose rule works on matrices only keeps its 2-D parameters;
    the others go to an AdamW group with AdamW's own lr, betas and eps (overridden by the group's
    ``fallback``), the same weight decay and state precision — one warning per group."""
    if not get_rule(group["rule"]).matrix_only:
        return [(group, names)]
    params = list(group["params"])
    flat = [i for i, p in enumerate(params) if p.dim() != 2]
    if not flat:
        return [(group, names)]
    fallback = {"lr": ADAMW_LR, **defaults_of(AdamHyper), **(group["fallback"] or {})}
    adamw = {k: v for k, v in group.items() if k in PIPELINE_KEYS}
    adamw.update(params=[params[i] for i in flat], rule="adam", rank=None, density=None, **fallback)
    warn(f"{len(flat)} parameters of a group whose rule {group['rule']!r} works on matrices only "
         f"are trained with AdamW (lr {fallback['lr']:g}; set fallback={{...}} to change it): "
         f"{', '.join(names[i] for i in flat[:5])}")
    keep = [i for i in range(len(params)) if i not in set(flat)]
    out = [] if not keep else [({**group, "params": [params[i] for i in keep]},
                                [names[i] for i in keep])]
    return out + [(adamw, [names[i] for i in flat])]


def check_group(group: dict[str, Any]) -> None:
    rule = get_rule(group["rule"])
    check(PipelineOptions, group)
    check(rule.Hyper, group)
    if group["rank"] is not None and group["density"] is not None:
        raise ValueError("give either rank or density, not both")
    fallback = group["fallback"]
    if fallback is not None:
        if not isinstance(fallback, dict):
            raise ValueError(f"fallback must be a dict of AdamW settings, got {fallback!r}")
        allowed = {"lr", "weight_decay", *names_of(AdamHyper)}
        unknown = set(fallback) - allowed
        if unknown:
            raise ValueError(f"fallback takes {', '.join(sorted(allowed))}, not {sorted(unknown)}")
        check(PipelineOptions, fallback)
        check(AdamHyper, fallback)
    stages.check(group, rule)
    _check_combination(group)


def _check_combination(group: dict[str, Any]) -> None:
    if group["backmap"] != "project" and group["residual"] != "none":
        raise ValueError(f"backmap={group['backmap']!r} already uses the whole gradient; "
                         "use residual='none' with it")
    if group["limiter"] is not None and group["backmap"] == "project" and group["residual"] != "fira":
        raise ValueError("the limiter acts on a full-rank term: use it with backmap='channel'/"
                         "'tensor' or residual='fira' (or set limiter=None)")
    if group["switch"] == "reproject":
        rule = get_rule(group["rule"])
        if not rule.reprojectable:
            raise ValueError(f"switch='reproject' needs a rule with linear moments (adam, lion), "
                             f"not {group['rule']!r}; use 'keep' or 'reset'")
        if group["basis"] not in ORTHONORMAL_SELECTORS:
            raise ValueError(f"switch='reproject' needs an orthonormal basis, not "
                             f"{group['basis']!r}; use 'keep' or 'reset'")
    if group["weight_norm"] and group["rule"] != "adam":
        raise ValueError(f"weight_norm trains the magnitudes with Adam and needs the adam rule, "
                         f"not {group['rule']!r}")
    if group["projector_bits"] is not None and group["basis"] == "gaussian":
        raise ValueError("the gaussian basis is stored as a seed already; drop projector_bits")
    if group["refresh"] == "lazy" and group["basis"] not in ("svd", "randomized"):
        raise ValueError("lazy refresh compares gradient subspaces: use basis='svd' or 'randomized'")


def plan_group(group: dict[str, Any], names: list[str]) -> list[ParamPlan]:
    rank, density = group["rank"], group["density"]
    rule, fallback = group["rule"], unprojected_rule(group["rule"])
    if rank is None and density is None:
        return [ParamPlan(n, None, fallback) for n in names]
    plans, flat, full = [], [], []
    for name, p in zip(names, group["params"]):
        r = rank if rank is not None else (max(1, round(density * min(p.shape))) if p.dim() == 2 else 0)
        if p.dim() != 2:
            flat.append(name)
            plans.append(ParamPlan(name, None, fallback))
        elif r >= min(p.shape):
            full.append(name)
            plans.append(ParamPlan(name, None, fallback))
        else:
            plans.append(ParamPlan(name, r, rule, choose_side(p.shape, group["side"])))
    if flat:
        warn(f"{len(flat)} parameters in a projected group are not 2-D and are trained "
             f"with the full-rank {fallback} rule: {', '.join(flat[:5])}")
    if full:
        what = f"rank {rank}" if rank is not None else f"density {density}"
        warn(f"{what} >= min(rows, cols) for {len(full)} parameters, so projecting saves nothing; "
             f"they are trained with the full-rank {fallback} rule: {', '.join(full[:5])}")
    count = sum(pl.projected for pl in plans)
    index = 0
    for i, pl in enumerate(plans):
        if pl.projected:
            plans[i] = dataclasses.replace(pl, index=index, count=count)
            index += 1
    return plans
