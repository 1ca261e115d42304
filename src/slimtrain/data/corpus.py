"""The embedded default corpus: the Python standard library's own sources and docstrings.

Real human-written text (code, comments, docstrings) that ships with the interpreter running
slimtrain, so it exists on every machine with no download. Built deterministically (files in sorted
order, test suites and installed third-party packages left out), written once as JSONL (one file per
document, ``{"source": …, "text": …}``) into the cache, and read by the ordinary JSONL path.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .._warnings import warn
from ..errors import UserError
from ..paths import cache_dir
from .cache import new_temp_dir, publish

# Test suites are mostly synthetic strings and generated data; installed packages differ by machine.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
BUILD_VERSION = 1  # bump when the selection rules change, so caches rebuild


@dataclass(frozen=True)
class Corpus:
    path: Path          # the JSONL file
    files: int
    bytes: int
    sha256: str
    provenance: str

    def describe(self) -> str:
        return (f"{self.provenance}: {self.files:,} files, {self.bytes / 1e6:.1f} MB of text "
                f"(sha256 {self.sha256[:12]}), cached at {self.path}")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _whole(root: Path) -> bool:
    """meta.json readable and corpus.jsonl the bytes it describes (a 12 MB read: milliseconds)."""
    try:
        meta = json.loads((root / "meta.json").read_text())
        return hashlib.sha256((root / "corpus.jsonl").read_bytes()).hexdigest() == meta["sha256"]
    except (OSError, ValueError, KeyError):
        return False


def default_corpus() -> Corpus:
    """The cached corpus for this interpreter, building it on first use (a second or two)."""
    root = stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise UserError(f"no Python sources under {root}; this interpreter ships without "
                                "its standard library sources, so pass --data")
    # The cache key covers the interpreter and the file list with sizes, so another Python (or an
    # upgraded one) gets its own corpus.
    key = hashlib.sha256(f"{BUILD_VERSION}\0{root}\0{platform.python_version()}".encode())
    for f in files:
        key.update(f"{f.relative_to(root)}\0{f.stat().st_size}\n".encode())
    name = f"python-{platform.python_version()}-stdlib-{key.hexdigest()[:12]}"
    final = cache_dir("corpus") / name
    if final.exists() and not _whole(final):
        warn(f"the cached corpus in {final} is damaged (its sha256 does not match meta.json); "
             "building it again")
        shutil.rmtree(final, ignore_errors=True)
    if not final.exists():  # published atomically: if it exists, it was complete
        tmp = new_temp_dir(final)
        digest, total = hashlib.sha256(), 0
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as out:
            for f in files:
                text = f.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
                line = json.dumps({"source": f"Lib/{f.relative_to(root).as_posix()}", "text": text},
                                  ensure_ascii=False) + "\n"
                out.write(line)
                digest.update(line.encode())
                total += len(text.encode())
        meta = dict(files=len(files), bytes=total, sha256=digest.hexdigest(),
                    provenance=f"Python {platform.python_version()} standard library sources ({root})")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            publish(tmp, final)
        except OSError:  # another process published the same corpus first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    return Corpus(path=final / "corpus.jsonl", **meta)
