"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; Liu et al.
2025, "Muon is Scalable for LLM Training"), as ``torch.optim.Muon`` (torch ≥ 2.9) computes it, and
the Newton–Schulz orthogonalisation COSMOS reuses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import Hyper, option
from .base import Rule

NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
ADJUST_LR = (None, "original", "match_rms_adamw")


@dataclass
class MuonHyper(Hyper):
    momentum: float = option(0.95, "momentum μ: B ← μB + (1−μ)G", low=0, high=1, open_high=True)
    nesterov: bool = option(True, "orthogonalise G + μ(B − G) (Nesterov) instead of B")
    ns_coefficients: tuple = option((3.4445, -4.7750, 2.0315), "(a, b, c) of the quintic "
                                    "Newton–Schulz step X ← aX + (bA + cA²)X, A = XXᵀ",
                                    kind="numbers3")
    eps: float = option(1e-7, "floor of ‖X‖_F when X is first scaled to spectral norm ≤ 1",
                        low=0, open_low=True)
    ns_steps: int = option(5, "Newton–Schulz iterations", low=1, high=99, integer=True)
    adjust_lr_fn: str | None = option(None, "lr per matrix: None / 'original' √max(1, A/B) "
                                      "(Keller Jordan), 'match_rms_adamw' 0.2·√max(A, B) (Moonshot: "
                                      "AdamW's lr and λ carry over)", choices=ADJUST_LR)
    ns_dtype: str = option("bfloat16", "precision of the Newton–Schulz iteration (torch's Muon: "
                           "bfloat16)", choices=tuple(NS_DTYPES))


def newton_schulz(X: Tensor, coefficients, steps: int, eps: float, dtype=torch.bfloat16) -> Tensor:
    """≈ U Vᵀ of X = U S Vᵀ (singular values pushed to ~[0.7, 1.2], not exactly 1): X scaled to
    ‖X‖_F ≤ 1, then ``steps`` quintic iterations on the wide orientation (the Gram matrix is the
    smaller side). The same operations, in the same order, as torch.optim.Muon's."""
    a, b, c = coefficients
    Y = X.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        Y = Y.T
    Y = Y.div(Y.norm().clamp(min=eps))
    for _ in range(steps):
        A = Y @ Y.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        Y = torch.addmm(Y, B, Y, beta=a)
    return Y.T if tall else Y


def lr_ratio(shape, adjust_lr_fn: str | None) -> float:
    """Muon's per-matrix lr factor for a parameter of ``shape`` (rows A, columns B)."""
    A, B = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return math.sqrt(max(1, A / B))


class MuonRule(Rule):
    """``B ← μB + (1−μ)G``; ``O = NS(G + μ(B − G))`` (or ``NS(B)``); ``W ← W·(1 − lr·λ) −
    lr·ratio·O`` with ratio from the parameter's whole shape (``lr_ratio``). One moment. On a
    shard the update is gathered (all-gather of the matrix) and each rank keeps its own rows."""

    name = "muon"
    Hyper = MuonHyper
    matrix_only = True
    reads_shape = True
    reprojectable = {"momentum_buffer": "first"}

    def moment_shapes(self, shape, group):
        return {"momentum_buffer": tuple(shape)}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        mu = group["momentum"]
        dtype = NS_DTYPES[group["ns_dtype"]]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        directions, factors = [], []
        for g, m, count, part, shape in zip(grads, moments, counts, parts, inputs["shapes"]):
            count += 1
            buf = m["momentum_buffer"]
            buf.lerp_(g, 1 - mu)
            u = g.lerp(buf, mu) if group["nesterov"] else buf
            if part is not None:  # the iteration needs the whole matrix: gather it (in dtype)
                u = part.whole(u.to(dtype))
            o = newton_schulz(u, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            directions.append(o if part is None else part.mine(o))
            factors.append(lr_ratio(shape, group["adjust_lr_fn"]))
        return directions, factors

    def shard_bytes(self, shape, group, dim: int, world: int) -> int:
        rows = shape[dim]
        other = math.prod(shape) // rows
        return world * -(-rows // world) * other * NS_DTYPES[group["ns_dtype"]].itemsize
