"""Activation offload to host memory (GPU runs): ``offload_activations(model, device)``.

Inside the context, the saved tensors ``saved.py`` lets a lever take whose storage is at least
``min_bytes`` are copied to pinned host memory on a side CUDA stream during forward and copied
back in backward. Ordering: the side stream first waits for the compute stream (the tensor is
written), the copy-out is enqueued there, and the device storage is marked as used by the side
stream (``record_stream``) so that the caching allocator reuses it only after the copy — forward
never waits for a copy-out. In backward the copy-in is enqueued on the side stream and the compute
stream waits for it before the tensor is used; the restored tensor is marked for the compute
stream. Device memory for an offloaded storage is 0 between forward and its backward; host memory
is the storage's size (pinned). Small tensors stay on the device: a copy's fixed cost outweighs
what it frees. The design follows torchtune's OffloadActivations (no prefetch of the next layer
here).

On any device but CUDA it raises a ``UserError``: there is no separate device memory to free.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .saved import StorageHooks

DEFAULT_MIN_BYTES = 2**20


class _Offloaded:
    __slots__ = ("host", "device", "__weakref__")

    def __init__(self, host, device):
        self.host, self.device = host, device


def check_offload_device(device) -> None:
    device = torch.device(device)
    if device.type != "cuda":
        raise UserError(f"--offload-activations moves saved activations from GPU to host memory; "
                        f"on {device.type} they are already in host memory (drop the flag)")
    if not torch.cuda.is_available():
        raise UserError("--offload-activations needs CUDA, which this torch build cannot use")


class OffloadActivations(StorageHooks):
    def __init__(self, model: nn.Module | None = None, device="cuda",
                 min_bytes: int = DEFAULT_MIN_BYTES):
        check_offload_device(device)
        super().__init__(model)
        self.min_bytes = min_bytes
        self._stream = None

    def takes(self, t: torch.Tensor) -> bool:
        return (t.device.type == "cuda" and t.untyped_storage().nbytes() >= self.min_bytes
                and super().takes(t))

    def _side(self, device) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def _store(self, flat: torch.Tensor) -> _Offloaded:
        side = self._side(flat.device)
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        side.wait_stream(torch.cuda.current_stream(flat.device))
        with torch.cuda.stream(side):
            host.copy_(flat.detach(), non_blocking=True)
        flat.record_stream(side)
        return _Offloaded(host, flat.device)

    def _restore(self, stored: _Offloaded) -> torch.Tensor:
        side = self._side(stored.device)
        compute = torch.cuda.current_stream(stored.device)
        side.wait_stream(compute)
        with torch.cuda.stream(side):
            out = stored.host.to(stored.device, non_blocking=True)
        compute.wait_stream(side)
        out.record_stream(compute)
        return out

    def _held(self, stored: _Offloaded) -> list[torch.Tensor]:
        return []  # nothing on the device


def offload_activations(model: nn.Module | None = None, device="cuda",
                        min_bytes: int = DEFAULT_MIN_BYTES) -> OffloadActivations:
    """A reusable context manager offloading the saved activations of ``model``'s decoder layers
    (storages of at least ``min_bytes``) to pinned host memory; UserError off CUDA."""
    return OffloadActivations(model, device, min_bytes)
