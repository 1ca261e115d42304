"""One invocation of ``slimtrain pretrain`` / ``finetune``: resolve settings, prepare the run
directory, train, report. The CLI is a thin layer over ``run``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..memory.units import mib
from . import checkpoint
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
    except Exception as err:  # a hand-edited or foreign file
        raise UserError(f"{run_dir / CONFIG_FILE} is not a slimtrain run config ({err})") from None
    if saved_kind != kind:
        raise UserError(f"{resume} is a {saved_kind} run; resume it with `slimtrain {saved_kind} --resume`")
    return merge_resume(saved, flags), run_dir, run_dir


def run(kind: str, flags: dict[str, Any], config_file: str | None, resume: str | None,
        console: Console, optimizer_factory: OptimizerFactory | None = None) -> dict[str, Any]:
    """``optimizer_factory``: see ``setup.prepare`` (the benchmark trains other libraries'
    optimizers through it)."""
    config, run_dir, resume_dir = _settings(kind, flags, config_file, resume)
    if resume_dir is None and checkpoint.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds checkpoints of another run; continue it with "
                        f"--resume {run_dir}, or pass a new --out")
    # all user errors surface here
    r = prepare(kind, config, run_dir, resume_dir, say=console.print, optimizer_factory=optimizer_factory)
    if r.step >= config.steps:
        raise UserError(f"the run in {run_dir} already finished its {config.steps} steps; start a new "
                        "run with --out to train further")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.sweep_unfinished(run_dir)
    if resume_dir is None:
        save_config(config, kind, run_dir / CONFIG_FILE)
    else:
        console.print(f"resuming from {r.resumed_from} (step {r.step}, {r.tokens:,} tokens)")
    d = r.describe
    console.print(f"model: {d['model']} ({d['params'] / 1e6:.2f}M parameters) · optimizer {d['optimizer']} "
                  f"(peak lr {d['lr']:g}) · {config.steps} steps × {config.grad_accum * config.batch_size} "
                  f"× {config.seq_len} tokens · {d['device']}, {d['precision']}, {config.threads} "
                  f"thread{'s' if config.threads != 1 else ''}"
                  f"{' · layer-wise updates' if config.fused_backward else ''}")
    console.print(f"run directory: {run_dir}")
    summary = train(r, console)
    summary.update(kind=kind, model=config.model, optimizer=config.optimizer, run_dir=str(run_dir))
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    console.print(summary_table(summary))
    return summary


def summary_table(s: dict[str, Any]) -> Table:
    minutes, seconds = divmod(round(s["seconds"]), 60)
    ratio = s["optimizer_state_bytes"] / s["adamw_state_bytes"]
    rows = [
        ("model", f"{s['model']}, {s['params'] / 1e6:.2f}M parameters"),
        ("steps · tokens", f"{s['steps']:,} · {s['tokens']:,}"),
        ("training time", f"{minutes}m {seconds:02d}s ({s['tokens_per_s']:,.0f} tokens/s)"),
        ("train loss (last step)", f"{s['train_loss']:.3f}"),
        ("validation loss", f"{s['val_loss']:.3f}"),
        ("validation perplexity", f"{s['val_ppl']:.1f}" if math.isfinite(s["val_ppl"]) else "–"),
        ("weights", mib(s["weight_bytes"])),
        ("optimizer state", f"{mib(s['optimizer_state_bytes'])} ({ratio:.2f}× AdamW's "
                            f"{mib(s['adamw_state_bytes'])})"),
        ("peak memory (GPU)" if s["device"].startswith("cuda") else "peak memory (process RSS)",
         mib(s["peak_memory_bytes"])),
        ("run directory", s["run_dir"]),
    ]
    table = Table(title=f"{s['kind']} · {s['optimizer']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # long paths wrap instead of being cut
    for row in rows:
        table.add_row(*row)
    return table
