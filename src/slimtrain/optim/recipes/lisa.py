"""LISA (Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model
Fine-Tuning", NeurIPS 2024) and OwLore (Li et al., "OwLore: Outlier-weighed Layerwise Sampled
Low-Rank Projection for Memory-Efficient LLM Fine-tuning", 2024).

| part | where |
|---|---|
| which blocks train, resampling, the sampler's saved state | ``sampling.py`` |
| LISA's rule: AdamW | ``rules/adam.py`` |
| OwLore's: GaLore-AdamW on the active blocks, weights by outlier ratio | ``recipes/galore.py``, ``sampling.outlier_ratios`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..rules.adam import AdamHyper
from ..sampling import LayerSampler, Sampling, find_blocks, outlier_ratios
from .base import Base, Projection, ProjectedRecipe, Recipe, Runtime, Subspace, like
from .galore import GaLoreAdamW


class SampledRecipe:
    """Mixed into a recipe: after its groups are built, the sampler chooses the first active
    blocks (the others lose ``requires_grad`` and state)."""

    def weights(self, blocks, config) -> list[float] | None:
        return None  # uniform

    def start_sampling(self, config) -> None:
        if self._shards:
            raise ValueError("layer sampling runs on unsharded parameters for now (FSDP2's "
                             "reduce-scatter is built for a fixed set of trainable ones): train "
                             "it on one process")
        params = [p for g in self.param_groups for p in g["params"]]
        names = [self.plan_of(p).name for p in params]
        found = find_blocks(names, config.blocks)
        blocks = [[params[i] for i in idx] for idx in found.values()]
        self.sampling = LayerSampler(blocks, config.layers_active, config.layers_every,
                                     config.layers_seed, self.weights(blocks, config))
        self.sampling.apply(self, 0)


@dataclass
class LISAConfig(Runtime, Sampling, AdamHyper, Base):
    pass


class LISA(SampledRecipe, Recipe):
    r"""LISA: AdamW on the embeddings, the head and the final norm always, and on ``layers_active``
    (γ) of the L blocks, drawn uniformly every ``layers_every`` (K) steps. The other blocks get no
    gradient and hold no state: gradients and state scale with γ/L of the blocks (plus what always
    trains). AdamW's own defaults otherwise; one process (not DDP/FSDP yet)."""

    Config = LISAConfig
    rule = "adam"
    state_formula = "AdamW's 2·numel for what always trains and the γ active blocks; none for the rest"

    def __init__(self, model_or_params, lr=None, **options):
        super().__init__(model_or_params, lr, **options)
        self.start_sampling(self.config)


@dataclass
class OwLoreConfig(Runtime, Subspace, Projection, Sampling, AdamHyper, Base):
    lr: float = like(Base, "lr", 0.01)  # GaLore's
    eps: float = like(AdamHyper, "eps", 1e-6)
    outlier_threshold: float = option(5.0, "M of the outlier ratio: an entry is an outlier when "
                                      "its |W| exceeds M × its block's mean (OWL's M)", low=0,
                                      open_low=True)


class OwLore(SampledRecipe, ProjectedRecipe):
    r"""OwLore: LISA's sampling with each block drawn with probability ∝ its outlier ratio
    (``sampling.outlier_ratios``, from the weights the optimizer is built on), and GaLore-AdamW
    on the active blocks' matrices (GaLore-AdamW's defaults: lr 0.01, rank 128, scale 0.25,
    T 200, eps 1e-6). The ratios
    are computed once and saved with the optimizer."""

    Config = OwLoreConfig
    rule = "adam"
    state_formula = GaLoreAdamW.state_formula + "; only for what always trains and the γ active blocks"

    def __init__(self, model_or_params, lr=None, **options):
        super().__init__(model_or_params, lr, **options)
        self.start_sampling(self.config)

    def weights(self, blocks, config):
        return outlier_ratios(blocks, config.outlier_threshold)
