"""Trials — one method at one learning rate and seed — and what both the runner (parent process)
and the worker (one process per method) need to agree on: where a trial lives, what its
``spec.json`` says, when a finished one can be reused, and which trials a method runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import BenchSettings, MethodSpec
from .sweep import Protocol, Results

SPEC_FILE = "spec.json"      # a trial's settings, written before it runs
RESULT_FILE = "result.json"  # its outcome, written (whole) when it ends
JOB_FILE = "job.json"        # a method's job: the settings and the method, for its worker process
RUNS_DIR = "runs"


@dataclass(frozen=True)
class Trial:
    spec: MethodSpec
    lr: float
    seed: int
    stage: str  # "sweep" (the walk at the first seed), "noise" (its reruns at the second seed) or
    #             "seed" (the chosen lr at another seed); see sweep.py

    def run_dir(self, out: Path) -> Path:
        return method_dir(out, self.spec) / f"lr-{self.lr:g}-seed-{self.seed}"


def method_dir(out: Path, spec: MethodSpec) -> Path:
    return out / RUNS_DIR / spec.slug


# Method options that are the trainer's, not the optimizer's: galore-adamw:fused_backward=true.
TRAINER_OPTIONS = ("fused_backward",)


def recipe_kwargs(spec: MethodSpec, settings: BenchSettings) -> dict[str, Any]:
    """The method's options, with the benchmark's rank and refresh period added where the method
    takes them (its own ``rank=`` / ``refresh_every=`` win), and the benchmark's weight decay."""
    from .methods import accepts, get

    method = get(spec.name)
    options = {k: v for k, v in spec.options if k != "lr" and k not in TRAINER_OPTIONS}
    if settings.refresh_every is not None and accepts(method, "refresh_every"):
        options.setdefault("refresh_every", settings.refresh_every)
    rank = options.pop("rank", settings.rank if accepts(method, "rank") else None)
    return dict(options=options, rank=rank, weight_decay=settings.weight_decay)


def trial_spec(trial: Trial, settings: BenchSettings, out: Path, is_recipe: bool) -> dict[str, Any]:
    """The trial's ``spec.json``: the trainer's settings, and the arguments a built method gets."""
    train = dict(model=settings.model, data=settings.data, tokenizer=settings.tokenizer,
                 text_field=settings.text_field, val_fraction=settings.val_fraction,
                 optimizer=trial.spec.name, lr=trial.lr,
                 steps=settings.steps, batch_size=settings.batch_size, seq_len=settings.seq_len,
                 precision=settings.precision, eval_every=settings.eval_every,
                 eval_batches=settings.eval_batches, log_every=max(1, settings.eval_every // 2),
                 save_every=settings.steps, keep_last=1, seed=trial.seed, threads=settings.threads,
                 out=str(trial.run_dir(out)), **{k: v for k, v in trial.spec.options if k in TRAINER_OPTIONS})
    if settings.prompt_field is not None:
        train["prompt_field"] = settings.prompt_field
    kw = recipe_kwargs(trial.spec, settings)
    if is_recipe:  # a registry recipe: exactly what `slimtrain pretrain` would run
        train.update(rank=kw["rank"], weight_decay=kw["weight_decay"], optim_args=kw["options"])
    spec = dict(method=trial.spec.name, options=kw["options"], lr=trial.lr, seed=trial.seed,
                stage=trial.stage, rank=kw["rank"], weight_decay=kw["weight_decay"], train=train)
    if settings.mode == "finetune":  # (pretraining specs keep their keys: finished trials are reused)
        spec["kind"] = "finetune"
    return spec


def finished(run_dir: Path, spec: dict[str, Any]) -> dict | None:
    """The result of a trial that already ran with exactly this spec, or None."""
    try:
        if json.loads((run_dir / SPEC_FILE).read_text()) == spec:
            return json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        pass
    return None


def final_loss(result: dict[str, Any]) -> float | None:
    """A finished trial's final validation loss; None if it diverged or failed."""
    return result["summary"]["val_loss"] if result["status"] == "ok" else None


def protocol(settings: BenchSettings) -> Protocol:
    return Protocol(settings.trials, tuple(settings.seeds))


def method_trials(spec: MethodSpec, center: float, settings: BenchSettings,
                  result_of: Callable[[Trial], dict | None]) -> list[tuple[Trial, dict | None]]:
    """A method's trials in order with their results, as the protocol (``sweep.py``) asks for them
    from the results so far. ``result_of`` runs a trial (the worker) or looks its result up (the
    runner: None while it has not finished, which ends the list there)."""
    rules = protocol(settings)
    known: list[tuple[Trial, dict | None]] = []
    results: Results = {}
    while (step := rules.next_trial(results, center)) is not None:
        trial = Trial(spec, step.lr, step.seed, step.stage)
        result = result_of(trial)
        known.append((trial, result))
        if result is None:
            return known
        results[(step.lr, step.seed)] = final_loss(result)
    return known
