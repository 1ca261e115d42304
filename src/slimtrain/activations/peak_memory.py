"""Peak extra memory of one forward + backward of an LM-head loss, measured in a fresh process.

    MALLOC_MMAP_THRESHOLD_=65536 python -m slimtrain.activations.peak_memory chunked \
        [--tokens 4096] [--vocab 32000] [--dim 128] [--dtype float32] [--device cpu]

prints one JSON line: ``peak_extra_bytes`` (peak over the memory held just before the loss),
``seconds`` (the forward + backward) and ``loss``. Variants: ``naive``
(``F.cross_entropy(hidden @ weight.T)``), ``chunked`` (``linear_cross_entropy``) and ``cce``
(cut-cross-entropy). On CUDA the figure is the allocator's peak; on CPU torch keeps no such count,
so it is the process's peak resident set (VmHWM, reset after a small warm-up run and the inputs are
allocated: ``slimtrain.memory.measure``'s readers) over its resident set then. That needs glibc to
hand freed tensors back to the system, which ``MALLOC_MMAP_THRESHOLD_=65536`` makes it do (every
tensor over 64 KiB gets its own mapping); ``run_isolated`` sets it. The figure includes the
gradients of hidden and weight, which every variant allocates alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ..memory.measure import peak_rss_bytes, reset_peak_rss

VARIANTS = ("naive", "chunked", "cce")


def _loss(variant, hidden, weight, labels):
    if variant == "naive":
        return F.cross_entropy((hidden @ weight.T).float(), labels)
    from .linear_ce import linear_cross_entropy
    return linear_cross_entropy(hidden, weight, labels,
                                backend="slimtrain" if variant == "chunked" else "cce")


def measure(variant: str, tokens: int, vocab: int, dim: int, dtype: torch.dtype,
            device: str = "cpu", seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def inputs(n):
        h = torch.randn(n, dim, generator=gen).to(device, dtype).requires_grad_()
        w = (torch.randn(vocab, dim, generator=gen) / dim**0.5).to(device, dtype).requires_grad_()
        return h, w, torch.randint(0, vocab, (n,), generator=gen).to(device)

    _loss(variant, *inputs(64)).backward()  # libraries, autograd's thread, compilation (cce)
    hidden, weight, labels = inputs(tokens)
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()  # where it cannot, the peak so far stands in (an under-estimate)
        before = peak_rss_bytes()  # right after the reset: the resident set now
    start = time.perf_counter()
    loss = _loss(variant, hidden, weight, labels)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {"variant": variant, "tokens": tokens, "vocab": vocab, "dim": dim,
            "dtype": str(dtype).removeprefix("torch."), "device": device,
            "peak_extra_bytes": None if peak is None or before is None else peak - before,
            "seconds": seconds, "loss": loss.item()}


def command(variant: str, tokens: int, vocab: int, dim: int, dtype: str = "float32",
            device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "slimtrain.activations.peak_memory", variant,
            f"--tokens={tokens}", f"--vocab={vocab}", f"--dim={dim}", f"--dtype={dtype}",
            f"--device={device}"]


def run_isolated(variants, tokens: int, vocab: int, dim: int, dtype: str = "float32",
                 device: str = "cpu", parallel: bool = False, timeout: float = 600) -> list[dict]:
    """``measure`` each variant in its own fresh process (all at once when ``parallel``: each
    process's peak is its own); returns their JSON records in order."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmds = [command(v, tokens, vocab, dim, dtype, device) for v in variants]
    results = []
    if parallel:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for c in cmds]
        outs = [p.communicate(timeout=timeout) + (p.returncode,) for p in procs]
    else:
        outs = []
        for c in cmds:
            p = subprocess.run(c, env=env, capture_output=True, text=True, timeout=timeout)
            outs.append((p.stdout, p.stderr, p.returncode))
    for variant, (out, err, code) in zip(variants, outs):
        if code != 0:
            raise RuntimeError(f"measuring {variant} failed ({code}):\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(json.dumps(measure(args.variant, args.tokens, args.vocab, args.dim,
                             getattr(torch, args.dtype), args.device)))


if __name__ == "__main__":
    main()
