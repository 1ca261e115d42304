"""Which recipes and settings fit a memory budget, best first.

The search (``fitting_settings``) has two levels. The optimizer settings — recipe, rank, state
bits, fused backward — change the weights, gradients and optimizer state: each (recipe, rank,
state bits) builds the recipe on a meta-device model once, for both backward modes
(``planner._statics``, ~0.3 s at 7B). The activation levers — the
loss, activation checkpointing, compressed saved activations, activation offload — change only
the activations and temporaries, which the planner computes from the stated model of
``activations.py`` in microseconds: they are tried on each optimizer setting already built
(``planner._with_levers``), cheapest first, and a lever setting is kept only when it fits a larger
batch than every cheaper one kept (the frontier). A lever therefore never appears where it buys
nothing, and the search stops for an optimizer setting once ``max_batch`` is reached. The
activations of a (levers, batch) are the same for every optimizer setting and are computed once
(``planner._saved_bytes``): one recipe at 7B is searched in a few seconds, every recipe in about
a minute (the builds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..activations.compress import parse_bits
from ..optim.layerwise import FusedRefused
from .activations import LOSSES, check_loss
from .planner import _levers, _static, _statics, _with_batch, _with_levers, recipe_accepts

# What the search tries for a lever the caller leaves open. "fp8" activations take the bytes of
# 8-bit ones (codes + a float32 scale per block of 256) but round more coarsely (README), so it
# comes after 8 and joins the frontier only when asked for alone.
CHECKPOINTING = ("none", "attn", "every:2", "mlp", "all")
ACTIVATION_BITS = (None, 8, "fp8")
OFFLOAD = (False, True)          # True only for a cuda device: the trainer refuses it elsewhere
STATE_BITS = (32, 8, "fp8")      # for recipes that take state_bits; fp8: COAT's e4m3 codes
FUSED = (False, True)            # ordinary backward, layer-wise updates


@dataclass(frozen=True)
class Fit:
    recipe: str
    # rank / state_bits / fused_backward and the activation levers: activation_checkpointing,
    # loss, activation_bits, offload_activations (each key ``plan()`` takes)
    settings: dict[str, Any]
    max_batch: int
    total: int                # bytes at max_batch
    state_bytes: int          # optimizer states + projectors
    host_bytes: int = 0       # offloaded activations in host memory at max_batch

    @property
    def levers(self) -> list[str]:
        """The activation levers this setting uses, in words ([] for none)."""
        s = self.settings
        out = []
        if s.get("loss", "naive") != "naive":
            out.append(f"{s['loss']} loss")
        policy = s.get("activation_checkpointing")
        if policy:
            out.append("checkpointing " + ("(transformers')" if policy is True else str(policy)))
        if s.get("activation_bits") is not None:
            out.append(f"{s['activation_bits']}-bit activations")
        if s.get("offload_activations"):
            out.append("offloaded activations")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(recipe=self.recipe, **self.settings, levers=self.levers, max_batch=self.max_batch,
                    total=self.total, state_bytes=self.state_bytes, host_bytes=self.host_bytes)


def rank_ladder(hidden: int) -> list[int]:
    """h/2, h/4, h/8 (multiples of 8): the papers use h/4 (GaLore, APOLLO) and h/8 (APOLLO†)."""
    return sorted({max(8, (hidden // d) // 8 * 8) for d in (2, 4, 8)}, reverse=True)


def _largest_batch(static, budget: int, max_batch: int, at_least: int = 1) -> int:
    """The largest batch up to ``max_batch`` whose plan fits ``budget``; 0 when ``at_least`` does
    not fit (or exceeds ``max_batch``): the frontier asks only whether a setting beats a batch."""
    if at_least > max_batch or _with_batch(static, at_least).total > budget:
        return 0
    lo, hi = at_least, max_batch
    # total grows with the batch: find the largest batch under the budget. (Offload takes only
    # storages of at least 1 MiB, so at shapes whose storages cross that size between two batches
    # the total can dip; the batch found fits and the next one does not, but a larger one might.)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _with_batch(static, mid).total <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _options(value, default: tuple) -> list:
    """A lever's values to search: ``default`` when the caller passed it, else the one value given
    (or the values of a list / tuple)."""
    if value is default:
        return list(default)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def lever_cost(settings: dict[str, Any]) -> tuple:
    """How much step time a setting's activation levers cost, to order them (smaller first).
    Offload last of all: every saved activation crosses the host link twice a step (hidden only
    while the link keeps up — never measured here, no GPU) and takes pinned host memory as large
    as the batch it buys. Then by how many of the other costly levers are on — recomputation
    (checkpointing), encode/decode (compressed activations) — and which: less recomputation first
    (``_recompute_rank``), compression alone (elementwise on the device) before any
    recomputation (the layers' matmuls again), 8-bit codes before fp8 (the same bytes, finer
    rounding: README). The chunked loss costs no compute (the same matmuls, the logits never
    whole; as fast or faster on CPU, benchmarks/README.md): it only breaks ties, after the naive
    loss, the trainer's choice on GPUs. A judgement of cost, not a measurement: each lever's
    memory is planned exactly, its time is not."""
    policy = settings.get("activation_checkpointing") or False
    bits = settings.get("activation_bits")
    offload = bool(settings.get("offload_activations"))
    costly = (policy is not False) + (bits is not None)
    bits_rank = ACTIVATION_BITS.index(bits) if bits in ACTIVATION_BITS else len(ACTIVATION_BITS)
    return (offload, costly, _recompute_rank(policy), bits_rank, settings.get("loss", "naive") != "naive")


def fitting_settings(budget: int, model, *, seq_len: int = 256, param_dtype="float32",
                     autocast: bool = False, recipes: list[str] | None = None,
                     max_batch: int = 4096, ranks=None, state_bits=STATE_BITS,
                     fused_backward=FUSED, checkpointing=CHECKPOINTING, loss=LOSSES,
                     activation_bits=ACTIVATION_BITS, offload_activations=OFFLOAD,
                     device: str = "cuda") -> list[Fit]:
    """Every (recipe, rank, state bits, fused backward, activation levers) that fits ``budget``
    bytes with at least batch 1, with its largest batch (at most ``max_batch``).

    Each setting is searched over its defaults unless given: ``ranks`` (the rank ladder of
    projecting recipes), ``state_bits`` (32, 8, fp8, for recipes that take it), ``fused_backward``
    (both), and the activation levers ``checkpointing`` (policies of
    ``apply_activation_checkpointing``; "none" / False for none, True for transformers' own),
    ``loss`` ("naive", "chunked"), ``activation_bits`` (None, 8, "fp8") and
    ``offload_activations`` (False, True — True only when ``device`` is a cuda device: the trainer
    refuses offload elsewhere; nor with compressed activations, which the trainer refuses too).
    A single value (``loss="naive"``, ``activation_bits=None``) or a list of values restricts
    that setting to it; a recipe that does not take a ``ranks`` / ``state_bits`` given is skipped
    (refused when it is the only one). Zeroth-order recipes (named in ``recipes``) save nothing
    for backward: only the loss is searched for them.

    Per optimizer setting the lever settings are tried cheapest first (``lever_cost``) and one is
    kept only when it fits a larger batch than every cheaper one kept: a costly lever is listed
    only where it buys batch, and the search of that optimizer setting stops at ``max_batch``.
    Best first: the most optimizer state kept (closest to AdamW), then the cheapest levers
    (``lever_cost``: no recompute, encode/decode or host copies where a setting fits without
    them — they cost step time, and fewer of them is the faster run), then ordinary backward
    (clipping by the current norm), then the largest batch."""
    from .. import optim
    from ..models import model_config

    config = model_config(model)
    # gradient training by default: a zeroth-order recipe (inference's memory) is searched when
    # named in ``recipes``; listing it first everywhere would bury the comparison asked for
    names = recipes or optim.available("gradient")
    combos = _lever_settings(checkpointing, loss, activation_bits, offload_activations, device)
    weights_only = _static(model, names[0], seq_len=seq_len, param_dtype=param_dtype,
                           autocast=autocast, fused_backward=False, grad_accum=1,
                           activation_checkpointing=False, recipe_kwargs={}).weights
    if weights_only > budget:  # before searching: nothing can fit
        raise ValueError(f"the budget ({budget / 2**30:.2f} GiB) is below the weights alone "
                         f"({weights_only / 2**30:.2f} GiB): no recipe fits; use a smaller model or "
                         "bfloat16 weights")
    fits: list[Fit] = []
    for name in names:
        alone = len(names) == 1  # an explicit rank / state bits it does not take: its own error
        if ranks is not None and not recipe_accepts(name, "rank") and not alone:
            continue
        if state_bits is not STATE_BITS and not recipe_accepts(name, "state_bits") and not alone:
            continue
        # recipes that project by default get the rank ladder; the one-rule recipes (lion, …)
        # are planned as they are (their rank= variants are the galore-* recipes' plans)
        projects = isinstance(optim.recipe(name).default("rank"), int)
        rank_options = list(ranks) if ranks is not None else \
            rank_ladder(config.hidden_size) if projects else [None]
        bits_options = _options(state_bits, STATE_BITS) if state_bits is not STATE_BITS else \
            list(STATE_BITS) if recipe_accepts(name, "state_bits") else [None]
        for rank in rank_options:
            for bits in bits_options:
                kwargs = {k: v for k, v in (("rank", rank), ("state_bits", bits)) if v is not None}
                # layer-wise updates: a mode of most optimizers, planned on the same build
                fused = tuple(dict.fromkeys(bool(fb) for fb in _options(fused_backward, FUSED)))
                for static in _statics(model, name, seq_len=seq_len, param_dtype=param_dtype,
                                       autocast=autocast, fused_options=fused, grad_accum=1,
                                       activation_checkpointing=False, recipe_kwargs=dict(kwargs)):
                    if isinstance(static, FusedRefused):  # Sophia's step inputs, LISA's sampling
                        continue
                    found = _frontier(name, static, kwargs, combos, budget, max_batch)
                    if bits == "fp8" and state_bits is STATE_BITS and _same(found, fits, "fp8", 8):
                        continue  # fp8 states plan as 8-bit ones: the 8-bit rows stand for both
                    fits += found
    fits.sort(key=lambda f: (-f.state_bytes, lever_cost(f.settings), f.settings["fused_backward"],
                             -f.max_batch))
    return fits


def _lever_settings(checkpointing, loss, activation_bits, offload_activations, device) -> list[dict]:
    """The activation-lever settings to try (``planner._levers``'s, validated), cheapest first."""
    import torch

    policies = _options(checkpointing, CHECKPOINTING)
    losses = _options(loss, LOSSES)
    bits_options = _options(activation_bits, ACTIVATION_BITS)
    offloads = list(dict.fromkeys(bool(o) for o in _options(offload_activations, OFFLOAD)))
    if torch.device(device).type != "cuda":
        if offload_activations is not OFFLOAD and any(offloads):
            raise ValueError(f"offload moves saved activations from GPU to host memory; on "
                             f"{device} they are already in host memory (drop it, or plan a cuda "
                             "device)")
        offloads = [False]
    for value in losses:
        check_loss(value)
    combos = []
    for policy in policies:
        for value in losses:
            for bits in bits_options:
                for off in offloads:
                    try:
                        combos.append(_levers(policy, value, bits, off))
                    except ValueError:  # offload with compressed activations: the one refused pair
                        if not (off and parse_bits(bits) is not None):
                            raise  # a bad policy, bits value
                        if len(bits_options) == 1 and offloads == [True]:
                            raise  # the caller asked for exactly that pair
    return sorted(combos, key=lever_cost)


def _frontier(name: str, static, kwargs: dict, combos: list[dict], budget: int,
              max_batch: int) -> list[Fit]:
    """The lever settings worth listing for one optimizer setting: ``combos`` cheapest first,
    each kept only when it fits a larger batch than every cheaper one kept. The losses of one
    lever setting are one step (the chunked loss costs no compute): its best, naive on a tie."""
    if static.settings.get("zeroth_order"):  # no backward: only the loss changes its memory
        combos = [c for c in combos if lever_cost(c)[:2] == (False, 0)] or combos
    out: list[Fit] = []
    best = 0
    groups: dict[tuple, list[dict]] = {}
    for levers in combos:
        key = (levers["activation_checkpointing"], levers.get("activation_bits"),
               levers.get("offload_activations", False))
        groups.setdefault(key, []).append(levers)
    for group in groups.values():
        found = None
        for levers in group:
            st = _with_levers(static, levers["activation_checkpointing"], levers.get("loss", "naive"),
                              levers.get("activation_bits"), levers.get("offload_activations", False))
            batch = _largest_batch(st, budget, max_batch, at_least=best + 1)
            if batch > best:  # else a cheaper setting already fits as much: its cost buys nothing
                best, found = batch, (levers, st)
        if found is None:
            continue
        levers, st = found
        at = _with_batch(st, best)
        settings = dict(kwargs, fused_backward=static.settings["fused_backward"],
                        activation_checkpointing=levers["activation_checkpointing"],
                        loss=levers.get("loss", "naive"), activation_bits=levers.get("activation_bits"),
                        offload_activations=levers.get("offload_activations", False))
        out.append(Fit(name, settings, best, at.total, at.optimizer_states + at.projectors,
                       at.details.get("offloaded", 0)))
        if best >= max_batch:  # nothing costlier can fit more
            break
    return out


def _same(found: list[Fit], fits: list[Fit], bits, like) -> bool:
    """Whether ``found`` (state bits ``bits``) plans byte for byte as the fits already listed
    with state bits ``like`` and otherwise the same settings."""
    def key(f: Fit, b):
        return (f.recipe, tuple(sorted((k, str(v)) for k, v in {**f.settings, "state_bits": b}.items())),
                f.max_batch, f.total, f.state_bytes)

    listed = {key(f, None) for f in fits if f.settings.get("state_bits") == like}
    return bool(found) and all(key(f, None) in listed for f in found)


def _recompute_rank(policy) -> tuple[int, int]:
    """Less recomputation first: none, attention only, every k-th layer (larger k first), MLP
    only, every layer."""
    from ..activations.checkpointing import parse_policy

    if policy is True:
        return (4, 0)
    kind, k = parse_policy(policy)
    return {"none": (0, 0), "attn": (1, 0), "mlp": (3, 0)}.get(kind, (2 if k > 1 else 4, -k))
