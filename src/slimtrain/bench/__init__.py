"""Side-by-side benchmarks: every method (slimtrain's recipes, other libraries' optimizers, LoRA)
on the same model, data, seeds, token budget and tuning effort — ``slimtrain bench``.

    from slimtrain.bench import BenchSettings, benchmark
    benchmark(BenchSettings(methods=["adamw", "galore-adamw"], tokens=200_000), Path("runs/bench"))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .methods import available
from .outputs import render_dir, write
from .runner import run_bench
from .spec import BenchSettings

__all__ = ["BenchSettings", "available", "benchmark", "render_dir"]


def benchmark(settings: BenchSettings, out: Path, console: Console | None = None) -> Path:
    """Run the benchmark into ``out``; returns the path of its markdown report."""
    from dataclasses import asdict

    from . import environment
    from .runner import adamw_state_bytes

    console = console or Console(soft_wrap=True, highlight=False)
    settings.validate()
    out.mkdir(parents=True, exist_ok=True)
    # What ran: taken at the start, before anything (the docs of a source checkout, say) changes.
    versions, load_start, started = environment.versions(), environment.load_average(), time.perf_counter()
    corpus = environment.corpus(settings.data, settings.text_field)
    records = run_bench(settings, out, console)
    ran = [r for r in records if r["status"] != "skipped"]
    meta: dict[str, Any] = dict(
        command=settings.command() + f" --out {out}", settings=asdict(settings),
        environment=dict(versions=versions, machine=environment.machine()),
        load_average=dict(start=load_start, end=environment.load_average()),
        wall_seconds=round(time.perf_counter() - started, 1),
        trials_run=sum(not r["reused"] for r in ran), trials_reused=sum(r["reused"] for r in ran),
        steps=settings.steps, mode=settings.mode, params=next((r["params"] for r in ran if "params" in r), 0),
        data=settings.data or "the embedded corpus (Python standard library sources)", corpus=corpus,
        adamw_state_bytes=adamw_state_bytes(settings.model))
    return write(out, records, meta)
