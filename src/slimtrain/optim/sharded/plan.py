"""The bytes a sharded optimizer step communicates, from shapes alone (the planner prints them;
``tests/optim/test_fsdp.py`` checks them against the counted collectives).

An ordinary step (no refresh) moves, per the conventions of ``context.COMM``:

* the non-finite check: one float64 per parameter (its norm², all-reduced);
* a left-projected matrix (m < n): R = Σ P_kᵀG_k all-reduced (r·n) and the direction gathered
  (r · W·⌈n/W⌉, the padded all-gather) — a right-projected one nothing;
* APOLLO's tensor scale on a right-projected matrix: ‖D‖ and ‖R‖ (2 scalars); a norm-growth
  limiter: one scalar, or for APOLLO's channel scale on the left the n column norms;
* each rule's own reductions (``Rule.shard_bytes``): Adafactor's statistics, the natural rule's
  Gram matrix, Adam-mini's per-tensor Σ G², Muon's gathered matrix; the spike stages: AdaClip's
  max |G| and AdaGN's ‖G‖² (one scalar each); SGD-SaI's SNR, at a tensor's first step only
  (Σ G and Σ G², not counted here).

The naive alternative — replicating each projected gradient before its step, as a DTensor does
for an unsupported operation — moves m·n per projected matrix.
"""

from __future__ import annotations

import math

from ..rules import get_rule
from ..subspace.geometry import projected_shape


def _elem(p) -> int:
    return p.element_size()


def step_bytes(optimizer, world: int) -> dict[str, int]:
    """{"ordinary": bytes of an ordinary step, "naive": bytes of replicating every projected
    gradient} for ``optimizer``'s parameters sharded by rows over ``world`` ranks."""
    ordinary = naive = 0
    for group in optimizer.param_groups:
        params = group["params"]
        if group["check_finite"]:
            ordinary += 8 * len(params)
        for p in params:
            plan = optimizer.plan_of(p)
            rule = get_rule(plan.rule)
            ordinary += _stage_stats(group, elem=4)
            if not plan.projected:
                ordinary += rule.shard_bytes(tuple(p.shape), group, 0, world)
                continue
            m, n = p.shape
            naive += m * n * _elem(p)
            r = plan.rank
            shape = projected_shape(p.shape, r, plan.side)
            if plan.side == "left":
                ordinary += r * n * _elem(p) + r * world * -(-n // world) * 4
            if group["backmap"] == "tensor" and plan.side == "right":
                ordinary += 2 * 4
            if group["limiter"] is not None:
                channel_left = group["backmap"] == "channel" and plan.side == "left"
                ordinary += n * 4 if channel_left else 4
            ordinary += rule.shard_bytes(shape, group, 1 if plan.side == "left" else 0, world)
    return {"ordinary": ordinary, "naive": naive}


def _stage_stats(group, elem: int) -> int:
    """Bytes of the spike stages' reductions for one tensor: AdaClip's max |G|, AdaGN's ‖G‖²."""
    return elem * ((group["clip_decay"] is not None) + (group["norm_decays"] is not None))


def naive_ratio(optimizer, world: int) -> float:
    counted = step_bytes(optimizer, world)
    return counted["ordinary"] / counted["naive"] if counted["naive"] else math.nan
