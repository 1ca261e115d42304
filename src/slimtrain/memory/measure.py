"""Measure what a few real training steps hold, to check the planner against.

Exact tensor accounting works on any device: bytes of parameters, gradients (the most alive at any
gradient's arrival, ``GradientMeter``) and optimizer state, and the tensors autograd saves for
backward (unique storages seen by ``saved_tensors_hooks``). Process
level: peak allocator memory on CUDA; on CPU, the peak resident set size (VmHWM, reset before the
measured steps) — which also holds the allocator's caches and Python itself, so it is an upper check.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext

import torch
from torch import nn


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@contextmanager
def saved_tensor_bytes(model: nn.Module, lever=None):
    """Yields a dict whose "bytes" is the size of the unique non-parameter storages autograd saves.

    With ``lever`` (a saved-tensor lever of ``slimtrain.activations``, entered by the caller: a
    compression or offload context) each saved tensor goes through ``lever.pack`` and what the
    packed value keeps on the device (``lever.held``) is counted instead: codes and scales for a
    compressed storage, nothing for an offloaded one."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    result = {"bytes": 0}

    def count(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()

    def pack(t):
        if lever is None:
            count(t)
            return t
        packed = lever.pack(t)
        for held in lever.held(packed):
            count(held)
        return packed

    unpack = (lambda t: t) if lever is None else lever.unpack
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield result
    result["bytes"] = sum(storages.values())


def _returned_logits_bytes(out) -> int:
    logits = getattr(out, "logits", None)
    return 0 if logits is None else logits.untyped_storage().nbytes()


class GradientMeter:
    """Peak bytes of parameter gradients alive at once, sampled whenever a gradient arrives: every
    gradient tensor seen so far that is still alive (weak references: a gradient still held by
    anything counts), plus the low-rank sums a layer-wise handle keeps (``accumulator_bytes``).
    Create it before ``fuse_backward`` so that its hooks run before the update frees the gradient.
    """

    def __init__(self, params):
        self.handle = None  # set to the FusedBackward handle to count its accumulators
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}
        self._hooks = [p.register_post_accumulate_grad_hook(self._sample) for p in params
                       if p.requires_grad]

    def _sample(self, p: torch.Tensor) -> None:
        self._seen[id(p.grad)] = weakref.ref(p.grad)
        alive = [t for t in (ref() for ref in self._seen.values()) if t is not None]
        held = tensor_bytes(alive) + (0 if self.handle is None else self.handle.accumulator_bytes())
        self.peak = max(self.peak, held)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _zeroth_order_steps(model, optimizer, steps, batch_size, seq_len, vocab, gen, device, autocast,
                        result) -> None:
    """``optimizer.step(closure)`` ``steps`` times; activations: what the closure's forward saves
    for backward (nothing, under no_grad) plus the logits it returns."""
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)

        def closure():
            with saved_tensor_bytes(model) as saved, torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids, labels=ids)
            result["activations"] = saved["bytes"] + _returned_logits_bytes(out)
            return out.loss

        optimizer.step(closure)


def measure(model: nn.Module, optimizer: torch.optim.Optimizer, *, batch_size: int, seq_len: int,
            steps: int = 2, autocast: bool = False, seed: int = 0, fused_backward: bool = False,
            grad_accum: int = 1, lever=None, **fuse_kwargs) -> dict[str, int | None]:
    """Run ``steps`` training steps of ``grad_accum`` micro-batches on random token ids and report
    measured bytes. ``fused_backward`` switches ``optimizer`` to layer-wise updates here (after the
    gradient meter is in place; ``fuse_kwargs`` go to ``fuse_backward``) and back at the end.

    ``lever``: a saved-tensor lever (``compressed_activations(model, …)``, ``offload_activations``)
    entered around each forward; activations then count what it keeps on the device.

    Keys: weights, gradients (the most alive at once), optimizer_states, projectors, activations
    (saved tensors + logits, last micro-batch), peak_rss (CPU) or peak_allocated (CUDA).
    """
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    meter = GradientMeter(list(model.parameters()))
    if fused_backward:
        from ..optim import fuse_backward

        meter.handle = fuse_backward(model, optimizer, grad_accum=grad_accum, **fuse_kwargs)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = reset_peak_rss()
    result: dict[str, int | None] = {}
    model.train()
    if getattr(optimizer, "zeroth_order", False):  # forward passes only: no gradient, nothing saved
        _zeroth_order_steps(model, optimizer, steps, batch_size, seq_len, vocab, gen, device,
                            autocast, result)
    for _ in range(0 if getattr(optimizer, "zeroth_order", False) else steps):
        for _ in range(grad_accum):
            ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)
            with nullcontext() if lever is None else lever, saved_tensor_bytes(model, lever) as saved, \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids, labels=ids)
            result["activations"] = saved["bytes"] + _returned_logits_bytes(out)
            (out.loss / grad_accum).backward()
            del out
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result["gradients"] = meter.peak
    meter.remove()
    if meter.handle is not None:
        meter.handle.remove()
    result["weights"] = tensor_bytes(model.parameters())
    held = optimizer.state_bytes() if hasattr(optimizer, "state_bytes") else {
        "states": tensor_bytes(v for st in optimizer.state.values() for v in st.values()
                               if torch.is_tensor(v)), "projectors": 0}
    result["optimizer_states"] = held["states"]
    result["projectors"] = held["projectors"]
    result["peak_allocated"] = torch.cuda.max_memory_allocated(device) if cuda else None
    result["peak_rss"] = peak_rss_bytes() if (rss_reset and not cuda) else None
    return result

