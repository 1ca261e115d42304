"""The spike stages (optim/stages.py) on their own: the warm-up factor is SPAM's, clipping acts on
a spike and leaves the gradient the user holds untouched, a subspace reset keeps the stages'
statistics, and combinations that cannot work are one clear error."""

import math

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim import stages

from .test_contract import named_params, set_grads


def test_the_warm_up_factor_is_spams_cosine():
    group = dict(reset_every=10, reset_warmup=4)
    assert [stages.warmup_scale(group, t) for t in (1, 9)] == [1.0, 1.0]  # before the first reset
    got = [stages.warmup_scale(group, t) for t in range(10, 16)]
    want = [1 - 0.99 * (1 + math.cos(math.pi * (k + 1) / 5)) / 2 for k in range(4)] + [1.0, 1.0]
    assert got == pytest.approx(want, rel=1e-15)
    assert got[0] == pytest.approx(0.1045, abs=1e-4)  # a reset step moves ~10% of a full step


@pytest.mark.peers
def test_the_warm_up_factor_equals_pytorch_optimizers():
    spam = pytest.importorskip("pytorch_optimizer.optimizer.spam")
    decay = spam.CosineDecay(0.99, 6)
    for k in range(9):
        assert stages.warmup_scale(dict(reset_every=20, reset_warmup=6), 20 + k) == \
            pytest.approx(1 - decay.get_death_rate(k), rel=1e-12)


def test_spike_clipping_bounds_a_spike_and_leaves_the_gradient_alone():
    def spike_update(threshold):
        named = named_params()
        opt = so.create("spam", named, lr=1e-2, spike_after=2, spike_threshold=threshold,
                        reset_every=None, reset_warmup=0)
        for k in range(3):
            set_grads(named, k)
        p = dict(named)["block.mlp.square.weight"]
        for k in range(4):
            set_grads(named, k)
            if k == 3:
                p.grad[2, 2] = 1e4
                held = p.grad.clone()
                before = p.detach().clone()
            opt.step()
        assert torch.equal(p.grad, held)  # the stages work on copies
        return (p - before)[2, 2].abs().item(), opt.state[p]["exp_avg_sq"][2, 2].item()

    clipped_step, clipped_v = spike_update(5.0)
    free_step, free_v = spike_update(None)
    assert clipped_v < free_v / 1e4  # V never saw the spike
    assert clipped_step < free_step


def test_adaclip_and_adagn_keep_their_statistics_across_a_subspace_reset():
    named = named_params()
    opt = so.create("galore-adamw", named, rank=4, refresh_every=2, switch="reset",
                    targets=r"\.mlp\.\w+\.weight$", clip_decay=0.9, norm_decays=(0.7, 0.9))
    p = dict(named)["block.mlp.wide.weight"]
    for k in range(3):
        set_grads(named, k)
        opt.step()  # step 2 refreshes and resets the moments
    assert opt.state[p]["clip_max"] > 0 and opt.state[p]["norm_avg"] > 0
    assert int(opt.state[p]["stage_step"]) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(spike_threshold=10.0), "keeps none for matrices; use clip_decay"),
    (dict(reset_warmup=5), "set reset_every too"),
    (dict(reset_count=True), "set reset_every too"),
    (dict(norm_decays=(1.0, 0.9)), "norm_decays must be two numbers"),
])
def test_combinations_that_cannot_work_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so.create("lion", named_params(), **kwargs)


def test_the_planner_counts_the_stage_counter_and_scalars():
    named = named_params()
    opt = so.create("stable-spam", named)
    planned = opt.planned_state_bytes()
    set_grads(named, 0)
    opt.step()
    assert opt.state_bytes() == planned
    adamw = so.create("adamw", named_params()).planned_state_bytes()["states"]
    assert planned["states"] - adamw == len(named) * (4 + 3 * 4)  # a counter and 3 scalars each


def test_a_zero_gradient_passes_the_stages_as_zero():
    named = named_params()
    opt = so.create("stable-spam", named)
    for k in range(2):
        for _, p in named:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.isfinite(t).all() for st in opt.state.values() for t in st.values())
