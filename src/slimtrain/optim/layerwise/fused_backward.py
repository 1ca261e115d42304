"""The layer-wise handle: post-accumulate-grad hooks that update each parameter inside backward.
The rules of the mode (counting, accumulation, clipping, norms, DDP) are in ``layerwise/__init__``."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from ..._warnings import warn
from ..config import check_value
from ..sharded.context import local
from .norms import clip_coefficient, global_norm, norm, sharded_norms

ACCUMULATE = ("subspace", "full")
REFRESH_FROM = ("accumulated", "first")


@dataclass
class _Pending:
    """A parameter's gradient of the current step, not yet applied (the rest is in ``.grad``)."""

    low_rank: Tensor | None = None  # Σ project(G_k) when it accumulates in its subspace
    subspace: bool = False


class FusedRefused(ValueError):
    """An optimizer that cannot take layer-wise updates (``fused_refusal`` says why)."""


def fused_refusal(optimizer) -> str | None:
    """Why ``optimizer`` cannot update layer-wise (None: it can) — asked by ``fuse_backward``, the
    planner and the budget search alike."""
    needs = optimizer.step_inputs
    if needs:
        return (f"layer-wise updates cannot hand step() inputs ({', '.join(sorted(needs))}) to the "
                "rules that read them: they update inside backward; train without fuse_backward")
    if optimizer.sampling is not None:
        return ("layer sampling (LISA/OwLore) does not take layer-wise updates yet: its gradients "
                "are those of the γ active blocks already")
    if any(g["weight_norm"] for g in optimizer.param_groups):
        return ("weight-normalised matrices (GradNormLoRP) need each whole gradient for their "
                "magnitudes, which layer-wise accumulation does not keep")
    return None


class FusedBackward:
    """The handle ``fuse_backward`` returns. Attributes: ``grad_norm`` (last step, unclipped),
    ``grad_norm_exact``, ``clip_coef`` (the factor the last step's gradients were scaled by)."""

    def __init__(self, model: torch.nn.Module, optimizer, *, grad_accum: int = 1,
                 max_grad_norm: float | None = None, accumulate: str = "subspace",
                 refresh_from: str = "accumulated"):
        from ..optimizer import PipelineOptimizer
        from . import ddp

        if not isinstance(optimizer, PipelineOptimizer):
            raise ValueError(f"fuse_backward needs a slimtrain optimizer (slimtrain.optim.create(...)), "
                             f"got {type(optimizer).__name__}")
        if optimizer.layerwise is not None:
            raise ValueError("this optimizer already runs layer-wise updates; call .remove() on "
                             "its handle before fusing it again")
        reason = fused_refusal(optimizer)
        if reason:
            raise FusedRefused(reason)
        check_value("grad_accum", grad_accum, dict(low=1, integer=True))
        check_value("max_grad_norm", max_grad_norm, dict(low=0, open_low=True, none_ok=True))
        if accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
        if refresh_from not in REFRESH_FROM:
            raise ValueError(f"refresh_from must be one of {REFRESH_FROM}, got {refresh_from!r}")
        optimizer.adopt_replaced_params()  # e.g. accelerate's FSDP2 prepare swapped them
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
        self._sharded = {p: optimizer.shards_of(p) for p in self._order()
                         if optimizer.shards_of(p) is not None}  # FSDP2 parameters
        self._ddp = ddp.attach(model, self)
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
        optimizer.layerwise = self

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
        from torch.nn.parallel import DistributedDataParallel

        ours = set(self._order())
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
        if opt.shards_of(p) is not None:  # FSDP2 accumulates the sharded gradient itself (1/W)
            return False
        if not opt.refresh_due(group, p):
            return True
        # A refresh step: from the first micro-batch (refresh_from="first", finite gradient only, so
        # NaN never reaches the basis), else from the accumulated gradient.
        return self.refresh_from == "first" and bool(torch.isfinite(norm(p.grad)))

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
        self._norms[p] = norm(local(target))  # a shard's: summed over the ranks in _finish
        self._exact = self._exact and not pending.subspace
        coef = self._coefficient()
        if coef is not None:
            target.mul_(coef.to(target.device))
        if pending.subspace:
            self.optimizer.step_params(group, [p], {p: target})
        else:
            kept, p.grad = p.grad, grad
            try:
                self.optimizer.step_params(group, [p])
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
            self._coef = clip_coefficient(self.max_grad_norm, previous)
        return self._coef

    # ------------------------------------------------------------------ optimizer.step()
    def finish_step(self, closure=None, **inputs):
        """``optimizer.step()``: update the parameters whose gradient is still pending, then
        record the step's gradient norm."""
        if inputs:
            raise ValueError(f"step() inputs ({', '.join(inputs)}) cannot reach layer-wise updates, "
                             "which run inside backward")
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
        self.optimizer.end_step()
        return None

    def _finish(self, order: list[Tensor]) -> None:
        # summed in the model's parameter order, as clip_grad_norm_(model.parameters()) does
        ours = set(order)
        by_model = [p for p in self._model_order if p in ours]
        known = set(by_model)
        order = by_model + [p for p in order if p not in known]
        plain = [self._norms[p] for p in order if p in self._norms and p not in self._sharded]
        sharded = [self._norms[p] for p in order if p in self._norms and p in self._sharded]
        self.grad_norm = global_norm(plain + sharded_norms(sharded, self._sharded))
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
        self.optimizer.layerwise = None


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
