"""Subspace selectors: which r-dimensional subspace of a gradient G (m×n) the optimizer keeps.

A selector returns an orthonormal basis in the orientation the projection uses:
``side="left"`` → P (m×r), the top-r left singular vectors, used as R = Pᵀ G;
``side="right"`` → Q (r×n), the top-r right singular vectors, used as R = G Qᵀ.

* ``svd``: exact thin SVD (what galore-torch does; O(m·n·min(m, n))).
* ``randomized``: a range finder with power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4),
  warm-started from the previous basis, which is a good guess because subspaces drift slowly.
  Cost O(m·n·(r + oversample)·(2·power_iters + 2)).

Both work in float32 whatever the gradient's dtype, and return float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

SELECTORS = ("svd", "randomized")


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
    m, n = A.shape
    k = min(rank + oversample, m, n)

    def gaussian(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=generator, dtype=torch.float32).to(A.device)

    if previous is not None:
        start = previous.float()
        if k > rank:
            start = torch.cat([start, gaussian(m, k - rank)], dim=1)
        Y = A @ (A.t() @ start)  # the warm start already counts as one power iteration
        iters = max(power_iters - 1, 0)
    else:
        Y = A @ gaussian(n, k)
        iters = power_iters
    for _ in range(iters):
        Z = _orthonormal(A.t() @ _orthonormal(Y))
        Y = A @ Z
    Q = _orthonormal(Y)
    B = Q.t() @ A  # k×n: A restricted to the found range
    # The left singular vectors of the small B from the eigenvectors of B Bᵀ (k×k, in float64):
    # 10× cheaper than an SVD of B, and precise enough to order the directions.
    _, vectors = torch.linalg.eigh((B @ B.t()).double())
    Ub = vectors.flip(-1)[:, :rank].to(B.dtype)
    basis = Q @ Ub
    projected = Ub.t() @ B  # basisᵀ A, without another pass over A
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


def select_basis(G: Tensor, rank: int, side: str, method: str, *, previous: Tensor | None,
                 power_iters: int, oversample: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
    """(basis, projected gradient in float32) by the named method."""
    if method == "svd":
        return exact_svd_basis(G, rank, side)
    if method == "randomized":
        return randomized_svd_basis(G, rank, side, previous=previous, power_iters=power_iters,
                                    oversample=oversample, generator=generator)
    raise ValueError(f"unknown basis selector {method!r}; choose one of {SELECTORS}")
