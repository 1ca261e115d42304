"""Subspace selectors: which r-dimensional subspace of a gradient G (m×n) the optimizer keeps.

A selector returns an orthonormal basis in the orientation the projection uses:
``side="left"`` → P (m×r), the top-r left singular vectors, used as R = Pᵀ G;
``side="right"`` → Q (r×n), the top-r right singular vectors, used as R = G Qᵀ.

* ``svd``: exact thin SVD (what galore-torch does; O(m·n·min(m, n))).
* ``randomized``: a range finder with power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4),
  warm-started from the previous basis, which is a good guess because subspaces drift slowly.
  Cost O(m·n·(r + oversample)·(2·power_iters + 2)).

Gradient-free selectors (they draw from a seed, so they are cheap and need no SVD):

* ``gaussian``: i.i.d. N(0, 1/r) entries, *not* orthonormal — APOLLO's random sketch, which keeps
  norms in expectation (Johnson–Lindenstrauss). Stored as its seed and regenerated every step.
* ``orthogonal``: a uniformly random orthonormal basis (FRUGAL's ``random``).
* ``columns``: ``rank`` random coordinates of the projected side (FRUGAL's RandK columns / GaLore
  ``randperm``): rows of G when projecting on the left, columns on the right.
* ``blocks``: ``rank`` consecutive coordinates, moving one block per refresh from the last block to
  the first (FRUGAL's ``descending`` block order, within each matrix).

All work in float32 whatever the gradient's dtype, and return float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..util import ceil_div

SELECTORS = ("svd", "randomized", "gaussian", "orthogonal", "columns", "blocks")
GRADIENT_SELECTORS = ("svd", "randomized")
ORTHONORMAL_SELECTORS = ("svd", "randomized", "orthogonal", "columns", "blocks")


def exact_svd_basis(G: Tensor, rank: int, side: str) -> tuple[Tensor, Tensor]:
    """(basis, projected gradient) from the exact thin SVD; the projection comes for free
    (Pᵀ G = Σ_r V_rᵀ, G Q_rᵀ = U_r Σ_r)."""
    # SVD of G itself for both sides (not of Gᵀ): the singular vectors' signs then match
    # galore-torch's, which matters when moments are kept across a basis switch.
    U, S, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    if side == "left":
        return U[:, :rank].contiguous(), S[:rank, None] * Vh[:rank]
    return Vh[:rank, :].contiguous(), U[:, :rank] * S[:rank]


def _orthonormal(Y: Tensor) -> Tensor:
    return torch.linalg.qr(Y, mode="reduced")[0]


class LocalMatrix:
    """The operations the range finder needs on A (the matrix whose left basis it finds), for A
    held whole in this process. ``sharded/finder.py`` has the same operations for a matrix whose
    rows or columns are spread over ranks, so that both run one copy of the algorithm."""

    def __init__(self, A: Tensor):
        self.A, self.shape, self.device = A, tuple(A.shape), A.device

    def mul(self, X: Tensor) -> Tensor:          # A X
        return self.A @ X

    def tmul(self, Y: Tensor) -> Tensor:         # Aᵀ Y
        return self.A.t() @ Y

    def orth_range(self, Y: Tensor) -> Tensor:   # orthonormal columns spanning Y (A's rows)
        return _orthonormal(Y)

    def orth_domain(self, Z: Tensor) -> Tensor:  # the same for a Z indexed by A's columns
        return _orthonormal(Z)

    def restrict(self, Q: Tensor) -> Tensor:     # B = Qᵀ A
        return Q.t() @ self.A

    def gram(self, B: Tensor) -> Tensor:         # B Bᵀ
        return B @ B.t()


def randomized_range(op, rank: int, *, previous: Tensor | None, power_iters: int, oversample: int,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(left basis of A, basisᵀ A) by randomized range finding (Halko et al., Alg. 4.4) through
    ``op`` (``LocalMatrix`` or a sharded one); ``previous`` (rows of A × rank) warm-starts it."""
    m, n = op.shape
    k = min(rank + oversample, m, n)

    def gaussian(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=generator, dtype=torch.float32).to(op.device)

    if previous is not None:
        start = previous.float()
        if k > rank:
            start = torch.cat([start, gaussian(m, k - rank)], dim=1)
        Y = op.mul(op.tmul(start))  # the warm start already counts as one power iteration
        iters = max(power_iters - 1, 0)
    else:
        Y = op.mul(gaussian(n, k))
        iters = power_iters
    for _ in range(iters):
        Z = op.orth_domain(op.tmul(op.orth_range(Y)))
        Y = op.mul(Z)
    Q = op.orth_range(Y)
    B = op.restrict(Q)  # k×n: A restricted to the found range
    # The left singular vectors of the small B from the eigenvectors of B Bᵀ (k×k, in float64):
    # 10× cheaper than an SVD of B, and precise enough to order the directions.
    _, vectors = torch.linalg.eigh(op.gram(B).double())
    Ub = vectors.flip(-1)[:, :rank].to(B.dtype)
    return Q @ Ub, Ub.t() @ B  # basisᵀ A, without another pass over A


def randomized_svd_basis(
    G: Tensor,
    rank: int,
    side: str,
    *,
    previous: Tensor | None = None,
    power_iters: int = 1,
    oversample: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-``rank`` singular subspace of G on ``side``, by randomized range finding; returns
    (basis, projected gradient).

    ``previous`` (same orientation as the result) seeds the range finder; the ``oversample``
    extra columns are Gaussian, drawn from ``generator`` on the CPU so the result does not depend
    on the device or on the global RNG.
    """
    A = G.float() if side == "left" else G.float().t()  # find a left basis of A
    previous = None if previous is None else (previous if side == "left" else previous.t())
    basis, projected = randomized_range(LocalMatrix(A), rank, previous=previous,
                                        power_iters=power_iters, oversample=oversample,
                                        generator=generator)
    return orient(basis, projected, side)


def orient(basis: Tensor, projected: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """A left basis of A and basisᵀ A, in the orientation of ``side`` (right: A = Gᵀ)."""
    if side == "left":
        return basis.contiguous(), projected
    return basis.t().contiguous(), projected.t().contiguous()


def random_orthonormal_basis(shape: tuple[int, int], rank: int, side: str,
                             generator: torch.Generator | None, device) -> Tensor:
    """A uniformly random orthonormal basis; the fallback when no SVD can be computed."""
    m, n = shape
    rows = m if side == "left" else n
    basis = _orthonormal(torch.randn(rows, rank, generator=generator, dtype=torch.float32))
    basis = basis.to(device)
    return basis.contiguous() if side == "left" else basis.t().contiguous()


def gaussian_basis(shape, rank: int, side: str, seed: int, device) -> Tensor:
    """APOLLO's sketch: N(0, 1/r) entries from a CPU generator seeded with ``seed`` (the same
    values on every device), shaped as the ``side``'s basis."""
    m, n = shape[0], shape[1]
    dims = (m, rank) if side == "left" else (rank, n)
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(dims, generator=generator, dtype=torch.float32) / math.sqrt(rank)).to(device)


def coordinate_basis(shape, rank: int, side: str, index: Tensor, device) -> Tensor:
    """The basis that keeps the coordinates ``index`` of the projected side (one-hot columns):
    projecting with it selects rows/columns of G exactly."""
    rows = shape[0] if side == "left" else shape[1]
    basis = torch.zeros(rows, rank, dtype=torch.float32)
    basis[index, torch.arange(rank)] = 1.0
    basis = basis.to(device)
    return basis if side == "left" else basis.t().contiguous()


def coordinate_index(shape, rank: int, side: str, method: str, generator: torch.Generator,
                     refresh_index: int) -> Tensor:
    rows = shape[0] if side == "left" else shape[1]
    if method == "columns":
        return torch.randperm(rows, generator=generator)[:rank].sort().values
    blocks = ceil_div(rows, rank)
    block = (blocks - 1 - refresh_index) % blocks  # descending: the last block first
    return (torch.arange(rank) + block * rank) % rows  # a short last block wraps to the start


def select_basis(G: Tensor, rank: int, side: str, method: str, *, previous: Tensor | None,
                 power_iters: int, oversample: int, generator: torch.Generator,
                 refresh_index: int = 0) -> tuple[Tensor, Tensor | None]:
    """(basis, projected gradient in float32 or None when it does not come for free) by the
    named method. ``gaussian`` is drawn by ``gaussian_basis`` from a seed, not here."""
    if method == "svd":
        return exact_svd_basis(G, rank, side)
    if method == "randomized":
        return randomized_svd_basis(G, rank, side, previous=previous, power_iters=power_iters,
                                    oversample=oversample, generator=generator)
    if method == "orthogonal":
        return random_orthonormal_basis(G.shape, rank, side, generator, G.device), None
    if method in ("columns", "blocks"):
        index = coordinate_index(G.shape, rank, side, method, generator, refresh_index)
        return coordinate_basis(G.shape, rank, side, index, G.device), None
    raise ValueError(f"unknown basis selector {method!r}; choose one of {SELECTORS}")
