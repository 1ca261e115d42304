"""Adam-mini (Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", ICLR 2025).

| part | where |
|---|---|
| rule: Adam's M, one second moment per block | ``rules/adam_mini.py`` |
| the partition into blocks, from parameter names | here (``partition``) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import option
from ..rules.adam_mini import AdamMiniHyper
from ..targets import split_no_decay
from .base import Base, Recipe, Runtime, like

# adam-mini 1.1.1's name fragments (searched in the lower-cased parameter name, in this order)
EMBEDDINGS = ("embed", "embd", "wte")
OUTPUTS = ("lm_head", "output", "final_layer")
QUERY_KEY = ("k_proj", "q_proj", "wq", "wk", "query", "key")
VALUES = ("v_proj", "wv", "value")
ATTN_OUT = ("o_proj", "wo", "attn.proj")
MLP = ("feed_forward", "linear", "mlp")


def block_of(name: str) -> str:
    """The partition of a parameter, from its name: "adam" (biases: a second moment per
    element), "heads" (queries and keys: one per head), "rows" (embeddings, output head, values,
    attention output, MLP: one per token / output neuron) or "tensor" (norms and the rest)."""
    name = name.lower()
    if "bias" in name:
        return "adam"
    if any(k in name for k in QUERY_KEY):
        return "heads"
    if any(k in name for k in EMBEDDINGS + OUTPUTS + VALUES + ATTN_OUT + MLP):
        return "rows"
    return "tensor"


@dataclass
class AdamMiniConfig(Runtime, AdamMiniHyper, Base):
    lr: float = like(Base, "lr", 1e-3)
    no_decay: Any = like(Base, "no_decay", (r"(?i)norm|ln|bias",))
    dim: int | None = option(None, "hidden size (None: the model's config.hidden_size)", low=1,
                             integer=True, none_ok=True)
    n_heads: int | None = option(None, "attention heads (None: config.num_attention_heads)",
                                 low=1, integer=True, none_ok=True)


class AdamMini(Recipe):
    r"""Adam-mini with the authors' defaults (adam-mini 1.1.1: lr 1e-3, betas (0.9, 0.999),
    eps 1e-8; no weight decay for names with "norm", "ln" or "bias"): Adam's first moment, and one
    second moment per Hessian block — per head for queries and keys, per output neuron for values,
    attention outputs and MLPs, per token for embeddings and the output head, per tensor for norms;
    biases keep Adam's. The partition is derived from the parameter names (and the model's heads)
    each time the optimizer is built; nothing of it is stored. State ≈ half of AdamW's."""

    Config = AdamMiniConfig
    rule = "adam-mini"
    state_formula = ("numel first moment + one second moment per block (heads / rows / tensor; "
                     "biases numel) + one fp32 step counter per parameter")

    def param_groups_for(self, model_or_params, config):
        named = _named(model_or_params)
        cfg = getattr(model_or_params, "config", None)
        dim = config.dim or getattr(cfg, "hidden_size", None)
        heads = config.n_heads or getattr(cfg, "num_attention_heads", None)
        shared = self.shared_keys(config)
        by_block: dict[str, list] = {}
        for name, p in named:
            by_block.setdefault(block_of(name), []).append((name, p))
        if "heads" in by_block and (dim is None or heads is None):
            raise ValueError("adam-mini keeps one second moment per attention head of the queries "
                             "and keys: pass a transformers model, or dim= and n_heads=")
        groups = []
        for block, items in by_block.items():
            if block == "adam":
                groups.append({"params": items, "rule": "adam", "betas": config.betas,
                               "eps": config.eps})
            else:
                groups.append({"params": items, "block": block,
                               "head_numel": dim * dim // heads if block == "heads" else None})
        return split_no_decay(groups, config.no_decay), shared


def _named(model_or_params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(model_or_params, torch.nn.Module):
        return [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    items = list(model_or_params)
    if not items or not all(isinstance(x, tuple) and isinstance(x[0], str) for x in items):
        raise ValueError("adam-mini partitions the model by parameter names: pass the model or "
                         "model.named_parameters()")
    return items
