"""Turning what the user passes (a model, named parameters, tensors, or param groups) into groups.

Parameters are chosen by *name*: ``targets`` are regular expressions searched in each parameter's
full name (its module path plus ``.weight``/``.bias``), e.g. ``model.layers.0.self_attn.q_proj.weight``.
The default selects the 2-D weights inside attention and MLP blocks of LLaMA / GPT-2 / GPT-NeoX
style models. Everything else (embeddings, LM head, norms, biases) goes to a second, unprojected
group of the same optimizer, trained with the recipe's ``rest=`` rule (AdamW by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._warnings import warn

DEFAULT_TARGETS = (r"\.(self_attn|attn|attention|mlp|feed_forward|ffn)\.(.+\.)?weight$",)

# galore-torch param-group keys → ours, so galore param groups port unchanged.
_GALORE_PROJ_TYPES = {"std": "auto", "reverse_std": "reverse", "left": "left", "right": "right"}


def translate_galore_keys(group: dict[str, Any]) -> dict[str, Any]:
    """Accept a param group written for ``galore_torch.GaLoreAdamW`` (or the ``fira`` package,
    which calls the scale ``alpha``) as it is."""
    group = dict(group)
    if "alpha" in group:
        group.setdefault("scale", group.pop("alpha"))
    if "update_proj_gap" in group:
        group.setdefault("refresh_every", group.pop("update_proj_gap"))
    if "proj_type" in group:
        proj_type = group.pop("proj_type")
        if proj_type not in _GALORE_PROJ_TYPES:
            raise ValueError(
                f"proj_type={proj_type!r} is not supported; use one of "
                f"{sorted(_GALORE_PROJ_TYPES)} (two-sided 'full' projection is not implemented)"
            )
        group.setdefault("side", _GALORE_PROJ_TYPES[proj_type])
    if "dim" in group:
        if group.pop("dim") != 2:
            raise ValueError("only matrix projection (dim=2) is supported; remove 'dim' from the group")
    return group


def _materialize(model_or_params) -> tuple[str, list]:
    """Classify the input: ('named', [(name, p)]), ('tensors', [p]) or ('groups', [dict])."""
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        return "named", named
    if isinstance(model_or_params, torch.Tensor):
        raise TypeError("pass an iterable of parameters (or a model), not a single tensor")
    if not isinstance(model_or_params, Iterable):
        raise TypeError(f"expected a model, parameters or param groups, got {type(model_or_params).__name__}")
    items = list(model_or_params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list; pass model.parameters() or the model")
    if all(isinstance(x, dict) for x in items):
        return "groups", items
    if all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        return "named", items
    if all(isinstance(x, torch.Tensor) for x in items):
        return "tensors", items
    raise TypeError("expected a model, parameters, (name, parameter) pairs, or param-group dicts")


def _as_patterns(targets) -> tuple[str, ...]:
    if targets is None:
        return DEFAULT_TARGETS
    patterns = (targets,) if isinstance(targets, str) else tuple(targets)
    if not patterns:
        raise ValueError("targets is empty; pass a regex such as r'mlp|self_attn' or None for the default")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"target pattern {pattern!r} is not a valid regular expression: {err}") from None
    return patterns


def build_param_groups(model_or_params, *, projection: dict[str, Any] | None, targets=None,
                       rest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Param groups for a recipe. ``projection`` holds the keys of the projected group (rank, …);
    ``None`` means the recipe projects nothing. ``rest`` holds the keys of the group of the
    parameters that are not targeted (see ``rest.py``)."""
    kind, items = _materialize(model_or_params)
    if kind == "groups":
        if targets is not None:
            raise ValueError("targets= cannot be combined with explicit param groups; put 'rank' in the "
                             "groups to project instead")
        return [translate_galore_keys(g) for g in items]
    if projection is None:
        if targets is not None:
            raise ValueError("this optimizer projects nothing, so targets= does not apply")
        return [{"params": items}]
    if kind == "tensors":
        if targets is not None:
            raise ValueError("targets= needs parameter names: pass the model or model.named_parameters()")
        chosen, others = [p for p in items if p.dim() >= 2], [p for p in items if p.dim() < 2]
        if not chosen:
            raise ValueError("no parameter to project: all are 1-D; use the 'adamw' recipe instead")
        if others:
            warn(f"{len(others)} of the parameters are 1-D and cannot be projected; they are "
                 "trained with the rest rule")
        return _two_groups(chosen, others, projection, rest)
    return _split_named(items, _as_patterns(targets), user_targets=targets is not None,
                        projection=projection, rest=rest)


def _split_named(named, patterns, *, user_targets: bool, projection, rest) -> list[dict[str, Any]]:
    compiled = [re.compile(p) for p in patterns]
    hits = [0] * len(compiled)
    chosen, others, flat = [], [], []
    for name, param in named:
        matched = False
        for i, rx in enumerate(compiled):
            if rx.search(name):
                hits[i] += 1
                matched = True
        if matched and param.dim() < 2:
            # Default targets skip 1-D silently; a user's own pattern gets told.
            if user_targets:
                flat.append(name)
            matched = False
        (chosen if matched else others).append((name, param))
    examples = ", ".join(n for n, _ in named[:4])
    for pattern, count in zip(patterns, hits):
        if count == 0:
            raise ValueError(
                f"target pattern {pattern!r} matches no parameter name; names look like: {examples}. "
                "Fix the regex (it is searched in the full parameter name) or pass targets=None"
            )
    if not chosen:
        raise ValueError(f"no parameter to project: every match of {list(patterns)} is 1-D; "
                         "target the weight matrices instead")
    if flat:
        warn(f"{len(flat)} targeted parameters are 1-D and cannot be projected; they are "
             f"trained with the rest rule: {', '.join(flat[:5])}")
    return _two_groups(chosen, others, projection, rest)


def split_no_decay(groups: list[dict[str, Any]], no_decay) -> list[dict[str, Any]]:
    """Each group's parameters whose name matches ``no_decay`` (regexes) moved to a copy of the
    group with ``weight_decay=0``; ``None`` leaves the groups as they are."""
    if no_decay is None:
        return groups
    compiled = [re.compile(p) for p in _as_patterns(no_decay)]
    out = []
    for group in groups:
        items = _named(group["params"])
        if any(not (isinstance(x, tuple) and isinstance(x[0], str)) for x in items):
            raise ValueError("no_decay= needs parameter names: pass the model or "
                             "model.named_parameters(), or set weight_decay in your own groups")
        exempt = [x for x in items if any(rx.search(x[0]) for rx in compiled)]
        kept = [x for x in items if not any(x is e for e in exempt)]
        if kept:
            out.append({**group, "params": kept})
        if exempt:
            out.append({**group, "params": exempt, "weight_decay": 0.0})
    return out


def _named(params) -> list:
    return [params] if isinstance(params, (torch.Tensor, tuple)) else list(params)


def _two_groups(chosen, others, projection, rest) -> list[dict[str, Any]]:
    groups = [{"params": chosen, **projection}]
    if others:
        groups.append({"params": others, **(rest or {})})
    return groups
