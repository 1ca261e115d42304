"""Zeroth-order recipes (slimtrain.optim.zo): MeZO's step written out, the estimate's direction,
replay, resume, the closure's conditions, drift, and the contract parts that apply."""

import io
import math
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import slimtrain.optim as so
from slimtrain.optim import zo
from slimtrain.optim.zo import noise

ZO = so.available("zeroth-order")


def tiny(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=dropout)
    return LlamaForCausalLM(config).to(dtype)


IDS = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))


def lm_loss(model):
    return lambda: model(input_ids=IDS, labels=IDS).loss


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_registry_knows_every_zo_recipe():
    assert set(ZO) == {"mezo", "zo-sgd-sign", "zo-sgd-momentum", "zo-sgd-conservative", "zo-adam",
                       "sparse-mezo"}
    assert not set(ZO) & set(so.available("gradient"))
    assert all(so.recipe(n).zeroth_order for n in ZO)


def test_one_mezo_step_is_the_algorithm_written_out():
    """Two forwards with the same z, restore, θ ← θ − lr·(ĝz + λθ) with λ off for norms: bit for
    bit. z of a parameter is N(0, 1) from a generator seeded by (step seed, name)."""
    model, ref = tiny(), tiny()
    lr, eps, wd = 1e-3, 1e-3, 0.1
    opt = so.create("mezo", model, lr=lr, eps=eps, weight_decay=wd, seed=7)
    opt.step(lm_loss(model))

    (s,) = noise.step_seeds(7, 0, 1)
    named = dict(ref.named_parameters())
    z = {n: torch.randn(p.numel(), generator=torch.Generator().manual_seed(noise.mix(s, n))).view_as(p)
         for n, p in named.items()}  # each of the tiny model's parameters is one piece
    with torch.no_grad():
        for n, p in named.items():
            p.add_(z[n], alpha=eps)
        plus = float(ref(input_ids=IDS, labels=IDS).loss)
        for n, p in named.items():
            p.add_(z[n], alpha=-2 * eps)
        minus = float(ref(input_ids=IDS, labels=IDS).loss)
        for n, p in named.items():
            p.add_(z[n], alpha=eps)
        g = (plus - minus) / (2 * eps)
        for n, p in named.items():
            decay = 0.0 if ("norm" in n or "bias" in n) else wd
            p.sub_(lr * (g * z[n] + decay * p))  # MeZO's zo_update
    assert same(weights(model), weights(ref))
    assert opt.replay_log()["grads"].tolist() == [[g]]


def test_with_many_queries_the_step_points_down_the_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    loss = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    grad = torch.autograd.grad(loss(), list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    opt = so.create("mezo", model.named_parameters(), lr=1e-3, q=512, eps=1e-4)
    opt.step(loss)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    cos = torch.nn.functional.cosine_similarity(step, -torch.cat([g.flatten() for g in grad]), 0)
    assert cos > 0.8, cos  # 36 parameters, 512 directions: E[cos] ≈ √(512/548) ≈ 0.97


@pytest.mark.parametrize("name,options", [("mezo", {}), ("zo-adam", dict(state_bits=8)),
                                          ("zo-sgd-conservative", dict(q=2, sided="one")),
                                          ("sparse-mezo", {})])
def test_replay_rebuilds_a_run_bit_for_bit(name, options, tmp_path):
    model = tiny()
    initial = weights(model)
    opt = so.create(name, model, lr=1e-3, weight_decay=0.01, **options)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 100)  # lrs change: logged
    for _ in range(50):
        opt.step(lm_loss(model))
        sched.step()
    zo.save_log(opt.replay_log(), tmp_path / "log.safetensors")
    assert (tmp_path / "log.safetensors").stat().st_size < 4096  # kilobytes, not a model

    fresh = tiny()
    fresh.load_state_dict(initial)
    again = zo.replay(fresh, zo.load_log(tmp_path / "log.safetensors"))
    assert same(weights(fresh), weights(model))
    assert again.zo_step == 50
    # the replayed optimizer continues as the original would
    again.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for g_new, g_old in zip(again.param_groups, opt.param_groups):
        g_new["lr"] = g_old["lr"]
    opt.step(lm_loss(model))
    again.step(lm_loss(fresh))
    assert same(weights(fresh), weights(model))


@pytest.mark.parametrize("name", ["mezo", "zo-adam", "zo-sgd-momentum"])
def test_resume_is_exact(name):
    model = tiny()
    opt = so.create(name, model, lr=1e-4)
    for _ in range(3):
        opt.step(lm_loss(model))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    for _ in range(3):
        opt.step(lm_loss(model))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # tensors only
    resumed = tiny()
    resumed.load_state_dict(saved["model"])
    opt2 = so.create(name, resumed, lr=1e-4)
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        opt2.step(lm_loss(resumed))
    assert same(weights(resumed), weights(model))
    assert torch.equal(opt2.replay_log()["grads"], opt.replay_log()["grads"])


def test_no_gradient_autograd_off_and_eval_mode_inside_the_closure():
    model = tiny(dropout=0.5)
    model.train()
    seen = []

    def closure():
        seen.append((torch.is_grad_enabled(), model.training,
                     any(m.training for m in model.modules())))
        assert all(p.grad is None for p in model.parameters())
        return model(input_ids=IDS, labels=IDS).loss

    so.create("mezo", model).step(closure)
    assert seen == [(False, False, False)] * 2
    assert model.training and all(p.grad is None for p in model.parameters())


def test_a_non_differentiable_objective_trains():
    """1 − accuracy of a linear classifier: piecewise constant, no gradient anywhere."""
    torch.manual_seed(0)
    w_true = torch.randn(5)
    x = torch.randn(256, 5)
    y = (x @ w_true > 0).long()
    model = torch.nn.Linear(5, 2)
    error = lambda: 1 - float((model(x).argmax(1) == y).float().mean())  # noqa: E731
    start = error()
    opt = so.create("mezo", model.named_parameters(), lr=0.5, eps=0.2, q=8)
    for _ in range(60):
        opt.step(error)
    assert error() < min(0.15, start / 2), (start, error())


def test_lr_zero_leaves_weights_within_rounding():
    """Perturb and restore round three times a step: float32 drift after 100 steps at lr 0 is
    within 1e-6 of the weights' norm (measured 3e-8); bf16's is 2⁻⁹-level per step, stated."""
    for dtype, bound in ((torch.float32, 1e-6), (torch.bfloat16, 0.05)):
        model = tiny(dtype)
        before = weights(model)
        opt = so.create("mezo", model, lr=0.0)
        for _ in range(100):
            opt.step(lm_loss(model))
        for k, v in weights(model).items():
            drift = (v.double() - before[k].double()).norm() / before[k].double().norm()
            assert drift <= bound, (dtype, k, float(drift))
        assert all(p.dtype == dtype for p in model.parameters())  # perturbed in its own dtype


def test_zo_adam_is_adamw_on_the_estimate():
    """The stateful variants hand G = ĝz to the gradient pipeline's rule: one step of zo-adam
    equals torch's AdamW stepped on that G."""
    model, ref = tiny(), tiny()
    opt = so.create("zo-adam", model, lr=1e-3, weight_decay=0.0, seed=3)
    opt.step(lm_loss(model))
    (s,), g = noise.step_seeds(3, 0, 1), float(opt.replay_log()["grads"][0, 0])
    adamw = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    for n, p in ref.named_parameters():
        z = torch.randn(p.numel(), generator=torch.Generator().manual_seed(noise.mix(s, n)))
        p.grad = (z * g).view_as(p)
    # the perturbation's drift is part of the run: apply it to the reference too
    with torch.no_grad():
        for n, p in ref.named_parameters():
            z = torch.randn(p.numel(), generator=torch.Generator().manual_seed(noise.mix(s, n)))
            p.add_(z.view_as(p), alpha=1e-3)
            p.add_(z.view_as(p), alpha=-2e-3)
            p.add_(z.view_as(p), alpha=1e-3)
    adamw.step()
    assert same(weights(model), weights(ref))


def test_sparse_mezo_moves_only_small_weights():
    model = tiny()
    before = weights(model)
    opt = so.create("sparse-mezo", model, lr=1e-2, sparsity=0.75)
    opt.step(lm_loss(model))
    w = before["model.layers.0.mlp.up_proj.weight"]
    moved = weights(model)["model.layers.0.mlp.up_proj.weight"] != w
    assert 0.2 < moved.float().mean() < 0.3  # a quarter of the elements
    assert w[moved].abs().max() <= w[~moved].abs().min() + 1e-6  # the small-magnitude ones
    assert sum(opt.state_bytes().values()) < 1024  # the mask lived for the step only


def test_conservative_never_raises_the_loss():
    model = tiny()
    opt = so.create("zo-sgd-conservative", model, lr=0.05)
    loss = lm_loss(model)
    for _ in range(8):
        with torch.no_grad():
            before = float(loss())
        opt.step(loss)
        with torch.no_grad():
            assert float(loss()) <= before + 1e-5  # the perturbation's rounding, no more
    assert set(opt.replay_log()["choices"].tolist()) <= {0, 1, 2}


def test_one_sided_uses_q_plus_one_forwards():
    model = tiny()
    calls = []

    def closure():
        calls.append(1)
        return model(input_ids=IDS, labels=IDS).loss

    so.create("mezo", model, sided="one", q=3).step(closure)
    assert len(calls) == 4
    calls.clear()
    so.create("mezo", model, q=3).step(closure)
    assert len(calls) == 6


def test_a_nonfinite_objective_restores_the_weights_and_skips():
    model = tiny()
    before = weights(model)
    opt = so.create("mezo", model, lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step(lambda: torch.tensor(math.nan))
    assert any("not finite" in str(w.message) for w in caught)
    assert opt.last_step_skipped == opt.last_step_params > 0
    for k, v in weights(model).items():
        assert torch.allclose(v, before[k], atol=1e-6)


@pytest.mark.parametrize("name", ZO)
def test_contract_state_dict_loads_weights_only_and_bad_arguments_are_refused(name):
    model = tiny()
    opt = so.create(name, model, lr=1e-4)
    opt.step(lm_loss(model))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    so.create(name, tiny(), lr=1e-4).load_state_dict(torch.load(buffer, weights_only=True))
    with pytest.raises(ValueError, match="eps must be"):
        so.create(name, model, eps=0.0)
    with pytest.raises(ValueError, match="q must be"):
        so.create(name, model, q=0)
    with pytest.raises(ValueError, match="sided must be"):
        so.create(name, model, sided="three")
    with pytest.raises(ValueError, match="returned a tensor of shape"):
        opt.step(lambda: torch.ones(3))
    with pytest.raises(ValueError, match="call step\\(closure\\)"):
        opt.step()
    with pytest.raises(ValueError, match="no zeroth-order log"):
        opt.load_state_dict(so.create("adamw", model).state_dict())


def test_plan_is_weights_forward_and_state():
    from slimtrain.memory import plan
    from slimtrain.memory.measure import measure

    config = tiny().config
    p = plan(config, "mezo", batch_size=2, seq_len=16)
    adamw = plan(config, "adamw", batch_size=2, seq_len=16)
    assert p.gradients == 0 and p.optimizer_states < 1024
    assert p.activations == p.details["logits"] + p.details["forward_layer"] < adamw.activations
    measured = measure(tiny(), so.create("mezo", tiny()), batch_size=2, seq_len=16)
    assert measured["gradients"] == 0 and measured["activations"] <= p.activations
    with pytest.raises(ValueError, match="nothing to fuse"):
        plan(config, "mezo", fused_backward=True)


def test_lr_outside_the_converging_range_is_said():
    assert so.create("mezo", tiny()).lr_warning() is None
    assert "diverge" in so.create("mezo", tiny(), lr=3e-5).lr_warning()
    assert "hardly move" in so.create("mezo", tiny(), lr=1e-10).lr_warning()
