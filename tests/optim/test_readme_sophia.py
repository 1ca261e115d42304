"""The README's Sophia loop runs as written (on a tiny LLaMA) and feeds the curvature."""

import re
from pathlib import Path

import torch

import slimtrain.optim as so

from ..helpers import tiny_llama

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_sophia_loop_runs_and_estimates_the_curvature():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if 'so.create("sophia"' in b]
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    loader = [(ids, ids) for ids in (torch.randint(0, 256, (2, 16), generator=g) for _ in range(12))]
    scope = dict(so=so, torch=torch, model=model, loader=loader, tokens_per_step=32)
    exec(compile(code, "README.md", "exec"), scope)
    opt = scope["opt"]
    assert all(float(opt.state[p]["hessian"].abs().sum()) > 0 for p in model.parameters())
