"""Where slimtrain keeps what it builds: one cache root for every package (data, kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$SLIMTRAIN_CACHE`` or ``$XDG_CACHE_HOME/slimtrain`` or ``~/.cache/slimtrain``."""
    root = os.environ.get("SLIMTRAIN_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimtrain"
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
