"""The sharded pieces of a step: the shapes a shard's state has, the projection of a row-sharded
gradient, the direction a left-projected matrix shares, global norms, and the state's DTensor
form for ``torch.distributed.checkpoint``.

Where a shard's state lives (``update_shapes``):

* unprojected — the moments are the parameter's rows: ``Shard(0)``;
* projected on the right (m ≥ n: R = G Qᵀ, m×r) — R's rows are the gradient's: local, no
  communication, moments ``Shard(0)``;
* projected on the left (m < n: R = PᵀG, r×n) — R is a sum over every rank's rows: one all-reduce
  of r×n, after which each rank keeps the rule's state for its chunk of the n columns
  (``Shard(1)``), and the direction is all-gathered (r×n) for the back-map P_k·D: 2·r·n numbers per
  step instead of the m·n of gathering the gradient;
* bases, seeds and counters are whole on every rank (``Replicate``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..subspace.geometry import projected_shape
from .context import Shards, chunk_range


def update_shapes(shape, plan, shards: Shards | None) -> tuple[tuple, tuple]:
    """(this rank's update shape, the whole update's shape) for a parameter of global ``shape``."""
    whole = projected_shape(shape, plan.rank, plan.side) if plan.projected else tuple(shape)
    if shards is None:
        return whole, whole
    a, b = shards.rows
    if not plan.projected:
        return (b - a, *whole[1:]), whole
    if plan.side == "right":
        return (b - a, plan.rank), whole
    c0, c1 = shards.cols(whole[1])
    return (plan.rank, c1 - c0), whole


class Part:
    """What a rule needs to know of a sharded tensor it updates: which dimension the ranks split,
    the whole shape, and the sum over the ranks (Adafactor's statistics, the natural rule's
    Gram matrix: their reductions run over the whole tensor)."""

    def __init__(self, shards: Shards, dim: int, whole_shape):
        self.shards, self.dim, self.whole_shape = shards, dim, tuple(whole_shape)

    def sum_(self, t: Tensor) -> Tensor:
        return self.shards.all_reduce_(t)

    def max_(self, t: Tensor) -> Tensor:
        return self.shards.all_reduce_(t, op="max")

    @property
    def numel(self) -> int:
        return math.prod(self.whole_shape)

    def whole(self, t: Tensor) -> Tensor:
        """The whole tensor from every rank's part of it (all-gathered along ``dim``): Muon's
        Newton–Schulz iteration acts on the whole matrix."""
        return self.shards.gather(t, self.whole_shape[self.dim], self.dim)

    def mine(self, t: Tensor) -> Tensor:
        """This rank's part of a whole tensor."""
        a, b = chunk_range(self.whole_shape[self.dim], self.shards.world, self.shards.rank)
        return t.narrow(self.dim, a, b - a)


def part_of(plan, shards: Shards | None, whole_shape) -> Part | None:
    """The ``Part`` of a parameter's update: split on dim 0 (its rows: unprojected, or projected
    on the right) or dim 1 (projected on the left: this rank's columns of R)."""
    if shards is None:
        return None
    return Part(shards, 1 if plan.projected and plan.side == "left" else 0, whole_shape)


def project(G: Tensor, basis: Tensor, side: str, shards: Shards) -> Tensor:
    """R for this rank: right — its rows of G Qᵀ (local); left — the whole PᵀG = Σ P_kᵀ G_k."""
    B = basis.to(G.dtype)
    if side == "right":
        return G @ B.t()
    a, b = shards.rows
    return shards.all_reduce_(B[a:b].t() @ G)


def rule_part(R: Tensor, side: str, shards: Shards) -> Tensor:
    """What this rank's rule state sees of R: its rows (right) or its chunk of columns (left)."""
    if side == "right":
        return R
    c0, c1 = shards.cols(R.shape[1])
    return R[:, c0:c1].contiguous()


def whole_direction(D: Tensor, side: str, shards: Shards, n: int) -> Tensor:
    """The direction the back-map needs: this rank's rows (right) or all of it (left: gathered)."""
    return D if side == "right" else shards.gather(D, n, 1)


def basis_rows(basis: Tensor, side: str, shards: Shards) -> Tensor:
    """The part of the basis that maps to this rank's rows: P's rows (left) or all of Q (right)."""
    if side == "right":
        return basis
    a, b = shards.rows
    return basis[a:b]


def global_sq_norms(grads: list[Tensor], shards: list[Shards | None]) -> list[float]:
    """‖g‖² of each (local) gradient over all of its shards: one all-reduce per process group."""
    squares = [torch.linalg.vector_norm(g.float() if g.dtype in (torch.float16, torch.bfloat16)
                                        else g).double() ** 2 for g in grads]
    by_group: dict[int, list[int]] = {}
    for i, sh in enumerate(shards):
        if sh is not None:
            by_group.setdefault(id(sh.group), []).append(i)
    for idx in by_group.values():
        stacked = shards[idx[0]].all_reduce_(torch.stack([squares[i] for i in idx]))
        for i, value in zip(idx, stacked):
            squares[i] = value
    return torch.stack(squares).tolist() if squares else []


# ------------------------------------------------------------------ checkpoint form
def placement_of(local_shape, whole_shape):
    """The dimension a state tensor is sharded on (where its local and whole sizes differ), or
    None when it is whole on every rank."""
    for dim, (a, b) in enumerate(zip(local_shape, whole_shape)):
        if a != b:
            return dim
    return None


def as_dtensor(t: Tensor, shards: Shards, dim: int | None, whole_shape) -> Tensor:
    """``t`` (this rank's part) as a DTensor on the parameter's mesh, sharing its storage."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    placement = Replicate() if dim is None else Shard(dim)
    stride = tuple(math.prod(whole_shape[i + 1:]) for i in range(len(whole_shape)))
    return DTensor.from_local(t, shards.mesh, [placement], run_check=False,
                              shape=torch.Size(whole_shape), stride=stride)
