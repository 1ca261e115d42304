"""Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training"), with
MuonQ's low-bit momentum (``state_bits``) and GaLore's projection of the momentum (``rank``).

| part | where |
|---|---|
| rule: Nesterov momentum, Newton–Schulz orthogonalisation, lr ratio | ``rules/muon.py`` |
| the matrices it trains (``targets``) and AdamW for the rest | ``recipes/base.ProjectedRecipe``, ``rest.py`` |
| non-matrix targets to AdamW (the shape-aware fallback) | ``groups.split_matrix_only`` |
| optional projection of the momentum (``rank=``) | ``subspace/`` |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..groups import PipelineOptions
from ..rules.adam import ADAMW_LR
from ..rules.muon import MuonHyper
from .base import Base, OptionalProjection, ProjectedRecipe, Runtime, Subspace, like, rest_at_lr


@dataclass
class MuonConfig(Runtime, Subspace, OptionalProjection, MuonHyper, Base):
    weight_decay: float = like(Base, "weight_decay", 0.1)
    scale: float = like(PipelineOptions, "scale", 1.0)
    adamw_lr: float = option(ADAMW_LR, "lr of the AdamW that trains everything Muon does not "
                             "(embeddings, head, norms, biases)", low=0)


class Muon(ProjectedRecipe):
    r"""Muon with ``torch.optim.Muon``'s arguments and defaults (lr 1e-3, weight decay 0.1,
    momentum 0.95, Nesterov, 5 quintic Newton–Schulz steps in bfloat16, ``adjust_lr_fn``) on the
    ``targets`` (attention and MLP matrices by default); the embeddings, the head, norms and
    biases train with AdamW at ``adamw_lr`` (AdamW's own 1e-3 and betas; ``rest=`` picks its
    precision). ``state_bits=8``/``4`` keeps the momentum quantized (MuonQ); ``rank=r`` keeps it
    in a GaLore subspace (r×max(m, n)) and orthogonalises there. Under FSDP2 each matrix's update
    is all-gathered for the iteration (m·n numbers in bfloat16 per step)."""

    Config = MuonConfig
    rule = "muon"
    state_formula = ("numel momentum (rank r: r·max(m, n)) + one fp32 step counter per matrix; "
                     "the rest: AdamW's")

    def param_groups_for(self, model_or_params, config):
        groups, defaults = super().param_groups_for(model_or_params, config)
        rest_at_lr(groups, defaults, self.rule, config.adamw_lr)
        return groups, defaults
