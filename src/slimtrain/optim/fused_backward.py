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
* **DDP**: see ``fused_ddp.py`` — the update runs after the bucket's all-reduce.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

from .._warnings import warn

ACCUMULATE = ("subspace", "full")
REFRESH_FROM = ("accumulated", "first")
_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


@dataclass
class _Pending:
    """A parameter's gradient of the current step, not yet applied (the rest is in ``.grad``)."""

    low_rank: Tensor | None = None  # Σ project(G_k) when it accumulates in its subspace
    subspace: bool = False


def _norm(g: Tensor) -> Tensor:
    """L2 norm as a 0-d tensor (no sync); fp16/bf16 summed in fp32, as the core does."""
    if g.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(g, dtype=torch.float32)
    return torch.linalg.vector_norm(g)


def _global_norm(norms: list[Tensor]) -> float:
    """‖(n₁, n₂, …)‖ over the finite per-parameter norms, summed in the order given as
    ``clip_grad_norm_(foreach=False)`` does (so that the two agree bit for bit)."""
    if not norms:
        return 0.0
    dtype = reduce(torch.promote_types, (n.dtype for n in norms))
    stacked = torch.stack([n.to(dtype=dtype, device=norms[0].device) for n in norms])
    return torch.linalg.vector_norm(stacked[torch.isfinite(stacked)]).item()


def _number(name: str, value, *, low: float, integer: bool = False, none_ok: bool = False,
            open_low: bool = False) -> None:
    if value is None and none_ok:
        return
    kind = int if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kind)
    if not ok or not (value > low if open_low else value >= low):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>' if open_low else '>='} {low}"
                         f"{' (or None)' if none_ok else ''}, got {value!r}")


class FusedBackward:
    """The handle ``fuse_backward`` returns. Attributes: ``grad_norm`` (last step, unclipped),
    ``grad_norm_exact``, ``clip_coef`` (the factor the last step's gradients were scaled by)."""

    def __init__(self, model: torch.nn.Module, optimizer, *, grad_accum: int = 1,
                 max_grad_norm: float | None = None, accumulate: str = "subspace",
                 refresh_from: str = "accumulated"):
        from . import fused_ddp
        from .core import PipelineOptimizer

        if not isinstance(optimizer, PipelineOptimizer):
            raise ValueError(f"fuse_backward needs a slimtrain optimizer (slimtrain.optim.create(...)), "
                             f"got {type(optimizer).__name__}")
        if optimizer._fused_backward is not None:
            raise ValueError("this optimizer already runs layer-wise updates; call .remove() on "
                             "its handle before fusing it again")
        _number("grad_accum", grad_accum, low=1, integer=True)
        _number("max_grad_norm", max_grad_norm, low=0, none_ok=True, open_low=True)
        if accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
        if refresh_from not in REFRESH_FROM:
            raise ValueError(f"refresh_from must be one of {REFRESH_FROM}, got {refresh_from!r}")
        self.optimizer = optimizer
        self.grad_accum = grad_accum
        self.max_grad_norm = max_grad_norm
        self.accumulate = accumulate
        self.refresh_from = refresh_from
        self.grad_norm: float | None = optimizer.grad_norm
        self.grad_norm_exact = True
        self.clip_coef = 1.0
        self._counts: dict[Tensor, int] = {}     # gradients received in this step
        self._pending: dict[Tensor, _Pending] = {}
        self._norms: dict[Tensor, Tensor] = {}  # parameters updated in this step → gradient norm
        self._exact = True
        self._coef: Tensor | None = None        # this step's clipping factor, once computed
        self._groups: dict[Tensor, dict] | None = None
        self._lock = threading.Lock()  # DDP updates run on the communication thread
        self._tracked: set[Tensor] = set()
        self._handles = []
        self._model_order = self._check_model(model)  # before DDP gets a hook it cannot drop
        self._ddp = fused_ddp.attach(model, self)
        for p in self._order():
            self._track(p)
        self._handles += [
            optimizer.register_state_dict_pre_hook(lambda _: self._at_boundary("state_dict()")),
            optimizer.register_load_state_dict_pre_hook(
                lambda *_: self._at_boundary("load_state_dict()")),
            optimizer.register_load_state_dict_post_hook(lambda _: self._reset()),  # new groups
        ]
        self._warn_about_accumulation()
        self._reset()
        optimizer._fused_backward = self

    # ------------------------------------------------------------------ set-up
    def _order(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _group(self, p: Tensor) -> dict:
        if self._groups is None:  # group dicts are replaced by load_state_dict: rebuilt per step
            self._groups = {q: g for g in self.optimizer.param_groups for q in g["params"]}
        return self._groups[p]

    def _track(self, p: Tensor) -> None:
        if p.requires_grad and p not in self._tracked:
            self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
            self._tracked.add(p)

    def _check_model(self, model: torch.nn.Module) -> list[Tensor]:
        """The model's trainable parameters in its order, after checking them against ours."""
        from torch.distributed.tensor import DTensor
        from torch.nn.parallel import DistributedDataParallel

        ours = set(self._order())
        if any(isinstance(p, DTensor) for p in ours):
            raise ValueError("layer-wise updates of sharded (DTensor / FSDP2) parameters are not "
                             "supported yet; use DDP or a single process")
        module = model.module if isinstance(model, DistributedDataParallel) else model
        theirs = [p for p in module.parameters() if p.requires_grad]
        if theirs and not any(p in ours for p in theirs):
            raise ValueError("none of the model's parameters is in the optimizer: pass the model "
                             "the optimizer was built for")
        left = sum(p not in ours for p in theirs)
        if left:
            warn(f"{left} trainable parameters of the model are not in the optimizer: their "
                 "gradients accumulate in .grad as usual and are never freed by layer-wise updates")
        return theirs

    def _warn_about_accumulation(self) -> None:
        if self.grad_accum == 1 or self.accumulate == "full" or self._ddp is not None:
            return
        low_rank = [p for p in self._order() if self.optimizer.takes_low_rank(self._group(p), p)]
        if not low_rank:
            return
        if self.refresh_from == "accumulated":
            warn(f"layer-wise updates with grad_accum={self.grad_accum}: refresh steps (the first "
                 "step, then every refresh_every) accumulate the full gradient of every matrix "
                 "that refreshes, so the first step holds as many gradients as ordinary training; "
                 "stagger=True spreads later refreshes, refresh_from='first' (trainer: "
                 "--fused-refresh-from first) keeps them low-rank")
        if self.max_grad_norm is not None:
            warn(f"with grad_accum={self.grad_accum}, {len(low_rank)} projected matrices accumulate "
                 "their projected gradient, so clipping measures their norm inside the subspace "
                 "(a lower bound; grad_norm_exact is False on such steps); accumulate='full' gives "
                 "the exact norm with ordinary gradient memory")

    # ------------------------------------------------------------------ backward
    def _on_grad(self, p: Tensor) -> None:
        """Post-accumulate-grad hook: ``p.grad`` holds p's gradient of this backward pass (plus
        the earlier micro-batches' when it accumulates in full)."""
        with self._lock, torch.no_grad():
            count = self._counts[p] = self._counts.get(p, 0) + 1
            if count > self.grad_accum:
                raise ValueError(
                    f"a parameter received gradient number {count} since the last "
                    f"optimizer.step(), but grad_accum={self.grad_accum}: call optimizer.step() "
                    f"after every {self.grad_accum} backward passes (or fuse with the right grad_accum)")
            pending = self._pending.setdefault(p, _Pending())
            if self._ddp is not None:  # the update waits for the all-reduce (fused_ddp.py)
                return
            group = self._group(p)
            if count == 1:
                pending.subspace = self._accumulates_low_rank(group, p)
            if pending.subspace:
                self._add_low_rank(group, p, pending, first=count == 1)
            if count == self.grad_accum:
                self._apply(p, pending, p.grad)

    def _accumulates_low_rank(self, group: dict, p: Tensor) -> bool:
        opt = self.optimizer
        if self.grad_accum == 1 or self.accumulate == "full" or not opt.takes_low_rank(group, p):
            return False
        if not opt.refresh_due(group, p):
            return True
        # A refresh step: from the first micro-batch (refresh_from="first", finite gradient only, so
        # NaN never reaches the basis), else from the accumulated gradient.
        return self.refresh_from == "first" and bool(torch.isfinite(_norm(p.grad)))

    def _add_low_rank(self, group: dict, p: Tensor, pending: _Pending, first: bool) -> None:
        opt = self.optimizer
        if first and opt.refresh_due(group, p):  # refresh_from="first"
            R = opt.refresh_now(group, p)
        else:
            R = opt.project_gradient(group, p, p.grad)
        pending.low_rank = R if pending.low_rank is None else pending.low_rank.add_(R)
        p.grad = None

    def _on_reduced(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """DDP: a bucket's gradients are all-reduced; update those on their last micro-batch."""
        with self._lock, torch.no_grad():
            for p, g in zip(params, grads):
                pending = self._pending.get(p)
                if pending is not None and self._counts[p] == self.grad_accum:
                    # a fresh copy: a view into the bucket sits at an offset for which BLAS may
                    # round differently from the separate .grad tensor of ordinary DDP
                    self._apply(p, pending, g.clone())

    def _apply(self, p: Tensor, pending: _Pending, grad: Tensor | None) -> None:
        """Update ``p`` with its gradient of the step: ``pending.low_rank`` when it accumulated in
        its subspace, else ``grad`` (its ``.grad``, or a copy of DDP's reduced gradient)."""
        self._pending.pop(p, None)
        target = pending.low_rank if pending.subspace else grad
        if target is None:  # its .grad was dropped by hand: nothing to apply
            return
        group = self._group(p)
        self._norms[p] = _norm(target)
        self._exact = self._exact and not pending.subspace
        coef = self._coefficient()
        if coef is not None:
            target.mul_(coef.to(target.device))
        if pending.subspace:
            self.optimizer._step_params(group, [p], {p: target})
        else:
            kept, p.grad = p.grad, grad
            try:
                self.optimizer._step_params(group, [p])
            finally:
                p.grad = kept
        if self._ddp is None:
            p.grad = None  # freed now: the point of the mode (under DDP its bucket holds it anyway)

    def _coefficient(self) -> Tensor | None:
        """This step's clipping factor, from the previous step's norm (None: no clipping)."""
        previous = self.optimizer.grad_norm
        if self.max_grad_norm is None or previous is None:
            return None
        if self._coef is None:
            norm = torch.tensor(previous, dtype=torch.float32)
            self._coef = torch.clamp(self.max_grad_norm / (norm + _CLIP_EPS), max=1.0)
        return self._coef

    # ------------------------------------------------------------------ optimizer.step()
    def finish_step(self, closure=None):
        """``optimizer.step()``: update the parameters whose gradient is still pending, then
        record the step's gradient norm."""
        if closure is not None:
            raise ValueError("optimizer.step(closure) would run backward itself, but with layer-wise "
                             "updates parameters change during backward: call loss.backward(), then "
                             "optimizer.step() without a closure")
        with self._lock, torch.no_grad():
            order = self._order()
            late = [p for p in order if p in self._pending]
            if late and self._ddp is not None:
                raise ValueError(
                    f"under DDP a parameter is updated in the all-reduce of its grad_accum-th "
                    f"backward pass, but {len(late)} parameters had received fewer gradients at "
                    f"optimizer.step(): call step() after exactly grad_accum={self.grad_accum} "
                    "backward passes (the first ones under ddp.no_sync()), each using every parameter")
            if late and not self._norms:
                warn(f"optimizer.step() came before any parameter received grad_accum="
                     f"{self.grad_accum} gradients: they were applied now (as ordinary training "
                     "would), without the memory saving of layer-wise updates")
            for p in late:
                self._apply(p, self._pending[p], p.grad)
            for p in order:  # added to the optimizer after fuse_backward(): ordinary this time
                if p not in self._tracked and p.grad is not None:
                    self._apply(p, _Pending(), p.grad)
                    self._track(p)
            self._finish(order)
        return None

    def _finish(self, order: list[Tensor]) -> None:
        # summed in the model's parameter order, as clip_grad_norm_(model.parameters()) does
        ours = set(order)
        by_model = [p for p in self._model_order if p in ours]
        known = set(by_model)
        order = by_model + [p for p in order if p not in known]
        self.grad_norm = _global_norm([self._norms[p] for p in order if p in self._norms])
        self.optimizer.grad_norm = self.grad_norm
        self.grad_norm_exact = self._exact
        self.clip_coef = 1.0 if self._coef is None else self._coef.item()
        if self._ddp is not None:  # DDP copied the reduced gradients back into .grad
            for p in self._norms:
                p.grad = None
        self._reset()

    def _reset(self) -> None:
        self._counts.clear()
        self._pending.clear()
        self._norms.clear()
        self._exact = True
        self._coef = None
        self._groups = None

    def discard(self) -> None:
        """``optimizer.zero_grad()``: drop the accumulated gradients (``.grad`` is cleared by the
        optimizer; the low-rank accumulators live here)."""
        with self._lock:
            if self._norms:
                raise ValueError(
                    f"zero_grad() after {len(self._norms)} parameters were already updated in this "
                    "step's last backward pass: call optimizer.step() first")
            self._reset()

    def _at_boundary(self, what: str) -> None:
        if self._pending or self._norms:
            raise ValueError(
                f"{what} in the middle of a layer-wise step ({len(self._pending)} parameters hold "
                f"accumulated gradients, {len(self._norms)} are already updated): call it after "
                "optimizer.step()")

    # ------------------------------------------------------------------ inspection
    def accumulator_bytes(self) -> int:
        """Bytes of the projected-gradient sums kept between micro-batches; the rest of the
        accumulated gradients is in the parameters' ``.grad``."""
        with self._lock:
            return sum(p.low_rank.nbytes for p in self._pending.values() if p.low_rank is not None)

    def remove(self) -> None:
        """Back to ordinary updates (under DDP the communication hook stays and only averages)."""
        self._at_boundary("remove()")
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tracked.clear()
        if self._ddp is not None:
            self._ddp.detach()
        self.optimizer._fused_backward = None


def planned_gradient_bytes(optimizer, *, grad_accum: int = 1, accumulate: str = "subspace",
                           refresh_from: str = "accumulated") -> int:
    """Peak bytes of parameter gradients alive at once in layer-wise training with ``optimizer``,
    from shapes alone (meta tensors work): the gradient being produced (at most the largest) plus,
    with ``grad_accum > 1``, every accumulation buffer — R for a matrix that ``takes_low_rank``,
    its full gradient otherwise. With ``refresh_from="accumulated"`` the first step refreshes
    every matrix from its accumulated gradient, so that step holds them all in full."""
    from .subspace import projected_shape

    full, low = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            full.append(p.numel() * p.element_size())
            plan = optimizer._plans[p]
            low.append(math.prod(projected_shape(p.shape, plan.rank, plan.side)) * p.element_size()
                       if optimizer.takes_low_rank(group, p) else full[-1])
    if not full:
        return 0
    if grad_accum == 1:
        return max(full)
    in_full = accumulate == "full" or refresh_from == "accumulated"
    return max(full) + sum(full if in_full else low)


def fuse_backward(model: torch.nn.Module, optimizer, *, grad_accum: int = 1,
                  max_grad_norm: float | None = None, accumulate: str = "subspace",
                  refresh_from: str = "accumulated") -> FusedBackward:
    """Switch ``optimizer`` (a slimtrain optimizer over ``model``'s parameters; ``model`` may be
    wrapped in ``DistributedDataParallel``) to layer-wise updates; see the module docstring.

    ``grad_accum``: backward passes per optimizer step. ``max_grad_norm``: clip by the previous
    step's global norm. ``accumulate``: ``"subspace"`` (projected matrices keep R across
    micro-batches) or ``"full"`` (every gradient in full, as ordinary training; exact norms).
    ``refresh_from``: where a refreshing matrix's new basis comes from when ``grad_accum > 1`` —
    the step's ``"accumulated"`` gradient (as ordinary training) or its ``"first"`` micro-batch.
    """
    return FusedBackward(model, optimizer, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                         accumulate=accumulate, refresh_from=refresh_from)
