"""SophiaG's curvature estimate inside the trainer (``--optimizer sophia``).

Every ``hessian_every`` steps (the recipe's option; 10 as the authors), before the step's own
micro-batches: labels are sampled from the model's predictions on the step's first micro-batch,
the loss on them (mean over its predicted tokens) is back-propagated once, and those gradients —
the Gauss-Newton-Bartlett estimate at the weights the step starts from — go to
``optimizer.step(hessian_grads=…)``. The authors' loop takes the same estimate right after the
previous step (the same weights) on that step's batch; here the sampled labels come from a
generator seeded by (seed, step), so a resumed run draws the same ones. Under DDP/FSDP the
estimate's gradients are reduced like any other; the step's own gradients start afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.blocks import IGNORE_INDEX
from ..optim.rules.sophia import INPUT

DEFAULT_EVERY = 10


def needed(optimizer) -> bool:
    return INPUT in getattr(optimizer, "step_inputs", frozenset())


def every(optimizer) -> int:
    config = getattr(optimizer, "config", None)
    return getattr(config, "hessian_every", DEFAULT_EVERY)


def due(run) -> bool:
    """Whether this step brings an estimate: steps k, 2k, … (0-based), as the authors' loop
    updates the curvature after steps k − 1, 2k − 1, …"""
    k = every(run.optimizer)
    return run.step > 0 and run.step % k == 0


def estimate(run, module, ids: torch.Tensor, labels: torch.Tensor, autocast) -> dict:
    """{parameter: Ĝ} — the gradient of the loss on labels sampled from the model's logits."""
    generator = torch.Generator(device=ids.device).manual_seed(
        (run.config.seed * 1_000_003 + run.step) % (2**63))
    if run.dist is not None and run.dist.parallel == "fsdp":
        run.model.set_requires_gradient_sync(True)
    with autocast:
        logits = module(input_ids=ids).logits[:, :-1]
    probs = torch.softmax(logits.detach().float(), dim=-1)
    sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    sampled = sampled.view(logits.shape[:-1])
    mask = labels[:, 1:] != IGNORE_INDEX
    loss = F.cross_entropy(logits[mask].float(), sampled[mask]) if mask.any() else logits.sum() * 0
    loss.backward()
    grads = {}
    for p in run.model.parameters():
        if p.grad is not None:
            grads[p] = p.grad
            p.grad = None  # the step's own gradients accumulate afresh
    return grads
