"""A sharded parameter's place in its process group, and the collectives its step uses.

FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps a parameter as a DTensor sharded by rows
(``Shard(0)`` on a 1-D mesh): this rank holds rows ``[row_start, row_end)`` of the global m×n
tensor, in ``torch.chunk`` order. The optimizer steps on the local shard (``to_local()``, the
parameter's own storage) and meets the other ranks only where the math mixes rows: global norms,
the projection of a left-projected matrix, a subspace refresh (``finder.py``).

Every collective goes through ``Shards`` and is counted in ``COMM`` (bytes of the tensor a
collective moves: an all-reduce's tensor, an all-gather's output), so tests and the benchmark can
check that an ordinary projected step moves only low-rank tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class CommCounter:
    """Bytes moved by the optimizer's collectives, by kind (``all_reduce``, ``all_gather``)."""

    bytes: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)

    def add(self, kind: str, t: Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()
        self.calls[kind] += 1

    def total(self) -> int:
        return sum(self.bytes.values())

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


COMM = CommCounter()


def chunk_range(size: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of ``rank``'s chunk of ``size`` in ``torch.chunk`` order (what DTensor's
    ``Shard`` holds): chunks of ⌈size/world⌉, the last ones shorter or empty."""
    step = -(-size // world) if size else 0
    start = min(rank * step, size)
    return start, min(start + step, size)


@dataclass(frozen=True)
class Shards:
    """How a parameter is sharded: its mesh and group, this rank, the global shape."""

    mesh: object
    group: object
    world: int
    rank: int
    global_shape: tuple[int, ...]

    @property
    def rows(self) -> tuple[int, int]:
        return chunk_range(self.global_shape[0], self.world, self.rank)

    def cols(self, n: int) -> tuple[int, int]:
        """This rank's chunk of n columns (a left-projected matrix's low-rank state)."""
        return chunk_range(n, self.world, self.rank)

    # ---------------------------------------------------------------- collectives
    def all_reduce_(self, t: Tensor, op: str = "sum") -> Tensor:
        """Sum (or ``op="max"``: maximum) over the ranks, in place."""
        COMM.add("all_reduce", t)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM,
                        group=self.group)
        return t

    def gather(self, local: Tensor, size: int, dim: int) -> Tensor:
        """The full tensor from every rank's chunk along ``dim`` (``size`` in all, chunked as
        ``chunk_range``): all-gather of equal, zero-padded pieces, then trimmed."""
        step = -(-size // self.world) if size else 0
        moved = local.movedim(dim, 0).contiguous()
        padded = moved.new_zeros((step, *moved.shape[1:]))
        padded[:moved.shape[0]] = moved
        out = moved.new_empty((step * self.world, *moved.shape[1:]))
        COMM.add("all_gather", out)
        _all_gather_single(out, padded, group=self.group)
        pieces = [out[r * step:r * step + (chunk_range(size, self.world, r)[1]
                                           - chunk_range(size, self.world, r)[0])]
                  for r in range(self.world)]
        return torch.cat(pieces).movedim(0, dim)


# torch 2.13 renamed all_gather_into_tensor (which now warns FutureWarning on every call)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def shards_of(p: Tensor) -> Shards | None:
    """The sharding of a DTensor parameter (None for an ordinary tensor); refuses layouts the
    optimizer does not handle, naming what it does."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(p, DTensor):
        return None
    mesh, placements = p.device_mesh, tuple(p.placements)
    if mesh.ndim != 1 or len(placements) != 1:
        raise ValueError(f"a parameter on a {mesh.ndim}-D device mesh ({placements}) is not "
                         "supported: slimtrain's optimizers take FSDP2 parameters sharded by rows "
                         "(Shard(0)) on a 1-D mesh, replicated ones, and ordinary tensors")
    placement = placements[0]
    if isinstance(placement, Replicate):
        return None  # every rank holds the whole tensor: an ordinary step on it
    if not isinstance(placement, Shard) or placement.dim != 0:
        raise ValueError(f"a parameter placed as {placement!r} is not supported (tensor parallel?): "
                         "slimtrain's optimizers take FSDP2 parameters sharded by rows (Shard(0)) "
                         "on a 1-D mesh, replicated ones, and ordinary tensors")
    return Shards(mesh=mesh, group=mesh.get_group(), world=mesh.size(), rank=mesh.get_local_rank(),
                  global_shape=tuple(p.shape))


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (its own storage: in-place updates reach the parameter)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def planning_shards(p: Tensor, world: int) -> Shards:
    """Rank 0's sharding of ``p`` over ``world`` ranks (the largest chunk), for plans made
    without a process group."""
    return Shards(mesh=None, group=None, world=world, rank=0, global_shape=tuple(p.shape))
