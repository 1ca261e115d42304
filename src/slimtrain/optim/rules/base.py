"""The inner rule's interface, and the one decoupled-weight-decay helper every update path uses.

A rule is the stateful part of the pipeline, run on the (projected) update; it never sees the
parameter on the projected path. Its state ("moments") is sized from the update it receives, so a
rank-r projection gives r×max(m, n) moments. A rule declares:

* ``Hyper`` — a dataclass of its hyperparameters (``config.option`` fields, a help text each): the
  param-group keys it reads, validated by the pipeline, defaulted per group;
* ``moment_shapes(shape, group)`` — the state tensors it keeps for an update of ``shape`` (the core
  allocates them, in the parameter's dtype or as ``state_bits`` says, and plans their bytes from
  this alone);
* ``update(grads, moments, counts, group, impl, params=None, inputs=None)`` — advances the state by
  one step and returns ``(directions, factors)`` such that the update of tensor i is
  ``-lr · factors[i] · directions[i]``; with ``params`` given it applies the update itself (decoupled
  weight decay first) and returns None. ``moments`` is one dict per tensor, keyed as
  ``moment_shapes`` says: the core builds it in one place (``PipelineOptimizer._run_rule``), which is
  where low-bit storage wraps every rule (dequantize → rule → requantize). ``inputs`` maps each
  name in ``needs`` to one value per tensor (what ``optimizer.step(**inputs)`` was given);
* ``step_size(count, group)`` — the step size the authors' code multiplies its direction by (Adam:
  √(1−β₂ᵗ)/(1−β₁ᵗ)); the norm-growth limiter measures norms in those units so that it matches
  the reference implementations whatever kernel produced the direction;
* ``matrix_only`` — the rule works on 2-D matrices only: other parameters of its groups go to a
  derived AdamW group (``groups.split_matrix_only``);
* ``unprojected`` — the rule a parameter of its group runs when it is not projected (None: itself;
  the natural rule's history would hold full-size gradients, so it hands them to Adam);
* ``reads_shape`` — the rule reads each parameter's whole (global) shape, ``inputs["shapes"]``
  (Muon's lr ratio: the projected or sharded update does not show it);
* ``shard_bytes(shape, group, dim, world)`` — bytes the rule's own collectives move for one tensor
  of whole ``shape`` split along ``dim`` over ``world`` ranks in an ordinary step (the planner
  prints them; ``tests/optim/test_fsdp.py`` counts them);
* ``needs`` — names of extra inputs the rule reads from ``optimizer.step(closure, **inputs)``;
* ``implementations`` — the distinct code paths ``impl`` selects (tests compare them);
* ``elementwise`` — each element's update depends on that element alone (no reduction over the
  tensor): the core may then run the unprojected step on flat pieces of a large tensor;
* ``reprojectable`` / ``nonnegative`` — which moments a basis switch may carry ("first": linear,
  "second": a variance) and which are never negative (low-bit storage gives those unsigned maps);
* ``exact`` — moments never quantized, whatever ``state_bits`` (COSMOS's eigenbasis: float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import Hyper


def decay_factor(lr: float, weight_decay: float) -> float:
    """W ← W·(1 − lr·λ): decoupled weight decay (Loshchilov & Hutter) as torch's AdamW writes it."""
    return 1 - lr * weight_decay


def decay_(params: list[Tensor], lr: float, weight_decay: float, foreach: bool = False) -> None:
    """Apply decoupled weight decay to ``params`` in place (nothing when λ = 0)."""
    if weight_decay == 0 or not params:
        return
    factor = decay_factor(lr, weight_decay)
    if foreach:
        torch._foreach_mul_(params, factor)
    else:
        for p in params:
            p.mul_(factor)


@dataclass
class NoHyper(Hyper):
    """A rule without hyperparameters of its own."""


class Rule:
    name = ""
    Hyper: type = NoHyper
    matrix_only = False
    reads_shape = False
    unprojected: str | None = None
    needs: tuple[str, ...] = ()
    implementations: tuple[str, ...] = ("forloop",)
    elementwise = False
    reprojectable: dict[str, str] = {}
    nonnegative: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()

    def moment_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        raise NotImplementedError

    def step_size(self, count: float, group: dict[str, Any]) -> float:
        return 1.0

    def shard_bytes(self, shape: tuple[int, ...], group: dict[str, Any], dim: int, world: int) -> int:
        return 0

    def directions(self, grads, moments, counts, group, impl, inputs=None
                   ) -> tuple[list[Tensor], list[float]]:
        raise NotImplementedError

    def update(self, grads, moments, counts, group, impl, params=None, inputs=None):
        directions, factors = self.directions(grads, moments, counts, group, impl, inputs)
        if params is None:
            return directions, factors
        lr = group["lr"]
        decay_(params, lr, group["weight_decay"])  # decay first, then the update (as torch's AdamW)
        for p, d, f in zip(params, directions, factors):
            p.add_(d.to(p.dtype), alpha=-lr * f)
        return None
