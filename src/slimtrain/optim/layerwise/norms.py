"""Gradient norms of layer-wise steps, and clipping by the previous step's norm."""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


def norm(g: Tensor) -> Tensor:
    """L2 norm as a 0-d tensor (no sync); fp16/bf16 summed in fp32, as the core does."""
    if g.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(g, dtype=torch.float32)
    return torch.linalg.vector_norm(g)


def global_norm(norms: list[Tensor]) -> float:
    """‖(n₁, n₂, …)‖ over the finite per-parameter norms, summed in the order given as
    ``clip_grad_norm_(foreach=False)`` does (so that the two agree bit for bit)."""
    if not norms:
        return 0.0
    dtype = reduce(torch.promote_types, (n.dtype for n in norms))
    stacked = torch.stack([n.to(dtype=dtype, device=norms[0].device) for n in norms])
    return torch.linalg.vector_norm(stacked[torch.isfinite(stacked)]).item()


def clip_coefficient(max_norm: float, previous: float) -> Tensor:
    """min(1, max_norm / (previous + 1e-6)): torch's ``clip_grad_norm_`` factor for a norm."""
    return torch.clamp(max_norm / (torch.tensor(previous, dtype=torch.float32) + CLIP_EPS), max=1.0)


def sharded_norms(norms: list[Tensor], shards: dict) -> list[Tensor]:
    """The norms of FSDP2 parameters' local gradients as one norm over every rank's shards (one
    all-reduce of their squares): an entry for the global norm."""
    if not norms:
        return []
    group = next(iter(shards.values()))
    total = group.all_reduce_(torch.stack([n.double() ** 2 for n in norms]).sum())
    return [total.sqrt()]
