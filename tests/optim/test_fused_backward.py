"""Layer-wise (fused-backward) training equals ordinary training, holds one gradient at a time,
clips, schedules and resumes (``slimtrain.optim.fuse_backward``)."""

import math

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim.layerwise import planned_gradient_bytes

from ..helpers import quiet
from slimtrain.memory.measure import GradientMeter

from .fused_helpers import (GALORE, batch, llama_loss, make, max_relative_difference, train,
                            weights)

STEPS = 4
RECIPES = [("adamw", {}), ("galore-adamw", GALORE)]


@pytest.mark.parametrize("grad_accum", [1, 4])
@pytest.mark.parametrize("recipe,kw", RECIPES, ids=[r for r, _ in RECIPES])
def test_fused_equals_ordinary_step_for_step(recipe, kw, grad_accum):
    """Same micro-batches, same LR schedule: bitwise equal where the math is the same. GaLore with
    accumulation sums the micro-batches' projected gradients, whose rounding differs from
    projecting their sum: ≤ 2e-7 of the weights after that first step (step 1; step 0 refreshes
    from the accumulated G); later the difference flows through the model into every gradient and
    Adam's normalisation magnifies it where gradients are tiny (rare tokens' embeddings): ≤ 3e-5."""
    ordinary = make(recipe, False, grad_accum, schedule=True, **kw)
    fused = make(recipe, True, grad_accum, schedule=True, **kw)
    for step in range(STEPS):
        train(*ordinary[:3], 1, grad_accum, start=step)
        train(*fused[:3], 1, grad_accum, start=step, handle=fused[3])
        a, b = weights(ordinary[0]), weights(fused[0])
        if recipe == "galore-adamw" and grad_accum > 1 and step > 0:
            assert max_relative_difference(a, b) <= (2e-7 if step == 1 else 3e-5), step
        else:
            assert all(torch.equal(x, y) for x, y in zip(a, b)), step
    assert fused[2].last_epoch == ordinary[2].last_epoch == STEPS  # one schedule step per step
    assert fused[1].param_groups[0]["lr"] == ordinary[1].param_groups[0]["lr"]


def test_galore_accumulates_projected_gradients_between_refreshes():
    """On a step without refresh the projected matrices hold only R (r × max(m, n)) between
    micro-batches; on a refresh step they hold G. accumulate="full" makes every step bitwise."""
    model, opt, sched, handle = make("galore-adamw", True, 4, **GALORE)
    targets = [p for n, p in model.named_parameters() if "mlp" in n or "self_attn" in n]
    held = {}

    def between(step, micro):
        in_grad = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        held[step] = (all(p.grad is None for p in targets), in_grad + handle.accumulator_bytes())

    train(model, opt, sched, 3, 4, handle=handle, between=between)
    full = sum(p.numel() * 4 for p in model.parameters())
    assert not held[0][0] and held[0][1] == full   # step 0 refreshes every basis: G in full
    assert held[1][0] and held[1][1] < full        # step 1: R for the targets
    ordinary = make("galore-adamw", False, 4, **GALORE)
    exact = make("galore-adamw", True, 4, fuse_kw=dict(accumulate="full"), **GALORE)
    train(*ordinary[:3], 4, 4)
    train(*exact[:3], 4, 4, handle=exact[3])
    assert all(torch.equal(x, y) for x, y in zip(weights(ordinary[0]), weights(exact[0])))


@pytest.mark.parametrize("grad_accum,refresh_from", [(1, "accumulated"), (4, "first"),
                                                     (4, "accumulated")])
def test_live_gradients_bounded(grad_accum, refresh_from):
    """Gradients alive at any gradient's arrival: the largest one with grad_accum=1; the planned
    bound (largest + accumulation buffers) with accumulation — against all of them ordinarily."""
    kw = dict(GALORE, refresh_every=3)
    model, opt, sched, _ = make("galore-adamw", False, **kw)
    meter = GradientMeter(list(model.parameters()))
    handle = quiet(so.fuse_backward, model, opt, grad_accum=grad_accum, refresh_from=refresh_from)
    meter.handle = handle
    train(model, opt, sched, 4, grad_accum, handle=handle)
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    planned = planned_gradient_bytes(opt, grad_accum=grad_accum, refresh_from=refresh_from)
    if grad_accum == 1:
        assert meter.peak == max(sizes) == planned
    else:
        assert meter.peak <= planned
        assert (planned < sum(sizes)) == (refresh_from == "first")

    model, opt, sched, _ = make("galore-adamw", False, **kw)
    ordinary = GradientMeter(list(model.parameters()))
    train(model, opt, sched, 2, grad_accum)
    assert ordinary.peak == sum(sizes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_live_gradients_bounded_on_gpu():
    """The CUDA allocator's peak: fused training needs at least the gradients minus the largest
    one less than ordinary training (activations and states are the same)."""
    peaks = {}
    for fused in (False, True):
        model = make("adamw", False)[0].cuda()
        opt = so.create("adamw", model)
        handle = so.fuse_backward(model, opt) if fused else None

        def loss_fn(m, step, micro, accum):
            ids = batch(step, micro).cuda()
            return m(input_ids=ids, labels=ids).loss / accum

        train(model, opt, None, 1, 1, handle=handle, loss_fn=loss_fn)  # states exist from now on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train(model, opt, None, 1, 1, start=1, handle=handle, loss_fn=loss_fn)
        peaks[fused] = torch.cuda.max_memory_allocated()
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    assert peaks[False] - peaks[True] >= 0.9 * (sum(sizes) - max(sizes))


@pytest.mark.parametrize("grad_accum", [1, 4])
@pytest.mark.parametrize("recipe,kw", RECIPES, ids=[r for r, _ in RECIPES])
def test_clipping_by_previous_norm_equals_ordinary(recipe, kw, grad_accum):
    """Step t is scaled by min(1, c/(‖g_{t−1}‖ + 1e-6)): equal to ordinary training clipped that
    way, with the true (unclipped) norm reported every step; and it changes the result."""
    clip = 0.5
    fuse_kw = dict(accumulate="full")  # the exact norm with accumulation
    ordinary = make(recipe, False, grad_accum, **kw)
    fused = make(recipe, True, grad_accum, max_grad_norm=clip, fuse_kw=fuse_kw, **kw)
    unclipped = make(recipe, True, grad_accum, fuse_kw=fuse_kw, **kw)
    expected = train(*ordinary[:3], STEPS, grad_accum, max_grad_norm=clip)
    got = train(*fused[:3], STEPS, grad_accum, handle=fused[3])
    train(*unclipped[:3], STEPS, grad_accum, handle=unclipped[3])
    assert got == expected  # bitwise: the norm is clip_grad_norm_'s
    assert all(torch.equal(x, y) for x, y in zip(weights(ordinary[0]), weights(fused[0])))
    assert fused[3].clip_coef < 1 and all(n > clip for n in got)  # clipping was active …
    assert not all(torch.equal(x, y) for x, y in zip(weights(fused[0]), weights(unclipped[0])))
    assert fused[1].grad_norm == got[-1] and fused[3].grad_norm_exact


def test_subspace_accumulation_norm_is_the_in_subspace_norm():
    """With R accumulated, a projected matrix contributes ‖Σ R_k‖ = ‖Pᵀ Σ G_k‖ ≤ ‖Σ G_k‖: the
    reported norm is that (flagged not exact) and equals the true norm on refresh steps; clipping
    with it is warned about. Checked against ordinary gradients at the same weights."""
    with pytest.warns(UserWarning, match="norm inside the subspace"):
        model, opt, sched, _ = make("galore-adamw", False, **GALORE)
        handle = so.fuse_backward(model, opt, grad_accum=2, max_grad_norm=1.0)
    reference = make("galore-adamw", False, **GALORE)[0]
    groups = {p: g for g in opt.param_groups for p in g["params"]}
    for step in range(3):
        reference.load_state_dict(model.state_dict())
        reference.zero_grad()
        for micro in range(2):
            llama_loss(reference, step, micro, 2).backward()
        pairs = list(zip(model.parameters(), reference.parameters()))
        true = math.sqrt(sum(q.grad.norm().item() ** 2 for _, q in pairs))
        projected = [opt.takes_low_rank(groups[p], p) and not opt.refresh_due(groups[p], p)
                     for p, _ in pairs]
        inside = math.sqrt(sum((opt.project_gradient(groups[p], p, q.grad) if low else q.grad)
                               .norm().item() ** 2 for (p, q), low in zip(pairs, projected)))
        train(model, opt, sched, 1, 2, start=step, handle=handle)
        assert handle.grad_norm_exact == (step % 2 == 0)  # refresh steps accumulate G in full
        assert handle.grad_norm == pytest.approx(inside, rel=1e-5)
        if step % 2:
            assert handle.grad_norm < true
        else:
            assert handle.grad_norm == pytest.approx(true, rel=1e-5)


def test_resume_is_bit_identical(tmp_path):
    """Save after 3 steps (weights, optimizer with its last grad norm, scheduler), rebuild, load,
    continue: bitwise equal to 6 uninterrupted steps — with clipping and low-rank accumulation."""
    setup = dict(max_grad_norm=0.5, schedule=True, **GALORE)
    whole = make("galore-adamw", True, 2, **setup)
    train(*whole[:3], 6, 2, handle=whole[3])

    first = make("galore-adamw", True, 2, **setup)
    train(*first[:3], 3, 2, handle=first[3])
    torch.save({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                "sched": first[2].state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model, opt, sched, handle = make("galore-adamw", True, 2, **setup)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    assert opt.grad_norm == first[1].grad_norm  # what the next step is clipped by
    train(model, opt, sched, 3, 2, start=3, handle=handle)
    assert all(torch.equal(x, y) for x, y in zip(weights(whole[0]), weights(model)))


def test_gradient_checkpointing_equals_ordinary():
    """Reentrant activation checkpointing runs nested backward passes: counting per parameter
    (not per backward call) keeps the steps right."""
    ordinary = make("galore-adamw", False, 2, checkpointing=True, **GALORE)
    fused = make("galore-adamw", True, 2, checkpointing=True, fuse_kw=dict(accumulate="full"), **GALORE)
    train(*ordinary[:3], 3, 2)
    train(*fused[:3], 3, 2, handle=fused[3])
    assert all(torch.equal(x, y) for x, y in zip(weights(ordinary[0]), weights(fused[0])))


def test_early_step_applies_what_accumulated():
    """step() after fewer backward passes than grad_accum: the ordinary result, with a warning."""
    ordinary = make("adamw", False, 4)
    fused = make("adamw", True, 4)
    for model, opt, _, handle in (ordinary, fused):
        for micro in range(2):
            llama_loss(model, 0, micro, 4).backward()
        if handle is None:
            opt.step()
        else:
            with pytest.warns(UserWarning, match="came before any parameter"):
                opt.step()
    assert all(torch.equal(x, y) for x, y in zip(weights(ordinary[0]), weights(fused[0])))


def test_remove_returns_to_ordinary_updates():
    ordinary = make("galore-adamw", False, **GALORE)
    fused = make("galore-adamw", True, **GALORE)
    train(*ordinary[:3], 2, 1)
    train(*fused[:3], 2, 1, handle=fused[3])
    fused[3].remove()
    assert fused[1].layerwise is None
    train(*ordinary[:3], 2, 1, start=2)
    train(*fused[:3], 2, 1, start=2)
    assert all(torch.equal(x, y) for x, y in zip(weights(ordinary[0]), weights(fused[0])))
    so.fuse_backward(fused[0], fused[1])  # can be fused again


def test_misuse_raises_with_what_to_do():
    model, opt, _, _ = make("adamw", False)
    for kwargs, match in [(dict(grad_accum=0), "grad_accum must be an integer >= 1"),
                          (dict(grad_accum=2.0), "grad_accum"), (dict(grad_accum=True), "grad_accum"),
                          (dict(max_grad_norm=0.0), "max_grad_norm must be a number > 0"),
                          (dict(accumulate="low"), "accumulate must be one of"),
                          (dict(refresh_from="last"), "refresh_from must be one of")]:
        with pytest.raises(ValueError, match=match):
            so.fuse_backward(model, opt, **kwargs)
    with pytest.raises(ValueError, match="needs a slimtrain optimizer"):
        so.fuse_backward(model, torch.optim.AdamW(model.parameters()))
    other = make("adamw", False)[0]
    with pytest.raises(ValueError, match="none of the model's parameters"):
        so.fuse_backward(other, opt)

    handle = so.fuse_backward(model, opt, grad_accum=2)
    with pytest.raises(ValueError, match="already runs layer-wise updates"):
        so.fuse_backward(model, opt)
    saved = opt.state_dict()
    llama_loss(model, 0, 0, 2).backward()
    for call, what in [(opt.state_dict, "state_dict()"), (handle.remove, "remove()"),
                       (lambda: opt.load_state_dict(saved), "load_state_dict()")]:
        with pytest.raises(ValueError, match=rf"{what.replace('(', '[(]').replace(')', '[)]')} in the middle"):
            call()
    llama_loss(model, 0, 1, 2).backward()
    with pytest.raises(ValueError, match="after every 2 backward passes"):
        llama_loss(model, 0, 2, 2).backward()
    with pytest.raises(ValueError, match="call optimizer.step[(][)] first"):
        opt.zero_grad()
    with pytest.raises(ValueError, match="without a closure"):
        opt.step(lambda: 0.0)
    opt.step()
    assert math.isfinite(handle.grad_norm)


def test_zero_grad_discards_low_rank_accumulators():
    """zero_grad() mid-accumulation drops every accumulated gradient, R included, as ordinarily."""
    ordinary = make("galore-adamw", False, 2, **GALORE)
    fused = make("galore-adamw", True, 2, **GALORE)
    for model, opt, sched, handle in (ordinary, fused):
        train(model, opt, sched, 1, 2, handle=handle)
        llama_loss(model, 1, 0, 2).backward()  # a micro-batch that is thrown away
        opt.zero_grad()
        assert handle is None or handle.accumulator_bytes() == 0
        train(model, opt, sched, 1, 2, start=1, handle=handle)
    assert max_relative_difference(weights(ordinary[0]), weights(fused[0])) <= 2e-7


def test_parameters_outside_the_optimizer_are_reported():
    model, _, _, _ = make("adamw", False)
    opt = so.create("adamw", [p for n, p in model.named_parameters() if "embed" not in n])
    with pytest.warns(UserWarning, match="1 trainable parameters of the model are not in the optimizer"):
        so.fuse_backward(model, opt)


def test_refresh_from_first_micro_batch():
    """refresh_from="first": on a refresh step the basis comes from the first micro-batch's
    gradient (the one an ordinary optimizer would pick from that micro-batch alone) and every
    micro-batch then accumulates R — no full gradient is held on any step."""
    model, opt, sched, handle = make("galore-adamw", True, 2, fuse_kw=dict(refresh_from="first"),
                                     **GALORE)
    targets = [p for n, p in model.named_parameters() if "mlp" in n or "self_attn" in n]
    held = []
    train(model, opt, sched, 1, 2, handle=handle,
          between=lambda *_: held.append(all(p.grad is None for p in targets)))
    assert held == [True]

    single, single_opt, _, _ = make("galore-adamw", False, **GALORE)
    llama_loss(single, 0, 0, 2).backward()  # the first micro-batch alone, scaled as in the step
    single_opt.step()
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        if "mlp" in name or "self_attn" in name:
            torch.testing.assert_close(opt.state[p]["basis"], single_opt.state[q]["basis"],
                                       rtol=0, atol=1e-6)
