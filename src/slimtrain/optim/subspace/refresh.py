"""When a subspace is refreshed.

* ``fixed``: at the parameter's step 0, then whenever ``(step − offset) % T == 0``; with
  ``stagger=True`` the i-th of k projected matrices of a group has offset ⌊iT/k⌋ so that they do
  not all refresh on one step.
* ``lazy`` (Q-GaLore, Zhang et al. 2024, §3.3): after each refresh the similarity of the new and the
  previous basis — the RMS cosine of their principal angles, which is |cos| of the leading vectors
  at rank 1 (Q-GaLore compares the signed leading vectors, so an unchanged subspace can look new
  when an SVD flips a sign or reorders near-equal directions) — enters a queue of
  ``lazy_queue`` values. When the queue is full its mean decides: ≥ ``lazy_threshold`` (the
  subspace is stable) multiplies the gap by ``lazy_growth``; below it (the subspace moves) divides
  it again, never below T (Q-GaLore only ever grows it). The queue then starts over.
  State: ``refresh_gap``, ``next_refresh`` and ``refresh_queue`` (−1 = empty slot: |cos| is never negative), float32 on CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry import overlap

REFRESH_POLICIES = ("fixed", "lazy")
_EMPTY = -1.0


def offset(group, index: int, count: int) -> int:
    every = group["refresh_every"]
    return (index * every) // count if group["stagger"] else 0


def refresh_index(group, step: int, off: int) -> int:
    """How many refreshes happened before the one at ``step`` (distinct for every refresh)."""
    if step < off:  # the first refresh (step 0) of a staggered matrix
        return 0
    return (step - off) // group["refresh_every"] + (1 if off > 0 else 0)


def lazy_init(state: dict, group, off: int) -> None:
    every = group["refresh_every"]
    state["refresh_gap"] = torch.tensor(float(every))
    state["next_refresh"] = torch.tensor(float(off if off > 0 else every))
    state["refresh_queue"] = torch.full((group["lazy_queue"],), _EMPTY)


def due(group, state: dict, step: int, off: int) -> bool:
    if group["refresh"] == "lazy":
        return step >= state["next_refresh"].item()
    return (step - off) % group["refresh_every"] == 0


def similarity(new: Tensor, old: Tensor, side: str) -> float:
    """Root-mean-square cosine of the principal angles between the two subspaces,
    ‖B_newᵀ B_old‖_F / √r: for rank 1 it is |cos| of the two vectors (Q-GaLore's test without the
    sign); for rank r it does not depend on how the basis is rotated inside the subspace, whereas
    the leading vector alone can swap with another of the same subspace from one SVD to the next."""
    C = overlap(new, old, side)
    return (torch.linalg.matrix_norm(C) / C.shape[0]**0.5).clamp(max=1.0).item()


def lazy_after_refresh(state: dict, group, step: int, sim: float | None) -> None:
    queue = state["refresh_queue"]
    if sim is not None:
        queue.copy_(torch.cat([queue[1:], queue.new_tensor([sim])]))
    gap = state["refresh_gap"]
    if not (queue == _EMPTY).any():
        if queue.mean().item() >= group["lazy_threshold"]:
            gap.mul_(group["lazy_growth"])
        else:
            gap.copy_(torch.clamp(gap / group["lazy_growth"], min=float(group["refresh_every"])))
        queue.fill_(_EMPTY)
    state["next_refresh"].fill_(step + gap.item())


def lazy_bytes(group) -> int:
    return 0 if group["refresh"] != "lazy" else 4 * (2 + group["lazy_queue"])
