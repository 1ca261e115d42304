"""The zeroth-order step: estimate the gradient's projection on random directions from forward
passes, then update — MeZO's algorithm (Malladi et al. 2023) and the ZO-Bench variants.

One step, seed s_i for query i = 1…q, z_i regenerated from (s_i, parameter name) (``noise.py``)::

    two-sided:  θ += εz_i; L⁺ = f(θ); θ −= 2εz_i; L⁻ = f(θ); θ += εz_i;  ĝ_i = (L⁺ − L⁻) / 2ε
    one-sided:  L⁰ = f(θ) once; θ += εz_i; L⁺ = f(θ); θ −= εz_i;        ĝ_i = (L⁺ − L⁰) / ε
    estimate:   G = (1/q) Σ ĝ_i z_i

then the recipe's update: ``direct`` ones (MeZO, ZO-SGD-Sign, Sparse MeZO, ZO-SGD-Cons) write
θ ← θ − lr·(D + λθ) piece by piece with D = G or sign(G) — no gradient tensor ever exists; the
``stateful`` ones (ZO-Adam, ZO-SGD-MMT) hand G, one parameter at a time, to the gradient
pipeline's rule (Adam, SGD momentum: the same code as the first-order recipes, low-bit states
included), so their extra memory is their state plus one parameter's estimate.

The closure runs under ``torch.no_grad()`` with the model (when the optimizer was built on one) in
eval mode — dropout off, as MeZO — and may return any scalar: a non-differentiable metric trains.
Perturbation happens in place in the parameters' own dtype (no float32 copy of a bf16 model); the
restore is exact arithmetic only in exact arithmetic: each of the three in-place additions rounds,
so θ drifts by about one rounding of θ per perturbed step (≈ 2⁻²⁴·|θ| in float32, measured in
``tests/optim/zo``; in bf16 the rounding is 2⁻⁹·|θ|, larger than MeZO's lr·ĝ·z — bf16 ZO runs
trade that noise for half the memory, as the paper's fp16 runs do).

Every step's seeds, ĝ, group learning rates and (ZO-SGD-Cons) choice are logged: a few bytes a
step, saved in the state dict, and enough for ``replay`` to rebuild the trained weights from the
initial ones bit for bit (``replay.py``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from ..._warnings import warn
from ..recipes.base import RUNTIME_KEYS, Recipe
from ..rules import get_rule
from ..config import names_of
from ..targets import build_param_groups, split_no_decay
from . import noise

LOG_KEY = "zo"  # the state dict's entry with the step count and the log


def scalar(value) -> float:
    """The closure's result as a float: a number or a one-element tensor; anything else is a
    one-line error."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"the closure must return a scalar (the loss, or any metric to "
                             f"minimise); it returned a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"the closure must return a scalar (a number or a one-element tensor); it "
                     f"returned {type(value).__name__}")


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module | None):
    """The model in eval mode (dropout off), each module's own mode restored after."""
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class ZOOptimizer(Recipe):
    """Base of the zeroth-order recipes. ``step(closure)`` is required; ``closure()`` returns the
    objective at the current weights (it is called 2q times a step, or q + 1 one-sided)."""

    zeroth_order = True  # the trainer's closure branch: no backward pass, no gradients
    rule = "sgd"
    stateful = False          # the estimate goes through the rule (its state), else updated directly
    sign = False              # ZO-SGD-Sign: D = sign(G)
    conservative = False      # ZO-SGD-Cons: keep the best of θ, θ − lr·D, θ + lr·D
    name = ""                 # the registry's name (the replay log records it)
    #: the learning rates the authors' runs converge with; outside them the trainer warns
    converging_lr = (1e-7, 1e-5)

    def __init__(self, model_or_params, lr: float | None = None, **options):
        super().__init__(model_or_params, lr, **options)
        self._model = model_or_params if isinstance(model_or_params, torch.nn.Module) else None
        self._named = [(self.plan_of(p).name, p) for g in self.param_groups for p in g["params"]]
        for name, p in self._named:
            if type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor":
                raise ValueError("zeroth-order optimizers hold no gradient or state to shard: run "
                                 "them on replicas (DDP, or --parallel ddp), not on FSDP2-sharded "
                                 f"parameters ({name})")
            noise.flat_view(p)  # contiguous, or a one-line error now
        self.zo_step = 0
        self._log: dict[str, list] = {"seeds": [], "grads": [], "lrs": [], "choices": []}
        self._masks: dict[str, list[Tensor]] | None = None
        self._scratch = noise.Scratch()
        self._fused_restore: float | None = None
        self.last_loss: float | None = None

    # ------------------------------------------------------------------ configuration
    def shared_keys(self, config) -> dict[str, Any]:
        rule = self.rule_of(config)
        hyper = {k: getattr(config, k) for k in names_of(get_rule(rule).Hyper)
                 if hasattr(config, k) and k not in ("eps",)}  # eps is the perturbation here
        if hasattr(config, "adam_eps"):
            hyper["eps"] = config.adam_eps
        return {"rule": rule, "lr": config.lr, "weight_decay": config.weight_decay, **hyper,
                **{k: getattr(config, k) for k in RUNTIME_KEYS if hasattr(config, k)}}

    def param_groups_for(self, model_or_params, config):
        groups = build_param_groups(model_or_params, projection=None)
        if config.weight_decay == 0:  # nothing to exempt (and plain tensors need no names)
            return groups, self.shared_keys(config)
        return split_no_decay(groups, config.no_decay), self.shared_keys(config)

    def lr_warning(self) -> str | None:
        """A sentence when the configured lr lies outside ``converging_lr`` (None inside)."""
        low, high = self.converging_lr
        lr = self.config.lr
        if lr > high:
            return (f"{self.name} lr {lr:g} is above {high:g}, where zeroth-order runs usually "
                    f"diverge (MeZO's authors: start at 1e-6 for full fine-tuning; "
                    f"princeton-nlp/MeZO#6); try --lr {low * 10:g}…{high:g}")
        if lr < low:
            return (f"{self.name} lr {lr:g} is below {low:g}: the weights will hardly move in a "
                    f"run of ordinary length; try --lr {low * 10:g}…{high:g}")
        return None

    # ------------------------------------------------------------------ the step
    def step(self, closure=None):
        if closure is None:
            raise ValueError(f"{type(self).__name__} is zeroth-order: call step(closure) with a "
                             "closure that returns the loss (it runs forward passes only, no "
                             "backward)")
        with torch.no_grad(), _eval_mode(self._model):
            loss = self._run(closure=closure)
        return None if loss is None else torch.tensor(loss)

    def replay_step(self, record: dict[str, Any]) -> None:
        """Repeat a logged step without forward passes: the same in-place operations on the
        weights in the same order, with the logged ĝ (and choice), so the result is bit-identical."""
        for group, lr in zip(self.param_groups, record["lrs"]):
            group["lr"] = lr
        with torch.no_grad():
            self._run(record=record)

    def _run(self, closure=None, record=None) -> float | None:
        cfg = self.config
        q, eps, two = cfg.q, cfg.eps, cfg.sided == "two"
        seeds = list(record["seeds"]) if record else noise.step_seeds(cfg.seed, self.zo_step, q)
        evaluate = (lambda: scalar(closure())) if closure is not None else None
        self._masks = self._make_masks() if getattr(cfg, "sparsity", None) else None
        grads, losses = [], []
        base = evaluate() if evaluate and (not two or self.conservative) else None
        # MeZO's usual step (one two-sided query, plain update): the restore and the update share
        # one pass over the weights — the same operations per element in the same order, so the
        # same bits as two passes, and one draw of z fewer (of four)
        self._fused_restore = eps if two and q == 1 and not (self.stateful or self.conservative) \
            else None
        for i, s in enumerate(seeds):
            self._perturb(s, eps)
            plus = evaluate() if evaluate else None
            if two:
                self._perturb(s, -2 * eps)
                minus = evaluate() if evaluate else None
                if self._fused_restore is None:
                    self._perturb(s, eps)
            else:
                self._perturb(s, -eps)
                minus = base
            if record is not None:
                grads.append(float(record["grads"][i]))
            else:
                grads.append((plus - minus) / (2 * eps if two else eps))
                losses.append((plus + minus) / 2 if two else base)
        loss = base if base is not None and not two else (
            sum(losses) / len(losses) if losses else None)
        # E[ĝ²] = ‖∇f‖² for z ~ N(0, I): the rms of the ĝᵢ estimates the gradient norm (logged;
        # exactly 0 step after step is a saturated network, which the trainer stops)
        rms = math.sqrt(sum(g * g for g in grads) / len(grads))
        self.grad_norm = rms if math.isfinite(rms) else None
        choice = self._update(seeds, grads, evaluate, base, record)
        self._masks = None
        if record is None:
            self._log["seeds"].append(seeds)
            self._log["grads"].append(grads)
            self._log["lrs"].append([float(g["lr"]) for g in self.param_groups])
            self._log["choices"].append(choice)
        self.zo_step += 1
        self.last_loss = loss
        return loss

    def _perturb(self, seed: int, scale: float) -> None:
        for name, p in self._named:
            for k, (piece, (z,)) in enumerate(noise.noise(p, name, [seed], self._scratch)):
                if self._masks is not None:
                    z.mul_(noise.unpack(self._masks[name][k], z.numel()))
                piece.add_(z, alpha=scale)

    def _make_masks(self) -> dict[str, list[Tensor]]:
        """Sparse MeZO: each parameter's small-magnitude elements (``sparsity`` of them are left
        out: the largest) as bits, from the weights before this step's perturbation, held for
        the step only."""
        keep = 1 - self.config.sparsity
        masks = {}
        for name, p in self._named:
            threshold = noise.magnitude_threshold(p, keep)
            masks[name] = [noise.pack(piece.abs() <= threshold) for piece in noise.pieces(p)]
        return masks

    # ------------------------------------------------------------------ updates
    def _update(self, seeds, grads, evaluate, base, record) -> int:
        """Apply the step; returns ZO-SGD-Cons's choice (0: stay, 1: θ − lr·D, 2: θ + lr·D; else 1)."""
        if not all(math.isfinite(g) for g in grads):
            if self._fused_restore is not None:
                self._perturb(seeds[0], self._fused_restore)
            warn(f"zeroth-order step {self.zo_step + 1}: the objective was not finite (ĝ = "
                 f"{grads}), so the weights were restored and not updated")
            self.last_step_params, self.last_step_skipped = len(self._named), len(self._named)
            return 0
        self.last_step_params, self.last_step_skipped = len(self._named), 0
        weights = [g / len(grads) for g in grads]
        if self.stateful:
            self._through_rule(seeds, weights)
            return 1
        if not self.conservative:
            self._direct(seeds, weights, 1.0)
            return 1
        # ZO-Bench's conservative step: try both signs, keep whichever of the three is lowest
        self._direct(seeds, weights, 1.0)
        first = evaluate() if evaluate else None
        self._direct(seeds, weights, -2.0)
        second = evaluate() if evaluate else None
        if record is not None:
            choice = int(record["choice"])
        else:
            choice = min(((base, 0), (first, 1), (second, 2)), key=lambda x: (x[0], x[1]))[1]
        if choice == 0:
            self._direct(seeds, weights, 1.0)
        elif choice == 1:
            self._direct(seeds, weights, 2.0)
        return choice

    def _direction(self, zs: list[Tensor], weights: list[float]) -> Tensor:
        d = zs[0].mul_(weights[0])
        for z, w in zip(zs[1:], weights[1:]):
            d.add_(z, alpha=w)
        return d.sign_() if self.sign else d

    def _direct(self, seeds, weights, scale: float) -> None:
        """θ ← θ − scale·lr·(D + λθ), piece by piece (MeZO's update, λ off for exempt groups)."""
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                name = self.plan_of(p).name
                for k, (piece, zs) in enumerate(noise.noise(p, name, seeds, self._scratch)):
                    if self._fused_restore is not None and scale == 1.0:
                        if self._masks is not None:
                            zs[0].mul_(noise.unpack(self._masks[name][k], zs[0].numel()))
                        piece.add_(zs[0], alpha=self._fused_restore)  # the restore, as _perturb
                    d = self._direction(zs, weights)
                    if wd:
                        d.add_(piece * wd)
                    if self._masks is not None:
                        d.mul_(noise.unpack(self._masks[name][k], d.numel()))
                    piece.sub_(d.mul_(scale * lr))  # MeZO's θ − lr·(ĝz + λθ), op for op

    def _through_rule(self, seeds, weights) -> None:
        """The estimate of one parameter at a time as its gradient, stepped by the pipeline."""
        for group in self.param_groups:
            for p in group["params"]:
                name = self.plan_of(p).name
                estimate = torch.empty(p.numel(), dtype=noise.noise_dtype(p), device=p.device)
                start = 0
                for piece, zs in noise.noise(p, name, seeds, self._scratch):
                    estimate[start:start + piece.numel()] = self._direction(zs, weights)
                    start += piece.numel()
                p.grad = estimate.view_as(p).to(p.dtype)
                try:
                    self.step_params(group, [p])
                finally:
                    p.grad = None
        self.end_step()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd[LOG_KEY] = {"step": torch.tensor(self.zo_step, dtype=torch.int64), **self._log_tensors()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if LOG_KEY not in state_dict:
            raise ValueError(f"this optimizer state has no zeroth-order log ('{LOG_KEY}'): it was "
                             f"not saved by a zeroth-order recipe; load one saved by {self.name}")
        zo = state_dict[LOG_KEY]
        super().load_state_dict({k: v for k, v in state_dict.items() if k != LOG_KEY})
        self.zo_step = int(zo["step"])
        self._log = {"seeds": zo["seeds"].tolist(), "grads": zo["grads"].tolist(),
                     "lrs": zo["lrs"].tolist(), "choices": zo["choices"].tolist()}

    def _log_tensors(self) -> dict[str, Tensor]:
        q, groups = self.config.q, len(self.param_groups)
        log = self._log
        return {"seeds": torch.tensor(log["seeds"], dtype=torch.int64).view(-1, q),
                "grads": torch.tensor(log["grads"], dtype=torch.float64).view(-1, q),
                "lrs": torch.tensor(log["lrs"], dtype=torch.float64).view(-1, groups),
                "choices": torch.tensor(log["choices"], dtype=torch.int8)}

    def replay_log(self) -> dict[str, Any]:
        """What ``replay`` needs to rebuild the weights from the initial ones: the recipe, its
        options and the per-step tensors (16·q + 8·groups + 1 bytes a step)."""
        return {"recipe": self.name, "options": asdict(self.config), **self._log_tensors()}
