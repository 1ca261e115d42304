"""Running an inner rule (mixed into ``PipelineOptimizer``): the one place where a rule reads and
writes its moments, with the spike stages before it (``stages.py``), low-bit storage around it
(``lowbit/storage.py``), the rule's extra inputs, and elementwise rules cut into pieces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from . import stages
from .lowbit import storage as lowbit
from .rules import get_rule
from .rules.adam import fused_supported
from .sharded.context import local
from .sharded.step import part_of


def _impl(group: dict[str, Any], tensors: list[Tensor], rule: str) -> str:
    """for-loop, foreach or fused, among the implementations the rule has (a rule without a fused
    kernel runs foreach when fused is asked for)."""
    impls = get_rule(rule).implementations
    fused = group["fused"]
    if "fused" in impls:
        if fused is None:
            fused = fused_supported(tensors, group["eps_mode"])
        elif fused and not fused_supported(tensors, group["eps_mode"]):
            raise ValueError("fused=True needs float tensors on cpu/cuda/mps/xpu; pass fused=None "
                             "to use it only where it applies")
        if fused:
            return "fused"
        return "foreach" if group["foreach"] else "forloop"
    return "foreach" if group["foreach"] or fused else "forloop"


# elements per piece of an elementwise rule's step (``_in_pieces``): 4 MiB of float32
PIECE = 1 << 20


class RuleStep:
    """Relies on the optimizer's ``_plans``, ``_shards`` and ``update_shapes``."""

    def _rule_inputs(self, rule: str, owners: list[Tensor], inputs: dict[str, Any]
                     ) -> dict[str, list]:
        """Each input the rule declared, one value per tensor (looked up by parameter or name in
        a mapping; None where absent)."""
        out = {}
        for name in get_rule(rule).needs:
            value = inputs.get(name)
            if isinstance(value, Mapping):
                out[name] = [value.get(p, value.get(self._plans[p].name)) for p in owners]
            else:
                out[name] = [value] * len(owners)
        return out

    def _run_rule(self, group: dict[str, Any], rule: str, grads: list[Tensor],
                  states: list[dict[str, Tensor]], count_key: str, owners: list[Tensor],
                  inputs: dict[str, Any], apply: bool):
        """The one place where a rule reads and writes its moments. Moments kept in another
        precision than the parameter's (``state_bits``) take lowbit's dequantize → rule →
        requantize seam (for Adam: one pass per tensor); the rest run the rule as it is.
        ``apply``: the rule updates ``owners`` itself (the unprojected path); otherwise it returns
        (directions, factors)."""
        kernel = get_rule(rule)
        layouts = [lowbit.layout(group, rule, p, g.shape, self.update_shapes(p)[1])
                   for p, g in zip(owners, grads)]
        targets = [local(p) for p in owners]  # a shard's own storage (the parameter itself)
        extra = self._rule_inputs(rule, owners, inputs)
        if kernel.reads_shape:
            extra["shapes"] = [tuple(p.shape) for p in owners]  # a DTensor's shape is global
        if any(p in self._shards for p in owners):  # the rule's reductions span the ranks
            extra["shards"] = [part_of(self._plans[p], self._shards.get(p), self.update_shapes(p)[1])
                               for p in owners]
        keys = [tuple(kernel.moment_shapes(g.shape, group)) for g in grads]
        scales = [1.0] * len(grads)
        if stages.active(group):  # SPAM / Stable-SPAM: resets, clipping, norm scaling
            parts = extra.get("shards") or [None] * len(grads)
            grads = list(grads)
            for i in range(len(grads)):
                grads[i], scales[i] = stages.apply(group, keys[i], grads[i], states[i], layouts[i],
                                                   count_key, parts[i])
        results = {}
        for scale in sorted(set(scales)):  # a warm-up factor scales lr (and keeps lr·λ)
            idx = [i for i in range(len(grads)) if scales[i] == scale]
            run = group if scale == 1.0 else {**group, "lr": group["lr"] * scale,
                                              "weight_decay": group["weight_decay"] / scale}
            for i, out in self._run_rule_on(run, rule, idx, grads, states, count_key, owners,
                                            targets, layouts, keys, extra, apply).items():
                results[i] = out if apply or scale == 1.0 else (out[0], out[1] * scale)
        if apply:
            return None
        return [results[i][0] for i in range(len(grads))], [results[i][1] for i in range(len(grads))]

    def _run_rule_on(self, group, rule, chosen, grads, states, count_key, owners, targets,
                     layouts, keys, extra, apply) -> dict[int, Any]:
        """``_run_rule`` for the tensors ``chosen``: {index: (direction, factor)} (or None)."""
        kernel = get_rule(rule)
        low = {i for i in chosen if not lowbit.native(group, owners[i], layouts[i])}
        results = {}
        for i in sorted(low):
            p = targets[i] if apply else None
            results[i] = lowbit.run_rule_(
                group, rule, {k: layouts[i][k] for k in keys[i]}, grads[i], states[i], count_key,
                p, name="" if p is None else self._plans[owners[i]].name,
                impl=_impl(group, [grads[i]], rule),
                inputs={k: v[i:i + 1] for k, v in extra.items()})
        idx = [i for i in chosen if i not in low]
        if idx and apply and kernel.elementwise:  # large tensors in pieces: see _in_pieces
            self._in_pieces(group, rule, [grads[i] for i in idx], [states[i] for i in idx],
                            [states[i][count_key] for i in idx], [targets[i] for i in idx],
                            [keys[i] for i in idx], {k: [v[i] for i in idx] for k, v in extra.items()})
        elif idx:
            moments = [{k: states[i][k] for k in keys[i]} for i in idx]
            counts = [states[i][count_key] for i in idx]
            refs = targets if apply else grads
            out = kernel.update([grads[i] for i in idx], moments, counts, group,
                                _impl(group, [refs[i] for i in idx], rule),
                                params=[targets[i] for i in idx] if apply else None,
                                inputs={k: [v[i] for i in idx] for k, v in extra.items()})
            if not apply:
                results.update({i: (d, f) for i, d, f in zip(idx, *out)})
        return results

    def _in_pieces(self, group, rule, grads, states, counts, params, keys, extra) -> None:
        """An elementwise rule applied to flat pieces of at most ``PIECE`` elements of each
        contiguous tensor: the same operations on the same elements (bit for bit), but every
        temporary stays small enough for the allocator to reuse — on a CPU a fresh 64 MB
        temporary page-faults on every step and costs more than the arithmetic. Each piece counts
        the step on a copy of its tensor's counter, which then takes that count. A tensor input
        of the parameter's size (Sophia's estimate) is cut alike; others go to every piece."""
        pieces: list[tuple] = []  # (tensor index, param, grad, moments, counter, inputs)
        for i, (g, p, own) in enumerate(zip(grads, params, keys)):
            tensors = [p, g] + [states[i][k] for k in own]
            values = {k: v[i] for k, v in extra.items()}
            if p.numel() <= PIECE or not all(t.is_contiguous() for t in tensors):
                pieces.append((i, p, g, dict(zip(own, tensors[2:])), counts[i], values))
                continue
            flats = [t.view(-1) for t in tensors]
            cut = {k: local(v).reshape(-1) for k, v in values.items()
                   if isinstance(v, Tensor) and v.numel() == p.numel()}
            for a in range(0, p.numel(), PIECE):
                part = [f[a:a + PIECE] for f in flats]
                pieces.append((i, part[0], part[1], dict(zip(own, part[2:])), counts[i].clone(),
                               {k: cut[k][a:a + PIECE] if k in cut else v
                                for k, v in values.items()}))
        get_rule(rule).update([x[2] for x in pieces], [x[3] for x in pieces],
                              [x[4] for x in pieces], group, _impl(group, [x[1] for x in pieces], rule),
                              params=[x[1] for x in pieces],
                              inputs={k: [x[5][k] for x in pieces] for k in extra})
        for i, _, _, _, counter, _ in pieces:
            if counter is not counts[i]:
                counts[i].copy_(counter)
