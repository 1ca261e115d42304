"""Projection geometry: which side to project, project, map back, and move moments between bases.

For W (m×n) the projection keeps optimizer state of size r × max(m, n), as GaLore's ``std`` rule:

* ``left``  (m < n): basis P (m×r), R = Pᵀ G is r×n, back-map P N;
* ``right`` (m ≥ n): basis Q (r×n), R = G Qᵀ is m×r, back-map N Q.

Switch policies at a basis refresh (old basis B₀, new basis B₁, coefficients C[i, j] = ⟨b₁ᵢ, b₀ⱼ⟩):

* ``keep``: moments stay as they are (galore-torch; they are then read in the new coordinates);
* ``reset``: moments are zeroed and Adam's bias correction restarts (FRUGAL);
* ``reproject``: the first moment is carried over exactly, M′ = C M (left) or M Cᵀ (right) — the
  old momentum expressed in the new basis, its part outside the new subspace dropped. The second
  moment is not linear; we carry it as V′ = (C∘C) V (left) or V (C∘C)ᵀ (right): the variance of
  C x when the old coordinates are uncorrelated. It is non-negative, and exact whenever the new
  basis is a permutation / sign change of the old one.
"""

from __future__ import annotations

import torch
from torch import Tensor

SIDES = ("auto", "left", "right", "reverse")
SWITCH_POLICIES = ("keep", "reset", "reproject")


def choose_side(shape: torch.Size | tuple[int, ...], rule: str) -> str:
    m, n = shape[0], shape[1]
    if rule in ("left", "right"):
        return rule
    if rule == "auto":
        return "left" if m < n else "right"
    if rule == "reverse":
        return "right" if m < n else "left"
    raise ValueError(f"unknown projection side {rule!r}; choose one of {SIDES}")


def projected_shape(shape, rank: int, side: str) -> tuple[int, int]:
    m, n = shape[0], shape[1]
    return (rank, n) if side == "left" else (m, rank)


def basis_shape(shape, rank: int, side: str) -> tuple[int, int]:
    m, n = shape[0], shape[1]
    return (m, rank) if side == "left" else (rank, n)


def project(G: Tensor, basis: Tensor, side: str) -> Tensor:
    B = basis.to(G.dtype)
    return B.t() @ G if side == "left" else G @ B.t()


def apply_back_(param: Tensor, N: Tensor, basis: Tensor, side: str, *, alpha: float,
                beta: float) -> None:
    """param ← beta·param + alpha·back(N), in one BLAS call with no m×n temporary."""
    B = basis.to(N.dtype)
    if side == "left":
        param.addmm_(B, N, beta=beta, alpha=alpha)
    else:
        param.addmm_(N, B, beta=beta, alpha=alpha)


def minus_back(G: Tensor, R: Tensor, basis: Tensor, side: str) -> Tensor:
    """G − back(R), one new m×n tensor: with R = project(G) this is (I − BBᵀ)G, the part of G
    outside the subspace (Fira's and FRUGAL's residuals)."""
    B = basis.to(R.dtype)
    if side == "left":
        return torch.addmm(G, B, R, alpha=-1)
    return torch.addmm(G, R, B, alpha=-1)


def overlap(new: Tensor, old: Tensor, side: str) -> Tensor:
    """C[i, j] = ⟨new_i, old_j⟩ between two bases of the same side (r × r)."""
    return new.t() @ old if side == "left" else new @ old.t()


def reproject_moments_(moments: dict[str, tuple[Tensor, str]], old: Tensor, new: Tensor,
                       side: str) -> None:
    """Carry a rule's moments from the ``old`` basis to the ``new`` one (see module docstring):
    ``moments`` maps each to (tensor, "first" | "second") — a linear moment (Adam's M) maps by C,
    a variance (Adam's V) by C∘C."""
    C = overlap(new, old, side)
    for t, kind in moments.values():
        M = (C * C if kind == "second" else C).to(t.dtype)
        t.copy_(M @ t if side == "left" else t @ M.t())
