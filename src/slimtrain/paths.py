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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file in the same directory and a rename: a crash at any
    moment leaves the old file or the new one, never a truncated one."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
