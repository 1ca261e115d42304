"""From trial records to one row per method, and the comparisons the report makes.

A row's lr is the protocol's choice (``sweep.Protocol.outcome``), recomputed from the records, so
the report and the walk cannot disagree. Noise: a method's seed *spread* is the range (max − min) of
its validation perplexities over the seeds at its chosen lr. Two methods are *within noise* of each
other when their seed ranges [min, max] overlap — the difference of their means is then no result,
whatever its size; otherwise the one with the lower mean is better.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .sweep import Outcome, Protocol

# The full-precision AdamW rows; the strongest of them is "AdamW" in every comparison.
ADAMW_BASELINES = ("adamw", "adamw-pergroup", "torch-adamw")


@dataclass
class Row:
    method: str
    name: str
    label: str
    kind: str
    group: str
    reference_of: str | None
    center: float                 # the sweep's first lr
    status: str = "ok"            # ok, skipped, failed, diverged
    note: str | None = None       # why not ok; or what went wrong with one seed
    lr: float | None = None
    ppl: dict[int, float] = field(default_factory=dict)   # seed → validation perplexity at ``lr``
    sweep: dict[tuple[float, int], Any] = field(default_factory=dict)  # (lr, seed) → perplexity, or
    #   a status, for the trials that chose the lr (the first two seeds), in the order they ran
    outcome: Outcome | None = None  # how the choice was made: ended, noisy, trials used
    state_bytes: int = 0
    weight_bytes: int = 0
    gradient_bytes: int = 0
    peak_bytes: float = math.nan
    tokens_per_s: float = math.nan
    step_ms: float = math.nan     # optimizer.step() time per step
    wall_s: float = math.nan
    curve: list = field(default_factory=list)  # [[tokens, val_loss], …] of the first seed at ``lr``

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ppl_mean(self) -> float:
        return statistics.fmean(self.ppl.values()) if self.ppl else math.nan

    @property
    def spread(self) -> float:
        """max − min over seeds (nan with one seed: no noise estimate)."""
        return max(self.ppl.values()) - min(self.ppl.values()) if len(self.ppl) > 1 else math.nan

    @property
    def edge(self) -> bool:
        """The best lr may lie beyond what was tried: the walk hit the ladder's end or spent its
        budget before bracketing it."""
        return self.outcome is not None and self.outcome.edge

    @property
    def low(self) -> float:
        return min(self.ppl.values()) if self.ppl else math.nan

    @property
    def high(self) -> float:
        return max(self.ppl.values()) if self.ppl else math.nan


def summarize(records: list[dict], seeds: list[int] | None = None) -> list[Row]:
    """One row per method, in the order the methods were named. ``seeds``: the benchmark's, in
    order (``bench.json``); without them, the order in which each method's records first use them
    (the walk's order: the first seed, then the noise check's)."""
    order = list(dict.fromkeys(r["method"] for r in records))
    return [_row([r for r in records if r["method"] == m], seeds) for m in order]


def _row(records: list[dict], seeds: list[int] | None) -> Row:
    first = records[0]
    row = Row(**{k: first[k] for k in ("method", "name", "label", "kind", "group", "reference_of", "center")})
    if first["status"] == "skipped":
        row.status, row.note = "skipped", first["error"]
        return row
    seeds = list(seeds or dict.fromkeys(r["seed"] for r in records))
    tuning = [r for r in records if r["seed"] in seeds[:2]]
    row.sweep = {(r["lr"], r["seed"]): (r["val_ppl"] if r["status"] == "ok" else r["status"]) for r in tuning}
    results = {(r["lr"], r["seed"]): r["val_loss"] if r["status"] == "ok" else None for r in records}
    # the budget only decides what runs next, not what the finished trials chose: any number works
    row.outcome = Protocol(trials=1, seeds=tuple(seeds)).outcome(results)
    row.lr = row.outcome.lr
    if row.lr is None:
        statuses = {r["status"] for r in tuning}
        row.status = "diverged" if statuses == {"diverged"} else "failed"
        row.note = next(r["error"] for r in tuning if r["status"] != "ok")
        return row
    chosen = [r for r in records if r["lr"] == row.lr]
    row.ppl = {r["seed"]: r["val_ppl"] for r in chosen if r["status"] == "ok"}
    bad = [r for r in chosen if r["status"] != "ok"]
    if bad:
        row.note = "; ".join(f"seed {r['seed']} {r['status']}: {r['error']}" for r in bad)
    best = next(r for r in chosen if r["seed"] == seeds[0])
    row.curve = best["curve"]
    for key in ("state_bytes", "weight_bytes", "gradient_bytes"):
        setattr(row, key, best["optimizer_state_bytes" if key == "state_bytes" else key])
    ok = [r for r in records if r["status"] == "ok"]
    # Speed and peak memory: medians over all the method's trials (machine noise hits single runs).
    row.tokens_per_s = statistics.median(r["tokens_per_s"] for r in ok)
    row.step_ms = statistics.median(r["optimizer_ms_per_step"] for r in ok)
    row.peak_bytes = statistics.median(r["peak_memory_bytes"] for r in ok)
    row.wall_s = statistics.median(r["wall_seconds"] for r in ok)
    return row


def adamw_row(rows: list[Row]) -> Row | None:
    """The strongest full-precision AdamW baseline of the benchmark (lowest mean perplexity)."""
    candidates = [r for r in rows if r.ok and r.name in ADAMW_BASELINES]
    return min(candidates, key=lambda r: r.ppl_mean) if candidates else None


@dataclass
class Comparison:
    delta: float        # relative difference of mean perplexities, (a − b) / b
    noise: float        # the larger seed spread, relative to b (0 when both ran one seed)
    verdict: str        # "better", "worse" or "within noise" (seed ranges overlap) — a compared with b

    @property
    def matches(self) -> bool:
        """a reaches b's perplexity: within noise or better."""
        return self.verdict in ("better", "within noise")


def compare(a: Row, b: Row) -> Comparison:
    delta = (a.ppl_mean - b.ppl_mean) / b.ppl_mean
    spreads = [s for s in (a.spread, b.spread) if not math.isnan(s)]
    noise = max(spreads) / b.ppl_mean if spreads else 0.0  # one seed each: no noise estimate
    if a.low <= b.high and b.low <= a.high:  # the seed ranges overlap
        verdict = "within noise"
    else:
        verdict = "better" if delta < 0 else "worse"
    return Comparison(delta, noise, verdict)


def reference_pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """(slimtrain recipe, its reference implementation) for every pair the benchmark ran."""
    ours = {r.group: r for r in rows if r.kind == "slimtrain"}
    return [(ours[r.group], r) for r in rows if r.kind == "peer" and r.reference_of and r.group in ours]
