"""The pipeline optimizer: one ``torch.optim.Optimizer`` that runs, per parameter,

    gradient ─► subspace selector (subspace/) ─► R = project(G)
             ─► inner rule (rules/: adam / adafactor / lion / natural / registered ones)
             ─► back-map, residual, limiter (subspace/backmap.py) ─► decoupled weight decay, lr ─► W

Parameters in a group without ``rank`` skip the projection and go through the same rule with the
gradient itself (with Adam they equal ``torch.optim.AdamW`` bit for bit). Recipes (``AdamW``,
``GaLoreAdamW``, ``APOLLO``, ``Fira``, …, in ``recipes/``) are configurations of this class.
Group keys and their defaults are in ``groups.py``.

``step(closure=None, **inputs)``: ``inputs`` are extra inputs for the rules that declared them in
``Rule.needs`` (a tensor or any value for all parameters, or a mapping parameter-or-name → value);
a rule that needs ``"closure"`` receives the closure instead of ``step()`` calling it.

State is tensors only (moments, bases or seeds, step counters) so ``state_dict()`` loads with
``torch.load(weights_only=True)``; ``load_state_dict`` keeps every state tensor's dtype
(``state_io.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._warnings import warn
from . import stages, weight_norm
from .groups import (GROUP_DEFAULTS, ParamPlan, check_group, fill_group, plan_group, rule_keys,
                     split_matrix_only)
from .lowbit import storage as lowbit
from .rules import get_rule
from .rule_step import RuleStep
from .state_io import STATE_FORMAT, StateIO
from .sharded.context import Shards, local, shards_of
from .sharded.step import global_sq_norms
from .subspace.lifecycle import init_state
from .subspace.projected import ProjectedStep
from .targets import translate_galore_keys

__all__ = ["GROUP_DEFAULTS", "STATE_FORMAT", "ParamPlan", "PipelineOptimizer"]


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


def _named(params) -> list:
    return [params] if isinstance(params, Tensor) else list(params)


class PipelineOptimizer(ProjectedStep, RuleStep, StateIO, torch.optim.Optimizer):
    """Runs the projection pipeline; recipes choose its parts and defaults."""

    def __init__(self, param_groups: list[dict[str, Any]], defaults: dict[str, Any]):
        self._plans: dict[Tensor, ParamPlan] = {}
        self._shards: dict[Tensor, Shards] = {}  # FSDP2 parameters: their place among the ranks
        self._unnamed = 0
        self._warned_no_grad = False
        self.grad_norm: float | None = None  # global L2 norm of the last step's gradients
        # the last step's parameters, and those of them whose update it skipped (NaN/Inf gradient):
        # all of them, step after step, is divergence (the trainer stops)
        self.last_step_params = self.last_step_skipped = 0
        self._seen = self._skipped = 0
        self.layerwise = None  # the layer-wise handle while fuse_backward() is active
        self.sampling = None  # a LayerSampler when only some blocks train (sampling.py: LISA)
        self._defaults_rule = defaults.get("rule")  # the rule the defaults' rule keys are for
        self._learned = False  # a step taken or a state loaded: its parameters are final
        self._planned: dict[int, list[Tensor]] = {}  # group index → the tensors its plans are for
        super().__init__(param_groups, {**GROUP_DEFAULTS, **defaults})

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: defaulted (``groups.fill_group``), split when its rule works on matrices
        only (``groups.split_matrix_only``), validated and planned."""
        if isinstance(param_group.get("params"), set):
            return super().add_param_group(param_group)  # torch refuses unordered parameters
        group = fill_group(translate_galore_keys(param_group), self.defaults,
                           self.__dict__.get("_defaults_rule"))
        items = _named(group["params"])
        names = [x[0] if isinstance(x, tuple) else f"param{self._unnamed + i}"
                 for i, x in enumerate(items)]
        tensors = [x[1] if isinstance(x, tuple) else x for x in items]
        by_id = {id(t): x for t, x in zip(tensors, items)}
        for piece, _ in split_matrix_only({**group, "params": tensors}, names):
            self._add_group({**piece, "params": [by_id[id(t)] for t in piece["params"]]})

    def _add_group(self, piece: dict[str, Any]) -> None:
        given = set(piece)
        super().add_param_group(piece)
        group = self.param_groups[-1]
        own = set(GROUP_DEFAULTS) | set(rule_keys(group["rule"]))
        for key in [k for k in group if k in self.defaults and k not in given | own]:
            del group[key]  # torch's defaulting added another rule's key
        check_group(group)
        self._plan(group)

    def _plan(self, group: dict[str, Any], names: list[str] | None = None) -> None:
        names = names or group.get("param_names")
        if names is None:
            names = [f"param{self._unnamed + i}" for i in range(len(group["params"]))]
            self._unnamed += len(names)
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        self.__dict__.setdefault("_planned", {})[index] = list(group["params"])
        for p, plan in zip(group["params"], plan_group(group, names)):
            self._plans[p] = plan
            shards = shards_of(p)
            if shards is not None:
                self._shards[p] = shards
            self._init_state(group, p)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> None:
        """Every parameter's state exists from the start (zeros, step 0): a checkpoint template
        is whole before the first step, and torch.distributed.checkpoint never needs the dummy
        step it would otherwise run (which would start GaLore's bases from a zero gradient)."""
        plan, state = self._plans[p], self.state[p]
        state.clear()
        mine, whole = self.update_shapes(p)
        if plan.projected:
            init_state(group, p, plan, state, shape=mine, whole=whole)
        else:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            lowbit.init_moments(state, lowbit.layout(group, plan.rule, p, mine, whole), p.device)
            if stages.active(group):
                state[stages.COUNTER] = torch.tensor(0.0, dtype=torch.float32)
        if weight_norm.applies(group, p):
            weight_norm.init_state(state, p)

    def adopt_replaced_params(self) -> None:
        """Plan again the parameters replaced in the groups since they were planned — accelerate's
        FSDP2 ``prepare`` swaps each for its sharded DTensor in place, leaving the state keyed by
        the old tensors — while nothing has been learned; afterwards it would lose the state."""
        planned = self.__dict__.get("_planned", {})
        for index, group in enumerate(self.param_groups):
            old = planned.get(index)
            if old is None or all(a is b for a, b in zip(old, group["params"])):
                continue
            if len(old) != len(group["params"]):
                raise ValueError("a parameter group of this optimizer changed its number of "
                                 "parameters; build the optimizer again on the model")
            if self.sampling is not None:
                raise ValueError("this optimizer samples layers of the parameters it was built on, "
                                 "which were replaced since (FSDP/accelerate prepare): build it "
                                 "after wrapping the model")
            if self._learned:
                raise ValueError("this optimizer's parameters were replaced after it took a step "
                                 "or loaded a state (its state belongs to the old tensors); build "
                                 "the optimizer after wrapping or sharding the model")
            names = [self._plans[p].name for p in old]
            for p in old:
                self._plans.pop(p, None)
                self._shards.pop(p, None)
                self.state.pop(p, None)
            self._plan(group, names)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("layerwise", None)
        self.__dict__.setdefault("sampling", None)
        self.__dict__.setdefault("_learned", True)
        self.__dict__.setdefault("_planned", {})
        self.fill_missing_keys()

    def fill_missing_keys(self) -> None:
        """Groups restored from older versions lack newer keys: give them their defaults."""
        for group in self.param_groups:
            for key, value in fill_group({"rule": group.get("rule", "adam")}, {}).items():
                group.setdefault(key, value)

    def plan_of(self, p: Tensor) -> ParamPlan:
        """How ``p`` is handled (its name, rank or None, rule, projection side)."""
        return self._plans[p]

    def shards_of(self, p: Tensor) -> Shards | None:
        """Where an FSDP2 parameter's shard sits among the ranks (None: an ordinary tensor)."""
        return self._shards.get(p)

    @property
    def step_inputs(self) -> frozenset[str]:
        """The extra inputs the rules of this optimizer read from ``step(**inputs)``."""
        return frozenset(n for g in self.param_groups for p in g["params"]
                         for n in get_rule(self._plans[p].rule).needs)

    def implementations(self, p: Tensor) -> tuple[str, ...]:
        """The distinct code paths ``p``'s step can take: its rule's implementations (for-loop,
        foreach, fused), or ("eager", "kernel") for moments kept in low bits."""
        plan, group = self._plans[p], self._group_of()[p]
        lay = self._layouts(p, group)[0]
        if not lowbit.native(group, p, lay):
            return ("eager", "kernel") if plan.rule == "adam" else get_rule(plan.rule).implementations
        return get_rule(plan.rule).implementations

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None, **inputs):
        self.adopt_replaced_params()
        if self.layerwise is not None:  # parameters were updated in backward: finish the step
            return self.layerwise.finish_step(closure, **inputs)
        needs = self.step_inputs
        unknown = sorted(set(inputs) - needs)
        if unknown:
            raise ValueError(f"step() got the input {unknown[0]!r}, which no rule of this optimizer "
                             f"reads (they read: {', '.join(sorted(needs)) or 'none'})")
        loss = None
        if closure is not None and "closure" in needs:
            inputs["closure"] = closure
        elif closure is not None:
            with torch.enable_grad():
                loss = closure()
        norms_sq, checked, stepped = 0.0, True, False
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None
                      and (self.sampling is None or self.sampling.trains(p))]
            if not params:
                continue
            stepped = True
            group_norm_sq = self.step_params(group, params, inputs=inputs)
            if group_norm_sq is None:
                checked = False
            else:
                norms_sq += group_norm_sq
        if not stepped and not self._warned_no_grad:
            self._warned_no_grad = True
            warn("optimizer.step() found no parameter with a gradient, so it changed nothing: "
                 "call loss.backward() before step()")
        self.grad_norm = math.sqrt(norms_sq) if checked else None
        self.end_step()
        if self.sampling is not None:  # every K steps: other blocks train
            self.sampling.after_step(self)
        return loss

    def end_step(self) -> None:
        """Publish the step's counts (``last_step_params``, ``last_step_skipped``); the layer-wise
        mode calls it when it finishes a step."""
        self.last_step_params, self.last_step_skipped = self._seen, self._skipped
        self._learned = True
        self._seen = self._skipped = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.layerwise is not None:  # its low-rank accumulators are gradients too
            self.layerwise.discard()

    def step_params(self, group: dict[str, Any], params: list[Tensor],
                    low_rank: dict[Tensor, Tensor] | None = None, *,
                    inputs: dict[str, Any] | None = None) -> float | None:
        """One optimizer step for ``params`` (all in ``group``, all with gradients): the entry
        point of ``step()`` and of the layer-wise mode.

        ``low_rank`` (layer-wise accumulation, ``layerwise/``) maps projected parameters to their
        gradient already projected on their current basis: their ``.grad`` is not read and their
        basis is not refreshed on this step (the caller checked ``refresh_due``). ``inputs``: the
        step's extra inputs. Returns the squared norm of their finite gradients, or None when not
        checked.
        """
        low_rank = low_rank or {}
        inputs = inputs or {}
        self._seen += len(params)
        for p in params:
            if p not in low_rank and p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported; use a dense embedding")
        norm_sq = None
        if group["check_finite"]:
            params, norm_sq = self._drop_nonfinite(params, low_rank)
        normed = [p for p in params if weight_norm.applies(group, p)]  # GradNormLoRP: W → V
        saved = weight_norm.to_direction_(normed, [self.state[p] for p in normed])
        plain: dict[str, list[Tensor]] = {}
        for p in params:
            if not self._plans[p].projected:
                plain.setdefault(self._plans[p].rule, []).append(p)
        for rule, tensors in plain.items():
            self._step_plain(group, rule, tensors, inputs)
        projected = [p for p in params if self._plans[p].projected]
        if projected:
            self._step_projected(group, projected, low_rank, inputs)
        weight_norm.from_direction_(normed, [self.state[p] for p in normed], group, saved)
        return norm_sq

    def _drop_nonfinite(self, params: list[Tensor], low_rank: dict[Tensor, Tensor]
                        ) -> tuple[list[Tensor], float]:
        grads = [low_rank[p] if p in low_rank else p.grad for p in params]
        plain = [i for i, p in enumerate(params) if p not in self._shards]
        sharded = [i for i, p in enumerate(params) if p in self._shards]
        values = [0.0] * len(params)
        for i, v in zip(plain, _grad_norms([local(grads[i]) for i in plain]) if plain else []):
            values[i] = v
        squares = global_sq_norms([local(grads[i]) for i in sharded],  # all ranks skip alike
                                  [self._shards[params[i]] for i in sharded])
        for i, sq in zip(sharded, squares):
            values[i] = math.sqrt(sq) if math.isfinite(sq) else math.inf
        keep = [p for p, v in zip(params, values) if math.isfinite(v)]
        self._skipped += len(params) - len(keep)
        if len(keep) < len(params):
            bad = [self._plans[p].name for p, v in zip(params, values) if not math.isfinite(v)]
            warn(f"skipped the update of {len(bad)} parameters whose gradient has NaN/Inf "
                 f"(state and subspace unchanged): {', '.join(bad[:5])}")
        return keep, sum(v * v for v in values if math.isfinite(v))

    def _step_plain(self, group: dict[str, Any], rule: str, params: list[Tensor],
                    inputs: dict[str, Any]) -> None:
        states = [self.state[p] for p in params]
        self._run_rule(group, rule, [local(p.grad) for p in params], states, "step", params, inputs,
                       apply=True)

    def moment(self, p: Tensor, key: str) -> Tensor:
        """Moment ``key`` of ``p`` (e.g. "exp_avg") as a float32 tensor in its logical shape —
        dequantized when it is stored in low bits."""
        group = self._group_of()[p]
        storage, moment_shape = self._layouts(p, group)[0][key]
        return lowbit.load_moment(self.state[p], key, storage, moment_shape)
