"""Writes format1.pt: optimizer states in state format 1, saved by slimtrain at commit c29bd30
(before the house refactor), for ``test_state_format.py``. Not a test; run it against that
commit's sources once:

    git worktree add /tmp/old c29bd30
    PYTHONPATH=/tmp/old/src python tests/optim/data/make_format1.py tests/optim/data/format1.pt

For each case: the weights and the optimizer state after 3 steps, and the weights after 6 steps
of the same uninterrupted run (the expected result of resuming from step 3).
"""

import copy
import sys

import torch

import slimtrain.optim as so

CASES = {
    "galore-adafactor": dict(rank=3, refresh_every=2, beta1=0.9, rest="adafactor"),
    "natural-galore": dict(rank=3, refresh_every=2, history=3),
    "q-galore": dict(rank=3, refresh_every=2, lazy_queue=1),
    "galore-adamw8bit": dict(rank=3, refresh_every=2, quantize_min_numel=64),
    "galore-lion": dict(rank=3, refresh_every=2),
}
SHAPES = [("block.mlp.tall.weight", (24, 12)), ("block.mlp.wide.weight", (12, 24)),
          ("embed.weight", (40, 8)), ("norm.weight", (8,))]


def params():
    g = torch.Generator().manual_seed(0)
    return [(n, torch.nn.Parameter(torch.randn(*s, generator=g))) for n, s in SHAPES]


def grads(named, step):
    g = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        p.grad = torch.randn(p.shape, generator=g)


def main(out):
    torch.set_num_threads(1)  # as the tests run (the thread count changes the last bits)
    saved = {}
    for name, kwargs in CASES.items():
        named = params()
        opt = so.create(name, named, lr=1e-2, targets=r"\.mlp\.", **kwargs)
        for k in range(6):
            grads(named, k)
            opt.step()
            if k == 2:
                saved[name] = dict(weights=[p.detach().clone() for _, p in named],
                                   state=copy.deepcopy(opt.state_dict()), kwargs=kwargs)
        saved[name]["expected"] = [p.detach().clone() for _, p in named]
    torch.save(saved, out)


if __name__ == "__main__":
    main(sys.argv[1])
