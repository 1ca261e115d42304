"""Which recipes and settings fit a memory budget, best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..optim.layerwise import FusedRefused
from .planner import _static, _with_batch, recipe_accepts


@dataclass(frozen=True)
class Fit:
    recipe: str
    settings: dict[str, Any]  # rank / state_bits / fused_backward / activation_checkpointing
    max_batch: int
    total: int                # bytes at max_batch
    state_bytes: int          # optimizer states + projectors

    def to_dict(self) -> dict[str, Any]:
        return dict(recipe=self.recipe, **self.settings, max_batch=self.max_batch, total=self.total,
                    state_bytes=self.state_bytes)


def rank_ladder(hidden: int) -> list[int]:
    """h/2, h/4, h/8 (multiples of 8): the papers use h/4 (GaLore, APOLLO) and h/8 (APOLLO†)."""
    return sorted({max(8, (hidden // d) // 8 * 8) for d in (2, 4, 8)}, reverse=True)


def _largest_batch(static, budget: int, max_batch: int) -> int:
    if _with_batch(static, 1).total > budget:
        return 0
    lo, hi = 1, max_batch
    while lo < hi:  # total grows with the batch: find the largest batch under the budget
        mid = (lo + hi + 1) // 2
        if _with_batch(static, mid).total <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fitting_settings(budget: int, model, *, seq_len: int = 256, param_dtype="float32",
                     autocast: bool = False, recipes: list[str] | None = None,
                     max_batch: int = 4096, checkpointing=("none", "all"), loss: str = "naive",
                     activation_bits=None, offload_activations: bool = False) -> list[Fit]:
    """Every (recipe, rank, state bits, fused backward, checkpointing) that fits ``budget`` bytes
    with at least batch 1, with its largest batch. ``checkpointing``: the policies searched
    (``apply_activation_checkpointing``'s, "none" for none; a True in the list is transformers'
    own); ``loss``, ``activation_bits`` and ``offload_activations`` apply to every setting. Best first: the most optimizer state kept (closest
    to AdamW), then no activation checkpointing (faster), then ordinary backward (clipping by the
    current norm), then the largest batch."""
    from .. import optim
    from ..models import model_config

    config = model_config(model)
    # gradient training by default: a zeroth-order recipe (inference's memory) is searched when
    # named in ``recipes``; listing it first everywhere would bury the comparison asked for
    names = recipes or optim.available("gradient")
    fits: list[Fit] = []
    weights_only = _static(model, names[0], seq_len=seq_len, param_dtype=param_dtype,
                           autocast=autocast, fused_backward=False, grad_accum=1,
                           activation_checkpointing=False, recipe_kwargs={}).weights
    policies = [False if c in (None, False, "none") else c for c in checkpointing]
    levers = dict(loss=loss, activation_bits=activation_bits, offload_activations=offload_activations)
    if weights_only > budget:  # before searching: nothing can fit
        raise ValueError(f"the budget ({budget / 2**30:.2f} GiB) is below the weights alone "
                         f"({weights_only / 2**30:.2f} GiB): no recipe fits; use a smaller model or "
                         "bfloat16 weights")
    for name in names:
        # recipes that project by default get the rank ladder; the one-rule recipes (lion, …)
        # are planned as they are (their rank= variants are the galore-* recipes' plans)
        projects = isinstance(optim.recipe(name).default("rank"), int)
        ranks = rank_ladder(config.hidden_size) if projects else [None]
        bits = [32, 8] if recipe_accepts(name, "state_bits") else [None]
        for rank in ranks:
            for state_bits in bits:
                kwargs = {k: v for k, v in (("rank", rank), ("state_bits", state_bits)) if v is not None}
                for fb in (False, True):  # layer-wise updates: a mode of most optimizers
                    for ckpt in policies:
                        try:
                            static = _static(model, name, seq_len=seq_len, param_dtype=param_dtype,
                                             autocast=autocast, fused_backward=fb, grad_accum=1,
                                             activation_checkpointing=ckpt,
                                             recipe_kwargs=dict(kwargs), **levers)
                        except FusedRefused:  # Sophia's step inputs, LISA's sampling
                            continue
                        batch = _largest_batch(static, budget, max_batch)
                        if batch:
                            at = _with_batch(static, batch)
                            fits.append(Fit(name, dict(kwargs, fused_backward=fb,
                                                       activation_checkpointing=static.settings[
                                                           "activation_checkpointing"]),
                                            batch, at.total, at.optimizer_states + at.projectors))
    order = {c: i for i, c in enumerate(sorted(
        {f.settings["activation_checkpointing"] for f in fits}, key=_recompute_rank))}
    fits.sort(key=lambda f: (-f.state_bytes, order[f.settings["activation_checkpointing"]],
                             f.settings["fused_backward"], -f.max_batch))
    return fits


def _recompute_rank(policy) -> tuple[int, int]:
    """Less recomputation first: none, attention only, every k-th layer (larger k first), MLP
    only, every layer."""
    from ..activations.checkpointing import parse_policy

    if policy is True:
        return (4, 0)
    kind, k = parse_policy(policy)
    return {"none": (0, 0), "attn": (1, 0), "mlp": (3, 0)}.get(kind, (2 if k > 1 else 4, -k))
