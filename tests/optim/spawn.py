"""Start two worker processes for a multi-process test, and never leave one behind."""

from __future__ import annotations

import socket
import time

import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(target, out_dir: str, timeout: float) -> None:
    """``target(rank, port, out_dir)`` on WORLD processes; on failure or timeout every child is
    killed before raising, so a failing test cannot hang CI."""
    context = mp.start_processes(target, args=(free_port(), out_dir), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not finish within {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
