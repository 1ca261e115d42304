"""SGD-SaI (Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All You Need",
arXiv 2412.11768), as the authors' package sgd-sai 1.0.3 computes it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Hyper, option
from .base import Rule, decay_


@dataclass
class SGDSaIHyper(Hyper):
    momentum: float = option(0.9, "momentum β (the buffer averages G with weight 1 − β)", low=0,
                             high=1, open_high=True)
    eps: float = option(1e-8, "added to the gradient's standard deviation in the SNR", low=0)


def gradient_snr(g, eps: float, part=None):
    """‖G‖ / (std(G) + ε) over the whole tensor (std with Bessel's correction; 0 for one
    element), as a 0-d tensor; a shard's sums span the ranks."""
    if part is None:
        return torch.linalg.vector_norm(g) / (g.std().nan_to_num() + eps)
    sums = part.sum_(torch.stack([g.sum(), g.square().sum()]))
    n = part.numel
    var = (sums[1] - sums[0] ** 2 / n) / (n - 1) if n > 1 else sums[1] * 0
    return sums[1].sqrt() / (var.clamp_min(0).sqrt() + eps)


class SGDSaIRule(Rule):
    """At a tensor's first step its scale is fixed from that gradient's signal-to-noise ratio,
    ``s = ‖G‖/(std(G) + ε)``, and the buffer starts as G; afterwards ``B ← βB + (1−β)G``; always
    ``W ← W·(1 − lr·λ) − lr·s·B``. State: the buffer and the one scale."""

    name = "sgd-sai"
    Hyper = SGDSaIHyper
    reprojectable = {"momentum_buffer": "first"}
    nonnegative = ("gsnr",)

    def moment_shapes(self, shape, group):
        return {"momentum_buffer": tuple(shape), "gsnr": ()}

    def _advance(self, grads, moments, counts, group, inputs) -> None:
        beta = group["momentum"]
        parts = (inputs or {}).get("shards") or [None] * len(grads)
        for g, m, count, part in zip(grads, moments, counts, parts):
            buf = m["momentum_buffer"]
            if int(count.item()) == 0:
                m["gsnr"].copy_(gradient_snr(g, group["eps"], part))
                buf.copy_(g)
            else:
                buf.mul_(beta).add_(g, alpha=1 - beta)
            count += 1

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        self._advance(grads, moments, counts, group, inputs)
        return ([m["momentum_buffer"] * m["gsnr"].to(m["momentum_buffer"].dtype) for m in moments],
                [1.0] * len(grads))

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        if params is None:
            return self.directions(grads, moments, counts, group, impl, inputs)
        self._advance(grads, moments, counts, group, inputs)
        lr = group["lr"]
        decay_(params, lr, group["weight_decay"])
        for p, m in zip(params, moments):  # W −= lr·s·B in one pass, s read on the device
            p.addcmul_(m["momentum_buffer"].to(p.dtype), m["gsnr"].to(p.dtype), value=-lr)
        return None
