"""Every contract case (every registered recipe and its variants) trained layer-wise equals its
ordinary training: bitwise without accumulation and wherever every gradient accumulates in full
(APOLLO, Fira, FRUGAL read G at the step); to float rounding where projected matrices sum their
micro-batches' projected gradients."""

import pytest
import torch

import slimtrain.optim as so

from ..helpers import quiet
from .cases import CASES
from .test_contract import named_params

STEPS = 4  # refresh_every=3 in the cases: steps 0 and 3 refresh, 1 and 2 accumulate R


def gradients(named, step: int, micro: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + 10 * step + micro)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for _, p in named]


def run(case, fused: bool, grad_accum: int, corrupt=None):
    """Train through autograd: the loss Σ⟨p, G⟩ has gradient G for every parameter."""
    named = named_params()
    opt = case.build(named)
    handle = None
    if fused:
        handle = quiet(so.fuse_backward, torch.nn.ParameterList([p for _, p in named]), opt,
                       grad_accum=grad_accum)
    for step in range(STEPS):
        for micro in range(grad_accum):
            grads = gradients(named, step, micro)
            if corrupt is not None:
                corrupt(step, micro, grads)
            sum((p * g).sum() for (_, p), g in zip(named, grads)).div(grad_accum).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for _, p in named], opt, handle


def _low_rank_somewhere(opt) -> bool:
    return any(opt.takes_low_rank(g, p) for g in opt.param_groups for p in g["params"])


def assert_same(case, expected, got, exact: bool) -> None:
    if exact:
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
        return
    # natural-galore's s×s Woodbury solve magnifies rounding; the others stay within 1e-6
    tol = 1e-4 if case.name == "natural-galore" else 1e-6
    for a, b in zip(expected, got):
        assert ((a - b).abs().max() / a.abs().max()).item() <= tol


# Sophia reads an input at its step (the curvature estimate), which layer-wise updates, done
# inside backward, cannot take: fuse_backward refuses it (test_sophia.py); so does GradNormLoRP,
# whose magnitudes need each whole gradient (test_matrix_parity.py)
LAYERWISE = [c for c in CASES if c.name not in ("sophia", "gradnorm-lorp")]


@pytest.fixture(params=LAYERWISE, ids=[f"{c.name}-{i}" for i, c in enumerate(LAYERWISE)])
def case(request):
    return request.param


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_every_recipe_fused_equals_ordinary(case, grad_accum):
    expected, _, _ = quiet(run, case, False, grad_accum)
    got, opt, handle = quiet(run, case, True, grad_accum)
    assert_same(case, expected, got, exact=grad_accum == 1 or not _low_rank_somewhere(opt))
    assert handle.grad_norm == pytest.approx(opt.grad_norm) and handle.grad_norm > 0


def test_nonfinite_micro_batch_skips_like_ordinary(case):
    """A NaN in one micro-batch of one matrix: the accumulated gradient is NaN, so that matrix's
    update is skipped (with a warning) and nothing else changes — as in ordinary training."""
    def corrupt(step, micro, grads):
        if step == 1 and micro == 1:
            grads[0][0, 0] = float("nan")  # block.mlp.tall.weight, a projected matrix

    expected, _, _ = quiet(run, case, False, 2, corrupt)
    with pytest.warns(UserWarning, match="NaN/Inf"):
        got, opt, handle = run(case, True, 2, corrupt)
    assert_same(case, expected, got, exact=not _low_rank_somewhere(opt))
    assert torch.isfinite(torch.tensor(handle.grad_norm))
