"""One method's trials in one process: ``python -m slimtrain.bench.worker METHOD_DIR``.

Reads ``METHOD_DIR/job.json`` (written by the runner) and runs the method's trials
(``trials.method_trials``) in the order its protocol asks for them (``sweep.py``): the learning-rate
walk at the first seed, the noise check and reruns at the second, the chosen lr at every seed.
Each trial trains with the trainer (``train.session.run`` — the loop of ``slimtrain pretrain``, or
of ``slimtrain finetune`` when the model is a directory with weights;
other libraries' optimizers come in through its ``optimizer_factory``) and leaves ``spec.json``
and ``result.json`` (status ok / diverged / failed, the run's summary, its validation curve) in its
own directory. A process per method gives each
method its own peak-RSS figure and keeps one library's crash from taking the benchmark down;
trials that already finished with the same spec are reused. Checkpoints are deleted: a benchmark
keeps numbers, not weights.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .methods import Method, get
from .spec import BenchSettings, parse_method
from .trials import JOB_FILE, RESULT_FILE, SPEC_FILE, Trial, finished, method_trials, trial_spec


def _factory(spec: dict[str, Any], method: Method):
    """The optimizer factory of a method the benchmark builds, or None for a registry recipe."""
    if method.build is None:
        return None
    from ..train.setup import default_rank

    options = spec["options"]  # the method's own and the benchmark's (rank aside), see recipe_kwargs
    train = spec["train"]  # SophiaG's bs, as the trainer gives the recipe (train/setup.py)
    options = {"tokens_per_step": train["batch_size"] * train["seq_len"] * train.get("grad_accum", 1),
               **options}

    def build(model):
        rank = spec["rank"]
        if rank is None and method.default_rank is not None:
            rank = default_rank(method.default_rank, getattr(model.config, "hidden_size", 256))
        return method.build(model, spec["lr"], spec["weight_decay"], rank, options)

    return build


def _train(spec: dict[str, Any], run_dir: Path, method: Method) -> dict[str, Any]:
    from rich.console import Console

    from ..errors import UserError
    from ..train import Diverged, Interrupted, session
    from ..train.metrics import read_metrics

    result: dict[str, Any] = {"status": "ok", "error": None, "summary": None}
    try:
        result["summary"] = session.run(spec.get("kind", "pretrain"), dict(spec["train"]), None, None,
                                        Console(soft_wrap=True, highlight=False),
                                        optimizer_factory=_factory(spec, method))
    except Interrupted:
        raise SystemExit(130) from None  # stopped, not finished: no result, the next invocation redoes it
    except Diverged as err:
        result.update(status="diverged", error=str(err))
    except UserError as err:
        result.update(status="failed", error=str(err))
    except Exception as err:  # another library's bug must not end the benchmark
        traceback.print_exc()
        first_line = str(err).splitlines()[0][:200] if str(err) else ""
        result.update(status="failed", error=f"{type(err).__name__}: {first_line}".rstrip(": "))
    finally:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    result["curve"] = [[r["tokens"], r["val_loss"]] for r in read_metrics(run_dir) if "val_loss" in r]
    return result


def run_trial(trial: Trial, settings: BenchSettings, out: Path, method: Method) -> dict[str, Any]:
    run_dir = trial.run_dir(out)
    spec = trial_spec(trial, settings, out, method.build is None)
    done = finished(run_dir, spec)
    if done is not None:
        return done
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished attempt
    print(f"\n=== {trial.spec.text} · lr {trial.lr:g} · seed {trial.seed} ({trial.stage}) ===", flush=True)
    started = time.perf_counter()
    result = _train(spec, run_dir, method)  # the trainer creates run_dir (it must be new)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    run_dir.mkdir(parents=True, exist_ok=True)  # a run that failed early has none
    (run_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / RESULT_FILE)  # a result file is whole or absent
    return result


def main(method_dir: Path) -> None:
    job = json.loads((method_dir / JOB_FILE).read_text())
    settings, spec, out = BenchSettings(**job["settings"]), parse_method(job["method"]), Path(job["out"])
    method = get(spec.name)
    method_trials(spec, job["center"], settings, lambda trial: run_trial(trial, settings, out, method))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
