"""Warnings that point at the user's line, not at slimtrain's or torch's internals."""

from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    frame = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
