"""Param-group keys: their defaults, validation, and the per-parameter plan derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._warnings import warn
from . import lowbit
from .adam import EPS_MODES
from .backmap import BACKMAPS, RESIDUALS
from .basis_store import PROJECTOR_BITS
from .refresh import REFRESH_POLICIES
from .rules import RULES, plain_rule
from .selectors import ORTHONORMAL_SELECTORS, SELECTORS
from .subspace import SIDES, SWITCH_POLICIES, choose_side

# Every key a group may carry, with the value used when neither the recipe nor the group sets it.
GROUP_DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, eps_mode="torch",
    rule="adam",            # inner rule: adam / adafactor / lion / natural (rules.py)
    rank=None,              # None: no projection (the rule runs on the gradient itself)
    density=None,           # instead of rank: rank = round(density · min(m, n)) per matrix (FRUGAL)
    refresh_every=200,      # T: steps between subspace refreshes
    refresh="fixed",        # fixed every T, or lazy (Q-GaLore's similarity test; refresh.py)
    scale=1.0,              # α: multiplies the back-mapped update (GaLore's / APOLLO's "scale")
    basis="randomized",     # subspace selector (selectors.py)
    switch="keep",          # what happens to the moments at a refresh: keep / reset / reproject
    side="auto",            # which side to project: auto (state r×max(m,n)) / left / right / reverse
    stagger=False,          # spread the refreshes of a group's matrices over the T steps
    power_iters=1,          # randomized selector: power iterations (warm start counts as one)
    oversample=8,           # randomized selector: extra columns of the range finder
    backmap="project",      # project (α·P·D) / channel / tensor (APOLLO's norm-ratio scaling)
    residual="none",        # none / fira / sign / sgd: the part of G outside the subspace
    residual_scale=1.0,     # FRUGAL: the state-free residual's lr is lr · α · residual_scale
    limiter=None,           # norm-growth limiter γ (1.01 in Fira/APOLLO), None = off
    projector_bits=None,    # store the basis quantized: 8 or 4 (packed two per byte), None = fp32
    projector_group=256,    # numbers per quantization group of the basis
    lazy_threshold=0.4,     # lazy refresh: mean |cos| at or above which the gap grows
    lazy_queue=5,           # lazy refresh: similarities averaged per decision
    lazy_growth=2,          # lazy refresh: factor by which the gap grows / shrinks
    natural_history=20,     # natural rule: low-rank gradients kept for the Fisher
    natural_damping=1e-3,   # natural rule: λ of F = λI + HHᵀ
    decay_rate=-0.8,        # adafactor: β₂ₜ = 1 − t^decay_rate
    clip_threshold=1.0,     # adafactor: RMS bound of the update
    factored_eps=1e-30,     # adafactor: added to G² before averaging
    adafactor_beta1=None,   # adafactor: first-moment decay, None = no first moment
    foreach=True,           # multi-tensor kernels for the elementwise parts (False: for-loop)
    fused=None,             # torch's fused Adam kernel; None = use it where it applies
    check_finite=True,      # skip (and report) parameters whose gradient has NaN/Inf
    # State precision (lowbit.py): the rule's moments in the parameter's dtype (None), fp32/bf16
    # (32/16) or block-wise quantized (8/4); smaller tensors keep fp32 moments when quantizing.
    state_bits=None,
    quantize_min_numel=4096,
    stochastic_rounding=False,  # bf16 parameters: round each update stochastically
)


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


def _number(group, key, *, low=None, high=None, low_open=False, integer=False, none_ok=False):
    value = group[key]
    if value is None and none_ok:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (not integer or isinstance(value, int))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
        bound += "" if high is None else f" and <= {high}"
        kind = "an integer" if integer else "a number"
        extra = " (or None)" if none_ok else ""
        raise ValueError(f"{key} must be {kind}{bound}{extra}, got {value!r}")


def check_group(group: dict[str, Any]) -> None:
    _number(group, "lr", low=0)
    b1, b2 = group["betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got {group['betas']!r}")
    _number(group, "eps", low=0)
    _number(group, "weight_decay", low=0)
    rank = group["rank"]
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ValueError(f"rank must be a positive integer (or None for no projection), got {rank!r}")
    _number(group, "density", low=0, high=1, low_open=True, none_ok=True)
    if rank is not None and group["density"] is not None:
        raise ValueError("give either rank or density, not both")
    _number(group, "refresh_every", low=1, integer=True)
    _number(group, "scale", low=0, low_open=True)
    choices = (("eps_mode", EPS_MODES), ("basis", SELECTORS), ("switch", SWITCH_POLICIES),
               ("side", SIDES), ("rule", tuple(RULES)), ("backmap", BACKMAPS),
               ("residual", RESIDUALS), ("refresh", REFRESH_POLICIES),
               ("projector_bits", PROJECTOR_BITS))
    for key, allowed in choices:
        if group[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {group[key]!r}")
    if group["power_iters"] < 0 or group["oversample"] < 0:
        raise ValueError("power_iters and oversample must be >= 0")
    _number(group, "residual_scale", low=0)
    _number(group, "limiter", low=1, none_ok=True)
    _number(group, "projector_group", low=1, integer=True)
    _number(group, "lazy_threshold", low=0, high=1)
    _number(group, "lazy_queue", low=1, integer=True)
    _number(group, "lazy_growth", low=1, low_open=True)
    _number(group, "natural_history", low=1, integer=True)
    _number(group, "natural_damping", low=0, low_open=True)
    _number(group, "clip_threshold", low=0, low_open=True)
    _number(group, "factored_eps", low=0)
    _number(group, "adafactor_beta1", low=0, high=1, none_ok=True)
    if not -1 <= group["decay_rate"] < 0:
        raise ValueError(f"decay_rate must lie in [-1, 0), got {group['decay_rate']!r}")
    lowbit.check_group(group)
    _check_combination(group)


def _check_combination(group: dict[str, Any]) -> None:
    if group["backmap"] != "project" and group["residual"] != "none":
        raise ValueError(f"backmap={group['backmap']!r} already uses the whole gradient; "
                         "use residual='none' with it")
    if group["limiter"] is not None and group["backmap"] == "project" and group["residual"] != "fira":
        raise ValueError("the limiter acts on a full-rank term: use it with backmap='channel'/"
                         "'tensor' or residual='fira' (or set limiter=None)")
    if group["switch"] == "reproject":
        if not RULES[group["rule"]].reprojectable or group["rule"] == "natural":
            raise ValueError(f"switch='reproject' needs a rule with linear moments (adam, lion), "
                             f"not {group['rule']!r}; use 'keep' or 'reset'")
        if group["basis"] not in ORTHONORMAL_SELECTORS:
            raise ValueError(f"switch='reproject' needs an orthonormal basis, not "
                             f"{group['basis']!r}; use 'keep' or 'reset'")
    if group["projector_bits"] is not None and group["basis"] == "gaussian":
        raise ValueError("the gaussian basis is stored as a seed already; drop projector_bits")
    if group["refresh"] == "lazy" and group["basis"] not in ("svd", "randomized"):
        raise ValueError("lazy refresh compares gradient subspaces: use basis='svd' or 'randomized'")


def plan_group(group: dict[str, Any], names: list[str]) -> list[ParamPlan]:
    rank, density = group["rank"], group["density"]
    rule, fallback = group["rule"], plain_rule(group["rule"])
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
            plans[i] = ParamPlan(pl.name, pl.rank, pl.rule, pl.side, index, count)
            index += 1
    return plans
