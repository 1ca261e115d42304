"""The benchmark's markdown report: the results table, the targets (each recipe next to its
reference implementation; a memory-efficient recipe at AdamW's perplexity), the sweep, the memory
breakdown, and everything needed to reproduce it. Every number comes from the records."""

from __future__ import annotations

import math
from typing import Any

from .summary import Row, adamw_row, compare, reference_pairs

MIB = 2**20


def _mib(n: float) -> str:
    """A table cell in MiB, its precision following its size (no unit: the header says it)."""
    if not math.isfinite(n):
        return "–"
    mib = n / MIB
    return f"{mib:,.1f}" if mib >= 10 else f"{mib:.2f}" if mib >= 0.1 else f"{mib:.3f}"


def _ratio(a: float, b: float | None, digits: int = 2) -> str:
    if b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return "–"
    r = a / b
    return f"{r:.{digits}f}" if r >= 10 ** -digits else f"{r:.1e}"


def _ppl(row: Row) -> str:
    return f"{row.ppl_mean:.2f}" if row.ppl else "–"


def _ppl_spread(row: Row) -> str:
    """mean ± spread (max − min over the seeds); one seed has no spread to show."""
    if not row.ppl:
        return "–"
    return f"{_ppl(row)} ± {row.spread:.2f}" if len(row.ppl) > 1 else f"{_ppl(row)} (1 seed)"


def _seeds(row: Row) -> str:
    return " / ".join(f"{row.ppl[s]:.2f}" for s in sorted(row.ppl))


def _lr(row: Row) -> str:
    if row.lr is None:
        return "–"
    return f"{row.lr:g}{f' (edge: {row.outcome.ended})' if row.edge else ''}"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _vs_adamw(row: Row, base: Row | None) -> str:
    if base is None or not row.ok:
        return "–"
    if row is base:
        return "AdamW baseline"
    c = compare(row, base)
    text = {"worse": "AdamW better", "better": "better than AdamW",
            "within noise": "≈ AdamW (within noise)"}
    return f"{_pct(c.delta)} ({text[c.verdict]})"


def results_table(rows: list[Row], adamw_state: int) -> list[str]:
    base = adamw_row(rows)
    speed = next((r for r in rows if r.ok and r.name == "adamw"), None)
    lines = ["| method | lr (edge: the walk reached the ladder's end, or spent its budget, before a worse "
             "lr on each side) | val ppl mean ± spread (max − min over seeds) | per seed | vs AdamW "
             "| optimizer state MiB | × AdamW | peak RSS MiB | tokens/s | × AdamW "
             "| optimizer ms/step | × AdamW | wall s/trial |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.ok:
            lines.append(f"| {r.method} ({r.label}) | {r.status}: {r.note} |" + " |" * 11)
            continue
        lines.append(
            f"| {r.method} ({r.label}) | {_lr(r)} | {_ppl_spread(r)} | {_seeds(r)} | {_vs_adamw(r, base)} "
            f"| {_mib(r.state_bytes)} | {_ratio(r.state_bytes, adamw_state, 3)} | {_mib(r.peak_bytes)} "
            f"| {r.tokens_per_s:,.0f} | {_ratio(r.tokens_per_s, speed.tokens_per_s if speed else None)} "
            f"| {r.step_ms:.2f} | {_ratio(r.step_ms, speed.step_ms if speed else None)} | {r.wall_s:.0f} |")
    notes = [f"- {r.method}: {r.note}" for r in rows if r.ok and r.note]
    return lines + ([""] + notes if notes else [])


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def targets(rows: list[Row], adamw_state: int) -> list[str]:
    lines = ["### Each recipe next to its reference implementation", "",
             "Target: perplexity within noise (or better), optimizer state ≤ and tokens/s ≥ the "
             "reference's. Within noise = the two methods' seed ranges (min … max over seeds) overlap; "
             "the noise column is the larger of their spreads (max − min), relative.", "",
             "| recipe | reference | val ppl ours / ref | Δ ppl | noise | ppl | state MiB ours / ref | ≤ "
             "| tokens/s ours / ref | ≥ | optimizer ms/step ours / ref |",
             "|---|---|---|---:|---:|---|---|---|---|---|---|"]
    pairs = [(a, b) for a, b in reference_pairs(rows) if a.ok and b.ok]
    for a, b in pairs:
        c = compare(a, b)
        lines.append(
            f"| {a.method} | {b.method} ({b.label}) | {_ppl(a)} / {_ppl(b)} | {_pct(c.delta)} | "
            f"{c.noise * 100:.1f}% | {_mark(c.matches)} {c.verdict} | {_mib(a.state_bytes)} / "
            f"{_mib(b.state_bytes)} | {_mark(a.state_bytes <= b.state_bytes)} | {a.tokens_per_s:,.0f} / "
            f"{b.tokens_per_s:,.0f} ({_ratio(a.tokens_per_s, b.tokens_per_s)}×) | "
            f"{_mark(a.tokens_per_s >= b.tokens_per_s)} | {a.step_ms:.2f} / {b.step_ms:.2f} "
            f"({_ratio(a.step_ms, b.step_ms)}×) |")
    if not pairs:
        lines.append("| (no recipe ran next to its reference implementation) |" + " |" * 10)
    base = adamw_row(rows)
    lines += ["", "### A memory-efficient recipe at AdamW's perplexity with ≤ 1/3 of its optimizer state",
              ""]
    if base is None:
        return lines + ["No AdamW baseline ran (adamw, adamw-pergroup or torch-adamw)."]
    lines.append(f"AdamW = the best full-precision AdamW baseline here: {base.method} ({base.label}), "
                 f"val ppl {_ppl(base)}; AdamW's optimizer state is {_mib(adamw_state)} MiB.")
    lines.append("")
    small = [r for r in rows if r.ok and r.kind == "slimtrain" and r.state_bytes * 3 <= adamw_state]
    for r in small:
        c = compare(r, base)
        lines.append(f"- {_mark(c.matches)} {r.method}: {_ratio(r.state_bytes, adamw_state, 3)}× AdamW's "
                     f"state, val ppl {_ppl(r)} vs {_ppl(base)} ({_pct(c.delta)}, noise "
                     f"{c.noise * 100:.1f}%: {c.verdict})")
    if not small:
        lines.append("- ✗ no slimtrain recipe here holds ≤ 1/3 of AdamW's optimizer state")
    return lines


def _seed_cell(row: Row, lr: float, seed: int, value) -> str:
    at = f"lr {lr:g}" if seed == next(iter(row.sweep))[1] else f"lr {lr:g} · seed {seed}"
    text = f"{at}: {value:.2f}" if isinstance(value, float) else f"{at}: {value}"
    return f"**{text}**" if lr == row.lr else text


def _chosen_on(row: Row) -> str:
    if row.outcome is None or row.lr is None:
        return "–"
    seeds = list(dict.fromkeys(seed for _, seed in row.sweep))
    return f"mean of seeds {seeds[0]}, {seeds[1]} (noisy)" if row.outcome.noisy else f"seed {seeds[0]}"


def sweep_table(rows: list[Row], trials: int | None = None) -> list[str]:
    """Each method's tuning trials (the first two seeds) in the order the protocol ran them, the
    chosen lr in bold; how many of its budget it used, how the walk ended and what chose the lr."""
    width = max((len(r.sweep) for r in rows), default=0)
    lines = ["| method | centre | trials used / max | ended | chosen on | "
             + " | ".join(f"trial {i + 1}" for i in range(width)) + " |",
             "|---|---:|---:|---|---|" + "---|" * width]
    for r in rows:
        if r.status == "skipped":
            continue
        cells = [_seed_cell(r, lr, seed, value) for (lr, seed), value in r.sweep.items()]
        cells += [""] * (width - len(cells))
        used = f"{r.outcome.used} / {trials if trials else '?'}" if r.outcome else "–"
        ended = r.outcome.ended if r.outcome else "–"
        lines.append(f"| {r.method} | {r.center:g} | {used} | {ended} | {_chosen_on(r)} | "
                     + " | ".join(cells) + " |")
    return lines


def memory_table(rows: list[Row]) -> list[str]:
    lines = ["| method | weights MiB | gradients MiB | optimizer state MiB | sum MiB | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.ok:
            total = r.weight_bytes + r.gradient_bytes + r.state_bytes
            lines.append(f"| {r.method} | {_mib(r.weight_bytes)} | {_mib(r.gradient_bytes)} | "
                         f"{_mib(r.state_bytes)} | {_mib(total)} | {_mib(r.peak_bytes)} |")
    return lines


CENTRES = {"bench": "its authors' lr; 2e-3 for AdamW and the AdamW-like packages, as models this "
                    "small take larger steps",
           "papers": "the lr of its paper's LLaMA runs (AdamW and the AdamW-like packages 1e-3)"}


def _corpus(meta: dict[str, Any]) -> str:
    """The corpus and its fingerprint (``bench.json`` of before the fingerprint: its name only)."""
    c = meta.get("corpus")
    if not c:
        return meta["data"]
    return f"data {c['name']}, fingerprint `{c['fingerprint']}` ({c['fingerprint_of']})"


def _mode(meta: dict[str, Any]) -> str:
    if meta.get("mode") != "finetune":
        return ""
    prompt = meta["settings"].get("prompt_field")
    return (", fine-tuned from its weights as by `slimtrain finetune`"
            + (f"; the `{prompt}` field is a prompt masked out of the loss" if prompt else ""))


def _tuning(s: dict[str, Any]) -> str:
    seeds = s["seeds"]
    centre = CENTRES[s.get("centers", "bench")]
    walk = (f"- **Tuning** (the same rules and budget for every method; `slimtrain/bench/sweep.py`): "
            f"a walk on the ladder 1, 2, 5 × 10ᵏ at seed {seeds[0]} from the method's centre ({centre}), "
            f"each next trial an untried neighbour of the best so far, until a worse (or diverged) "
            f"neighbour was tried on each side of the best, the ladder ended, or the method's budget of "
            f"{s['trials']} trials was spent.")
    if len(seeds) == 1:
        return (walk + " One seed: no noise check, no repeat. Same data order and initial weights for "
                       "every method.")
    return (walk + f" Then the best again at seed {seeds[1]}: where the two seeds differ by more than "
            f"the best's gap to a neighbour (validation loss), the choice is the seed's, not the lr's, "
            f"so the neighbours are rerun at seed {seeds[1]} and the walk goes on with two-seed means "
            f"(\"noisy\"). The chosen lr then runs at every seed ({', '.join(map(str, seeds))}); that "
            f"first rerun at seed {seeds[1]} and the later seeds are not counted in the budget. Same data "
            f"order and initial weights for every method at a given seed.")


def render(rows: list[Row], meta: dict[str, Any]) -> str:
    s = meta["settings"]
    env = meta["environment"]
    load = meta.get("load_average", {})
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "not installed")
    m = env["machine"]
    memory = f", {m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else ""
    minutes = meta["wall_seconds"] / 60
    reused = f" ({meta['trials_reused']} reused from an earlier invocation)" if meta["trials_reused"] else ""
    trials = meta["trials_run"] + meta["trials_reused"]
    cost = (f"{trials} trials took {meta['trial_seconds'] / 60:.1f} trial-minutes in all, "
            f"{meta['trial_seconds'] / 60 / s['jobs']:.0f} min at {s['jobs']} at a time; ")
    lines = [
        "# Side-by-side benchmark", "",
        "Produced by this command (every figure below comes from it):", "", "```", meta["command"], "```", "",
        f"- **Work**: model `{s['model']}` ({meta['params'] / 1e6:.2f}M parameters{_mode(meta)}), "
        f"{_corpus(meta)}; {meta['steps']} steps × {s['batch_size']} × {s['seq_len']} tokens = "
        f"{meta['steps'] * s['batch_size'] * s['seq_len']:,} training tokens per trial, {s['precision']}, "
        f"warmup 10% then cosine to 10% (zeroth-order recipes: constant, no warmup, as MeZO's), weight decay {s['weight_decay']:g} for every method; projection "
        f"rank {s.get('rank') or 'each method’s own, capped at hidden/4'} and subspace refresh every "
        f"{s.get('refresh_every') or 'method’s own number of'} steps for slimtrain's recipes and the "
        f"packages alike; validation perplexity on the same {s['eval_batches'] * s['batch_size']} held-out "
        f"blocks of {s['seq_len']} tokens at the end.",
        _tuning(s),
        f"- **Machine**: {m['cpu']}, {m['cores']} cores{memory}, {m['system']}"
        f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}; {s['threads']} thread(s) per trial, "
        f"{s['jobs']} trial(s) at a time; load average {load.get('start')} at the start, "
        f"{load.get('end')} at the end; {cost}this invocation ran {meta['trials_run']} in "
        f"{minutes:.1f} min{reused}.",
        f"- **Versions**: {versions}.", "",
        "## Results", "",
        "Validation perplexity at each method's chosen lr (mean ± spread over the seeds, spread = max − "
        "min; \"within noise\": the method's and AdamW's seed ranges overlap, so neither is shown to "
        "be better); optimizer state = bytes of "
        "the tensors the optimizer keeps (low-bit codes and scales as stored, projectors included); "
        "× AdamW against AdamW's state for this model; peak RSS = the trial process's peak resident "
        "memory (Python, torch and the data included); tokens/s = training throughput (forward, "
        "backward and optimizer step), optimizer ms/step = time inside optimizer.step() (with "
        "fused_backward the updates run inside backward, so only tokens/s compares) — both medians "
        "over the method's trials, × slimtrain adamw's.", "",
        *results_table(rows, meta["adamw_state_bytes"]), "",
        "## Targets", "", *targets(rows, meta["adamw_state_bytes"]), "",
        "## Learning-rate sweep (validation perplexity of every trial that chose the lr, in the order "
        f"run; seed {s['seeds'][0]} unless named; bold: the chosen lr)", "",
        *sweep_table(rows, s["trials"]), "",
        "## Memory by part (tensor bytes of the chosen trial)", "", *memory_table(rows), "",
        "Plots: `loss_vs_tokens.png` (validation loss against training tokens, chosen lr, first seed), "
        "`memory_vs_ppl.png`, `memory_breakdown.png`; every trial is a line of `results.jsonl`.", "",
    ]
    return "\n".join(lines)
