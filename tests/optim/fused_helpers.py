"""Training loops for the layer-wise tests: the same micro-batches through ordinary and fused
training, and the ordinary reference for previous-norm clipping."""

from __future__ import annotations

import torch

import slimtrain.optim as so

from ..helpers import quiet, tiny_llama

GALORE = dict(rank=8, refresh_every=2, targets=r"mlp|self_attn")  # refreshes at steps 0, 2, 4, …


def batch(step: int, micro: int, size: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + micro)
    return torch.randint(0, 256, (size, 17), generator=g)


def llama_loss(model, step: int, micro: int, grad_accum: int) -> torch.Tensor:
    ids = batch(step, micro)
    return model(input_ids=ids, labels=ids).loss / grad_accum


def make(recipe: str, fused: bool, grad_accum: int = 1, *, max_grad_norm=None, schedule=False,
         checkpointing=False, fuse_kw=None, **kw):
    """(model, optimizer, scheduler or None, handle or None) — a fresh tiny LLaMA each time."""
    model = tiny_llama()
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.train()
    opt = quiet(so.create, recipe, model, **kw)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t)) if schedule else None)
    handle = None
    if fused:
        handle = quiet(so.fuse_backward, model, opt, grad_accum=grad_accum,
                       max_grad_norm=max_grad_norm, **(fuse_kw or {}))
    return model, opt, sched, handle


def clip_previous_(params, max_norm: float, previous: float | None) -> float:
    """The ordinary reference of layer-wise clipping: measure this step's norm with torch's
    ``clip_grad_norm_`` (which scales by 1 at max_norm=inf), then scale by the previous one's."""
    norm = torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=False).item()
    if previous is not None:
        coef = torch.clamp(max_norm / (torch.tensor(previous, dtype=torch.float32) + 1e-6), max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm


def train(model, opt, sched, steps: int, grad_accum: int, *, start: int = 0, handle=None,
          max_grad_norm=None, loss_fn=llama_loss, between=None):
    """``steps`` optimizer steps of ``grad_accum`` micro-batches each; ordinary when ``handle`` is
    None (with previous-norm clipping when ``max_grad_norm`` is set). Returns the norms per step."""
    norms, previous = [], opt.grad_norm
    params = list(model.parameters())  # clip_grad_norm_(model.parameters()), as usual
    for t in range(start, start + steps):
        for k in range(grad_accum):
            loss_fn(model, t, k, grad_accum).backward()
            if between is not None and k < grad_accum - 1:
                between(t, k)
        if handle is None and max_grad_norm is not None:
            previous = clip_previous_(params, max_grad_norm, previous)
            norms.append(previous)
        opt.step()
        opt.zero_grad()
        if handle is not None:
            norms.append(handle.grad_norm)
        if sched is not None:
            sched.step()
    return norms


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def max_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip(a, b))
