"""The pipeline optimizer: one ``torch.optim.Optimizer`` that runs, per parameter,

    gradient ─► subspace selector (refresh every T) ─► R = project(G) ─► inner rule (Adam)
             ─► back-map α·back(N) ─► decoupled weight decay and lr ─► W

Parameters in a group without ``rank`` skip the projection and go through the same Adam with the
gradient itself (then they equal ``torch.optim.AdamW`` bit for bit). Recipes (``AdamW``,
``GaLoreAdamW``, …) are configurations of this class; see ``recipes.py``.

State is tensors only (moments, basis, step counters) so ``state_dict()`` loads with
``torch.load(weights_only=True)``; ``load_state_dict`` keeps every state tensor's dtype.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .._warnings import warn
from . import lowbit
from .adam import EPS_MODES, adam_, fused_supported
from .selectors import SELECTORS, random_orthonormal_basis, select_basis
from .subspace import (SIDES, SWITCH_POLICIES, apply_back_, basis_shape, choose_side, project,
                       projected_shape, reproject_moments_)
from .targets import translate_galore_keys

STATE_FORMAT = 1

# Every key a group may carry, with the value used when neither the recipe nor the group sets it.
GROUP_DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, eps_mode="torch",
    rank=None,              # None: no projection (plain AdamW through the same kernel)
    refresh_every=200,      # T: steps between subspace refreshes
    scale=1.0,              # α: multiplies the back-mapped update (GaLore's "scale")
    basis="randomized",     # subspace selector: "svd" or "randomized"
    switch="keep",          # what happens to the moments at a refresh: keep / reset / reproject
    side="auto",            # which side to project: auto (state r×max(m,n)) / left / right / reverse
    stagger=False,          # spread the refreshes of a group's matrices over the T steps
    power_iters=1,          # randomized selector: power iterations (warm start counts as one)
    oversample=8,           # randomized selector: extra columns of the range finder
    foreach=True,           # multi-tensor kernels for the elementwise parts (False: for-loop)
    fused=None,             # torch's fused Adam kernel; None = use it where it applies
    check_finite=True,      # skip (and report) parameters whose gradient has NaN/Inf
    # State precision (lowbit.py): moments in the parameter dtype (None), fp32/bf16 (32/16) or
    # block-wise quantized (8/4); smaller tensors keep fp32 moments when quantizing.
    state_bits=None,
    quantize_min_numel=4096,
    stochastic_rounding=False,  # bf16 parameters: round each update stochastically
)


@dataclass(frozen=True)
class ParamPlan:
    """How one parameter is handled; derived from its group and shape, never stored."""

    name: str
    rank: int | None        # None → not projected
    side: str = ""
    index: int = 0          # position among the group's projected parameters (for staggering)
    count: int = 1

    @property
    def projected(self) -> bool:
        return self.rank is not None


def _check_group(group: dict[str, Any]) -> None:
    def bad(msg: str) -> ValueError:
        return ValueError(msg)

    lr = group["lr"]
    if not isinstance(lr, (int, float)) or lr < 0 or math.isnan(lr):
        raise bad(f"lr must be a number >= 0, got {lr!r}")
    b1, b2 = group["betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise bad(f"betas must lie in [0, 1), got {group['betas']!r}")
    if group["eps"] < 0:
        raise bad(f"eps must be >= 0, got {group['eps']!r}")
    if group["weight_decay"] < 0:
        raise bad(f"weight_decay must be >= 0, got {group['weight_decay']!r}")
    if group["eps_mode"] not in EPS_MODES:
        raise bad(f"eps_mode must be one of {EPS_MODES}, got {group['eps_mode']!r}")
    rank = group["rank"]
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise bad(f"rank must be a positive integer (or None for no projection), got {rank!r}")
    every = group["refresh_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise bad(f"refresh_every must be an integer >= 1, got {every!r}")
    if not isinstance(group["scale"], (int, float)) or group["scale"] <= 0:
        raise bad(f"scale must be a number > 0, got {group['scale']!r}")
    for key, allowed in (("basis", SELECTORS), ("switch", SWITCH_POLICIES), ("side", SIDES)):
        if group[key] not in allowed:
            raise bad(f"{key} must be one of {allowed}, got {group[key]!r}")
    if group["power_iters"] < 0 or group["oversample"] < 0:
        raise bad("power_iters and oversample must be >= 0")
    lowbit.check_group(group)


def _plan_group(group: dict[str, Any], names: list[str]) -> list[ParamPlan]:
    rank = group["rank"]
    if rank is None:
        return [ParamPlan(n, None) for n in names]
    plans, flat, full = [], [], []
    for name, p in zip(names, group["params"]):
        if p.dim() != 2:
            flat.append(name)
            plans.append(ParamPlan(name, None))
        elif rank >= min(p.shape):
            full.append(name)
            plans.append(ParamPlan(name, None))
        else:
            plans.append(ParamPlan(name, rank, choose_side(p.shape, group["side"])))
    if flat:
        warn(f"{len(flat)} parameters in a projected group are not 2-D and are trained "
                      f"with full-rank AdamW: {', '.join(flat[:5])}")
    if full:
        warn(f"rank {rank} >= min(rows, cols) for {len(full)} parameters, so projecting "
                      f"saves nothing; they are trained with full-rank AdamW: {', '.join(full[:5])}")
    count = sum(pl.projected for pl in plans)
    index = 0
    for i, pl in enumerate(plans):
        if pl.projected:
            plans[i] = ParamPlan(pl.name, pl.rank, pl.side, index, count)
            index += 1
    return plans


def _grad_norms(grads: list[Tensor]) -> list[float]:
    """L2 norm of each gradient with one device sync; fp16/bf16 are summed in fp32 so a large
    but finite gradient is not mistaken for an overflow."""
    low = [i for i, g in enumerate(grads) if g.dtype in (torch.float16, torch.bfloat16)]
    high = [i for i, g in enumerate(grads) if g.dtype not in (torch.float16, torch.bfloat16)]
    norms: list[Tensor | None] = [None] * len(grads)
    for idx, kwargs in ((low, {"dtype": torch.float32}), (high, {})):
        if idx:
            for i, n in zip(idx, torch._foreach_norm([grads[i] for i in idx], 2, **kwargs)):
                norms[i] = n.float()
    return torch.stack(norms).tolist()


def _impl(group: dict[str, Any], tensors: list[Tensor]) -> str:
    fused = group["fused"]
    if fused is None:
        fused = fused_supported(tensors, group["eps_mode"])
    elif fused and not fused_supported(tensors, group["eps_mode"]):
        raise ValueError('fused=True needs eps_mode="torch" and float tensors on cpu/cuda/mps/xpu; '
                         "pass fused=None to use it only where it applies")
    if fused:
        return "fused"
    return "foreach" if group["foreach"] else "forloop"


class PipelineOptimizer(torch.optim.Optimizer):
    """Runs the projection pipeline; recipes in ``recipes.py`` choose its parts and defaults."""

    def __init__(self, param_groups: list[dict[str, Any]], defaults: dict[str, Any]):
        self._plans: dict[Tensor, ParamPlan] = {}
        self._unnamed = 0
        self.grad_norm: float | None = None  # global L2 norm of the last step's gradients
        super().__init__(param_groups, {**GROUP_DEFAULTS, **defaults})

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group = translate_galore_keys(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        self._plan(group)

    def _plan(self, group: dict[str, Any]) -> None:
        names = group.get("param_names")
        if names is None:
            names = [f"param{self._unnamed + i}" for i in range(len(group["params"]))]
            self._unnamed += len(names)
        for p, plan in zip(group["params"], _plan_group(group, names)):
            self._plans[p] = plan

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints from older versions lack newer keys
            for key, value in GROUP_DEFAULTS.items():
                group.setdefault(key, value)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        norms_sq = 0.0
        checked = True
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group_norm_sq = self._step_params(group, params)
            if group_norm_sq is None:
                checked = False
            else:
                norms_sq += group_norm_sq
        self.grad_norm = math.sqrt(norms_sq) if checked else None
        return loss

    def _step_params(self, group: dict[str, Any], params: list[Tensor]) -> float | None:
        """One optimizer step for ``params`` (all in ``group``, all with gradients).

        Returns the squared norm of their finite gradients, or None when not checked.
        """
        for p in params:
            if p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported; use a dense embedding")
        norm_sq = None
        if group["check_finite"]:
            params, norm_sq = self._drop_nonfinite(params)
        plain = [p for p in params if not self._plans[p].projected]
        projected = [p for p in params if self._plans[p].projected]
        if plain:
            self._step_plain(group, plain)
        if projected:
            self._step_projected(group, projected)
        return norm_sq

    def _drop_nonfinite(self, params: list[Tensor]) -> tuple[list[Tensor], float]:
        values = _grad_norms([p.grad for p in params])
        keep = [p for p, v in zip(params, values) if math.isfinite(v)]
        if len(keep) < len(params):
            bad = [self._plans[p].name for p, v in zip(params, values) if not math.isfinite(v)]
            warn(f"skipped the update of {len(bad)} parameters whose gradient has NaN/Inf "
                          f"(state and subspace unchanged): {', '.join(bad[:5])}")
        return keep, sum(v * v for v in values if math.isfinite(v))

    def _step_plain(self, group: dict[str, Any], params: list[Tensor]) -> None:
        # --- low-bit seam: moments not kept in the parameter's dtype take lowbit's one-pass step
        native = []
        for p in params:
            kept = self._storages(group, p, p.shape)
            state = self._plain_state(p, kept)
            if lowbit.native(group, p, kept):
                native.append(p)
            else:
                lowbit.update_tensor_(group, kept, p, p.grad, state, state["step"],
                                      self._plans[p].name)
        params = native
        if not params:
            return
        # ---
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam_(
            [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
            beta1=beta1, beta2=beta2, eps=group["eps"], eps_mode=group["eps_mode"],
            params=params, lr=group["lr"], weight_decay=group["weight_decay"],
            impl=_impl(group, params),
        )

    def _plain_state(self, p: Tensor, kept: dict[str, lowbit.Storage]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            if all(s.dtype == p.dtype for s in kept.values()):  # keeps p's memory format
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:
                lowbit.init_moments(state, kept, p.shape, p.device)
        return state

    def _storages(self, group: dict[str, Any], p: Tensor, shape) -> dict[str, lowbit.Storage]:
        """How each moment of ``p`` (moments of ``shape``) is stored; derived, never stored."""
        return lowbit.storages(group, p, shape)

    def _moment_shape(self, p: Tensor) -> tuple[int, ...]:
        plan = self._plans[p]
        return (projected_shape(p.shape, plan.rank, plan.side) if plan.projected
                else tuple(p.shape))

    def moment(self, p: Tensor, name: str) -> Tensor:
        """Moment ``name`` ("exp_avg", "exp_avg_sq") of ``p`` as a float32 tensor in its logical
        shape — dequantized when it is stored in low bits."""
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        shape = self._moment_shape(p)
        return lowbit.load_moment(self.state[p], name, self._storages(group, p, shape)[name], shape)

    def _step_projected(self, group: dict[str, Any], params: list[Tensor]) -> None:
        low_rank, states = [], []
        for p in params:
            state = self.state[p]
            fresh = self._maybe_refresh(group, p, state)  # the selector's projection, if it ran
            low_rank.append(project(p.grad, state["basis"], self._plans[p].side) if fresh is None
                            else fresh.to(p.grad.dtype).contiguous())
            states.append(state)
        beta1, beta2 = group["betas"]
        # --- low-bit seam: moments not kept in the parameter's dtype take lowbit's one-pass step
        native = [lowbit.native(group, p, self._storages(group, p, R.shape))
                  for p, R in zip(params, low_rank)]
        directions, factors = [None] * len(params), [0.0] * len(params)
        for i, (p, R, state) in enumerate(zip(params, low_rank, states)):
            if not native[i]:
                directions[i], factors[i] = lowbit.update_tensor_(
                    group, self._storages(group, p, R.shape), None, R, state, state["moment_step"],
                    self._plans[p].name)
        idx = [i for i, ok in enumerate(native) if ok]
        # ---
        native_dirs, native_factors = adam_(
            [low_rank[i] for i in idx], [states[i]["exp_avg"] for i in idx],
            [states[i]["exp_avg_sq"] for i in idx], [states[i]["moment_step"] for i in idx],
            beta1=beta1, beta2=beta2, eps=group["eps"], eps_mode=group["eps_mode"],
            impl=_impl(group, [params[i] for i in idx]),
        )
        for i, N, f in zip(idx, native_dirs, native_factors):
            directions[i], factors[i] = N, f
        del low_rank
        decay = 1 - group["lr"] * group["weight_decay"]
        for p, state, N, f in zip(params, states, directions, factors):
            state["step"] += 1
            if N.dtype == p.dtype:
                apply_back_(p, N, state["basis"], self._plans[p].side,
                            alpha=-group["lr"] * group["scale"] * f, beta=decay)
            else:  # low-bit states computed in fp32 for a lower-precision parameter
                lowbit.apply_back_rounded_(group, p, N, state["basis"], self._plans[p].side,
                                           alpha=-group["lr"] * group["scale"] * f, beta=decay,
                                           name=self._plans[p].name, step=state["step"])

    # ------------------------------------------------------------------ subspace
    def _refresh_due(self, group: dict[str, Any], plan: ParamPlan, step: int) -> bool:
        every = group["refresh_every"]
        offset = (plan.index * every) // plan.count if group["stagger"] else 0
        return (step - offset) % every == 0

    def _maybe_refresh(self, group: dict[str, Any], p: Tensor, state: dict[str, Tensor]
                       ) -> Tensor | None:
        """Recompute the basis when due; returns the gradient projected on the new basis (the
        selectors produce it as a by-product), or None when the basis is unchanged."""
        plan = self._plans[p]
        first = "basis" not in state
        step = 0 if first else int(state["step"].item())
        if not first and not self._refresh_due(group, plan, step):
            return None
        previous = None if first else state["basis"]
        # A generator per (name, step): refreshes are reproducible and resume-safe without
        # touching the global RNG.
        generator = torch.Generator().manual_seed(zlib.crc32(plan.name.encode()) * 1_000_003 + step)
        projected = None
        try:
            basis, projected = select_basis(
                p.grad, plan.rank, plan.side, group["basis"], previous=previous,
                power_iters=group["power_iters"], oversample=group["oversample"], generator=generator)
            if not torch.isfinite(basis).all():
                raise torch.linalg.LinAlgError("non-finite basis")
        except torch.linalg.LinAlgError as err:
            if previous is not None:
                warn(f"subspace refresh of {plan.name} failed ({err}); keeping the previous basis")
                return None
            warn(f"subspace refresh of {plan.name} failed ({err}); starting from a random "
                 "orthonormal basis")
            basis = random_orthonormal_basis(p.shape, plan.rank, plan.side, generator, p.device)
            projected = None
        shape = projected_shape(p.shape, plan.rank, plan.side)
        kept = self._storages(group, p, shape)
        if first:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["moment_step"] = torch.tensor(0.0, dtype=torch.float32)
            lowbit.init_moments(state, kept, shape, p.device)
        elif group["switch"] == "reset":
            for key in lowbit.expected_shapes(kept, shape):  # all-zero codes and scales are 0
                state[key].zero_()
            state["moment_step"].zero_()
        elif group["switch"] == "reproject":
            # Low-bit moments are carried in fp32 and requantized (lowbit's generic seam).
            m, v = (lowbit.load_moment(state, n, kept[n], shape, p.dtype if lowbit.native(
                group, p, kept) else torch.float32) for n in ("exp_avg", "exp_avg_sq"))
            reproject_moments_(m, v, previous, basis, plan.side)
            for name, value in (("exp_avg", m), ("exp_avg_sq", v)):
                lowbit.store_moment_(state, name, kept[name], value)
        state["basis"] = basis
        return projected

    # ------------------------------------------------------------------ memory
    def planned_state_bytes(self) -> dict[str, int]:
        """Optimizer-state bytes this optimizer will hold once every parameter has stepped,
        from shapes alone (works on meta tensors): {"states": …, "projectors": …}."""
        states = projectors = 0
        scalar = 4  # float32 step counters
        for group in self.param_groups:
            for p in group["params"]:
                plan = self._plans[p]
                shape = self._moment_shape(p)
                states += lowbit.moment_bytes(self._storages(group, p, shape), shape)
                if plan.projected:
                    states += 2 * scalar
                    projectors += math.prod(basis_shape(p.shape, plan.rank, plan.side)) * 4
                else:
                    states += scalar
        return {"states": states, "projectors": projectors}

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the tensors actually held in the optimizer state: {"states", "projectors"}."""
        states = projectors = 0
        for st in self.state.values():
            for key, value in st.items():
                if isinstance(value, Tensor):
                    if key == "basis":
                        projectors += value.nbytes
                    else:
                        states += value.nbytes
        return {"states": states, "projectors": projectors}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["format_version"] = STATE_FORMAT
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("format_version")
        if version is None:
            raise ValueError("this optimizer state was not written by slimtrain (no 'format_version'); "
                             "load a state saved from a slimtrain optimizer, or start fresh")
        if version > STATE_FORMAT:
            raise ValueError(f"optimizer state format {version} is newer than this slimtrain "
                             f"understands ({STATE_FORMAT}); upgrade slimtrain")
        saved_state = state_dict["state"]
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        # torch's loader would cast every state tensor to the parameter's dtype (uint8 codes and
        # bf16 moments would come back float32): let it restore the groups only, then copy the
        # state ourselves, keeping dtypes and never sharing tensors with the source dict.
        super().load_state_dict({**state_dict, "state": {}})
        groups = [(p, g) for g in self.param_groups for p in g["params"]]
        for param_id, (p, group) in zip(saved_ids, groups):
            if param_id not in saved_state:
                continue
            restored = {}
            for key, value in saved_state[param_id].items():
                if isinstance(value, Tensor):
                    device = "cpu" if key.endswith("step") else p.device
                    value = value.detach().to(device=device, copy=True)
                restored[key] = value
            self._check_restored(group, p, restored)
            self.state[p] = restored

    def _check_restored(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        plan = self._plans[p]
        shape = self._moment_shape(p)
        expected = lowbit.expected_shapes(self._storages(group, p, shape), shape)
        if plan.projected:
            expected["basis"] = basis_shape(p.shape, plan.rank, plan.side)
        for key, shape in expected.items():
            got = state.get(key)
            if got is None or tuple(got.shape) != tuple(shape):
                found = None if got is None else tuple(got.shape)
                raise ValueError(
                    f"optimizer state of {plan.name!r} has {key} of shape {found}, expected {shape}: "
                    "the checkpoint was saved for a different model, rank, projection side or "
                    "state_bits"
                )
