"""Running a benchmark: one worker process per method (``worker.py``: the trials its protocol asks
for — the learning-rate walk, the noise check, the chosen lr at every seed; ``sweep.py``), ``jobs``
methods at a time; then one record per trial.

Trials that finished in an earlier invocation with the same spec are reused, so an interrupted
benchmark continues where it stopped and a method added to ``--methods`` costs only its own trials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import UserError, first_line
from . import methods as registry
from .spec import BenchSettings, MethodSpec
from .sweep import snap
from .trials import JOB_FILE, Trial, finished, method_dir, method_trials, recipe_kwargs, trial_spec


@dataclass
class Entry:
    """A method of the benchmark, resolved: its spec, what it is, and the centre of its sweep."""

    spec: MethodSpec
    method: registry.Method
    center: float
    skipped: str | None = None  # why it cannot run here

    def describe(self) -> dict[str, Any]:
        return dict(method=self.spec.text, name=self.method.name, label=self.method.label,
                    kind=self.method.kind, group=registry.group(self.spec),
                    reference_of=self.method.reference_of, center=self.center)

    def trials(self, settings: BenchSettings, out: Path) -> list[tuple[Trial, dict | None]]:
        """(trial, its result) for the trials known so far, up to the first unfinished one."""
        is_recipe = self.method.build is None
        return method_trials(self.spec, self.center, settings, lambda t: finished(
            t.run_dir(out), trial_spec(t, settings, out, is_recipe)))


def resolve(settings: BenchSettings) -> list[Entry]:
    """Check every method before anything runs: unknown names and options are errors; a method
    that cannot run here (its package missing) is kept as a skip line."""
    entries = []
    for spec in settings.specs():
        method = registry.get(spec.name)
        registry.check_options(spec, method)
        center = snap(registry.center_lr(spec, method, settings.centers, settings.mode))
        if method.build is None:
            _check_recipe(spec, settings)
        entries.append(Entry(spec, method, center, skipped=method.unavailable()))
    return entries


def meta_model(model: str):
    """The benchmark's model on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import config_for

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config_for(model))


def adamw_state_bytes(model: str) -> int:
    """AdamW's optimizer state for this model, from shapes (what an AdamW run measures)."""
    from .. import optim

    return sum(optim.create("adamw", meta_model(model)).planned_state_bytes().values())


def _check_recipe(spec: MethodSpec, settings: BenchSettings) -> None:
    """Build the recipe as the trainer will, on a meta-device model: bad options fail now."""
    import warnings

    from .. import optim
    from ..train.config import TrainConfig
    from ..train.setup import optimizer_kwargs

    kw = recipe_kwargs(spec, settings)
    config = TrainConfig(optimizer=spec.name, rank=kw["rank"], weight_decay=kw["weight_decay"],
                         optim_args=kw["options"])
    model = meta_model(settings.model)
    try:
        with warnings.catch_warnings():  # fallbacks (rank ≥ min(m, n)) show in the trial's log
            warnings.simplefilter("ignore")
            optim.create(spec.name, model, **optimizer_kwargs(config, model.config.hidden_size))
    except (ValueError, TypeError) as err:
        raise UserError(f"--methods {spec.text}: {first_line(err)}") from None


def _record(entry: Entry, trial: Trial, result: dict | None, out: Path, reused: bool) -> dict:
    if result is None:
        log = method_dir(out, entry.spec) / "log.txt"
        result = dict(status="failed", error=f"its worker process ended without a result; see {log}")
    record = dict(entry.describe(), stage=trial.stage, lr=trial.lr, seed=trial.seed, status=result["status"],
                  error=result["error"], wall_seconds=result.get("wall_seconds"), reused=reused,
                  run_dir=str(trial.run_dir(out).relative_to(out)), curve=result.get("curve", []))
    s = result.get("summary")
    if s:
        record.update(val_loss=s["val_loss"], val_ppl=s["val_ppl"], train_loss=s["train_loss"],
                      steps=s["steps"], tokens=s["tokens"], train_seconds=round(s["seconds"], 1),
                      tokens_per_s=round(s["tokens_per_s"], 1),
                      optimizer_ms_per_step=round(s["optimizer_ms_per_step"], 3), params=s["params"],
                      optimizer_state_bytes=s["optimizer_state_bytes"], weight_bytes=s["weight_bytes"],
                      gradient_bytes=s["gradient_bytes"], peak_memory_bytes=s["peak_memory_bytes"])
    return record


def _say(console: Console, trial: Trial, result: dict, count: str) -> None:
    what = f"{trial.spec.text} lr {trial.lr:g} seed {trial.seed}"
    if result["status"] == "ok":
        s = result["summary"]
        detail = (f"val ppl {s['val_ppl']:.2f} · {s['tokens_per_s']:,.0f} tokens/s · "
                  f"{result['wall_seconds']:.0f} s")
    else:
        detail = f"{result['status']}: {result['error']}"
    console.print(f"[{count}] {what}: {detail}")


def _launch(entry: Entry, settings: BenchSettings, out: Path) -> tuple[subprocess.Popen, Any]:
    folder = method_dir(out, entry.spec)
    folder.mkdir(parents=True, exist_ok=True)
    job = dict(settings=asdict(settings), method=entry.spec.text, center=entry.center, out=str(out))
    (folder / JOB_FILE).write_text(json.dumps(job, indent=1))
    log = open(folder / "log.txt", "a")
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads), PYTHONUNBUFFERED="1")
    # Its own session: a Ctrl-C in the terminal reaches this process only, which then stops it.
    proc = subprocess.Popen([sys.executable, "-m", "slimtrain.bench.worker", str(folder)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


def execute(entries: list[Entry], settings: BenchSettings, out: Path, console: Console) -> set[Path]:
    """Run the methods' workers, ``settings.jobs`` at a time, printing each trial as it finishes;
    returns the run directories of the trials that were reused."""
    per_method = settings.trials + len(settings.seeds) - 1  # the most a method runs (sweep.py)
    reused = {t.run_dir(out) for e in entries for t, r in e.trials(settings, out) if r is not None}
    # A recipe and its reference implementations next to each other in the queue: with two jobs they
    # run at the same time, so machine load hits their timings alike.
    groups = list(dict.fromkeys(registry.group(e.spec) for e in entries))
    ordered = sorted(entries, key=lambda e: groups.index(registry.group(e.spec)))
    # A method is done when its protocol asks for nothing more: its list ends with a finished trial.
    pending = deque(e for e in ordered if e.trials(settings, out)[-1][1] is None)
    if reused:
        console.print(f"reusing {len(reused)} finished trial(s) in {out}")
    total, reported = len(pending) * per_method, set(reused)
    running: dict[subprocess.Popen, tuple[Entry, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < settings.jobs:
                entry = pending.popleft()
                proc, log = _launch(entry, settings, out)
                running[proc] = (entry, log)
            time.sleep(0.5)
            for proc, (entry, log) in list(running.items()):
                ended = proc.poll() is not None
                for trial, result in entry.trials(settings, out):
                    if result is not None and trial.run_dir(out) not in reported:
                        reported.add(trial.run_dir(out))
                        _say(console, trial, result, f"{len(reported) - len(reused)}/≤{total}")
                if ended:
                    log.close()
                    del running[proc]
    finally:
        for proc, (_, log) in running.items():  # interrupted: stop our own workers
            proc.kill()
            proc.wait()
            log.close()
    return reused


def preflight(settings: BenchSettings, console: Console) -> None:
    """Corpus, tokenizer and model checked once, before any worker starts — a data mistake is one
    error, not a failed trial per method — and the token cache built, so workers only read it."""
    from ..train.config import TrainConfig
    from ..train.setup import prepare

    config = TrainConfig(model=settings.model, data=settings.data, tokenizer=settings.tokenizer,
                         text_field=settings.text_field, val_fraction=settings.val_fraction,
                         optimizer="adamw", steps=1, batch_size=settings.batch_size,
                         seq_len=settings.seq_len, precision=settings.precision,
                         seed=settings.seeds[0], threads=settings.threads).validate()
    prepare("pretrain", config, Path("."), None, say=console.print)  # writes nothing in the run directory


def run_bench(settings: BenchSettings, out: Path, console: Console) -> list[dict]:
    """The whole benchmark; returns one record per trial (and one per skipped method)."""
    settings.validate()
    entries = resolve(settings)
    preflight(settings, console)
    for e in entries:
        if e.skipped:
            console.print(f"skipping {e.spec.text}: {e.skipped}")
    runnable = [e for e in entries if not e.skipped]
    console.print(f"{len(runnable)} methods × at most {settings.trials} trials to choose an lr (a "
                  f"bracketed walk at seed {settings.seeds[0]}, two-seed means where seed noise decides), "
                  f"then the chosen lr at seed(s) {', '.join(map(str, settings.seeds))}: "
                  f"{settings.steps} steps of {settings.batch_size} × {settings.seq_len} tokens per trial; "
                  f"one process per method, {settings.jobs} at a time")
    reused = execute(runnable, settings, out, console)
    records = []
    for e in entries:
        if e.skipped:
            records.append(dict(e.describe(), status="skipped", error=e.skipped))
            continue
        known = e.trials(settings, out)
        records += [_record(e, t, r, out, t.run_dir(out) in reused) for t, r in known]
    return records
