"""One rank's share of a data-parallel run (``plan(..., parallel=, world_size=)``).

* ``ddp``: every rank holds the whole model, its gradients and optimizer state; a step all-reduces
  every gradient (DDP's buckets hold a copy of them).
* ``fsdp`` (FSDP2, every decoder layer and the root ``fully_shard``-ed): weights, gradients and
  optimizer states are sharded by rows — rank 0, whose chunks are the largest, is planned —
  except the subspace bases, seeds and counters, which every rank keeps whole
  (``optim/sharded/step.py``). While a layer runs, its weights (and in backward its gradients)
  are gathered whole: the largest layer plus the root's own parameters (embeddings, final norm,
  LM head, kept gathered between forward and backward) are counted as ``unsharded``
  temporaries. Each step FSDP2 all-gathers the weights twice (forward, backward) and
  reduce-scatters the gradients once; the optimizer moves ``sharded.plan.step_bytes``.
"""

from __future__ import annotations

from ..optim.sharded.context import chunk_range


def _shard_bytes(p, world: int, elem: int) -> int:
    rows = chunk_range(p.shape[0], world, 0)
    return (rows[1] - rows[0]) * (p.numel() // max(p.shape[0], 1)) * elem


def per_rank(model, optimizer, parallel: str, world: int, elem: int, fused_backward: bool,
             gradients: int) -> tuple[int, int, dict[str, int]]:
    """(weights, gradients, extra) of one rank; ``extra`` holds the communication per step and,
    for FSDP, the unsharded temporaries."""
    params = [p for p in model.parameters()]
    full = sum(p.numel() for p in params) * elem
    if parallel == "ddp":
        grads = sum(p.numel() for p in params if p.requires_grad) * elem
        return full, gradients, {"ddp_gradient_bucket": grads, "comm_bytes_per_step": grads}
    from ..optim.sharded.plan import step_bytes

    weights = sum(_shard_bytes(p, world, elem) for p in params)
    sharded_grads = sum(_shard_bytes(p, world, elem) for p in params if p.requires_grad)
    if fused_backward:  # each shard is freed once its parameter is updated
        sharded_grads = max(_shard_bytes(p, world, elem) for p in params if p.requires_grad)
    layers = getattr(getattr(model, "model", model), "layers", [])
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = sum(p.numel() for p in params if id(p) not in in_layers) * elem
    largest = max((sum(p.numel() for p in layer.parameters()) * elem for layer in layers), default=0)
    optimizer_bytes = step_bytes(optimizer, world) if hasattr(optimizer, "plan_of") else {
        "ordinary": 0, "naive": 0}
    extra = {"unsharded": root + 2 * largest,  # a layer's weights and, in backward, its gradients
             "fsdp_comm_bytes_per_step": 3 * full,
             "optimizer_comm_bytes_per_step": optimizer_bytes["ordinary"],
             "naive_projected_comm_bytes_per_step": optimizer_bytes["naive"]}
    return weights, sharded_grads, extra
