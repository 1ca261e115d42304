"""Layer-wise (fused-backward) updates: a mode of the same optimizer object.

Every parameter is updated from its own ``register_post_accumulate_grad_hook`` as soon as its
gradient of the step is complete, and that gradient is freed right away, so a single parameter's
gradient is alive at a time instead of all of them (GaLore's "per-layer weight updates")::

    opt = so.create("galore-adamw", model, rank=128)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)      # attached to opt, as usual
    fused = so.fuse_backward(model, opt, grad_accum=4, max_grad_norm=1.0)
    for batch in loader:
        for micro in batch.chunk(4):
            (model(**micro).loss / 4).backward()   # the 4th backward updates every parameter
        opt.step()        # finishes the step (norm, late parameters); updates nothing twice
        opt.zero_grad()
        sched.step()      # once per optimizer step
        log(fused.grad_norm)

The rules (DESIGN §6, README "Layer-wise updates"):

* **Counting.** Each parameter counts the gradients it receives after the last ``optimizer.step()``;
  its ``grad_accum``-th updates it inside that backward pass. ``step()`` then updates whatever is
  left (a parameter that missed some micro-batches, or everything when ``step()`` comes early) —
  the ordinary semantics, without the memory saving for those. One gradient more is an error.
* **Accumulation.** Unprojected parameters accumulate in ``.grad`` as usual. A projected matrix
  whose step needs only R = project(G) (``optimizer.takes_low_rank``) keeps the sum of the
  micro-batches' R (r × max(m, n)) and frees each G: the projection is linear and the basis stays
  fixed until the step, so Σ project(G_k) = project(Σ G_k) up to float rounding. The full gradient
  is accumulated instead where the step reads it — APOLLO's scaling, Fira's and FRUGAL's residuals
  — and on refresh steps, whose new basis comes from the step's gradient (the first step refreshes
  every matrix). ``refresh_from="first"`` chooses such a basis from the step's first micro-batch
  instead, so refresh steps stay low-rank too (and differ from ordinary training).
* **Clipping** (``max_grad_norm``). A step's global norm is known only after its last parameter
  was updated, so step t is scaled by min(1, max_norm / (‖g_{t−1}‖ + 1e-6)) — torch's
  ``clip_grad_norm_`` formula with the previous step's unclipped norm. The first step (no previous
  norm) is not clipped; the norm is part of the optimizer's ``state_dict``, so resume is exact.
* **Norm.** ``grad_norm`` (also ``optimizer.grad_norm``) is the L2 norm over all parameters of the
  step's unclipped gradient, NaN/Inf ones left out as the core does. A matrix that accumulated R
  contributes ‖Σ R_k‖, its gradient's norm inside the subspace: ``grad_norm_exact`` is False then.
* **DDP**: see ``ddp.py`` — the update runs after the bucket's all-reduce.
* **Inputs**: rules that read extra ``step()`` inputs (``Rule.needs``) cannot run here: the update
  happens inside backward, before ``step()`` could hand them over.

Files: ``fused_backward.py`` (the handle and its hooks), ``ddp.py`` (the DDP communication hook),
``norms.py`` (norms and the clipping factor), ``plan.py`` (planned gradient bytes).
"""

from .fused_backward import (ACCUMULATE, REFRESH_FROM, FusedBackward, FusedRefused, fuse_backward,
                             fused_refusal)
from .plan import planned_gradient_bytes

__all__ = ["ACCUMULATE", "REFRESH_FROM", "FusedBackward", "FusedRefused", "fuse_backward",
           "fused_refusal", "planned_gradient_bytes"]
