"""Weight-normalised matrices, the reparameterisation of GradNormLoRP (Huang et al., "Gradient
Weight-normalized Low-rank Projection for Efficient LLM Training", AAAI 2025), kept by the
optimizer so the model is unchanged: each target W is ``diag(g)·V/‖V‖`` row by row (g: one
magnitude per output row, as DoRA and PEFT normalise a torch weight), with

* the direction V = (‖V‖/g)·W never stored — only its row norms ``wn_norm`` are;
* the step: ∂L/∂g = rowsum(G ⊙ V̂), ∂L/∂V = (g/‖V‖)·(G − V̂·∂L/∂g) (V̂ = W/g); the group's
  pipeline (projection, Adam, low-bit states) updates V on ∂L/∂V, Adam (the group's betas and
  eps, no weight decay) updates g; then W = diag(g′)·V′/‖V′‖.

The parameter holds V and its gradient ∂L/∂V during the step (the gradient is rewritten in
place: no copy the size of W). Row norms are local to a row-sharded shard; the per-row state
is ``Shard(0)`` under FSDP2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rules.adam import adam_
from .sharded.context import local

ROW_KEYS = ("wn_norm", "wn_exp_avg", "wn_exp_avg_sq")
COUNTER = "wn_step"
KEYS = (*ROW_KEYS, COUNTER)


def applies(group, p: Tensor) -> bool:
    return bool(group["weight_norm"]) and p.dim() == 2


def _dtype(p: Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)  # norms of bf16 rows in float32


def _row_norms(W: Tensor) -> Tensor:
    return torch.linalg.vector_norm(W.to(_dtype(W)), dim=1)


def expected_shapes(p: Tensor) -> dict[str, tuple]:
    rows = local(p).shape[0]
    return {**{k: (rows,) for k in ROW_KEYS}, COUNTER: ()}


def init_state(state: dict, p: Tensor) -> None:
    """V starts as W: its row norms are W's (zeros on the planner's meta tensors)."""
    W = local(p)
    state["wn_norm"] = (torch.zeros(W.shape[0], dtype=_dtype(W), device=W.device) if W.is_meta
                        else _row_norms(W.detach()))
    for key in ROW_KEYS[1:]:
        state[key] = torch.zeros(W.shape[0], dtype=_dtype(W), device=W.device)
    state[COUNTER] = torch.tensor(0.0, dtype=torch.float32)


def planned_bytes(p: Tensor, rows: int) -> int:
    return len(ROW_KEYS) * rows * torch.empty((), dtype=_dtype(p)).element_size() + 4


def to_direction_(params: list[Tensor], states: list[dict]) -> list[tuple[Tensor, Tensor]]:
    """W → V and G → ∂L/∂V in place; returns each matrix's (g, ∂L/∂g)."""
    saved = []
    for p, state in zip(params, states):
        W, G = local(p), local(p.grad)
        g = _row_norms(W)
        unit = W.to(g.dtype) / g.unsqueeze(1)
        grad_g = (G.to(g.dtype) * unit).sum(dim=1)
        ratio = (g / state["wn_norm"]).unsqueeze(1)
        G.copy_((G.to(g.dtype) - unit * grad_g.unsqueeze(1)) * ratio)
        W.copy_(unit * state["wn_norm"].unsqueeze(1))
        saved.append((g, grad_g))
    return saved


def from_direction_(params: list[Tensor], states: list[dict], group, saved) -> None:
    """V′ → W′ = diag(g′)·V′/‖V′‖, after one Adam step of the magnitudes g."""
    if not params:
        return
    beta1, beta2 = group["betas"]
    for p, state, (g, grad_g) in zip(params, states, saved):
        V = local(p)
        norm = _row_norms(V)
        state["wn_norm"].copy_(norm)
        adam_([grad_g], [state["wn_exp_avg"]], [state["wn_exp_avg_sq"]], [state[COUNTER]],
              beta1=beta1, beta2=beta2, eps=group["eps"], eps_mode=group["eps_mode"], params=[g],
              lr=group["lr"], weight_decay=0.0, impl="forloop")
        V.copy_(V.to(g.dtype) * (g / norm).unsqueeze(1))
