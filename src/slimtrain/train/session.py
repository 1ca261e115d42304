"""One invocation of ``slimtrain pretrain`` / ``finetune``: resolve settings, prepare the run
directory, train, report. The CLI is a thin layer over ``run``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from ..errors import UserError, first_line
from ..memory.units import mib
from ..paths import write_text_atomic
from . import checkpoint, distributed
from .config import load_run_config, merge_resume, read_config_file, resolve, save_config
from .loop import train
from .setup import OptimizerFactory, default_run_dir, prepare

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def _settings(kind: str, flags: dict[str, Any], config_file: str | None, resume: str | None):
    if resume is None:
        file_values = read_config_file(config_file) if config_file else {}
        config = resolve(kind, file_values, flags)
        run_dir = Path(config.out) if config.out else default_run_dir(kind, config)
        return config, run_dir, None
    run_dir = Path(resume)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"--resume {resume}: not a slimtrain run directory (no {CONFIG_FILE}); pass "
                        "the --out directory of an earlier run")
    if config_file:
        raise UserError("--config cannot be combined with --resume: a resumed run keeps its own "
                        f"settings ({run_dir / CONFIG_FILE})")
    if flags.get("out") and Path(flags["out"]).resolve() != run_dir.resolve():
        raise UserError("--out cannot differ from --resume: a resumed run continues in its own directory")
    try:
        saved_kind, saved = load_run_config(run_dir / CONFIG_FILE)
    except yaml.YAMLError as err:  # read_config_file reports its own; a broken file before it
        raise UserError(f"{run_dir / CONFIG_FILE} is not valid YAML ({first_line(err)})") from None
    if saved_kind != kind:
        raise UserError(f"{resume} is a {saved_kind} run; resume it with `slimtrain {saved_kind} --resume`")
    return merge_resume(saved, flags), run_dir, run_dir


def _check_run_dir(run_dir: Path) -> None:
    """A new run writes only into a new or empty directory: never over the user's own files, and
    never where it could not write (a file, a path under a file, a read-only directory)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == run_dir else f"lies under {path}, which is a file"
            raise UserError(f"--out {run_dir} {where}; pass a directory")
        if path.exists():
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"--out {run_dir}: {path} is not writable; choose a directory you "
                                "can write to")
            break
    if checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds checkpoints of another run; continue it with "
                        f"--resume {run_dir}, or pass a new --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        names = sorted(p.name for p in run_dir.iterdir())
        shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
        raise UserError(f"--out {run_dir} is not empty ({shown}) and holds no checkpoint to resume; "
                        "choose a new directory, or empty this one (nothing is overwritten)")


def _check_flags_apply(config, flags: dict[str, Any]) -> None:
    """A flag that does not apply to the input is a mistake to say, not to ignore."""
    from ..data.sources import data_format

    if flags.get("text_field") is not None and config.data is not None and \
            data_format(Path(config.data)) == "text":
        raise UserError(f"--text-field names a JSONL field or dataset column, but {config.data} is "
                        "plain text (every line is text); drop --text-field")
    if flags.get("fused_refresh_from") is not None and not config.fused_backward:
        raise UserError("--fused-refresh-from applies to layer-wise updates: add --fused-backward "
                        "or drop it")


def run(kind: str, flags: dict[str, Any], config_file: str | None, resume: str | None,
        console: Console, optimizer_factory: OptimizerFactory | None = None,
        allow_data_change: bool = False) -> dict[str, Any]:
    """``optimizer_factory``: see ``setup.prepare`` (the benchmark trains other libraries'
    optimizers through it). ``allow_data_change``: resume on data that changed since the
    checkpoint (refused otherwise)."""
    if allow_data_change and resume is None:
        raise UserError("--allow-data-change applies to --resume (a new run reads its data as it is)")
    config, run_dir, resume_dir = _settings(kind, flags, config_file, resume)
    launching = config.nproc > 1 and not distributed.in_torchrun()
    if resume_dir is None and (launching or not distributed.in_torchrun()
                               or os.environ.get("RANK") == "0"):
        _check_run_dir(run_dir)  # once, before any rank writes
        _check_flags_apply(config, flags)
    if launching:  # torchrun's launcher runs the workers; this process only waits for them
        if optimizer_factory is not None:
            raise UserError("an optimizer factory runs in one process; drop --nproc")
        code = distributed.launch(config.nproc, distributed.reexec_argv(
            kind, flags, config_file, resume, allow_data_change))
        if code:
            raise JobFailed(code)
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    d = distributed.setup(config.parallel, config.nproc, config.device)
    try:
        return _run(kind, config, run_dir, resume_dir, console, optimizer_factory,
                    allow_data_change, d)
    finally:
        distributed.teardown(d)


class JobFailed(Exception):
    """A multi-process job ended with a worker's non-zero exit code (its message is printed)."""

    def __init__(self, code: int):
        super().__init__(f"a worker exited with code {code}")
        self.code = code


def _run(kind, config, run_dir, resume_dir, console, optimizer_factory, allow_data_change, ranks):
    if ranks is not None:
        config.nproc = ranks.world
        if not ranks.main:
            console = Console(file=open(os.devnull, "w"))
    # all user errors surface here
    r = prepare(kind, config, run_dir, resume_dir, say=console.print, optimizer_factory=optimizer_factory,
                allow_data_change=allow_data_change, dist=ranks)
    if r.step >= config.steps:
        raise UserError(f"the run in {run_dir} already finished its {config.steps} steps; start a new "
                        "run with --out to train further")
    main = ranks is None or ranks.main
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {run_dir}: cannot create it ({first_line(err)}); choose a directory "
                        "you can write to") from None
    if main:
        checkpoint.sweep_unfinished(run_dir)
    if resume_dir is None and main:
        save_config(config, kind, run_dir / CONFIG_FILE)
    elif resume_dir is not None:
        console.print(f"resuming from {r.resumed_from} (step {r.step}, {r.tokens:,} tokens)")
    d = r.describe
    console.print(f"model: {d['model']} ({d['params'] / 1e6:.2f}M parameters) · optimizer {d['optimizer']} "
                  f"(peak lr {d['lr']:g}) · {config.steps} steps × "
                  f"{f'{ranks.world} ranks × ' if ranks else ''}{config.grad_accum * config.batch_size} "
                  f"× {config.seq_len} tokens · {d['device']}, {d['precision']}, {config.threads} "
                  f"thread{'s' if config.threads != 1 else ''}"
                  f"{' · layer-wise updates' if config.fused_backward else ''}"
                  f"{f' · {ranks.world} ranks ({ranks.parallel}, {ranks.backend})' if ranks else ''}")
    console.print(f"run directory: {run_dir}")
    summary = train(r, console)
    summary.update(kind=kind, model=config.model, optimizer=config.optimizer, run_dir=str(run_dir),
                   ranks=1 if ranks is None else ranks.world)
    if main:
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(_strict(summary), indent=1,
                                                             allow_nan=False))
    console.print(summary_table(summary))
    return summary


def summary_table(s: dict[str, Any]) -> Table:
    minutes, seconds = divmod(round(s["seconds"]), 60)
    ratio = s["optimizer_state_bytes"] / s["adamw_state_bytes"]
    each = " (per rank)" if s.get("ranks", 1) > 1 else ""  # memory figures are one rank's
    rows = [
        ("model", f"{s['model']}, {s['params'] / 1e6:.2f}M parameters"),
        ("steps · tokens", f"{s['steps']:,} · {s['tokens']:,}"),
        ("training time", f"{minutes}m {seconds:02d}s ({s['tokens_per_s']:,.0f} tokens/s)"),
        ("train loss (last step)", f"{s['train_loss']:.3f}"),
        ("validation loss", f"{s['val_loss']:.3f}"),
        ("validation perplexity", f"{s['val_ppl']:.1f}" if s["val_ppl"] is not None
         and math.isfinite(s["val_ppl"]) else "inf"),
        ("weights" + each, mib(s["weight_bytes"])),
        ("gradients" + each, mib(s["gradient_bytes"]) if s.get("gradient_bytes") is not None
         else "-"),
        ("optimizer state" + each, f"{mib(s['optimizer_state_bytes'])} ({ratio:.2f}× AdamW's "
                            f"{mib(s['adamw_state_bytes'])})"),
        (f"peak memory ({'GPU' if s['device'].startswith('cuda') else 'process RSS'}"
         f"{', largest rank' if each else ''})",
         mib(s["peak_memory_bytes"])),
        ("run directory", s["run_dir"]),
    ]
    table = Table(title=f"{s['kind']} · {s['optimizer']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # long paths wrap instead of being cut
    for row in rows:
        table.add_row(*row)
    return table


def _strict(summary: dict[str, Any]) -> dict[str, Any]:
    """NaN and ±inf as null (strict JSON readers reject bare NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
