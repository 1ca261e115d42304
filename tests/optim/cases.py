"""The recipes that the contract suite runs through. Later recipes add an entry here.

Each case builds an optimizer for a list of named parameters with small, test-friendly settings.
``projects`` says whether the recipe keeps a low-rank subspace (then rank-specific contracts apply);
``rank_key`` names its rank argument. ``adamw_equivalent=None`` declares that the recipe cannot equal
``torch.optim.AdamW`` in the full-rank limit (its states are quantized).

Low-bit cases lower ``quantize_min_numel`` so the suite's small tensors (96…320 elements) are
quantized, tails of partial blocks included.
"""

from dataclasses import dataclass, field
from typing import Any, Callable

import slimtrain.optim as so


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    projects: bool = False
    # keyword arguments of torch.optim.AdamW that this recipe equals in the full-rank limit
    # (None: it cannot, e.g. quantized states)
    adamw_equivalent: dict[str, Any] | None = field(default_factory=dict)

    def build(self, params, **overrides):
        return so.create(self.name, params, **{**self.kwargs, **overrides})

    def __str__(self):
        return self.name


CASES = [
    Case("adamw", dict(lr=1e-2, weight_decay=0.1),
         adamw_equivalent=dict(lr=1e-2, weight_decay=0.1)),
    Case("galore-adamw", dict(lr=1e-2, rank=4, refresh_every=3, scale=0.5, weight_decay=0.1,
                              targets=r"\.mlp\.\w+\.weight$"),
         projects=True, adamw_equivalent=dict(lr=1e-2, weight_decay=0.1, eps=1e-6)),
    Case("galore-adamw", dict(lr=1e-2, rank=4, refresh_every=3, basis="svd", switch="reproject",
                              stagger=True, targets=r"\.mlp\.\w+\.weight$"),
         projects=True, adamw_equivalent=dict(lr=1e-2, weight_decay=0.0, eps=1e-6)),
    Case("galore-adamw", dict(lr=1e-2, rank=4, refresh_every=3, switch="reset",
                              targets=r"\.mlp\.\w+\.weight$"),
         projects=True, adamw_equivalent=dict(lr=1e-2, weight_decay=0.0, eps=1e-6)),
    Case("adamw8bit", dict(lr=1e-2, weight_decay=0.1, quantize_min_numel=64), adamw_equivalent=None),
    Case("adamw4bit", dict(lr=1e-2, weight_decay=0.1, quantize_min_numel=64), adamw_equivalent=None),
    Case("galore-adamw8bit", dict(lr=1e-2, rank=4, refresh_every=3, scale=0.5, weight_decay=0.1,
                                  targets=r"\.mlp\.\w+\.weight$", quantize_min_numel=64),
         projects=True, adamw_equivalent=None),
    Case("galore-adamw8bit", dict(lr=1e-2, rank=4, refresh_every=3, basis="svd", switch="reproject",
                                  targets=r"\.mlp\.\w+\.weight$", quantize_min_numel=64),
         projects=True, adamw_equivalent=None),
    Case("galore-adamw8bit", dict(lr=1e-2, rank=4, refresh_every=3, switch="reset", rest="adamw",
                                  targets=r"\.mlp\.\w+\.weight$", quantize_min_numel=64),
         projects=True, adamw_equivalent=None),
    # bf16 moments for fp32 parameters (state_bits=16), through the same seam.
    Case("adamw", dict(lr=1e-2, weight_decay=0.1, state_bits=16), adamw_equivalent=None),
]
