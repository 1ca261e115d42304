"""``plan()``: the bytes a training run needs, part by part, before any GPU is bought or rented.

The parts (all integers, bytes):

* ``weights``: every parameter once (tied weights once), in ``param_dtype``;
* ``gradients``: one per trainable parameter in ``param_dtype``; with fused backward (layer-wise
  updates, ``optim/fused_backward.py``, which computes this part) only the largest parameter's
  gradient is alive at a time, plus the accumulation buffers when ``grad_accum > 1``: r×max(m, n)
  for projected matrices whose update needs only the projected gradient, full size for the rest —
  and full size for every matrix with ``fused_refresh_from="accumulated"`` (the default), whose
  first step refreshes every basis from the accumulated gradient (the peak counted here);
* ``optimizer_states`` and ``projectors``: the optimizer's own ``planned_state_bytes()``, computed
  by building the real recipe on a meta-device copy of the model (no memory is allocated), so it is
  exact for every registered recipe;
* ``activations``: the saved-tensor model of ``activations.py`` (exact for transformers' LLaMA),
  plus the returned logits, autocast's bf16 weight copies and, with checkpointing, the largest
  recomputed region; the levers (``loss="chunked"``, a checkpointing policy, ``activation_bits``,
  ``offload_activations``) are modelled there storage by storage;
* ``temporaries``: an upper bound on the short-lived peaks that come on top — the larger of the
  backward's loss-head gradients (fp32 T×V twice; two chunks of them with the chunked loss) and the optimizer step's low-rank temporaries plus
  the subspace refresh workspace of the largest projected matrix (the SVD's);
* ``total``: their sum.

A zeroth-order recipe (``optim/zo/``) needs no gradients and saves nothing for backward: its plan
is the weights, its state (none for MeZO), the logits and one decoder layer of a forward pass,
and the loss head's fp32 temporaries (``_forward_only``).

The paper tables count other things (weights + states only, in BF16); ``README.md`` in this
package's tests and the project README reconcile them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .activations import LlamaShape, check_loss, saved_activation_bytes

PARTS = ("weights", "gradients", "optimizer_states", "projectors", "activations", "temporaries")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
_LLAMA_LIKE = ("llama", "mistral")


@dataclass
class MemoryPlan:
    model: str
    recipe: str
    settings: dict[str, Any]
    weights: int
    gradients: int
    optimizer_states: int
    projectors: int
    activations: int
    temporaries: int
    details: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in PARTS)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in PARTS}
        out["total"] = self.total
        out.update(model=self.model, recipe=self.recipe, settings=self.settings, details=self.details)
        return out


def local_nbytes(t: torch.Tensor) -> int:
    """The bytes this process holds of ``t``: a DTensor's local shard, else the tensor."""
    from torch.distributed.tensor import DTensor

    return (t.to_local() if isinstance(t, DTensor) else t).nbytes


def adamw_state_bytes(model: torch.nn.Module) -> int:
    """The optimizer state of AdamW (torch's and slimtrain's) for ``model``'s trainable
    parameters on this process (an FSDP2 rank: its shards): two moments in the parameter's dtype
    and one float32 step counter each."""
    return sum(2 * local_nbytes(p) + 4 for p in model.parameters() if p.requires_grad)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use float32 or bfloat16")
    return _DTYPES[name]


def _meta_model(config, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def recipe_accepts(recipe: str, keyword: str) -> bool:
    """Whether the recipe's ``Config`` has the option (a factory without one accepts anything)."""
    from .. import optim

    return optim.recipe(recipe).accepts(keyword)


def _build_optimizer(recipe: str, model, kwargs: dict[str, Any]):
    from .. import optim

    for key in kwargs:
        if not recipe_accepts(recipe, key):
            raise ValueError(f"recipe {recipe!r} does not take {key}=; drop it or pick a recipe that does")
    import warnings

    with warnings.catch_warnings():  # fallbacks (rank ≥ min(m, n), 1-D targets) are the user's plan
        warnings.simplefilter("ignore")
        return optim.create(recipe, model, **kwargs)


def _gradient_bytes(model, optimizer, elem: int, fused_backward: bool, grad_accum: int,
                    refresh_from: str) -> int:
    if not fused_backward:
        return sum(p.numel() for p in model.parameters() if p.requires_grad) * elem
    from ..optim.layerwise import planned_gradient_bytes

    return planned_gradient_bytes(optimizer, grad_accum=grad_accum, refresh_from=refresh_from)


def _refresh_workspace(optimizer, param_elem: int, one_at_a_time: bool) -> tuple[int, int]:
    """(optimizer-step low-rank temporaries, largest refresh workspace) in bytes. The projected
    gradient and its direction, both r×max(m, n), live until applied; the core steps a group's
    matrices in chunks of ``PROJECTED_CHUNK_BYTES`` of them, layer-wise updates (``one_at_a_time``)
    one matrix at a time."""
    from ..optim.subspace.projected import PROJECTED_CHUNK_BYTES, chunk_by_bytes, low_rank_bytes

    step, refresh = 0, 0
    if not hasattr(optimizer, "plan_of"):  # not a pipeline optimizer: nothing projected
        return step, refresh
    for group in optimizer.param_groups:
        projected = [p for p in group["params"] if optimizer.plan_of(p).projected]
        sizes = [low_rank_bytes(p, optimizer.plan_of(p)) for p in projected]
        chunks = [[i] for i in range(len(sizes))] if one_at_a_time else \
            chunk_by_bytes(sizes, PROJECTED_CHUNK_BYTES)
        for chunk in chunks:
            step = max(step, 2 * sum(sizes[i] for i in chunk))
        for p in projected:
            m, n = p.shape
            r = optimizer.plan_of(p).rank
            copy = 0 if param_elem == 4 else m * n * 4  # fp32 copy of a low-precision gradient
            k = min(m, n)
            if group.get("basis") == "svd":  # thin SVD: U, S, Vh and LAPACK's gesdd workspace
                work = 4 * (m * n + m * k + k * n + 4 * k * k + 7 * k)
            else:  # range finder with K = r + oversample columns, and the K×K eigenproblem
                K = min(r + group.get("oversample", 8), k)
                work = 4 * (3 * max(m, n) * K + 2 * min(m, n) * K + r * (m + n)) + 16 * K * K
            refresh = max(refresh, copy + work)
    return step, refresh


def _levers(checkpointing, loss, activation_bits, offload) -> dict[str, Any]:
    """The activation levers as settings (validated; one-line ValueErrors)."""
    from ..activations.checkpointing import parse_policy
    from ..activations.compress import parse_bits

    if checkpointing is not True and checkpointing is not False:
        kind, k = parse_policy(checkpointing)
        checkpointing = False if kind == "none" else ("all" if kind == "every" and k == 1 else
                                                      f"every:{k}" if kind == "every" else kind)
    check_loss(loss)
    bits = parse_bits(activation_bits)
    if offload and bits is not None:  # as the trainer refuses it (train/setup.py)
        raise ValueError("offload_activations and activation_bits both store the saved activations: "
                         "pick one")
    out: dict[str, Any] = {"activation_checkpointing": checkpointing}
    if loss != "naive":
        out["loss"] = loss
    if bits is not None:
        out["activation_bits"] = bits
    if offload:
        out["offload_activations"] = True
    return out


@dataclass(frozen=True)
class _Static:
    """The batch-independent part of a plan."""

    model: str
    recipe: str
    shape: LlamaShape
    elem: int
    weights: int
    gradients: int
    states: dict[str, int]
    step_temporaries: int
    refresh_workspace: int
    parameters: int
    settings: dict[str, Any]
    extra: dict[str, int] = field(default_factory=dict)  # parallel runs: communication, buffers


def _static(model, recipe: str, *, fused_backward: bool, **kwargs) -> _Static:
    (static,) = _statics(model, recipe, fused_options=(fused_backward,), **kwargs)
    if isinstance(static, Exception):
        raise static
    return static


def _statics(model, recipe: str, *, seq_len: int, param_dtype, autocast: bool,
             fused_options: tuple[bool, ...], grad_accum: int, activation_checkpointing: bool | str,
             recipe_kwargs: dict, fused_refresh_from: str = "accumulated", world_size: int = 1,
             parallel: str | None = None, loss: str = "naive", activation_bits=None,
             offload_activations: bool = False) -> list[_Static | Exception]:
    """One ``_Static`` per value of ``fused_backward`` in ``fused_options`` (ordinary backward and
    layer-wise updates share the model and optimizer built once), or the ``FusedRefused`` error
    where the recipe refuses layer-wise updates."""
    from ..models import model_config
    from ..optim.layerwise import REFRESH_FROM, FusedRefused

    if seq_len < 1 or grad_accum < 1:
        raise ValueError(f"seq_len and grad_accum must be >= 1 (got {seq_len}, {grad_accum})")
    if fused_refresh_from not in REFRESH_FROM:
        raise ValueError(f"fused_refresh_from must be one of {REFRESH_FROM}, got {fused_refresh_from!r}")
    config = model_config(model)
    if getattr(config, "model_type", None) not in _LLAMA_LIKE:
        raise ValueError(f"the activation model covers LLaMA-style decoders ({', '.join(_LLAMA_LIKE)}); "
                         f"got model_type={getattr(config, 'model_type', None)!r}")
    levers = _levers(activation_checkpointing, loss, activation_bits, offload_activations)
    limit = getattr(config, "max_position_embeddings", None)
    if limit and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_position_embeddings ({limit})")
    dtype = parse_dtype(param_dtype)
    if autocast and dtype != torch.float32:
        raise ValueError("autocast applies to float32 parameters; with bfloat16 parameters drop autocast")
    elem = torch.empty((), dtype=dtype).element_size()
    meta = _meta_model(config, dtype)
    optimizer = _build_optimizer(recipe, meta, recipe_kwargs)
    if not hasattr(optimizer, "planned_state_bytes"):
        raise ValueError(f"recipe {recipe!r} does not report its planned state bytes")
    zeroth_order = bool(getattr(optimizer, "zeroth_order", False))
    out: list[_Static | Exception] = []
    for fused_backward in fused_options:
        try:
            out.append(_one_static(model, recipe, config, meta, optimizer, elem, dtype, zeroth_order,
                                   levers, seq_len=seq_len, autocast=autocast,
                                   fused_backward=fused_backward, grad_accum=grad_accum,
                                   activation_checkpointing=activation_checkpointing,
                                   recipe_kwargs=recipe_kwargs, fused_refresh_from=fused_refresh_from,
                                   world_size=world_size, parallel=parallel))
        except FusedRefused as refused:
            out.append(refused)
    return out


def _one_static(model, recipe, config, meta, optimizer, elem, dtype, zeroth_order, levers, *,
                seq_len, autocast, fused_backward, grad_accum, activation_checkpointing,
                recipe_kwargs, fused_refresh_from, world_size, parallel) -> _Static:
    from ..optim.layerwise import FusedRefused, fused_refusal

    if zeroth_order and fused_backward:
        raise FusedRefused(f"recipe {recipe!r} is zeroth-order: it runs no backward pass, so there "
                           "is nothing to fuse (plan it without fused backward)")
    reason = fused_refusal(optimizer) if fused_backward else None
    if reason:  # as optim.fuse_backward refuses it
        raise FusedRefused(f"recipe {recipe!r}: {reason} (plan it without fused backward)")
    step_tmp, refresh = _refresh_workspace(optimizer, elem, fused_backward)
    settings = dict(seq_len=seq_len, param_dtype=str(dtype).removeprefix("torch."), autocast=autocast,
                    fused_backward=fused_backward, grad_accum=grad_accum,
                    activation_checkpointing=activation_checkpointing, **recipe_kwargs)
    settings.update(levers)
    if fused_backward and grad_accum > 1:
        settings["fused_refresh_from"] = fused_refresh_from
    weights = sum(p.numel() for p in meta.parameters()) * elem
    gradients = 0 if zeroth_order else _gradient_bytes(meta, optimizer, elem, fused_backward,
                                                       grad_accum, fused_refresh_from)
    if zeroth_order:
        settings["zeroth_order"] = True
    extra = {}
    if parallel is not None:
        from .parallel import per_rank

        settings.update(world_size=world_size, parallel=parallel)
        weights, gradients, extra = per_rank(meta, optimizer, parallel, world_size, elem,
                                             fused_backward, gradients)
    return _Static(model=str(model), recipe=recipe, shape=LlamaShape.from_config(config), elem=elem,
                   weights=weights, gradients=gradients,
                   states=optimizer.planned_state_bytes(world_size if parallel == "fsdp" else 1),
                   step_temporaries=step_tmp + extra.get("unsharded", 0),
                   refresh_workspace=refresh, parameters=sum(p.numel() for p in meta.parameters()),
                   settings=settings, extra=extra)


def _with_levers(st: _Static, checkpointing: bool | str = False, loss: str = "naive",
                 activation_bits=None, offload_activations: bool = False) -> _Static:
    """``st`` with other activation levers: they change the activations and temporaries only
    (``_with_batch``), never the weights, gradients or optimizer state, so the budget search builds
    each optimizer once and tries the levers on it."""
    settings = {k: v for k, v in st.settings.items()
                if k not in ("activation_checkpointing", "loss", "activation_bits", "offload_activations")}
    return replace(st, settings={**settings, **_levers(checkpointing, loss, activation_bits,
                                                       offload_activations)})


def _with_batch(st: _Static, batch_size: int) -> MemoryPlan:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seq_len = st.settings["seq_len"]
    act = dict(_saved_bytes(st.shape, batch_size, seq_len, st.elem, **_activation_settings(st.settings)))
    backward_head = act["loss_chunk"] or 2 * 4 * batch_size * seq_len * st.shape.vocab
    if st.settings.get("zeroth_order"):  # one forward pass under no_grad: nothing is saved
        return _forward_only(st, batch_size, act, backward_head)
    details = {"parameters": st.parameters, **act, "backward_head": backward_head,
               "step_temporaries": st.step_temporaries, "refresh_workspace": st.refresh_workspace,
               **st.extra}
    return MemoryPlan(
        model=st.model, recipe=st.recipe, settings={"batch_size": batch_size, **st.settings},
        weights=st.weights, gradients=st.gradients, optimizer_states=st.states["states"],
        projectors=st.states["projectors"],
        activations=act["saved"] + act["logits"] + act["weight_casts"] + act["recompute"],
        temporaries=max(backward_head, st.step_temporaries + st.refresh_workspace), details=details)


def _forward_only(st: _Static, batch_size: int, act: dict[str, int], loss_head: int) -> MemoryPlan:
    """A zeroth-order step's memory: weights + state + one forward pass. Alive in a forward under
    no_grad: the returned logits, and at most one decoder layer's tensors at a time (bounded by
    what that layer saves for a backward, ``activations._layer``); the loss's fp32 upcast and
    log-softmax of the logits come on top briefly (temporaries, as the backward head's)."""
    layer = act["recompute"] or _one_layer(st, batch_size)
    details = {"parameters": st.parameters, "logits": act["logits"], "forward_layer": layer,
               "loss_head": loss_head, **st.extra}
    return MemoryPlan(
        model=st.model, recipe=st.recipe, settings={"batch_size": batch_size, **st.settings},
        weights=st.weights, gradients=0, optimizer_states=st.states["states"],
        projectors=st.states["projectors"], activations=act["logits"] + layer,
        temporaries=loss_head, details=details)


@functools.lru_cache(maxsize=1 << 16)
def _saved_bytes(shape, batch_size, seq_len, elem, autocast, checkpointing, loss, activation_bits,
                 offload) -> dict[str, int]:
    """``saved_activation_bytes``, remembered: the budget search asks the same activations of
    every optimizer setting (they do not depend on it). Callers copy the dict."""
    return saved_activation_bytes(shape, batch_size, seq_len, param_bytes=elem, autocast=autocast,
                                  checkpointing=checkpointing, loss=loss,
                                  activation_bits=activation_bits, offload=offload)


def _activation_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return dict(autocast=settings["autocast"], checkpointing=settings["activation_checkpointing"],
                loss=settings.get("loss", "naive"), activation_bits=settings.get("activation_bits"),
                offload=settings.get("offload_activations", False))


def _one_layer(st: _Static, batch_size: int) -> int:
    return saved_activation_bytes(st.shape, batch_size, st.settings["seq_len"], param_bytes=st.elem,
                                  autocast=st.settings["autocast"], checkpointing=True)["recompute"]


def plan(model, recipe: str = "adamw", *, batch_size: int = 1, seq_len: int = 256,
         param_dtype: str | torch.dtype = "float32", autocast: bool = False,
         fused_backward: bool = False, grad_accum: int = 1, activation_checkpointing: bool | str = False,
         fused_refresh_from: str = "accumulated", world_size: int = 1, parallel: str | None = None,
         loss: str = "naive", activation_bits=None, offload_activations: bool = False,
         **recipe_kwargs) -> MemoryPlan:
    """Plan the memory of training ``model`` (preset name, local HF dir/config.json, or config)
    with ``recipe`` (a registry name; ``recipe_kwargs`` go to it, e.g. ``rank=128``).
    ``fused_refresh_from`` is ``fuse_backward``'s ``refresh_from``. ``parallel`` ("ddp" or "fsdp")
    with ``world_size`` ranks plans one rank (``parallel.py``): ``batch_size`` is per rank.

    Activation levers (``slimtrain.activations``): ``activation_checkpointing`` False, True
    (transformers' own) or a policy "all" / "every:k" / "attn" / "mlp"
    (``apply_activation_checkpointing``); ``loss`` "naive" or "chunked" (``use_chunked_loss``);
    ``activation_bits`` None, 8 or "fp8" (``compressed_activations(model, bits)``, default size
    threshold); ``offload_activations`` (``offload_activations(model)``, GPU runs)."""
    if parallel not in (None, "ddp", "fsdp"):
        raise ValueError(f"parallel must be ddp or fsdp (or None for one process), got {parallel!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    static = _static(model, recipe, seq_len=seq_len, param_dtype=param_dtype, autocast=autocast,
                     fused_backward=fused_backward, grad_accum=grad_accum,
                     activation_checkpointing=activation_checkpointing, recipe_kwargs=recipe_kwargs,
                     fused_refresh_from=fused_refresh_from, world_size=world_size, parallel=parallel,
                     loss=loss, activation_bits=activation_bits,
                     offload_activations=offload_activations)
    return _with_batch(static, batch_size)


__all__ = ["MemoryPlan", "PARTS", "adamw_state_bytes", "local_nbytes", "plan", "parse_dtype", "recipe_accepts"]
