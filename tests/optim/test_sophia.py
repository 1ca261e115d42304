"""SophiaG's curvature channel: the estimate handed to step() updates H before that step, a
checkpoint taken between estimates resumes bit for bit, layer-wise updates refuse it in one line.
The trainer's own estimate: tests/train/test_sophia_trainer.py."""

import io

import pytest
import torch

import slimtrain.optim as so

from .test_contract import named_params, set_grads


def estimates(named, k):
    g = torch.Generator().manual_seed(5000 + k)
    return {p: torch.randn(p.shape, generator=g) for _, p in named}


def run(named, start, stop, opt, every=3):
    for k in range(start, stop):
        set_grads(named, k)
        opt.step(**({"hessian_grads": estimates(named, k)} if k % every == 0 else {}))
    return opt


def test_resume_across_estimates_is_bit_identical():
    named = named_params()
    run(named, 0, 10, so.create("sophia", named, lr=1e-2))
    expected = [p.detach().clone() for _, p in named]
    named = named_params()
    first = run(named, 0, 4, so.create("sophia", named, lr=1e-2))  # estimates at 0 and 3
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    weights = [p.detach().clone() for _, p in named]
    named = named_params()
    with torch.no_grad():
        for (_, p), w in zip(named, weights):
            p.copy_(w)
    resumed = so.create("sophia", named, lr=1e-2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    run(named, 4, 10, resumed)
    assert all(torch.equal(p, e) for (_, p), e in zip(named, expected))


def test_an_estimate_changes_the_step_and_the_curvature():
    named = named_params()
    plain, other = so.create("sophia", named), named_params()
    informed = so.create("sophia", other)
    set_grads(named, 0)
    set_grads(other, 0)
    plain.step()
    informed.step(hessian_grads=estimates(other, 0))
    p, q = dict(named)["embed.weight"], dict(other)["embed.weight"]
    assert not torch.equal(p, q)
    assert informed.state[q]["hessian"].abs().sum() > 0 and plain.state[p]["hessian"].abs().sum() == 0
    # by name works too; a wrong shape is one clear error
    informed.step(hessian_grads={"embed.weight": torch.ones(40, 8)})
    with pytest.raises(ValueError, match="hessian_grads: an estimate of shape"):
        informed.step(hessian_grads={"embed.weight": torch.ones(3)})


def test_layerwise_updates_refuse_sophia():
    named = named_params()
    opt = so.create("sophia", named)
    with pytest.raises(ValueError, match="layer-wise updates cannot hand step\\(\\) inputs "
                                         "\\(hessian_grads\\)"):
        so.fuse_backward(torch.nn.ParameterList([p for _, p in named]), opt)
