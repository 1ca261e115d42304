"""A subspace refresh of a row-sharded gradient without gathering it (``../shared/research/
sharding.md``): the one-process range finder (``subspace.selectors.randomized_range``) run through
operations that meet the other ranks only in low-rank tensors.

G (m×n) is sharded by rows; rank k holds G_k (rows [a, b)). The finder looks for a left basis of
A = G (left projection) or A = Gᵀ (right):

* left — A's rows are sharded. ``A X`` is local rows; ``Aᵀ Y = Σ_k G_kᵀ Y_k`` an all-reduce of
  n×k; an orthonormal basis of a row-sharded m×k sketch gathers that small sketch (m×k) and takes
  its QR on every rank; ``B = Qᵀ A`` an all-reduce of k×n. The basis P (m×r) and R = PᵀG (r×n)
  come out whole on every rank.
* right — A's columns are sharded. ``A X = Σ_k G_kᵀ X_k`` an all-reduce of n×k; ``Aᵀ Y`` local
  rows; ``B Bᵀ = Σ_k B_k B_kᵀ`` an all-reduce of k×k. The basis Q (n×r) comes out whole, R = GQᵀ
  as this rank's rows.

The random draws are the full matrices of the one-process finder, from the same seeded generator
on every rank, each rank using its rows: a sharded refresh equals the one-process one up to
rounding. ``basis="svd"`` (exact) gathers the matrix (m×n, refresh steps only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..subspace.selectors import (_orthonormal, coordinate_basis, coordinate_index,
                                  exact_svd_basis, orient, random_orthonormal_basis,
                                  randomized_range)
from .context import Shards


class _ShardedRows:
    """A = G with its rows sharded (left projection)."""

    def __init__(self, G: Tensor, shards: Shards):
        self.G, self.shards = G, shards
        self.shape, self.device = shards.global_shape, G.device
        self.a, self.b = shards.rows

    def mul(self, X):          # local rows of A X
        return self.G @ X

    def tmul(self, Y):         # Y whole (m×k): Σ G_kᵀ Y_k
        return self.shards.all_reduce_(self.G.t() @ Y[self.a:self.b])

    def orth_range(self, Y):   # Y local rows → the whole orthonormal m×k
        return _orthonormal(self.shards.gather(Y, self.shape[0], 0))

    def orth_domain(self, Z):  # Z whole (n×k)
        return _orthonormal(Z)

    def restrict(self, Q):     # Q whole: Σ Q_kᵀ G_k, whole k×n
        return self.shards.all_reduce_(Q[self.a:self.b].t() @ self.G)

    def gram(self, B):
        return B @ B.t()


class _ShardedColumns:
    """A = Gᵀ with its columns sharded (right projection)."""

    def __init__(self, G: Tensor, shards: Shards):
        self.G, self.shards = G, shards
        m, n = shards.global_shape
        self.shape, self.device = (n, m), G.device
        self.a, self.b = shards.rows

    def mul(self, X):          # X whole (m×k) or this rank's rows: Σ G_kᵀ X_k, whole n×k
        if X.shape[0] != self.b - self.a:
            X = X[self.a:self.b]
        return self.shards.all_reduce_(self.G.t() @ X)

    def tmul(self, Y):         # Y whole (n×k): local rows of G Y
        return self.G @ Y

    def orth_range(self, Y):   # Y whole (n×k)
        return _orthonormal(Y)

    def orth_domain(self, Z):  # Z local rows of an m×k → the whole orthonormal one
        return _orthonormal(self.shards.gather(Z, self.shape[1], 0))

    def restrict(self, Q):     # (G_k Q)ᵀ: this rank's columns of B
        return Q.t() @ self.G.t()

    def gram(self, B):         # Σ B_k B_kᵀ
        return self.shards.all_reduce_(B @ B.t())


def sharded_select_basis(G: Tensor, rank: int, side: str, method: str, *, shards: Shards,
                         previous: Tensor | None, power_iters: int, oversample: int,
                         generator: torch.Generator, refresh_index: int = 0
                         ) -> tuple[Tensor, Tensor | None]:
    """``select_basis`` for this rank's rows G of a row-sharded gradient: (the whole basis, the
    projected gradient — whole for ``left``, this rank's rows for ``right`` — or None)."""
    if method == "randomized":
        op = (_ShardedRows if side == "left" else _ShardedColumns)(G.float(), shards)
        prev = None if previous is None else (previous if side == "left" else previous.t())
        basis, projected = randomized_range(op, rank, previous=prev, power_iters=power_iters,
                                            oversample=oversample, generator=generator)
        return orient(basis, projected, side)
    if method == "svd":  # exact: the whole matrix, on refresh steps only
        whole = shards.gather(G.float(), shards.global_shape[0], 0)
        basis, projected = exact_svd_basis(whole, rank, side)
        if side == "right":
            a, b = shards.rows
            projected = projected[a:b]
        return basis, projected
    # gradient-free selectors draw from the generator alone: the same basis on every rank
    shape = shards.global_shape
    if method == "orthogonal":
        return random_orthonormal_basis(shape, rank, side, generator, G.device), None
    if method in ("columns", "blocks"):
        index = coordinate_index(shape, rank, side, method, generator, refresh_index)
        return coordinate_basis(shape, rank, side, index, G.device), None
    raise ValueError(f"basis {method!r} has no sharded selector")
