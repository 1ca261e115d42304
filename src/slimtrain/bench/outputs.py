"""What a benchmark leaves in its directory: ``results.jsonl`` (one line per trial, validation
curve included), ``bench.json`` (settings, command, versions, machine), ``results.md`` and the
plots. The report and plots are drawn from those two files alone (``render_dir``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import plots
from .report import render
from .summary import summarize

RESULTS_FILE = "results.jsonl"
META_FILE = "bench.json"
REPORT_FILE = "results.md"


def write(out: Path, records: list[dict], meta: dict[str, Any]) -> Path:
    (out / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return render_dir(out)


def render_dir(out: Path) -> Path:
    """(Re)draw ``results.md`` and the plots from ``results.jsonl`` and ``bench.json``."""
    records = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines() if line.strip()]
    meta = json.loads((out / META_FILE).read_text())
    # what all trials cost, whichever invocation ran them (reused trials keep their wall time)
    meta["trial_seconds"] = round(sum(r.get("wall_seconds") or 0 for r in records), 1)
    s = meta["settings"]
    rows = summarize(records, s["seeds"])
    title = (f"{s['model']} · {meta['steps'] * s['batch_size'] * s['seq_len']:,} tokens per trial · "
             f"{meta['data']}")
    plots.draw_all(rows, out, meta["adamw_state_bytes"], title)
    path = out / REPORT_FILE
    path.write_text(render(rows, meta))
    return path
