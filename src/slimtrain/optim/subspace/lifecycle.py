"""A projected parameter's subspace over time: first allocation, refreshes, moment switches.

State keys of a projected parameter (all tensors): ``step`` and ``moment_step`` (float32 CPU
scalars; the rule's counter restarts when the moments are reset), the rule's moments, the basis as
``basis_store.py`` keeps it, ``limiter_norm`` when a limiter is on, and the lazy-refresh counters
(``refresh.py``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..._warnings import warn
from .. import stages
from ..lowbit import storage as lowbit
from ..rules import get_rule
from ..sharded.finder import sharded_select_basis
from ..util import name_seed
from . import basis_store, refresh
from .geometry import projected_shape, reproject_moments_
from .selectors import GRADIENT_SELECTORS, random_orthonormal_basis, select_basis

if TYPE_CHECKING:
    from ..groups import ParamPlan


def current_basis(group: dict[str, Any], p: Tensor, plan: ParamPlan, state: dict) -> Tensor:
    return basis_store.load(state, p.shape, plan.rank, plan.side, group, p.device)


def init_state(group, p: Tensor, plan: ParamPlan, state: dict, shape=None, whole=None) -> None:
    """The complete state of a projected parameter before its first step (zeros; the basis a
    placeholder until the first refresh): every key exists from the start, so a checkpoint
    template (torch.distributed.checkpoint) is whole and no dummy step is ever needed.
    ``shape``, ``whole``: this rank's update shape and the whole update's (a shard's differ)."""
    off = refresh.offset(group, plan.index, plan.count)
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["moment_step"] = torch.tensor(0.0, dtype=torch.float32)
    shape = projected_shape(p.shape, plan.rank, plan.side) if shape is None else shape
    lowbit.init_moments(state, lowbit.layout(group, plan.rule, p, shape, whole), p.device)
    if stages.active(group):
        state[stages.COUNTER] = torch.tensor(0.0, dtype=torch.float32)
    if group["limiter"] is not None:
        # at least float32 whatever the parameter (bf16 would make the 1% limit coarse)
        state["limiter_norm"] = torch.zeros((), dtype=torch.promote_types(p.dtype, torch.float32),
                                            device=p.device)
    if group["refresh"] == "lazy":
        refresh.lazy_init(state, group, off)
    basis_store.placeholder(state, p.shape, plan.rank, plan.side, group, p.device)


def is_first(state: dict) -> bool:
    """Whether the parameter has not been updated yet (a skipped step leaves it so)."""
    return int(state["step"].item()) == 0


def _switch(group, p: Tensor, plan: ParamPlan, state: dict, previous: Tensor | None,
            basis: Tensor | None, shapes=None) -> None:
    """Apply the switch policy to the moments at a basis change. Moments of a shard (its rows,
    or its columns on the left) carry over with the r×r overlap alone: no communication."""
    rule = get_rule(plan.rule)
    mine, whole = shapes or (projected_shape(p.shape, plan.rank, plan.side),) * 2
    layout = lowbit.layout(group, plan.rule, p, mine, whole)
    if group["switch"] == "reset":
        rule_keys = set(rule.moment_shapes(mine, group))  # the spike stages' scalars stay
        for key in lowbit.stored_shapes({k: v for k, v in layout.items() if k in rule_keys}):
            state[key].zero_()  # zero codes with zero scales are zero moments
        state["moment_step"].zero_()
    elif group["switch"] == "reproject":
        # Low-bit moments are carried in float32 and requantized; others in place.
        moments = {key: (lowbit.load_moment(state, key, *layout[key], dtype=None), kind)
                   for key, kind in rule.reprojectable.items()}
        reproject_moments_(moments, previous, basis, plan.side)
        for key, (value, _) in moments.items():
            lowbit.store_moment_(state, key, layout[key][0], value)


def refresh_due(group: dict[str, Any], plan: ParamPlan, state: dict) -> bool:
    """Whether the parameter's next step selects a new basis (always its first step)."""
    if is_first(state):
        return True
    off = refresh.offset(group, plan.index, plan.count)
    return refresh.due(group, state, int(state["step"].item()), off)


def maybe_refresh(group: dict[str, Any], p: Tensor, plan: ParamPlan, state: dict, *,
                  grad: Tensor | None = None, shards=None, shapes=None) -> Tensor | None:
    """Recompute the basis when due; returns the gradient projected on the new basis when the
    selector produced it as a by-product, else None. ``shards``: ``grad`` is this rank's rows of
    a row-sharded gradient (the refresh runs ``sharded/finder.py``; ``shapes`` as for
    ``init_state``)."""
    grad = p.grad if grad is None else grad
    if not refresh_due(group, plan, state):
        return None
    off = refresh.offset(group, plan.index, plan.count)
    first = is_first(state)
    step = int(state["step"].item())
    seed = name_seed(plan.name, step)
    method = group["basis"]
    if method == "gaussian":  # nothing to compare or carry over: a new seed, and maybe a reset
        basis_store.store(state, None, group, seed=seed)
        if not first and group["switch"] == "reset":
            _switch(group, p, plan, state, None, None, shapes)
        return None
    previous = None if first else current_basis(group, p, plan, state)
    generator = torch.Generator().manual_seed(seed)
    projected = None
    try:
        select = select_basis if shards is None else functools.partial(sharded_select_basis,
                                                                        shards=shards)
        basis, projected = select(
            grad, plan.rank, plan.side, method, previous=previous,
            power_iters=group["power_iters"], oversample=group["oversample"], generator=generator,
            refresh_index=refresh.refresh_index(group, step, off))
        if not torch.isfinite(basis).all():
            raise torch.linalg.LinAlgError("non-finite basis")
    except torch.linalg.LinAlgError as err:
        if previous is not None:
            warn(f"subspace refresh of {plan.name} failed ({err}); keeping the previous basis")
            if group["refresh"] == "lazy":
                refresh.lazy_after_refresh(state, group, step, None)
            return None
        warn(f"subspace refresh of {plan.name} failed ({err}); starting from a random "
             "orthonormal basis")
        basis = random_orthonormal_basis(p.shape, plan.rank, plan.side, generator, p.device)
        projected = None
    if method not in GRADIENT_SELECTORS:
        projected = None
    basis_store.store(state, basis, group)
    if basis_store.storage(group) == "packed":
        basis = current_basis(group, p, plan, state)  # project with what is stored
        projected = None
    if previous is not None:
        _switch(group, p, plan, state, previous, basis, shapes)
    if group["refresh"] == "lazy":
        sim = None if previous is None else refresh.similarity(basis, previous, plan.side)
        refresh.lazy_after_refresh(state, group, step, sim)
    return projected
