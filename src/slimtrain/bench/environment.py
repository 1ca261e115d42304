"""Where and with what a benchmark ran: package versions, the source revision, the machine and
how busy it was (timings on a shared machine mean little without the load average)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "tokenizers", "galore-torch", "fira", "apollo-torch", "torchao",
            "bitsandbytes", "peft")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("slimtrain",) + PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    revision = _git_revision()
    if revision:
        out["slimtrain"] += f" ({revision})"
    return out


def _git_revision() -> str | None:
    """The commit of a source checkout (editable installs), with '+changes' if the tree is dirty."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"git {head}{'+changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    import torch

    return dict(cpu=cpu, cores=os.cpu_count(), memory_bytes=memory, system=platform.platform(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def corpus(data: str | None, text_field: str) -> dict[str, str]:
    """The corpus a benchmark trains on: its name and the fingerprint the trainer keys its token
    cache, tokenizer and checkpoints by (``train.setup``), so a report names exactly the data its
    trials read: for ``--data``, ``data.fingerprint`` (the path, size and modification time of each
    file); for the embedded corpus, the sha256 of its text."""
    from ..data import default_corpus, fingerprint

    if data is None:
        embedded = default_corpus()
        return dict(name=f"the embedded corpus: {embedded.provenance}", fingerprint=embedded.sha256[:16],
                    fingerprint_of="the sha256 of its text")
    return dict(name=f"`{data}` (text field `{text_field}`)", fingerprint=fingerprint(Path(data)),
                fingerprint_of="the trainer's data fingerprint: the path, size and modification time of "
                               "each file")
