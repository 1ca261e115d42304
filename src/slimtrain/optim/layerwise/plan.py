"""The gradient memory of layer-wise training, planned from shapes alone (meta tensors work)."""

from __future__ import annotations

import math

from ..subspace.geometry import projected_shape


def planned_gradient_bytes(optimizer, *, grad_accum: int = 1, accumulate: str = "subspace",
                           refresh_from: str = "accumulated") -> int:
    """Peak bytes of parameter gradients alive at once in layer-wise training with ``optimizer``,
    from shapes alone (meta tensors work): the gradient being produced (at most the largest) plus,
    with ``grad_accum > 1``, every accumulation buffer — R for a matrix that ``takes_low_rank``,
    its full gradient otherwise. With ``refresh_from="accumulated"`` the first step refreshes
    every matrix from its accumulated gradient, so that step holds them all in full."""
    full, low = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            full.append(p.numel() * p.element_size())
            plan = optimizer.plan_of(p)
            low.append(math.prod(projected_shape(p.shape, plan.rank, plan.side)) * p.element_size()
                       if optimizer.takes_low_rank(group, p) else full[-1])
    if not full:
        return 0
    if grad_accum == 1:
        return max(full)
    in_full = accumulate == "full" or refresh_from == "accumulated"
    return max(full) + sum(full if in_full else low)
