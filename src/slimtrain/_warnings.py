"""Warnings that point at the user's line, not at slimtrain's or torch's internals."""

from __future__ import annotations

import os
import sys
import warnings

def _package_dir(name: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return None if spec is None or not spec.origin else os.path.dirname(os.path.abspath(spec.origin))


# slimtrain and the libraries that call it (torch's autograd hooks, the CLI's typer/click, the
# Hugging Face Trainer): a warning points at the first frame outside them — the user's call.
_INTERNAL = tuple(d for d in [os.path.dirname(os.path.abspath(__file__))] + [
    _package_dir(name) for name in ("torch", "typer", "click", "transformers", "accelerate")] if d)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    frame = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
