"""One optimizer step of the trainer: micro-batches → token-weighted loss → backward → clip →
``optimizer.step()`` → schedule; on several ranks each takes its slice of the global batch."""

from __future__ import annotations

import contextlib
import time
import warnings

import torch

from .._warnings import warn
from ..data.blocks import IGNORE_INDEX
from ..errors import UserError
from . import sophia
from .setup import Run


def _autocast(run: Run):
    if run.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=run.autocast)


def _saved_hooks(run: Run):
    """--activation-bits / --offload-activations: how the layers' saved tensors are kept while a
    micro-batch's forward and backward run."""
    return run.saved_hooks if run.saved_hooks is not None else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    """Wait for the device, so that a host timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predicted_tokens(labels: torch.Tensor) -> int:
    """Tokens whose next token the loss predicts: labels shifted by one, prompts (-100) left out."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def step_inputs(run: Run, loss: torch.Tensor, curvature: dict | None = None) -> dict:
    """The extra ``step()`` inputs the optimizer's rules declared that the trainer provides:
    ``loss`` (the step's mean loss per predicted token, detached, on the device) and SophiaG's
    ``hessian_grads`` (``train/sophia.py``; None on the steps without an estimate)."""
    needs = getattr(run.optimizer, "step_inputs", frozenset())
    provided = {"loss": loss, sophia.INPUT: curvature}
    missing = sorted(set(needs) - set(provided) - {"closure"})
    if missing:
        raise UserError(f"optimizer {run.config.optimizer} needs the step input(s) "
                        f"{', '.join(missing)}, which the trainer does not provide; train it with "
                        "your own loop (optimizer.step(**inputs))")
    return {k: v for k, v in provided.items() if k in needs and v is not None}


def train_step(run: Run) -> tuple[torch.Tensor | None, torch.Tensor | float | None]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the step's loss per predicted
    token (a device tensor: no host sync here) and the gradient norm before clipping.

    The loss is normalised by the predicted tokens of the whole step (as torchtitan and torchtune
    do), so a prompt-masked fine-tune weights tokens, not micro-batches, and a micro-batch with no
    predicted token contributes nothing. A step whose batch predicts no token at all changes no
    weight (the schedule and data position still advance) and returns a None loss. With
    layer-wise updates (``run.fused``) the parameters are updated inside the last micro-batch's
    backward pass, clipped by the previous step's norm; ``optimizer.step()`` then only finishes
    the step."""
    cfg = run.config
    d = run.dist
    rank, world = (0, 1) if d is None else (d.rank, d.world)
    # micro-batch k of rank r: the blocks one process with world × batch would take, its slice
    batches = [run.train.batch(run.order.take(run.position + (k * world + rank) * cfg.batch_size,
                                              cfg.batch_size)) for k in range(cfg.grad_accum)]
    count = sum(predicted_tokens(labels) for _, labels in batches)
    if d is not None:  # the whole step's predicted tokens, over every rank
        count = int(d.all_reduce_(torch.tensor([count], dtype=torch.float64, device=run.device)).item())
    if count == 0:
        warn(f"step {run.step + 1}: no token of its batch is predicted (every label is a masked "
             "prompt), so the step changed no weight")
        with warnings.catch_warnings():  # torch's "scheduler before optimizer" note: on purpose
            warnings.simplefilter("ignore", UserWarning)
            run.scheduler.step()
        _advance(run)
        return None, None
    # DDP and FSDP average the ranks' gradients: per rank, the sum over its tokens divided by the
    # global count / world makes that average the global token mean
    items = count if d is None else torch.tensor(count / world, device=run.device)
    if getattr(run.optimizer, "zeroth_order", False):
        return _zeroth_order_step(run, batches, items), run.optimizer.grad_norm
    total = torch.zeros((), device=run.device)
    module = run.train_module or run.model
    curvature = None
    if sophia.needed(run.optimizer) and sophia.due(run):  # one extra backward every k steps
        ids, labels = batches[0]
        curvature = sophia.estimate(run, module, ids.to(run.device), labels.to(run.device),
                                    _autocast(run))
    for k, (ids, labels) in enumerate(batches):
        ids, labels = ids.to(run.device), labels.to(run.device)
        last = k == len(batches) - 1
        with _autocast(run), _gradient_sync(run, last), _saved_hooks(run):
            loss = module(input_ids=ids, labels=labels, num_items_in_batch=items).loss
            # from here on the weights change (layer-wise updates: inside the last backward), so
            # an error leaves them between two steps: no checkpoint is written of that state
            run.updating = run.updating or (run.fused is not None and last)
            loss.backward()
        total += loss.detach() / world
    # The norm before clipping: what the log should show.
    clip_here = cfg.grad_clip > 0 and run.fused is None  # the layer-wise handle clips by itself
    grad_norm = (torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
                 if clip_here else None)
    inputs = step_inputs(run, total, curvature)
    _sync(run.device)
    started = time.perf_counter()
    run.updating = True
    run.optimizer.step(**inputs)
    _sync(run.device)
    run.optimizer_s += time.perf_counter() - started
    if grad_norm is None:
        grad_norm = getattr(run.optimizer, "grad_norm", None)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    _advance(run)
    run.updating = False
    return total, grad_norm


def _zeroth_order_step(run: Run, batches, items) -> torch.Tensor:
    """The closure branch: ``optimizer.step(closure)`` with a closure that returns the step's
    token-mean loss over all its micro-batches (and, on several ranks, over every rank: the ranks
    reduce that one number, see the same loss and so take the same step). The optimizer calls it
    under no_grad with the model in eval mode; nothing is kept for a backward pass."""
    d = run.dist
    world = 1 if d is None else d.world
    batches = [(ids.to(run.device), labels.to(run.device)) for ids, labels in batches]

    def closure():
        total = torch.zeros((), device=run.device, dtype=torch.float64)
        for ids, labels in batches:
            with _autocast(run):
                total += run.model(input_ids=ids, labels=labels, num_items_in_batch=items).loss.double()
        if d is not None:
            d.all_reduce_(total)
        return total / world

    _sync(run.device)
    started = time.perf_counter()
    run.updating = True
    loss = run.optimizer.step(closure)
    _sync(run.device)
    run.optimizer_s += time.perf_counter() - started
    run.scheduler.step()
    _advance(run)
    run.updating = False
    # every rank holds the global loss; the loop sums the ranks' shares (as for gradient steps)
    return loss.to(run.device, torch.float32) / world


def _advance(run: Run) -> None:
    """Count a finished step: the data position, the tokens (of every rank), the step."""
    cfg = run.config
    world = 1 if run.dist is None else run.dist.world
    run.position += cfg.grad_accum * cfg.batch_size * world
    run.tokens += cfg.grad_accum * cfg.batch_size * cfg.seq_len * world
    run.step += 1


def _gradient_sync(run: Run, last: bool):
    """DDP's ``no_sync`` / FSDP2's ``set_requires_gradient_sync(False)`` on every micro-batch but
    the step's last: gradients accumulate locally and are reduced once."""
    d = run.dist
    if d is None or run.config.grad_accum == 1:
        return contextlib.nullcontext()
    if d.parallel == "ddp":
        return contextlib.nullcontext() if last else run.train_module.no_sync()
    run.model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


