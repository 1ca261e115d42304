"""COSMOS (Liu et al., "COSMOS: A Hybrid Adaptive Optimizer for Memory-Efficient Training of
LLMs", arXiv 2502.17410).

| part | where |
|---|---|
| rule: eigen-subspace Adam + Newton–Schulz residual, unit-norm step | ``rules/cosmos.py`` |
| the matrices it trains (``targets``) and AdamW for the rest | ``targets.build_param_groups``, ``rest.py`` |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import option
from ..rules.cosmos import CosmosHyper
from ..targets import build_param_groups, split_no_decay
from .base import Base, Projection, Recipe, Runtime, like, rest_at_lr
from .rest import rest_keys


@dataclass
class CosmosConfig(Runtime, Base):
    betas: tuple = like(CosmosHyper, "betas")
    eps: float = like(CosmosHyper, "eps")
    rank: int = like(CosmosHyper, "eigen_rank")  # the authors' name
    gamma: float = like(CosmosHyper, "gamma")
    lr_ratio: float = like(CosmosHyper, "lr_ratio")
    ns_dtype: str = like(CosmosHyper, "ns_dtype")
    targets: Any = like(Projection, "targets")
    rest: str = like(Projection, "rest")
    adamw_lr: float | None = option(None, "lr of the AdamW that trains the rest (embeddings, head, "
                                    "norms); None: lr, as the authors' code", low=0, none_ok=True)


class COSMOS(Recipe):
    r"""COSMOS with the authors' code's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, rank 64,
    γ 0.2, lr_ratio 0.1, weight decay 0) on the ``targets`` (attention and MLP matrices): SOAP-like
    Adam in the leading r-dim eigen-subspace of EMA(GᵀG), Muon's Newton–Schulz on the rest of the
    gradient, one unit-norm step of length lr·lr_ratio·√(mn). The embeddings, head and norms train
    with AdamW at ``adamw_lr``. State per m×n matrix: mn (momentum) + (m + n)r + r²;
    ``state_bits=8`` quantizes the momentum and V, never the basis or S. The authors
    choose matrices by size (rows ≤ 10000, so a small vocabulary's embeddings get COSMOS too) and
    run their Adam with the COSMOS betas; here they are chosen by name and the rest is AdamW."""

    Config = CosmosConfig
    rule = "cosmos"
    state_formula = "m×n: mn momentum + mr + nr + r² (fp32) + a step counter; the rest: AdamW's"

    def param_groups_for(self, model_or_params, config):
        groups = build_param_groups(model_or_params, projection={}, targets=config.targets,
                                    rest=rest_keys(config.rest, self.rule))
        defaults = {**self.shared_keys(config), "eigen_rank": config.rank}
        rest_at_lr(groups, defaults, self.rule,
                   config.lr if config.adamw_lr is None else config.adamw_lr)
        return split_no_decay(groups, config.no_decay), defaults
