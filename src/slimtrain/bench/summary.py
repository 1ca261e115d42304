"""From trial records to one row per method, and the comparisons the report makes.

Noise: a method's seed spread is the range (max − min) of its validation perplexities over the
seeds at its chosen lr. Two methods are *within noise* of each other when their mean perplexities
differ by no more than the larger of their two spreads.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .sweep import best_lr

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
    sweep: dict[float, Any] = field(default_factory=dict)  # lr → first seed's perplexity, or a status,
    #                                                         in the order the sweep tried them
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
        """The chosen lr is the smallest or largest tried: the optimum may lie beyond it."""
        return self.lr is not None and len(self.sweep) > 1 and self.lr in (min(self.sweep), max(self.sweep))


def summarize(records: list[dict]) -> list[Row]:
    """One row per method, in the order the methods were named."""
    order = list(dict.fromkeys(r["method"] for r in records))
    return [_row([r for r in records if r["method"] == m]) for m in order]


def _row(records: list[dict]) -> Row:
    first = records[0]
    row = Row(**{k: first[k] for k in ("method", "name", "label", "kind", "group", "reference_of", "center")})
    if first["status"] == "skipped":
        row.status, row.note = "skipped", first["error"]
        return row
    sweep = [r for r in records if r["stage"] == "sweep"]
    row.sweep = {r["lr"]: (r["val_ppl"] if r["status"] == "ok" else r["status"]) for r in sweep}
    row.lr = best_lr({r["lr"]: r.get("val_loss") if r["status"] == "ok" else None for r in sweep})
    if row.lr is None:
        statuses = {r["status"] for r in sweep}
        row.status = "diverged" if statuses == {"diverged"} else "failed"
        row.note = next(r["error"] for r in sweep if r["status"] != "ok")
        return row
    chosen = [r for r in records if r["lr"] == row.lr]
    row.ppl = {r["seed"]: r["val_ppl"] for r in chosen if r["status"] == "ok"}
    bad = [r for r in chosen if r["status"] != "ok"]
    if bad:
        row.note = "; ".join(f"seed {r['seed']} {r['status']}: {r['error']}" for r in bad)
    best = next(r for r in sweep if r["lr"] == row.lr)
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
    verdict: str        # "better", "worse" or "within noise" — a compared with b

    @property
    def matches(self) -> bool:
        """a reaches b's perplexity: within noise or better."""
        return self.verdict in ("better", "within noise")


def compare(a: Row, b: Row) -> Comparison:
    delta = (a.ppl_mean - b.ppl_mean) / b.ppl_mean
    spreads = [s for s in (a.spread, b.spread) if not math.isnan(s)]
    noise = max(spreads) / b.ppl_mean if spreads else 0.0  # one seed each: no noise estimate
    if abs(delta) <= noise:
        verdict = "within noise"
    else:
        verdict = "better" if delta < 0 else "worse"
    return Comparison(delta, noise, verdict)


def reference_pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """(slimtrain recipe, its reference implementation) for every pair the benchmark ran."""
    ours = {r.group: r for r in rows if r.kind == "slimtrain"}
    return [(ours[r.group], r) for r in rows if r.kind == "peer" and r.reference_of and r.group in ours]
