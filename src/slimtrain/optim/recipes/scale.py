"""SCALE — Stochastic Column-normalised Last-layer momEntum (Glentis, Li, Han & Hong, "A Minimalist
Optimizer Design for LLM Pretraining", arXiv 2506.16659).

| part | where |
|---|---|
| rule: column-normalised (momentum) SGD | ``rules/colnorm.py`` |
| which matrix is the last layer, which the embeddings | ``SCALE.param_groups_for`` (below) |
| 1-D parameters to Adam (the shape-aware fallback) | ``groups.split_matrix_only`` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import option
from ..rules.colnorm import ColumnNormHyper
from ..targets import split_no_decay
from .base import Base, Recipe, Runtime, like


@dataclass
class SCALEConfig(Runtime, ColumnNormHyper, Base):
    lr: float = like(Base, "lr", 1e-4)
    momentum: float = like(ColumnNormHyper, "momentum", 0.9)
    adam_lr: float | None = option(None, "lr of the Adam that trains the 1-D parameters (norms, "
                                   "biases); None: lr (the authors' default)", low=0, none_ok=True)
    head: Any = option(None, "regex for the last layer's weight (the only one with momentum); "
                       "None: the model's output embeddings, else r'lm_head'")
    embeddings: Any = option(None, "regex for the embedding weights (normalised per feature over "
                             "the vocabulary); None: the model's input embeddings, else r'embed'")


def _chosen(model_or_params, pattern, attr: str, fallback: str, named) -> set[int]:
    """ids of the parameters ``pattern`` matches, or else those of the model's ``attr`` module
    (``get_output_embeddings`` / ``get_input_embeddings``), or else ``fallback``'s."""
    if pattern is None and isinstance(model_or_params, nn.Module) and hasattr(model_or_params, attr):
        module = getattr(model_or_params, attr)()
        if module is not None and getattr(module, "weight", None) is not None:
            return {id(module.weight)}
    rx = re.compile(pattern or fallback)
    return {id(p) for n, p in named if rx.search(n)}


class SCALE(Recipe):
    r"""SCALE with the authors' defaults (lr 1e-4, momentum 0.9, weight decay 0): every matrix
    steps by its gradient normalised to unit RMS per output row, ``W ← W·(1 − lr·λ) −
    lr·G/RMS_row(G)`` — the embeddings per feature over the vocabulary —, and only the last layer
    keeps a momentum (``M ← βM + (1−β)G``, normalised instead of G). 1-D parameters train with
    Adam (eps added before bias correction, as the authors write it) at ``adam_lr``. State: the
    head's momentum and Adam's on the 1-D parameters — SGD's memory, nearly. A head tied to the
    embeddings is treated as the head."""

    Config = SCALEConfig
    rule = "colnorm"
    state_formula = "the head's numel momentum; 1-D parameters: Adam's 2·numel; fp32 step counters"

    def param_groups_for(self, model_or_params, config):
        named = (list(model_or_params.named_parameters()) if isinstance(model_or_params, nn.Module)
                 else list(model_or_params))
        if not all(isinstance(x, tuple) and isinstance(x[0], str) for x in named):
            raise ValueError("SCALE finds the last layer and the embeddings by name: pass the model "
                             "or model.named_parameters()")
        named = [(n, p) for n, p in named if p.requires_grad]
        head = _chosen(model_or_params, config.head, "get_output_embeddings", r"lm_head", named)
        embed = _chosen(model_or_params, config.embeddings, "get_input_embeddings", r"embed",
                        named) - head
        if not any(id(p) in head and p.dim() == 2 for _, p in named):
            raise ValueError("SCALE found no last layer: pass head= (a regex for its weight's name)")
        matrices = [x for x in named if x[1].dim() == 2]
        adam = {"lr": config.lr if config.adam_lr is None else config.adam_lr, "eps_mode": "hf"}
        groups = [
            {"params": [x for x in matrices if id(x[1]) in head], "momentum": config.momentum,
             "norm_dim": 1},
            {"params": [x for x in matrices if id(x[1]) in embed], "momentum": 0.0, "norm_dim": 0},
            {"params": [x for x in matrices if id(x[1]) not in head | embed], "momentum": 0.0,
             "norm_dim": 1},
            {"params": [x for x in named if x[1].dim() != 2], "rule": "adam", **adam},
        ]
        defaults = {**self.shared_keys(config), "fallback": adam}
        return split_no_decay([g for g in groups if g["params"]], config.no_decay), defaults
