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

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory allocated by torch, or on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            # Lines past the checkpoint belong to steps that are about to be redone.
            kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        else:
            self.path.write_text("")
        self._file = open(self.path, "a")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            pass
        else:
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(run_dir: Path, title: str) -> Path | None:
    """Training and validation loss against tokens seen, as ``loss.png``."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot([r["tokens"] for r in records], [r["loss"] for r in records], lw=1, label="train loss")
    val = [r for r in records if "val_loss" in r]
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", lw=1.5, ms=4,
                label="validation loss")
        best = min(r["val_loss"] for r in val)
        ax.set_title(f"{title}\nfinal validation perplexity {math.exp(val[-1]['val_loss']):.1f} "
                     f"(best {math.exp(best):.1f})", fontsize=10)
    else:
        ax.set_title(title, fontsize=10)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    fig.savefig(path)
    plt.close(fig)
    return path
