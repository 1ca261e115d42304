"""Layer sampling (LISA, OwLore; ``optim/sampling.py``): only the active blocks change and hold
state, the active set changes every K steps from the seed, state follows γ, resume is exact."""

import io

import pytest
import torch

import slimtrain.optim as so
from tests.helpers import quiet, tiny_llama

LAYERS, EVERY = 4, 3


def batch(step):
    g = torch.Generator().manual_seed(700 + step)
    return torch.randint(0, 256, (2, 16), generator=g)


def train(model, opt, start, stop, watch=None):
    for step in range(start, stop):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ids = batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        active = opt.sampling.active
        opt.step()
        opt.zero_grad()
        if watch is not None:
            changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
            watch.append((active, changed))


def block_of(name):
    return int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None


def test_only_the_active_blocks_change_and_the_set_moves_every_k_steps():
    model = tiny_llama(layers=LAYERS)
    opt = so.create("lisa", model, lr=1e-3, layers_active=1, layers_every=EVERY)
    seen = []
    train(model, opt, 0, 4 * EVERY, seen)
    always = {n for n, _ in model.named_parameters() if block_of(n) is None}
    for active, changed in seen:
        assert always <= changed  # embeddings, head and the final norm train every step
        assert {block_of(n) for n in changed - always} == set(active)
    periods = [seen[k][0] for k in range(0, len(seen), EVERY)]
    assert all(seen[k][0] == seen[k - k % EVERY][0] for k in range(len(seen)))
    assert len(set(periods)) > 1  # seed 0 draws more than one set over 4 periods
    again = so.create("lisa", tiny_llama(layers=LAYERS), layers_active=1, layers_every=EVERY)
    assert [again.sampling.choose(k) for k in range(4)] == periods  # a function of the seed


def test_inactive_blocks_get_no_gradient_and_hold_no_state():
    model = tiny_llama(layers=LAYERS)
    opt = so.create("lisa", model, layers_active=1, layers_every=EVERY)
    ids = batch(0)
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        on = block_of(name) in (None, *opt.sampling.active)
        assert p.requires_grad == on and (p.grad is not None) == on, name
        assert (p in opt.state) == on, name


def test_state_bytes_follow_gamma_and_equal_the_plan():
    sizes = {}
    for gamma in (1, 2, 4):
        opt = so.create("lisa", tiny_llama(layers=LAYERS), layers_active=gamma)
        sizes[gamma] = sum(opt.state_bytes().values())
        assert opt.state_bytes() == opt.planned_state_bytes()
    per_block = sizes[2] - sizes[1]
    assert per_block > 0 and sizes[4] - sizes[2] == 2 * per_block
    full = so.create("adamw", tiny_llama(layers=LAYERS))
    assert sizes[4] == sum(full.state_bytes().values())


@pytest.mark.parametrize("recipe", ["lisa", "owlore"])
def test_resume_is_bit_identical_across_resamplings(recipe):
    kw = dict(layers_active=2, layers_every=EVERY, lr=1e-3)
    if recipe == "owlore":
        kw.update(rank=4, refresh_every=2)
    model = tiny_llama(layers=LAYERS)
    opt = quiet(so.create, recipe, model, **kw)
    train(model, opt, 0, 10)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    model = tiny_llama(layers=LAYERS)
    first = quiet(so.create, recipe, model, **kw)
    train(model, first, 0, 4)  # mid-period: the active set and its states are saved
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffer.seek(0)
    resumed_model = tiny_llama(layers=LAYERS, seed=5)  # other initial weights: OwLore's ratios
    with torch.no_grad():
        for n, p in resumed_model.named_parameters():
            p.copy_(weights[n])
    resumed = quiet(so.create, recipe, resumed_model, **kw)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.sampling.active == first.sampling.active
    assert resumed.sampling.weights == first.sampling.weights
    train(resumed_model, resumed, 4, 10)
    for n, p in resumed_model.named_parameters():
        assert torch.equal(p, expected[n]), n


def test_owlore_samples_by_outlier_ratio_and_projects_the_active_blocks():
    model = tiny_llama(layers=LAYERS)
    with torch.no_grad():  # block 2 gets outliers: 1% of its entries 50× the rest
        for name, p in model.named_parameters():
            if ".layers.2." in name and p.dim() == 2:
                p.view(-1)[::100] *= 50
    opt = quiet(so.create, "owlore", model, layers_active=1, rank=4)
    weights = opt.sampling.weights
    assert max(range(LAYERS), key=weights.__getitem__) == 2 and weights[2] > 0.9
    picks = [opt.sampling.choose(k) for k in range(20)]
    assert sum(p == (2,) for p in picks) >= 15
    active = opt.sampling.active[0]
    projected = [p for p in opt.state if opt.plan_of(p).projected]
    assert projected and all(f".layers.{active}." in opt.plan_of(p).name for p in projected)


def test_layer_sampling_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="more than the model's 4 blocks"):
        so.create("lisa", tiny_llama(layers=LAYERS), layers_active=5)
    with pytest.raises(ValueError, match="found no blocks"):
        so.create("lisa", tiny_llama(layers=LAYERS), blocks=r"\.nothing\.(\d+)\.")
    model = tiny_llama(layers=LAYERS)
    with pytest.raises(ValueError, match="does not take layer-wise updates"):
        so.fuse_backward(model, so.create("lisa", model))
    lisa_state = so.create("lisa", tiny_llama(layers=LAYERS)).state_dict()
    with pytest.raises(ValueError, match="layer sampling"):
        so.create("adamw", tiny_llama(layers=LAYERS)).load_state_dict(lisa_state)
    with pytest.raises(ValueError, match="plan it without fused backward"):
        from slimtrain.memory.planner import plan

        plan("tiny", "lisa", fused_backward=True)
