"""Known start-up messages of optional peer libraries, hidden on the command line.

``transformers`` imports torchao and bitsandbytes whenever they are installed (they are our
test-only peers), and on a machine without their GPU builds or the ``kernels`` package they log
warnings about it; torch logs a deprecation about an Enum torchao registers. None of it concerns
what the user asked slimtrain to do. Only these exact messages, from these loggers, are dropped —
every other record (and every Python warning, slimtrain's included) still prints.
SLIMTRAIN_PEER_LOGS=1 shows them again."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# logger name → the beginnings of the messages it logs that we hide
KNOWN = {
    "torchao": ("Failed to load ",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
}


class _DropKnown(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        # record.msg is the unformatted template: the torch one starts with its "%s"
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


@contextlib.contextmanager
def quiet_peer_logs() -> Iterator[None]:
    """While active, the KNOWN messages are dropped (filters on their own loggers)."""
    if os.environ.get("SLIMTRAIN_PEER_LOGS"):
        yield
        return
    added = [(logging.getLogger(name), _DropKnown(prefixes)) for name, prefixes in KNOWN.items()]
    for logger, dropper in added:
        logger.addFilter(dropper)
    try:
        yield
    finally:
        for logger, dropper in added:
            logger.removeFilter(dropper)
