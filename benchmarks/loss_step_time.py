"""Forward + backward time of a whole model with the naive loss (transformers' own: the full
logits) and the chunked one (``--loss chunked``), interleaved in one process, medians.

    python benchmarks/loss_step_time.py [--presets tiny,small,60m] [--batch-size 8] [--seq-len 256]
                                        [--threads 1] [--rounds 6] [--device cpu]

Both copies of the model start from the same weights and see the same batch; the first round is
not timed (allocation, autograd's thread). Printed per preset: the medians and their ratio
(chunked / naive: below 1 is faster) — what ``--loss auto`` is decided by.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from slimtrain.activations import use_chunked_loss
from slimtrain.models import build_model


def time_preset(preset: str, batch: int, seq: int, rounds: int, device: str) -> tuple[float, float]:
    naive = build_model(preset, 0).to(device)
    chunked = use_chunked_loss(copy.deepcopy(naive))
    ids = torch.randint(0, naive.config.vocab_size, (batch, seq),
                        generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[str, list[float]] = {"naive": [], "chunked": []}
    for r in range(rounds):
        for name, model in (("naive", naive), ("chunked", chunked)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    return statistics.median(times["naive"]), statistics.median(times["chunked"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,60m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size} × {args.seq_len}, {args.threads} thread(s), {args.device}, "
          f"median of {args.rounds - 1}\n")
    print("| preset | vocabulary | naive s | chunked s | chunked / naive |")
    print("|---|---|---|---|---|")
    for preset in args.presets.split(","):
        n, c = time_preset(preset, args.batch_size, args.seq_len, args.rounds, args.device)
        vocab = build_model(preset, 0).config.vocab_size
        print(f"| {preset} | {vocab:,} | {n:.3f} | {c:.3f} | {c / n:.3f} |", flush=True)


if __name__ == "__main__":
    main()
