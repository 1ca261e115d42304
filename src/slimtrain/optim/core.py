"""The pipeline optimizer: one ``torch.optim.Optimizer`` that runs, per parameter,

    gradient ─► subspace selector (refresh.py, selectors.py) ─► R = project(G)
             ─► inner rule (rules.py: adam / adafactor / lion / natural)
             ─► back-map, residual, limiter (backmap.py) ─► decoupled weight decay and lr ─► W

Parameters in a group without ``rank`` skip the projection and go through the same rule with the
gradient itself (with Adam they equal ``torch.optim.AdamW`` bit for bit). Recipes (``AdamW``,
``GaLoreAdamW``, ``APOLLO``, ``Fira``, …) are configurations of this class; see ``recipes.py`` and
``family.py``. Group keys and their defaults are listed in ``groups.py``.

State is tensors only (moments, bases or seeds, step counters) so ``state_dict()`` loads with
``torch.load(weights_only=True)``; ``load_state_dict`` keeps every state tensor's dtype
(``state_io.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._warnings import warn
from . import lowbit
from .adam import fused_supported
from .backmap import apply_update_, reads_full_gradient
from .groups import GROUP_DEFAULTS, ParamPlan, check_group, plan_group
from .rules import RULES
from .state_io import STATE_FORMAT, StateIO
from .subspace import project, projected_shape
from .subspace_state import current_basis, maybe_refresh, refresh_due
from .targets import translate_galore_keys

__all__ = ["GROUP_DEFAULTS", "STATE_FORMAT", "ParamPlan", "PipelineOptimizer"]

def _grad_norms(grads: list[Tensor]) -> list[float]:
    """L2 norm of each gradient with one device sync; fp16/bf16 are summed in fp32 so a large
    but finite gradient is not mistaken for an overflow."""
    low = [i for i, g in enumerate(grads) if g.dtype in (torch.float16, torch.bfloat16)]
    high = [i for i, g in enumerate(grads) if g.dtype not in (torch.float16, torch.bfloat16)]
    norms: list[Tensor | None] = [None] * len(grads)
    for idx, kwargs in ((low, {"dtype": torch.float32}), (high, {})):
        if idx:
            for i, n in zip(idx, torch._foreach_norm([grads[i] for i in idx], 2, **kwargs)):
                norms[i] = n.float()
    return torch.stack(norms).tolist()


def _impl(group: dict[str, Any], tensors: list[Tensor], rule: str) -> str:
    """for-loop, foreach or fused. Only Adam has a fused kernel; other rules run foreach then."""
    fused = group["fused"]
    if rule != "adam":
        return "foreach" if group["foreach"] or fused else "forloop"
    if fused is None:
        fused = fused_supported(tensors, group["eps_mode"])
    elif fused and not fused_supported(tensors, group["eps_mode"]):
        raise ValueError('fused=True needs eps_mode="torch" and float tensors on cpu/cuda/mps/xpu; '
                         "pass fused=None to use it only where it applies")
    if fused:
        return "fused"
    return "foreach" if group["foreach"] else "forloop"


# A projected step holds every matrix's low-rank gradient and direction until they are applied.
# Stepping a group in chunks of about this many low-rank bytes bounds that transient (a 7B model
# would otherwise hold ~7 GB at once) while each foreach call still covers many tensors.
PROJECTED_CHUNK_BYTES = 64 * 2**20


def low_rank_bytes(p: Tensor, plan: ParamPlan) -> int:
    """Bytes of the low-rank gradient (r × max(m, n)) of a projected parameter, in its dtype."""
    return math.prod(projected_shape(p.shape, plan.rank, plan.side)) * p.element_size()


def chunk_by_bytes(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive index chunks whose sizes sum to at most ``limit`` (a larger item stands alone)."""
    chunks: list[list[int]] = []
    total = limit + 1
    for i, size in enumerate(sizes):
        if total + size > limit:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += size
    return chunks


class PipelineOptimizer(StateIO, torch.optim.Optimizer):
    """Runs the projection pipeline; recipes choose its parts and defaults."""

    def __init__(self, param_groups: list[dict[str, Any]], defaults: dict[str, Any]):
        self._plans: dict[Tensor, ParamPlan] = {}
        self._unnamed = 0
        self.grad_norm: float | None = None  # global L2 norm of the last step's gradients
        self._fused_backward = None  # the layer-wise handle while fuse_backward() is active
        super().__init__(param_groups, {**GROUP_DEFAULTS, **defaults})

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group = translate_galore_keys(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_group(group)
        self._plan(group)

    def _plan(self, group: dict[str, Any]) -> None:
        names = group.get("param_names")
        if names is None:
            names = [f"param{self._unnamed + i}" for i in range(len(group["params"]))]
            self._unnamed += len(names)
        for p, plan in zip(group["params"], plan_group(group, names)):
            self._plans[p] = plan

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints from older versions lack newer keys
            for key, value in GROUP_DEFAULTS.items():
                group.setdefault(key, value)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        if self._fused_backward is not None:  # parameters were updated in backward: finish the step
            return self._fused_backward.finish_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        norms_sq = 0.0
        checked = True
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group_norm_sq = self._step_params(group, params)
            if group_norm_sq is None:
                checked = False
            else:
                norms_sq += group_norm_sq
        self.grad_norm = math.sqrt(norms_sq) if checked else None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self._fused_backward is not None:  # its low-rank accumulators are gradients too
            self._fused_backward.discard()

    def _step_params(self, group: dict[str, Any], params: list[Tensor],
                     low_rank: dict[Tensor, Tensor] | None = None) -> float | None:
        """One optimizer step for ``params`` (all in ``group``, all with gradients).

        ``low_rank`` (layer-wise accumulation, ``fused_backward.py``) maps projected parameters to
        their gradient already projected on their current basis: their ``.grad`` is not read and
        their basis is not refreshed on this step (the caller checked ``refresh_due``).
        Returns the squared norm of their finite gradients, or None when not checked.
        """
        low_rank = low_rank or {}
        for p in params:
            if p not in low_rank and p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported; use a dense embedding")
        norm_sq = None
        if group["check_finite"]:
            params, norm_sq = self._drop_nonfinite(params, low_rank)
        plain: dict[str, list[Tensor]] = {}
        for p in params:
            if not self._plans[p].projected:
                plain.setdefault(self._plans[p].rule, []).append(p)
        for rule, tensors in plain.items():
            self._step_plain(group, rule, tensors)
        projected = [p for p in params if self._plans[p].projected]
        if projected:
            self._step_projected(group, projected, low_rank)
        return norm_sq

    def _drop_nonfinite(self, params: list[Tensor], low_rank: dict[Tensor, Tensor]
                        ) -> tuple[list[Tensor], float]:
        values = _grad_norms([low_rank[p] if p in low_rank else p.grad for p in params])
        keep = [p for p, v in zip(params, values) if math.isfinite(v)]
        if len(keep) < len(params):
            bad = [self._plans[p].name for p, v in zip(params, values) if not math.isfinite(v)]
            warn(f"skipped the update of {len(bad)} parameters whose gradient has NaN/Inf "
                 f"(state and subspace unchanged): {', '.join(bad[:5])}")
        return keep, sum(v * v for v in values if math.isfinite(v))

    # ------------------------------------------------------------------ the inner rule
    def _init_moments(self, state: dict[str, Tensor], rule: str, shape, like: Tensor,
                      group: dict[str, Any]) -> None:
        """Allocate the rule's moments (zeros) for an update of ``shape``, stored as the group's
        ``state_bits`` say (lowbit.py; by default in the parameter's dtype)."""
        lowbit.init_moments(state, lowbit.layout(group, rule, like, shape), like.device)

    def _run_rule(self, group: dict[str, Any], rule: str, grads: list[Tensor],
                  states: list[dict[str, Tensor]], count_key: str, params: list[Tensor] | None = None):
        """The one place where a rule reads and writes its moments. Moments kept in another
        precision than the parameter's (``state_bits``) take lowbit's dequantize → rule →
        requantize seam (for Adam: one compiled pass per tensor); the rest run the rule as it is."""
        kernel = RULES[rule]
        refs = params if params is not None else grads
        layouts = [lowbit.layout(group, rule, r, g.shape) for r, g in zip(refs, grads)]
        low = {i for i, lay in enumerate(layouts) if not lowbit.native(group, refs[i], lay)}
        results = {}
        for i in sorted(low):
            p = None if params is None else params[i]
            results[i] = lowbit.run_rule_(
                group, rule, layouts[i], grads[i], states[i], count_key, p,
                name="" if p is None else self._plans[p].name, impl=_impl(group, [grads[i]], rule))
        idx = [i for i in range(len(grads)) if i not in low]
        if idx:
            moments = [{k: states[i][k] for k in kernel.moment_shapes(grads[i].shape, group)} for i in idx]
            counts = [states[i][count_key] for i in idx]
            out = kernel.update([grads[i] for i in idx], moments, counts, group,
                                _impl(group, [refs[i] for i in idx], rule),
                                params=None if params is None else [params[i] for i in idx])
            if params is None:
                results.update({i: (d, f) for i, d, f in zip(idx, *out)})
        if params is not None:
            return None
        return [results[i][0] for i in range(len(grads))], [results[i][1] for i in range(len(grads))]

    def _step_plain(self, group: dict[str, Any], rule: str, params: list[Tensor]) -> None:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                self._init_moments(state, rule, p.shape, p, group)
            states.append(state)
        self._run_rule(group, rule, [p.grad for p in params], states, "step", params=params)

    def _step_projected(self, group: dict[str, Any], params: list[Tensor],
                        given: dict[Tensor, Tensor]) -> None:
        sizes = [low_rank_bytes(p, self._plans[p]) for p in params]
        for chunk in chunk_by_bytes(sizes, PROJECTED_CHUNK_BYTES):
            self._step_projected_chunk(group, [params[i] for i in chunk], given)

    def _step_projected_chunk(self, group: dict[str, Any], params: list[Tensor],
                              given: dict[Tensor, Tensor]) -> None:
        rule = group["rule"]
        low_rank, bases, states, firsts = [], [], [], []
        for p in params:
            plan, state = self._plans[p], self.state[p]
            firsts.append(not state)
            if p in given:  # accumulated on the current basis, which this step keeps
                assert state and not reads_full_gradient(group), plan.name
                R, basis = given[p], current_basis(group, p, plan, state)
            else:
                R, basis = self._refresh_and_project(group, p, plan, state)
            low_rank.append(R)
            bases.append(basis)
            states.append(state)
        directions, factors = self._run_rule(group, rule, low_rank, states, "moment_step")
        kernel = RULES[rule]
        for p, state, R, D, f, basis, first in zip(params, states, low_rank, directions, factors,
                                                    bases, firsts):
            state["step"] += 1
            # low-bit moments give a float32 direction: update a float32 copy of a bf16 weight,
            # then round it back (stochastically with ``stochastic_rounding``)
            target = p if D.dtype == p.dtype else p.to(D.dtype)
            apply_update_(target, p.grad, R, D, basis, self._plans[p].side, group=group, state=state,
                          factor=f, step_size=kernel.step_size(state["moment_step"].item(), group),
                          first=first)
            if target is not p:
                lowbit.write_rounded_(group, p, target, self._plans[p].name, state["step"])

    def moment(self, p: Tensor, key: str) -> Tensor:
        """Moment ``key`` of ``p`` (e.g. "exp_avg") as a float32 tensor in its logical shape —
        dequantized when it is stored in low bits."""
        plan, group = self._plans[p], self._group_of()[p]
        shape = projected_shape(p.shape, plan.rank, plan.side) if plan.projected else tuple(p.shape)
        storage, moment_shape = lowbit.layout(group, plan.rule, p, shape)[key]
        return lowbit.load_moment(self.state[p], key, storage, moment_shape)

    # ------------------------------------------------------------------ layer-wise seam
    # fused_backward.py steps one parameter at a time from its gradient hook; across micro-batches
    # it keeps only R = project(G) for a matrix whose next step needs nothing else.
    def takes_low_rank(self, group: dict[str, Any], p: Tensor) -> bool:
        """Whether ``p``'s steps can take its gradient as R = project(G) alone: a projected
        matrix whose back-map and residual do not read G (not APOLLO's scaling, not Fira's or
        FRUGAL's residuals). Its refresh steps still need G (``refresh_due``)."""
        return self._plans[p].projected and not reads_full_gradient(group)

    def refresh_due(self, group: dict[str, Any], p: Tensor) -> bool:
        """Whether ``p``'s next step selects a new basis from its gradient (always its first)."""
        return refresh_due(group, self._plans[p], self.state[p])

    def project_gradient(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> Tensor:
        """``grad`` projected on ``p``'s current basis (the R its next step would compute)."""
        plan = self._plans[p]
        return project(grad, current_basis(group, p, plan, self.state[p]), plan.side)

    def refresh_now(self, group: dict[str, Any], p: Tensor) -> Tensor:
        """Run ``p``'s due refresh from ``p.grad`` ahead of its step and return ``p.grad``
        projected on the new basis (layer-wise ``refresh_from="first"``)."""
        return self._refresh_and_project(group, p, self._plans[p], self.state[p])[0]

    def _refresh_and_project(self, group, p: Tensor, plan: ParamPlan, state: dict
                             ) -> tuple[Tensor, Tensor]:
        """(R, basis): refresh when due, then ``p.grad`` projected on the current basis."""
        fresh = maybe_refresh(self, group, p, plan, state)  # projection for free, if it ran
        basis = current_basis(group, p, plan, state)
        if fresh is not None:
            return fresh.to(p.grad.dtype).contiguous(), basis
        return project(p.grad, basis, plan.side), basis
