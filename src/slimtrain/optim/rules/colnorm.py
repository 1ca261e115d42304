"""Column-normalised SGD, optionally with momentum: the rule of SCALE (Glentis, Li, Han & Hong,
"A Minimalist Optimizer Design for LLM Pretraining", arXiv 2506.16659)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule


@dataclass
class ColumnNormHyper(Hyper):
    momentum: float = option(0.0, "β of a first moment M ← βM + (1−β)G normalised instead of G; "
                             "0: none, no state (SCALE: 0.9 on the last layer only)", low=0,
                             high=1, open_high=True)
    norm_dim: int = option(1, "the dimension the RMS is taken over: 1 — each output row over its "
                           "inputs (linear layers, the head); 0 — each feature over the "
                           "vocabulary (embeddings)", choices=(0, 1))
    eps: float = option(1e-8, "floor of the RMS", low=0)


class ColumnNormRule(Rule):
    """``X = G`` (or ``M ← βM + (1−β)G; X = M``); ``D = X / max(√mean(X², norm_dim), ε)``;
    ``W ← W·(1 − lr·λ) − lr·D``. State: M when β > 0, nothing otherwise. Over a shard the mean
    spans the ranks when they split ``norm_dim``."""

    name = "colnorm"
    Hyper = ColumnNormHyper
    matrix_only = True
    reprojectable = {"exp_avg": "first"}

    def moment_shapes(self, shape, group):
        return {"exp_avg": tuple(shape)} if group["momentum"] > 0 else {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        beta, dim = group["momentum"], group["norm_dim"]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        directions = []
        for g, m, count, part in zip(grads, moments, counts, parts):
            count += 1
            x = m["exp_avg"].lerp_(g, 1 - beta) if beta > 0 else g
            if part is not None and part.dim == dim:  # the ranks split the averaged dimension
                mean = part.sum_(x.square().sum(dim=dim, keepdim=True)) / part.whole_shape[dim]
            else:
                mean = torch.mean(x.square(), dim=dim, keepdim=True)
            directions.append(x / mean.sqrt().clamp_min_(group["eps"]))
        return directions, [1.0] * len(grads)

    def shard_bytes(self, shape, group, dim, world):
        if dim != group["norm_dim"]:
            return 0
        return 4 * shape[1 - dim]  # Σ X² along the split dimension, one per kept row/column
