"""The recipes that the contract suite runs through. Later recipes add an entry here.

Each case builds an optimizer for a list of named parameters with small, test-friendly settings.
``projects`` says whether the recipe keeps a low-rank subspace (then rank-specific contracts apply);
``rank_key`` names its rank argument.
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
    adamw_equivalent: dict[str, Any] = field(default_factory=dict)

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
]
