"""Run records: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard when installed,
and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from .._warnings import warn
from ..paths import write_text_atomic

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory allocated by torch, or on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _strict(value: Any) -> Any:
    """NaN and ±inf as null: strict JSON readers reject the bare NaN that json.dumps writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(record: dict[str, Any]) -> str:
    return json.dumps({k: _strict(v) for k, v in record.items()}, allow_nan=False)


class MetricsLog:
    """``metrics.jsonl``, appended one line per logged step. On resume the lines past the
    checkpoint (steps about to be redone) are dropped by writing the kept ones to a temporary file
    and renaming it over the log: a kill at any moment leaves the old log or the new one."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(dumps(r) + "\n" for r in kept))
        else:
            write_text_atomic(self.path, "")
        self._file = open(self.path, "a")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            pass
        else:
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A line that is not a JSON object (the partial last line of
    a process killed mid-write, or a damaged one) is dropped with a warning."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    records, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        warn(f"{path}: dropped {len(bad)} line(s) that are not whole JSON records (line "
             f"{', '.join(map(str, bad[:3]))}; a process killed while writing leaves a partial one)")
    return records


def plot_losses(run_dir: Path, title: str) -> Path | None:
    """Training and validation loss against tokens seen, as ``loss.png``."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    train = [r for r in records if r.get("loss") is not None]
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", lw=1.5, ms=4,
                label="validation loss")
        best = min(r["val_loss"] for r in val)
        ax.set_title(f"{title}\nfinal validation perplexity {perplexity(val[-1]['val_loss']):.1f} "
                     f"(best {perplexity(best):.1f})", fontsize=10)
    else:
        ax.set_title(title, fontsize=10)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    tmp = run_dir / f".{PLOT_FILE}.tmp.png"
    fig.savefig(tmp)  # then renamed: a kill mid-write never leaves a broken plot
    plt.close(fig)
    tmp.replace(path)
    return path


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows (a diverged run's loss of 1000 has no finite perplexity)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
