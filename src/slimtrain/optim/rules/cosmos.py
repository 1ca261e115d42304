"""COSMOS (Liu et al., "COSMOS: A Hybrid Adaptive Optimizer for Memory-Efficient Training of
LLMs", arXiv 2502.17410), as the authors' code (lliu606/COSMOS, ``COSMOS_optim.py``) computes it:
SOAP-style Adam in the leading eigen-subspace of EMA(GᵀG), Muon's Newton–Schulz on the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule
from .muon import NS_DTYPES, newton_schulz

# the quintic coefficients and step count of the authors' code (Muon's)
_NS = ((3.4445, -4.7750, 2.0315), 5)


@dataclass
class CosmosHyper(Hyper):
    betas: tuple = option((0.9, 0.999), "β₁ of the momentum M ← β₁M + G; β₂ of the eigen-statistics "
                          "and of the subspace's second moment", kind="betas")
    eps: float = option(1e-8, "added to the denominator and to the norms", low=0)
    eigen_rank: int = option(64, "r: the dimension of the leading eigen-subspace of EMA(GᵀG)",
                             low=1, integer=True)
    gamma: float = option(0.2, "weight of the orthogonalised residual (× √(mn))", low=0)
    lr_ratio: float = option(0.1, "the step is lr·lr_ratio·√(mn) along the unit-norm update",
                             low=0, open_low=True)
    ns_dtype: str = option("bfloat16", "precision of the Newton–Schulz iteration",
                           choices=tuple(NS_DTYPES))


def _rank(shape, group) -> int:
    return min(group["eigen_rank"], shape[1])


class CosmosRule(Rule):
    """For W (m×n) with gradient G: ``M ← β₁M + G``; the basis P (n×r) tracks the top-r
    eigenvectors of EMA(GᵀG) by one power step and a QR per step (an SVD at the first), with its
    r×r projected statistic S; ``V ← β₂V + (1−β₂)(GP)²``; with ``G̃ = (G + β₁M)/(1 + β₁·b₁)``
    (b₁ = (1−β₁ᵗ)/(1−β₁)): ``U₁ = [G̃P / (√(V/(1−β₂ᵗ)) + ε)]Pᵀ``, ``U₂ = NS(G̃ − G̃PPᵀ)``
    normalised, ``U = U₁ + γ√(mn)·U₂``; ``W ← W·(1 − lr·λ) − lr·lr_ratio·√(mn)·U/‖U‖``.
    On a shard: GᵀGP and (GP)ᵀGP sum over the ranks, the residual is gathered for NS."""

    name = "cosmos"
    Hyper = CosmosHyper
    matrix_only = True
    reads_shape = True
    nonnegative = ("exp_avg_sq",)
    exact = ("eigenbasis", "eigen_gram")  # a quantized basis would not stay orthonormal

    def moment_shapes(self, shape, group):
        m, n = shape
        r = _rank(shape, group)
        return {"exp_avg": (m, n), "exp_avg_sq": (m, r), "eigenbasis": (n, r), "eigen_gram": (r, r)}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        directions, factors = [], []
        for g, st, count, part, shape in zip(grads, moments, counts, parts, inputs["shapes"]):
            count += 1
            t = int(count.item())

            def total(x):  # the sum over the ranks' rows
                return x if part is None else part.sum_(x)

            M, V, P, S = st["exp_avg"], st["exp_avg_sq"], st["eigenbasis"], st["eigen_gram"]
            M.mul_(beta1).add_(g)
            work = torch.promote_types(g.dtype, torch.float32)  # SVD and QR need float32 or wider
            G = g.to(work)
            if t == 1:  # the basis from the first gradient's Gram matrix
                U, _, _ = torch.linalg.svd(total(G.T @ G), full_matrices=False)
                basis = U[:, :P.shape[1]]
                R = G @ basis
                gram = total(R.T @ R) * (1 - beta2)
            else:  # one power step of EMA(GᵀG) on the old basis, re-orthonormalised
                old, gram = P.to(work), S.to(work)
                basis, _ = torch.linalg.qr(beta2 * (old @ gram) + (1 - beta2) * total(G.T @ (G @ old)),
                                           mode="reduced")
                turn = old.T @ basis
                R = G @ basis
                gram = beta2 * (turn.T @ gram @ turn) + (1 - beta2) * total(R.T @ R)
            P.copy_(basis)
            S.copy_(gram)
            V.mul_(beta2).addcmul_(R.to(V.dtype), R.to(V.dtype), value=1 - beta2)
            bc1 = (1 - beta1 ** t) / (1 - beta1)
            bc2 = 1 - beta2 ** t
            lookahead = (G + beta1 * M.to(work)) / (1 + beta1 * bc1)
            low = lookahead @ basis
            adam = (low / (V.to(work).sqrt() / math.sqrt(bc2)).add_(eps)) @ basis.T
            residual = lookahead - low @ basis.T
            dtype = NS_DTYPES[group["ns_dtype"]]
            whole = residual.to(dtype) if part is None else part.whole(residual.to(dtype))
            ortho = newton_schulz(whole, *_NS, 1e-7, dtype)
            ortho = (ortho if part is None else part.mine(ortho)).to(work)
            ortho = ortho / (total(ortho.square().sum()).sqrt() + eps)
            scale = math.sqrt(shape[0] * shape[1])
            update = adam.add_(ortho, alpha=group["gamma"] * scale)
            directions.append(update / (total(update.square().sum()).sqrt() + eps))
            factors.append(group["lr_ratio"] * scale)
        return directions, factors

    def shard_bytes(self, shape, group, dim, world):
        m, n = shape
        r = _rank(shape, group)
        gathered = world * -(-m // world) * n * NS_DTYPES[group["ns_dtype"]].itemsize
        return 4 * (n * r + r * r + 2) + gathered  # GᵀGP, (GP)ᵀGP, two norms; the residual
