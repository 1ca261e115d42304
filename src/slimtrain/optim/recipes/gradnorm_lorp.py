"""GradNormLoRP (Huang et al., "Gradient Weight-normalized Low-rank Projection for Efficient LLM
Training", AAAI 2025).

| part | where |
|---|---|
| W = diag(g)·V/‖V‖ kept by the optimizer; g by Adam | ``weight_norm.py`` |
| V by GaLore-Adam on ∂L/∂V (one-sided projection) | ``recipes/galore.py``, ``subspace/`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..groups import PipelineOptions
from .base import like
from .galore import GaLoreAdamW, GaLoreConfig


@dataclass
class GradNormLoRPConfig(GaLoreConfig):
    refresh_every: int = like(PipelineOptions, "refresh_every", 250)  # its README's command


class GradNormLoRP(GaLoreAdamW):
    r"""GradNormLoRP: every target matrix is weight-normalised, ``W = diag(g)·V/‖V‖`` per output
    row, and the direction V trains by GaLore-Adam on its gradient while the magnitudes g train by
    Adam (``optim/weight_norm.py``); the rest as GaLore-AdamW's. GaLore-AdamW's defaults otherwise
    (lr 0.01, rank 128, scale 0.25, eps 1e-6), ``refresh_every`` 250 (the authors' README);
    ``state_bits=8`` is their 8-bit variant. State: GaLore's plus 3 numbers per row.

    The paper projects the direction's gradient on both sides (U·η(UᵀDV)·Vᵀ, an r×r state); this
    projects on one (GaLore's r×max(m, n)), as two-sided projection is not implemented here, and
    no official code was obtainable to compare with."""

    Config = GradNormLoRPConfig
    state_formula = GaLoreAdamW.state_formula + "; weight-normalised targets: + 3 per row"

    def param_groups_for(self, model_or_params, config):
        groups, defaults = super().param_groups_for(model_or_params, config)
        for group in groups:
            if group.get("rank") is not None or group.get("density") is not None:
                group["weight_norm"] = True  # the targets
        return groups, defaults
