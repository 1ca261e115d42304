"""The recipes that the contract suite runs through. Later recipes add an entry here.

Each case builds an optimizer for a list of named parameters with small, test-friendly settings.
``projects`` says whether the recipe keeps a low-rank subspace (then rank-specific contracts apply).

``full_rank`` builds the reference optimizers that the recipe must equal when every target matrix
falls back to full rank (rank >= min(m, n)): by default ``torch.optim.AdamW(**adamw_equivalent)``
over all parameters; recipes whose inner rule is not Adam fall back to that rule unprojected, so
their reference is that rule's reference implementation for the targets plus AdamW for the rest.
``exact`` says whether the reference runs the same floating-point operations (bit-identical) or
only the same math (equal to float rounding). ``equals_reference=False`` declares that the recipe
cannot equal any full-precision reference in that limit: its states are quantized.

Low-bit cases lower ``quantize_min_numel`` so the suite's small tensors (96…320 elements) are
quantized, partial blocks included.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import slimtrain.optim as so

TARGETS = r"\.mlp\.\w+\.weight$"


def _split(named):
    targets = [p for n, p in named if re.search(TARGETS, n)]
    rest = [p for n, p in named if not re.search(TARGETS, n)]
    return targets, rest


def lion_reference(lr, weight_decay, betas=(0.9, 0.99)):
    def build(named, torch_kw):
        from pytorch_optimizer import Lion

        targets, rest = _split(named)
        return [Lion(targets, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False),
                torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, **torch_kw)]
    return build


def adafactor_reference(lr, *, targets_rule, rest_rule, beta1=None, adamw=None):
    """transformers' Adafactor (relative_step=False, scale_parameter=False) for the parts whose rule
    is adafactor; torch AdamW(**adamw) for the others."""
    def build(named, torch_kw):
        from transformers.optimization import Adafactor

        def one(params, rule):
            if rule == "adafactor":
                return Adafactor(params, lr=lr, beta1=beta1, relative_step=False,
                                 scale_parameter=False, warmup_init=False)
            return torch.optim.AdamW(params, **torch_kw, **adamw)
        targets, rest = _split(named)
        return [one(targets, targets_rule), one(rest, rest_rule)]
    return build


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    projects: bool = False
    # keyword arguments of torch.optim.AdamW that this recipe equals in the full-rank limit
    adamw_equivalent: dict[str, Any] = field(default_factory=dict)
    full_rank: Callable | None = None
    exact: bool = True
    bad_betas: dict[str, Any] = field(default_factory=lambda: dict(betas=(1.0, 0.999)))
    equals_reference: bool = True

    def build(self, params, **overrides):
        return so.create(self.name, params, **{**self.kwargs, **overrides})

    def references(self, named, torch_kw):
        if self.full_rank is not None:
            return self.full_rank(named, torch_kw)
        return [torch.optim.AdamW([p for _, p in named], **torch_kw, **self.adamw_equivalent)]

    def __str__(self):
        return self.name


def _projected(name, adamw_equivalent=None, full_rank=None, exact=True, bad_betas=None,
               equals_reference=True, **kwargs):
    kwargs = {**dict(lr=1e-2, rank=4, refresh_every=3, targets=TARGETS), **kwargs}
    return Case(name, kwargs, projects=True, adamw_equivalent=adamw_equivalent or {},
                full_rank=full_rank, exact=exact, bad_betas=bad_betas or dict(betas=(1.0, 0.999)),
                equals_reference=equals_reference)


_LOW = dict(quantize_min_numel=64)


def _lowbit(name, **kwargs):
    return _projected(name, equals_reference=False, **_LOW, **kwargs)


_GALORE_EPS = dict(lr=1e-2, eps=1e-6, weight_decay=0.0)
_ADAMW = dict(lr=1e-2, eps=1e-8, weight_decay=0.0)

CASES = [
    Case("adamw", dict(lr=1e-2, weight_decay=0.1),
         adamw_equivalent=dict(lr=1e-2, weight_decay=0.1)),
    _projected("galore-adamw", dict(_GALORE_EPS, weight_decay=0.1), scale=0.5, weight_decay=0.1),
    _projected("galore-adamw", _GALORE_EPS, basis="svd", switch="reproject", stagger=True),
    _projected("galore-adamw", _GALORE_EPS, switch="reset"),
    _projected("apollo", dict(_GALORE_EPS, weight_decay=0.1), weight_decay=0.1),
    _projected("apollo-mini", _GALORE_EPS, rank=1, stagger=True),
    _projected("apollo-mini", rank=1, rest="adafactor", exact=False,
               full_rank=adafactor_reference(1e-2, targets_rule="adam", rest_rule="adafactor",
                                             adamw=dict(lr=1e-2, eps=1e-6, weight_decay=0.0))),
    _projected("fira", dict(_GALORE_EPS, weight_decay=0.1), basis="svd", weight_decay=0.1),
    _projected("fira", _GALORE_EPS, switch="reset", limiter=None),
    _projected("frugal", _ADAMW, basis="orthogonal", density=None),
    _projected("frugal", _ADAMW | dict(weight_decay=0.1), basis="columns", residual="sgd",
               weight_decay=0.1, switch="reproject"),
    _projected("frugal", _ADAMW, basis="blocks", residual_scale=0.5),
    _projected("q-galore", _ADAMW, basis="svd", lazy_queue=1),
    _projected("q-galore", _ADAMW, projector_bits=8, lazy_queue=2),
    _projected("natural-galore", _GALORE_EPS, history=3, weight_decay=0.0),
    _projected("galore-adafactor", exact=False, bad_betas=dict(beta1=1.0),
               full_rank=adafactor_reference(1e-2, targets_rule="adafactor", rest_rule="adam",
                                             adamw=_ADAMW)),
    _projected("galore-adafactor", beta1=0.9, rest="adafactor", exact=False, switch="reset",
               bad_betas=dict(beta1=1.0),
               full_rank=adafactor_reference(1e-2, targets_rule="adafactor", rest_rule="adafactor",
                                             beta1=0.9)),
    _projected("galore-lion", weight_decay=0.1, full_rank=lion_reference(1e-2, 0.1)),
    # Low-bit states (lowbit.py): the 8/4-bit recipes, and state_bits on other recipes and rules.
    Case("adamw8bit", dict(lr=1e-2, weight_decay=0.1, **_LOW), equals_reference=False),
    Case("adamw4bit", dict(lr=1e-2, weight_decay=0.1, **_LOW), equals_reference=False),
    Case("adamw", dict(lr=1e-2, weight_decay=0.1, state_bits=16), equals_reference=False),
    _lowbit("galore-adamw8bit", scale=0.5, weight_decay=0.1),
    _lowbit("galore-adamw8bit", basis="svd", switch="reproject"),
    _lowbit("galore-adamw8bit", switch="reset", rest="adamw"),
    _lowbit("apollo", state_bits=8, rest="adamw8bit", weight_decay=0.1),
    _lowbit("galore-lion", state_bits=8, switch="reproject", basis="svd"),
    _lowbit("galore-adafactor", state_bits=8, beta1=0.9, rest="adafactor",
            bad_betas=dict(beta1=1.0)),
]
