"""Optimizer-state memory (planned from shapes and measured) and checkpoints (tensor-only, versioned).

Mixed into ``PipelineOptimizer``; relies on its ``_plans`` and the group keys of ``groups.py``.

Format 2 (this version) differs from 1 in two places, converted on load: each group carries only
its own rule's keys (Adafactor's ``adafactor_beta1`` / ``factored_eps`` became ``beta1`` / ``eps``,
the natural rule's ``natural_history`` / ``natural_damping`` became ``history`` / ``damping``), and
4-bit packed bases put element 2i in the high nibble, as every 4-bit code does (format 1: low).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import Tensor

from . import sampling, stages, weight_norm
from .lowbit import storage as lowbit
from .lowbit.codec import swap_nibbles
from .sharded.context import chunk_range, planning_shards
from .sharded.step import as_dtensor, placement_of, update_shapes
from .subspace import basis_store, refresh

STATE_FORMAT = 2
# format 1 group keys → format 2, per rule
_RENAMED = {"adafactor": {"adafactor_beta1": "beta1", "factored_eps": "eps"},
            "natural": {"natural_history": "history", "natural_damping": "damping"}}
# Group keys that define what a step computes (not hyperparameters a resume may take from the
# checkpoint, such as the scheduled lr): a state saved with other values is refused.
DEFINING = ("rule", "backmap", "residual", "basis", "refresh", "switch", "side", "state_bits",
            "fp8_expansion", "projector_bits", "projector_group", "quantize_min_numel", "weight_norm")
_V1_RULE_KEYS = ("betas", "eps", "eps_mode", "adafactor_beta1", "factored_eps", "decay_rate",
                 "clip_threshold", "natural_history", "natural_damping")
_COUNTER = 4  # float32 step counters
_MARK = "slimtrain_state"  # [format, recipe, grad_norm] in each saved group


def _elem_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class StateIO:
    def _group_of(self) -> dict[Tensor, dict[str, Any]]:
        return {p: g for g in self.param_groups for p in g["params"]}

    def update_shapes(self, p: Tensor, shards=None) -> tuple[tuple, tuple]:
        """(this rank's update shape, the whole update's) — the same without sharding.
        ``shards``: another sharding to plan for (the planner's --world-size)."""
        return update_shapes(p.shape, self._plans[p], shards or self._shards.get(p))

    def _layouts(self, p: Tensor, group: dict[str, Any], shards=None):
        """(this rank's moment layout, the whole tensor's)."""
        mine, whole = self.update_shapes(p, shards)
        rule = self._plans[p].rule
        return (lowbit.layout(group, rule, p, mine, whole), lowbit.layout(group, rule, p, whole))

    def planned_state_bytes(self, world: int = 1) -> dict[str, int]:
        """Optimizer-state bytes this optimizer holds (on this rank), from shapes alone (works on
        meta tensors): {"states": …, "projectors": …}. ``world`` > 1: what rank 0 (the largest
        shards) would hold with every parameter sharded by rows over ``world`` ranks (FSDP2)."""
        states = projectors = 0
        for group in self.param_groups:
            for p in group["params"]:
                if self.sampling is not None and not self.sampling.trains(p):
                    continue  # an inactive block holds no state
                plan = self._plans[p]
                shards = planning_shards(p, world) if world > 1 else None
                states += lowbit.moment_bytes(self._layouts(p, group, shards)[0])
                if plan.projected:
                    states += 2 * _COUNTER + refresh.lazy_bytes(group)
                    if group["limiter"] is not None:
                        states += _elem_bytes(torch.promote_types(p.dtype, torch.float32))
                    projectors += basis_store.planned_bytes(p.shape, plan.rank, plan.side, group)
                else:
                    states += _COUNTER
                if stages.active(group):
                    states += _COUNTER
                if weight_norm.applies(group, p):
                    rows = shards.rows[1] - shards.rows[0] if shards is not None else p.shape[0]
                    states += weight_norm.planned_bytes(p, rows)
        return {"states": states, "projectors": projectors}

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the tensors actually held in the optimizer state: {"states", "projectors"}."""
        states = projectors = 0
        for st in self.state.values():
            for key, value in st.items():
                if isinstance(value, Tensor):
                    if key in basis_store.BASIS_KEYS:
                        projectors += value.nbytes
                    else:
                        states += value.nbytes
        return {"states": states, "projectors": projectors}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        self.adopt_replaced_params()
        sd = super().state_dict()
        if self._shards:  # sharded parameters: their state as DTensors (DCP saves and reshards)
            sd["state"] = self._as_dtensors(sd["state"])
        sd["format_version"] = STATE_FORMAT
        sd["recipe"] = type(self).__name__  # checked on load, with each group's DEFINING keys
        # the last step's gradient norm: layer-wise clipping scales the next step by it
        sd["grad_norm"] = self.grad_norm
        # also in every group: torch.distributed.checkpoint keeps only "state" and "param_groups"
        sd["param_groups"] = [{**g, _MARK: [STATE_FORMAT, sd["recipe"], self.grad_norm]}
                              for g in sd["param_groups"]]
        if self.sampling is not None:  # which blocks train: restored before the state
            sd["param_groups"] = [{**g, sampling.KEY: self.sampling.saved()}
                                  for g in sd["param_groups"]]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_sampling = next((g[sampling.KEY] for g in state_dict.get("param_groups", [])
                               if sampling.KEY in g), None)
        if (saved_sampling is None) != (self.sampling is None):
            raise ValueError("this optimizer state was saved with" + (" no" if saved_sampling is None
                             else "") + " layer sampling (LISA/OwLore) and this optimizer has"
                             + (" it" if saved_sampling is None else " none") + ": build the "
                             "optimizer as it was saved")
        state_dict = _unmarked(state_dict)
        version = state_dict.get("format_version")
        if version is None:
            raise ValueError("this optimizer state was not written by slimtrain (no 'format_version'); "
                             "load a state saved from a slimtrain optimizer, or start fresh")
        if version > STATE_FORMAT:
            raise ValueError(f"optimizer state format {version} is newer than this slimtrain "
                             f"understands ({STATE_FORMAT}); upgrade slimtrain")
        if version < 2:
            state_dict = _from_format_1(state_dict)
        self._check_same_recipe(state_dict)
        self.adopt_replaced_params()
        saved_state = state_dict["state"]
        # a state that has stepped binds the parameters (a fresh one, which accelerate's
        # prepare round-trips before it swaps them, does not)
        self._learned = self._learned or any(
            isinstance(st.get("step"), Tensor) and float(st["step"]) > 0 for st in saved_state.values())
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        # torch's loader would cast every state tensor to the parameter's dtype (uint8 codes and
        # bf16 moments would come back float32): let it restore the groups only, then copy the
        # state ourselves, keeping dtypes and never sharing tensors with the source dict.
        super().load_state_dict({**state_dict, "state": {}})
        self.fill_missing_keys()
        if self.sampling is not None:  # the saved active blocks, with fresh state to fill
            self.sampling.restore(self, saved_sampling)
        groups = self._group_of()
        for param_id, p in zip(saved_ids, chain.from_iterable(g["params"] for g in self.param_groups)):
            if param_id not in saved_state:
                continue
            restored = {}
            for key, value in saved_state[param_id].items():
                if isinstance(value, Tensor):
                    value = _plain(value, sharded=p in self._shards)
                    on_cpu = key.endswith("step") or key == "seed" or key.startswith(("refresh_", "next_"))
                    value = value.detach().to(device="cpu" if on_cpu else p.device, copy=True)
                restored[key] = value
            self._add_missing_expansion(p, groups[p], restored)
            self._check_restored(p, groups[p], restored)
            self.state[p] = restored
        self.grad_norm = state_dict.get("grad_norm")

    def _check_same_recipe(self, state_dict: dict[str, Any]) -> None:
        """The state was written by the same recipe with the same parts: torch's loader would let
        the saved group keys replace ours (a GaLore-Lion would then run Adam), so refuse."""
        recipe, ours = state_dict.get("recipe"), type(self).__name__
        if recipe is not None and recipe != ours:
            raise ValueError(f"this optimizer state was saved by {recipe}, not {ours}: load it into "
                             f"a {recipe}, or start the {ours} fresh")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"this optimizer state has {len(saved_groups)} param groups, this "
                             f"optimizer {len(self.param_groups)}: it was saved for other groups")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if "limiter" in saved and (saved["limiter"] is None) != (group.get("limiter") is None):
                raise ValueError(f"this optimizer state was saved with limiter={saved['limiter']!r} "
                                 f"in param group {i}, but this optimizer has limiter="
                                 f"{group.get('limiter')!r}: build the optimizer as it was saved")
            for key in DEFINING:
                if key in saved and saved[key] != group.get(key):
                    raise ValueError(f"this optimizer state was saved with {key}={saved[key]!r} in "
                                     f"param group {i}, but this optimizer has {key}="
                                     f"{group.get(key)!r}: build the optimizer as it was saved")

    def _as_dtensors(self, state: dict) -> dict:
        """The state of sharded parameters with each tensor a DTensor on its parameter's mesh,
        sharing storage with ours: moments sharded as the update is (``sharded/step.py``), the
        rest replicated. Quantized blocks must not straddle a shard: refused otherwise."""
        ids = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = self._group_of()
        out = dict(state)
        for p, shards in self._shards.items():
            if ids[p] not in state:
                continue
            mine, whole = (lowbit.stored_shapes(lay) for lay in self._layouts(p, groups[p]))
            entry = {}
            for key, value in state[ids[p]].items():
                if key in weight_norm.ROW_KEYS:  # one number per row: the rows' split
                    entry[key] = as_dtensor(value, shards, 0, (shards.global_shape[0],))
                    continue
                if not isinstance(value, Tensor) or key not in mine:
                    entry[key] = value if not isinstance(value, Tensor) or value.dim() == 0 \
                        else as_dtensor(value, shards, None, tuple(value.shape))
                    continue
                dim = placement_of(mine[key], whole[key])
                if dim is not None:
                    start, end = chunk_range(whole[key][dim], shards.world, shards.rank)
                    if end - start != mine[key][dim]:
                        raise ValueError(
                            f"the {key} of {self._plans[p].name} cannot be saved as a sharded "
                            "DTensor: this rank's shard is not a whole number of quantization "
                            "blocks; pick a world size that cuts the rows into whole blocks")
                entry[key] = as_dtensor(value, shards, dim, whole[key])
            out[ids[p]] = entry
        return out

    def _add_missing_expansion(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """fp8 moments saved before dynamic range expansion have no ``*_expand`` part: they are
        plain e4m3 codes, which expansion index 0 (k = 1) decodes as they were written."""
        for key, shape in lowbit.stored_shapes(self._layouts(p, group)[0]).items():
            absmax = state.get(key.removesuffix("_expand") + "_absmax")
            if key.endswith("_expand") and key not in state and isinstance(absmax, Tensor):
                state[key] = torch.zeros(shape, dtype=torch.uint8, device=absmax.device)

    def _check_restored(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        plan = self._plans[p]
        expected = lowbit.stored_shapes(self._layouts(p, group)[0])
        if plan.projected:
            expected.update(basis_store.expected_shapes(p.shape, plan.rank, plan.side, group))
        if stages.active(group):
            expected[stages.COUNTER] = ()
        if weight_norm.applies(group, p):
            expected.update(weight_norm.expected_shapes(p))
        for key, shape in expected.items():
            got = state.get(key)
            if got is None or tuple(got.shape) != tuple(shape):
                found = None if got is None else tuple(got.shape)
                raise ValueError(
                    f"optimizer state of {plan.name!r} has {key} of shape {found}, expected {shape}: "
                    "the checkpoint was saved for a different model, rank, rule, projection side "
                    "or state_bits"
                )


def _from_format_1(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A format-1 state dict in format 2 (module docstring); the input is not modified."""
    from .groups import rule_keys

    groups, state = [], dict(state_dict["state"])
    for saved in state_dict["param_groups"]:
        rule = saved.get("rule", "adam")
        group = {k: v for k, v in saved.items() if k not in _V1_RULE_KEYS}
        renamed = _RENAMED.get(rule, {})
        for key, value in saved.items():
            if key not in _V1_RULE_KEYS:
                continue
            new = renamed.get(key, key)
            shadowed = key not in renamed and key in renamed.values()  # Adam's eps, for Adafactor
            if new in rule_keys(rule) and not shadowed:
                group[new] = value
        groups.append(group)
        if saved.get("projector_bits") == 4:
            for i in saved["params"]:
                if i in state and "basis_codes" in state[i]:
                    state[i] = {**state[i], "basis_codes": swap_nibbles(state[i]["basis_codes"])}
    return {**state_dict, "param_groups": groups, "state": state}


def _plain(value: Tensor, sharded: bool) -> Tensor:
    """A loaded state tensor as this rank keeps it: a DTensor's local part (a sharded parameter)
    or its whole value (an ordinary one, e.g. a state saved on several ranks loaded on one)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(value, DTensor):
        return value
    return value.to_local() if sharded else value.full_tensor()


def _unmarked(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The format, recipe and norm from the groups when the top level lost them (a state that went
    through torch.distributed.checkpoint), and the groups without the marks (and the sampler's)."""
    groups = state_dict.get("param_groups", [])
    marks = [g[_MARK] for g in groups if _MARK in g]
    out = {**state_dict, "param_groups": [{k: v for k, v in g.items()
                                           if k not in (_MARK, sampling.KEY)} for g in groups]}
    if not marks:
        return out
    version, recipe, norm = marks[0]
    out.setdefault("format_version", version)
    out.setdefault("recipe", recipe)
    out.setdefault("grad_norm", norm)
    return out
