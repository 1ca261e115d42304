"""What the saved-tensor levers share (``compress.py``, ``offload.py``): which saved tensors they
may take, and one stored copy per storage.

A lever takes a saved tensor when it is a plain floating tensor that is part of the autograd graph
(``requires_grad``), at least ``min_numel`` elements in its storage, and neither a parameter nor a
view or cast of one (a leaf that requires grad — a parameter, an FSDP2 unsharded parameter — or
anything that reaches such a leaf through views and casts alone: ``weight.t()`` saved by a Linear,
autocast's bf16 weight copies). Those stay alive anyway or are weights: taking them saves nothing
or costs precision. Buffers a custom Function computed under no_grad (the chunked loss's
precomputed gradients) and non-differentiable outputs (SDPA's log-sum-exp) are kept as they are.

Given a model, a lever acts only inside its decoder layers (forward pre-/post-hooks keep count),
so the embedding, the final norm and the loss head stay exact. The lever works on whole storages:
every view of one storage saved in a forward shares one stored copy (q, k and v projections save
the same input; a Linear saves a 2-D view of a 3-D activation), and ``unpack`` gives each view
back with its own shape, strides and offset.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

_PASS_THROUGH = {"TBackward0", "ViewBackward0", "ToCopyBackward0", "TransposeBackward0",
                 "PermuteBackward0", "ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
                 "UnsafeViewBackward0", "AliasBackward0", "AsStridedBackward0", "SliceBackward0",
                 "SelectBackward0", "ReshapeAliasBackward0", "CloneBackward0"}
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.model.layers`` for LLaMA-style)."""
    for holder in (getattr(model, "model", None), getattr(model, "get_decoder", lambda: None)(), model):
        layers = getattr(holder, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    raise ValueError(f"{type(model).__name__} has no decoder layers (model.model.layers); activation "
                     "checkpointing, compression and offload apply to transformers decoder LMs")


def derives_from_parameter(t: torch.Tensor, depth: int = 8) -> bool:
    """A parameter-like leaf, or a view / cast of one (through at most ``depth`` such steps)."""
    if isinstance(t, nn.Parameter) or (t.requires_grad and t.grad_fn is None):
        return True
    fn = t.grad_fn
    for _ in range(depth):
        if fn is None:
            return False
        if type(fn).__name__ == "AccumulateGrad":
            return True
        if fn.name() not in _PASS_THROUGH:
            return False
        nxt = [f for f, _ in fn.next_functions if f is not None]
        if len(nxt) != 1:
            return False
        fn = nxt[0]
    return False


class _View:
    """One saved view of a stored storage."""

    __slots__ = ("stored", "shape", "stride", "offset")

    def __init__(self, stored, t: torch.Tensor):
        self.stored, self.shape, self.stride, self.offset = stored, t.shape, t.stride(), t.storage_offset()


class StorageHooks:
    """Base of a lever: a reusable context manager that installs ``saved_tensors_hooks`` calling
    ``pack`` / ``unpack``. Subclasses define ``_store(flat) -> stored`` (``flat``: the storage as a
    1-D tensor of the saved dtype), ``_restore(stored) -> flat`` and ``_held(stored)`` (the device
    tensors it keeps). ``pack`` and ``unpack`` can be called by other hooks (the measurement's)."""

    min_numel = 1

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        self._layers = decoder_layers(model) if model is not None else None
        self._depth = 0
        self._cache: dict = {}
        self._handles: list = []
        self._hooks = None

    # --- which tensors -------------------------------------------------------------------
    def takes(self, t: torch.Tensor) -> bool:
        if type(t) is not torch.Tensor or t.dtype not in FLOATS or not t.requires_grad:
            return False
        if self._layers is not None and self._depth == 0:
            return False
        if t.untyped_storage().nbytes() // t.element_size() < self.min_numel:
            return False
        return not derives_from_parameter(t)

    # --- hooks ---------------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        if not self.takes(t):
            return t
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr(), t._version)
        entry = self._cache.get(key)  # the same live storage object (its address is not reused)
        stored = entry[1]() if entry is not None and entry[0]() is storage else None
        if stored is None:
            flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage)
            stored = self._store(flat)
            self._cache[key] = (weakref.ref(storage), weakref.ref(stored))
        return _View(stored, t)

    def unpack(self, packed):
        if not isinstance(packed, _View):
            return packed
        flat = self._restore(packed.stored)
        return flat.as_strided(packed.shape, packed.stride, packed.offset)

    def held(self, packed) -> list[torch.Tensor]:
        """The tensors a packed value keeps (for measuring): the tensor itself, or the stored copy's."""
        return self._held(packed.stored) if isinstance(packed, _View) else [packed]

    # --- context -------------------------------------------------------------------------
    def __enter__(self):
        self._cache = {}
        self._depth = 0
        if self._layers is not None:
            def enter(*_):
                self._depth += 1

            def leave(*_):
                self._depth -= 1

            for layer in self._layers:
                self._handles += [layer.register_forward_pre_hook(enter),
                                  layer.register_forward_hook(leave, always_call=True)]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles, self._cache, self._depth = [], {}, 0
        return False

    def _store(self, flat):  # pragma: no cover - abstract
        raise NotImplementedError

    def _restore(self, stored):  # pragma: no cover - abstract
        raise NotImplementedError

    def _held(self, stored):  # pragma: no cover - abstract
        raise NotImplementedError
