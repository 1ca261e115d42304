"""From the inner rule's low-rank direction to the weights: back-map, residual and limiter.

For W (m×n) with gradient G, basis B, projected gradient R and the rule's direction D (the update
is −lr·f·D in the subspace):

* back-map ``project`` (GaLore): α·back(D) — one ``addmm_`` with weight decay folded in;
* back-map ``channel`` / ``tensor`` (APOLLO): √α · G ⊙ s with s = ‖D‖/(‖R‖ + 1e-8) per channel
  of the non-projected side (columns when projecting on the left, rows on the right) or for the
  whole tensor. √α because APOLLO's ``scale`` multiplies by its square root (paper α = √scale);
* residual ``fira``: + φ ⊙ (I − BBᵀ)G with φ the channel ratio above (Fira, Chen et al. 2024,
  Eq. 3–5). The Fira code subtracts α·BBᵀG instead, so that with α = 0.25 three quarters of the
  in-subspace gradient leak into the residual; we follow the paper;
* residual ``sign`` / ``sgd`` (FRUGAL, Zmushko et al. 2025): + sign((I − BBᵀ)G) or (I − BBᵀ)G,
  state-free, at step lr·α·``residual_scale`` (not scaled by the rule's bias correction);
* limiter γ (Fira §4.2): the full-rank term X (APOLLO: the scaled gradient; Fira: the residual) is
  divided by max(‖X‖/‖X_prev‖, γ)/γ, so its norm grows at most γ× per step. Norms are measured in
  the units the authors' code uses (the update divided by lr·rule.step_size), which makes the
  limiter independent of how a kernel splits the update into direction and factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..rules.base import decay_factor
from .geometry import apply_back_, minus_back

BACKMAPS = ("project", "channel", "tensor")
RESIDUALS = ("none", "fira", "sign", "sgd")
_TINY = 1e-8  # the references' guard in every norm ratio and in the limiter


def _norm(x: Tensor, shards=None, dim: int | None = None) -> Tensor:
    """``vector_norm``; with ``shards`` (x is this rank's rows of a row-sharded tensor) the norm
    over every rank's rows — one all-reduce of the squares (a scalar, or a vector for ``dim=0``)."""
    if shards is None:
        return torch.linalg.vector_norm(x) if dim is None else torch.linalg.vector_norm(x, dim=dim)
    if dim is None:
        return shards.all_reduce_(x.square().sum()).sqrt()
    if dim == 0:
        return shards.all_reduce_(x.square().sum(dim=0)).sqrt()
    return torch.linalg.vector_norm(x, dim=dim)  # along the local rows: no communication


def norm_ratio(D: Tensor, R: Tensor, side: str, per: str, shards=None) -> Tensor:
    """‖D‖/(‖R‖ + 1e-8) per channel of the non-projected side (shaped to broadcast over G), or a
    0-d tensor for ``per="tensor"``. ``shards``: D and R are this rank's rows (right projection
    of a sharded matrix): a channel is a row, local; the tensor norms are summed over the ranks."""
    if per == "tensor":
        return _norm(D, shards) / (_norm(R, shards) + _TINY)
    dim = 0 if side == "left" else 1
    ratio = torch.linalg.vector_norm(D, dim=dim) / (torch.linalg.vector_norm(R, dim=dim) + _TINY)
    return ratio if side == "left" else ratio.unsqueeze(1)


def _limit(state: dict, norm: Tensor, units: float, gamma: float, first: bool) -> Tensor:
    """Divisor for the full-rank term; updates the remembered norm (a 0-d tensor, no sync)."""
    previous = state["limiter_norm"]
    norm = norm.to(previous.dtype) * units
    if first:
        previous.copy_(norm)
        return torch.ones_like(norm)
    divisor = torch.clamp(norm / (previous + _TINY), min=gamma) / gamma
    previous.copy_(norm / divisor)
    return divisor


def reads_full_gradient(group: dict) -> bool:
    """Whether ``apply_update_`` reads the full gradient G (APOLLO's scaling, the residuals) and
    not only R: such a matrix cannot accumulate just R across micro-batches (fused_backward.py)."""
    return group["backmap"] != "project" or group["residual"] != "none"


def apply_update_(p: Tensor, G: Tensor, R: Tensor, D: Tensor, basis: Tensor, side: str, *,
                  group: dict, state: dict, factor: float, step_size: float, first: bool,
                  shards=None) -> None:
    """W ← W·(1 − lr·λ) − lr·factor·(back-map of D) − residual, for one projected matrix.

    ``step_size`` is the rule's authors' step size for this step (see ``rules.Rule.step_size``);
    ``first`` says whether this is the matrix's first update (the limiter has no previous norm).
    ``shards``: p and G are this rank's rows of a row-sharded matrix (``sharded/step.py``); then
    R and D are its rows too (right) or whole (left), and ``basis`` the part that maps to its rows.
    Norms over G (and over a sharded R, D) are summed over the ranks; channel ratios are local.
    """
    rd_shards = shards if side == "right" else None  # R and D are row-sharded only on the right
    lr, scale = group["lr"], group["scale"]
    decay = decay_factor(lr, group["weight_decay"])
    step = lr * factor
    # Norm ratios drop the sign of D, so norm-scaled terms use |factor| (fused Adam returns −ψ, −1).
    magnitude = lr * abs(factor)
    units = abs(factor) / step_size
    gamma = group["limiter"]
    backmap = group["backmap"]
    if backmap != "project":
        s = norm_ratio(D, R, side, backmap, rd_shards)
        if gamma is not None:
            if backmap == "tensor":
                norm = _norm(G, shards) * s
            else:  # ‖G ⊙ s‖ from column (row) norms of G: no m×n temporary
                dim = 0 if side == "left" else 1
                norm = _norm(_norm(G, shards, dim) * s.reshape(-1), rd_shards)
            s = s / _limit(state, norm, units, gamma, first)
        if decay != 1:
            p.mul_(decay)
        p.addcmul_(G, s.to(G.dtype), value=-magnitude * math.sqrt(scale))
        return
    residual = group["residual"]
    E = None if residual == "none" else minus_back(G, R, basis, side)
    apply_back_(p, D, basis, side, alpha=-step * scale, beta=decay)
    if E is None:
        return
    if residual == "fira":
        E.mul_(norm_ratio(D, R, side, "channel").to(E.dtype))
        if gamma is not None:
            E.div_(_limit(state, _norm(E, shards), units, gamma, first).to(E.dtype))
        p.add_(E, alpha=-magnitude)
        return
    if residual == "sign":
        E.sign_()
    p.add_(E, alpha=-lr * scale * group["residual_scale"])

