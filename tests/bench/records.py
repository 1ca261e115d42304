"""Synthetic trial records, shaped as ``runner`` writes them, for tests of the summary and report."""

import math

from slimtrain.bench.sweep import Protocol

MIB = 2**20


def trial(method, lr, seed, ppl, *, stage="sweep", status="ok", name=None, kind="slimtrain", group=None,
          reference_of=None, center=1e-2, state_mib=10.0, tokens_per_s=5000.0, step_ms=3.0):
    record = dict(method=method, name=name or method.split(":")[0], label=f"label of {method}", kind=kind,
                  group=group or method, reference_of=reference_of, center=center, stage=stage, lr=lr,
                  seed=seed, status=status, error=None if status == "ok" else f"it {status}",
                  wall_seconds=100.0, reused=False, run_dir=f"runs/{method}/lr-{lr:g}-seed-{seed}",
                  curve=[[1000, 7.0], [2000, math.log(ppl) if ppl else 7.0]])
    if status == "ok":
        record.update(val_loss=math.log(ppl), val_ppl=ppl, train_loss=5.0, steps=10, tokens=2000,
                      train_seconds=90.0, tokens_per_s=tokens_per_s, optimizer_ms_per_step=step_ms,
                      params=1_000_000, optimizer_state_bytes=int(state_mib * MIB), weight_bytes=7 * MIB,
                      gradient_bytes=7 * MIB, peak_memory_bytes=600 * MIB)
    return record


def method(name, ppls, best_lr, seed_ppl, **kw):
    """A method's sweep (lr → ppl at seed 0, or a status string, in the order tried; the first is
    the centre) and its best lr at seed 1."""
    center = next(iter(ppls))
    records = [trial(name, lr, 0, p if not isinstance(p, str) else None, center=center,
                     status="ok" if not isinstance(p, str) else p, **kw) for lr, p in ppls.items()]
    if best_lr is not None:
        records.append(trial(name, best_lr, 1, seed_ppl, stage="seed", center=center, **kw))
    return records


def skipped(name, reason, **kw):
    return dict(method=name, name=name, label=f"label of {name}", kind=kw.get("kind", "peer"), group=name,
                reference_of=kw.get("reference_of"), center=1e-2, status="skipped", error=reason)


def walked(name, loss, center=1e-2, trials=10, seeds=(0, 1, 2), **kw):
    """The records of a method whose trial (lr, seed) ends at validation loss ``loss(lr, seed)``,
    run in the order the protocol asks for them."""
    rules, results, records = Protocol(trials, tuple(seeds)), {}, []
    while (step := rules.next_trial(results, center)) is not None:
        results[(step.lr, step.seed)] = loss(step.lr, step.seed)
        records.append(trial(name, step.lr, step.seed, math.exp(results[(step.lr, step.seed)]),
                             stage=step.stage, center=center, **kw))
    return records
