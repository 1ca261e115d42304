"""Atomic publishing of what slimtrain caches (corpus, tokenizers, token files; the cache root is
``paths.cache_dir``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` (and the directories) to disk before it is published."""
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_temp_dir(final: Path) -> Path:
    """A fresh directory beside ``final`` (same file system, so the rename is atomic), named so
    that ``is_temp`` recognises it as an unfinished write."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def publish(tmp: Path, final: Path) -> None:
    """Make ``tmp`` visible as ``final`` in one step: a crash before the rename leaves only a temp
    directory (ignored and swept later); after it, ``final`` is complete. Never replaces ``final``."""
    fsync_tree(tmp)
    os.rename(tmp, final)  # fails on a non-empty existing ``final``: nothing is overwritten
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temps(directory: Path) -> None:
    """Remove unfinished writes left by a killed process."""
    if directory.is_dir():
        for p in directory.iterdir():
            if is_temp(p):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
