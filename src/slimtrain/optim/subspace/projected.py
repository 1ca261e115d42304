"""The projected path of a step (a mixin of ``PipelineOptimizer``): in chunks of low-rank bytes,
refresh the basis when due, project, run the rule (the optimizer's ``_run_rule``), map back — and
the seam the layer-wise mode steps one matrix at a time through."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..lowbit import storage as lowbit
from ..rules import get_rule
from ..sharded import step as sharded
from ..sharded.context import local
from .backmap import apply_update_, reads_full_gradient
from .geometry import project, projected_shape
from .lifecycle import current_basis, is_first, maybe_refresh, refresh_due

if TYPE_CHECKING:
    from ..groups import ParamPlan


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


class ProjectedStep:
    def _step_projected(self, group: dict[str, Any], params: list[Tensor],
                        given: dict[Tensor, Tensor], inputs: dict[str, Any]) -> None:
        sizes = [low_rank_bytes(p, self._plans[p]) for p in params]
        for chunk in chunk_by_bytes(sizes, PROJECTED_CHUNK_BYTES):
            self._step_projected_chunk(group, [params[i] for i in chunk], given, inputs)

    def _step_projected_chunk(self, group: dict[str, Any], params: list[Tensor],
                              given: dict[Tensor, Tensor], inputs: dict[str, Any]) -> None:
        rule = group["rule"]
        whole_R, low_rank, bases, states, firsts = [], [], [], [], []
        for p in params:
            plan, state, shards = self._plans[p], self.state[p], self._shards.get(p)
            firsts.append(is_first(state))
            if p in given:  # accumulated on the current basis, which this step keeps
                assert not reads_full_gradient(group), plan.name
                R, basis = given[p], current_basis(group, p, plan, state)
            else:
                R, basis = self._refresh_and_project(group, p, plan, state)
            whole_R.append(R)  # a shard's rows (right) or the whole R (left)
            low_rank.append(R if shards is None else sharded.rule_part(R, plan.side, shards))
            bases.append(basis)
            states.append(state)
        directions, factors = self._run_rule(group, rule, low_rank, states, "moment_step", params,
                                             inputs, apply=False)
        kernel = get_rule(rule)
        for p, state, R, D, f, basis, first in zip(params, states, whole_R, directions, factors,
                                                    bases, firsts):
            state["step"] += 1
            plan, shards = self._plans[p], self._shards.get(p)
            weights, G = local(p), local(p.grad)
            if shards is not None:
                D = sharded.whole_direction(D, plan.side, shards, R.shape[1])
                basis = sharded.basis_rows(basis, plan.side, shards)
            # low-bit moments give a float32 direction: update a float32 copy of a bf16 weight,
            # then round it back (stochastically with ``stochastic_rounding``)
            target = weights if D.dtype == weights.dtype else weights.to(D.dtype)
            apply_update_(target, G, R, D, basis, plan.side, group=group, state=state, factor=f,
                          step_size=kernel.step_size(state["moment_step"].item(), group),
                          first=first, shards=shards)
            if target is not weights:
                lowbit.write_rounded_(group, weights, target, plan.name, state["step"])

    # ------------------------------------------------------------------ layer-wise seam
    # layerwise/ steps one parameter at a time from its gradient hook; across micro-batches it
    # keeps only R = project(G) for a matrix whose next step needs nothing else.
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
        shards = self._shards.get(p)
        grad = local(p.grad)
        fresh = maybe_refresh(group, p, plan, state, grad=grad, shards=shards,  # R for free, if so
                              shapes=self.update_shapes(p))
        basis = current_basis(group, p, plan, state)
        if fresh is not None:
            return fresh.to(grad.dtype).contiguous(), basis
        if shards is not None:
            return sharded.project(grad, basis, plan.side, shards), basis
        return project(grad, basis, plan.side), basis
