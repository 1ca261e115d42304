"""Layer-wise updates under ``DistributedDataParallel``: update after the all-reduce.

A parameter's post-accumulate-grad hook fires before DDP has averaged its gradient over the
processes, so stepping there would apply each process's local gradient (why GaLore's per-layer
mode is single-GPU only). Here the update runs in a DDP communication hook instead: the hook
averages the bucket as DDP's default does (divide by the world size, all-reduce the sum), and when
the all-reduce completes it updates the bucket's parameters that are on their last micro-batch from
the averaged gradient — on every process the same numbers, so replicas stay identical, and the
update of one bucket overlaps the backward and all-reduce of the others.

Gradient accumulation is DDP's own: ``with ddp.no_sync():`` for the first ``grad_accum − 1``
backward passes (``.grad`` accumulates locally), then a synchronised one. DDP keeps a full-size
bucket for every gradient, so under DDP layer-wise updates do not reduce gradient memory; they keep
the steps, clipping, schedule and checkpoints right. ``find_unused_parameters=True`` is refused:
a parameter that misses a pass on one process would count differently there.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


class _DDPUpdates:
    def __init__(self, model: DistributedDataParallel, handle):
        self.handle = handle
        self.process_group = model.process_group
        try:
            model.register_comm_hook(state=None, hook=self._hook)
        except RuntimeError as err:  # DDP allows one communication hook per model
            raise ValueError(f"cannot add the layer-wise communication hook to this DDP model "
                             f"({err}); wrap the model in a fresh DistributedDataParallel") from err

    def _hook(self, _state, bucket):
        buffer = bucket.buffer()
        buffer.div_(dist.get_world_size(self.process_group))
        work = dist.all_reduce(buffer, group=self.process_group, async_op=True)

        def update(_future):
            if self.handle is not None:
                self.handle._on_reduced(bucket.parameters(), bucket.gradients())
            return bucket.buffer()

        return work.get_future().then(update)

    def detach(self) -> None:
        """DDP cannot drop a communication hook: from now on it only averages."""
        self.handle = None


def attach(model, handle) -> _DDPUpdates | None:
    """The DDP backend for ``model`` when it is wrapped in DDP, else None."""
    if not isinstance(model, DistributedDataParallel):
        return None
    if model.find_unused_parameters:
        raise ValueError("layer-wise updates under DDP need every parameter used in every backward "
                         "pass; build DistributedDataParallel with find_unused_parameters=False")
    return _DDPUpdates(model, handle)
