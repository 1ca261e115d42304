"""MeZO's storage trick: a zeroth-order run is its initial weights plus its log — per step the
query seeds, the projected gradients ĝ, the groups' learning rates (and ZO-SGD-Cons's choice) —
so a "checkpoint" of a long fine-tune is kilobytes beside the base model.

``replay(model, log)`` repeats every logged step on the initial weights without a forward pass
(``ZOOptimizer.replay_step``: the same in-place operations in the same order) and returns the
optimizer, ready to continue: the weights, the state and the log equal those of the run, bit for
bit. ``save_log``/``load_log`` keep a log in one safetensors file (its recipe and options in the
file's metadata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TENSORS = ("seeds", "grads", "lrs", "choices")


def replay(model: torch.nn.Module, log: dict[str, Any], steps: int | None = None):
    """Apply the first ``steps`` (default: all) logged steps to ``model`` (at the run's initial
    weights) and return the zeroth-order optimizer, positioned after them."""
    from ..registry import create

    missing = [k for k in ("recipe", "options", *TENSORS) if k not in log]
    if missing:
        raise ValueError(f"not a zeroth-order log: it lacks {', '.join(missing)} (make one with "
                         "optimizer.replay_log() or load_log(path))")
    optimizer = create(log["recipe"], model, **log["options"])
    total = len(log["seeds"])
    steps = total if steps is None else steps
    if not 0 <= steps <= total:
        raise ValueError(f"steps must lie in [0, {total}] (the log's length), got {steps}")
    if log["lrs"].shape[1:] != (len(optimizer.param_groups),):
        raise ValueError(f"the log has learning rates for {log['lrs'].shape[1]} parameter groups, "
                         f"this model makes {len(optimizer.param_groups)}: replay on the model "
                         "the run trained")
    for t in range(steps):
        record = {"seeds": log["seeds"][t].tolist(), "grads": log["grads"][t].tolist(),
                  "lrs": log["lrs"][t].tolist(), "choice": int(log["choices"][t])}
        optimizer.replay_step(record)
        for key in TENSORS:  # the optimizer's own log continues from the replayed one
            optimizer._log[key].append(record[key if key != "choices" else "choice"])
    return optimizer


def save_log(log: dict[str, Any], path: str | Path) -> None:
    from safetensors.torch import save_file

    meta = {"recipe": log["recipe"], "options": json.dumps(log["options"])}
    save_file({k: log[k].contiguous() for k in TENSORS}, str(path), metadata=meta)


def load_log(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "recipe" not in meta:
            raise ValueError(f"{path} is not a zeroth-order log (no recipe in its metadata)")
        tensors = {k: f.get_tensor(k) for k in TENSORS}
    return {"recipe": meta["recipe"], "options": json.loads(meta["options"]), **tensors}
