"""The family's parts beyond the shared contract: packed projectors, lazy refresh, seeds from names,
the Woodbury step, FRUGAL's residual and resets, rest=, and the memory target at LLaMA-60M."""

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slimtrain.optim as so
from slimtrain.optim.subspace import basis_store
from slimtrain.optim.rules import RULES
from slimtrain.optim.subspace.selectors import exact_svd_basis

from ..helpers import quiet, stdlib_bytes, tiny_llama, train_on_text


def _group(bits, size=256):
    return {"basis": "svd", "projector_bits": bits, "projector_group": size}


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 70), r=st.integers(1, 12), size=st.sampled_from([7, 64, 256]))
def test_packed_projector_round_trip_and_half_the_bytes(m, r, size):
    """Property: 4-bit codes take exactly half the bytes of 8-bit codes (rounded up for an odd
    count), and dequantizing is within half a quantization step of the basis."""
    r = min(r, m)
    basis = torch.linalg.qr(torch.randn(m, r, generator=torch.Generator().manual_seed(m)))[0]
    held = {}
    for bits in (4, 8):
        state = {}
        basis_store.store(state, basis, _group(bits, size))
        assert state["basis_codes"].dtype == torch.uint8
        held[bits] = state["basis_codes"].nbytes
        back = basis_store.load(state, (m, 3 * m), r, "left", _group(bits, size), "cpu")
        step = state["basis_scale"].max().item()
        assert (back - basis).abs().max().item() <= step / 2 + 1e-6
        assert basis_store.planned_bytes((m, 3 * m), r, "left", _group(bits, size)) == \
            sum(t.nbytes for t in state.values())
    assert held[4] == -(-held[8] // 2)


def test_q_galore_projector_bytes_are_half_of_8_bit_at_60m_shapes():
    W = torch.nn.Parameter(torch.randn(512, 1376))
    sizes = {}
    for bits in (4, 8):
        opt = so.QGaLore([("mlp.weight", W)], targets="mlp", rank=128, projector_bits=bits)
        W.grad = torch.randn(512, 1376)
        opt.step()
        sizes[bits] = opt.state[W]["basis_codes"].nbytes
    assert sizes[4] * 2 == sizes[8] == 128 * 512


def _lazy_gaps(drift, steps=40):
    torch.manual_seed(0)
    U = torch.linalg.qr(torch.randn(24, 24))[0]
    W = torch.nn.Parameter(torch.randn(24, 48))
    opt = so.QGaLore([("mlp.weight", W)], targets="mlp", rank=4, refresh_every=2, lazy_queue=2,
                     basis="svd", projector_bits=None)
    gaps = []
    for k in range(steps):
        left = U[:, :4] if (not drift or (k // 2) % 2 == 0) else U[:, 8:12]
        W.grad = left @ torch.randn(4, 48) + 1e-3 * torch.randn(24, 48)
        opt.step()
        gaps.append(opt.state[W]["refresh_gap"].item())
    return gaps


def test_lazy_refresh_grows_the_gap_for_a_stable_subspace_and_shrinks_it_again():
    stable = _lazy_gaps(drift=False)
    assert stable[-1] >= 8 and stable == sorted(stable)  # 2 → 4 → 8 …
    # a stable phase until the gap has grown, then a subspace that changes at every refresh
    torch.manual_seed(0)
    U = torch.linalg.qr(torch.randn(24, 24))[0]
    W = torch.nn.Parameter(torch.randn(24, 48))
    opt = so.QGaLore([("mlp.weight", W)], targets="mlp", rank=4, refresh_every=2, lazy_queue=2,
                     basis="svd")
    gaps, moving, flip = [], False, False
    for k in range(200):
        if opt.state:
            moving = moving or opt.state[W]["refresh_gap"].item() >= 8
            if moving and opt.state[W]["next_refresh"].item() == k:
                flip = not flip
        W.grad = (U[:, 8:12] if flip else U[:, :4]) @ torch.randn(4, 48)
        opt.step()
        gaps.append(opt.state[W]["refresh_gap"].item())
    peak = gaps.index(max(gaps))
    assert max(gaps) >= 8 and gaps[-1] == 2 and gaps[peak:] == sorted(gaps[peak:], reverse=True)


def test_apollo_stores_seeds_derived_from_names_so_order_does_not_matter(tmp_path):
    """Same names in another order (and in another group layout) give the same updates, and a
    resumed run draws the same matrices: seeds come from names, not positions."""
    def build(order):
        torch.manual_seed(0)
        params = {n: torch.nn.Parameter(torch.randn(16, 40)) for n in ("a.mlp.w", "b.mlp.w")}
        named = [(n, params[n]) for n in order]
        return params, so.APOLLO(named, targets="mlp", rank=4, refresh_every=2)

    results, seeds = [], []
    for order in (["a.mlp.w", "b.mlp.w"], ["b.mlp.w", "a.mlp.w"]):
        params, opt = build(order)
        for k in range(5):
            g = torch.Generator().manual_seed(k)
            for n in sorted(params):
                params[n].grad = torch.randn(16, 40, generator=g)
            opt.step()
        results.append({n: p.detach().clone() for n, p in params.items()})
        seeds.append({n: opt.state[p]["seed"].item() for n, p in params.items()})
        assert opt.planned_state_bytes()["projectors"] == 16  # two int64 seeds
    for n in results[0]:
        assert torch.equal(results[0][n], results[1][n])
    assert seeds[0] == seeds[1] and seeds[0]["a.mlp.w"] != seeds[0]["b.mlp.w"]


def test_natural_rule_equals_the_direct_inverse_fisher(monkeypatch):
    """ĝ from the Woodbury identity equals (λI + Σ gᵢgᵢᵀ)⁻¹ g solved directly (d×d), over the
    last s gradients (the ring buffer wraps after s steps)."""
    import slimtrain.optim.rules as rules

    captured = {}
    adam_update = rules.ADAM.update

    def spy(grads, *args, **kwargs):  # what the natural rule hands to Adam
        captured["g"] = grads[0].clone()
        return adam_update(grads, *args, **kwargs)

    monkeypatch.setattr(rules.ADAM, "update", spy)
    torch.manual_seed(0)
    hyper = {f.name: f.default for f in dataclasses.fields(RULES["natural"].Hyper)}
    group = {**so.GROUP_DEFAULTS, **hyper, "history": 3, "damping": 0.5}
    shape = (2, 5)
    moments = [{k: torch.zeros(s, dtype=torch.float64)
                for k, s in RULES["natural"].moment_shapes(shape, group).items()}]
    count, seen = torch.tensor(0.0), []
    for _ in range(5):
        g = torch.randn(shape, dtype=torch.float64)
        seen.append(g.reshape(-1))
        RULES["natural"].update([g], moments, [count], group, "forloop")
        H = torch.stack(seen[-3:])
        F = 0.5 * torch.eye(10, dtype=torch.float64) + H.t() @ H
        expected = torch.linalg.solve(F, g.reshape(-1))
        torch.testing.assert_close(captured["g"].reshape(-1), expected, rtol=1e-10, atol=1e-12)
    assert count.item() == 5


def test_frugal_residual_is_state_free_sign_sgd_outside_the_subspace():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(16, 40))
    before = W.detach().clone()
    opt = so.FRUGAL([("mlp.weight", W)], targets="mlp", rank=4, basis="svd", lr=0.1,
                    residual_scale=0.5)
    G = torch.randn(16, 40)
    W.grad = G.clone()
    opt.step()
    P = exact_svd_basis(G, 4, "left")[0]
    outside = torch.eye(16) - P @ P.t()
    expected = -0.1 * 0.5 * (outside @ torch.sign(outside @ G))
    torch.testing.assert_close(outside @ (W.detach() - before), expected, atol=1e-5, rtol=1e-4)
    assert set(opt.state[W]) == {"step", "moment_step", "exp_avg", "exp_avg_sq", "basis"}


def test_frugal_resets_moments_at_every_switch():
    W = torch.nn.Parameter(torch.randn(16, 40))
    opt = so.FRUGAL([("mlp.weight", W)], targets="mlp", rank=4, refresh_every=3, basis="blocks")
    for k in range(4):
        W.grad = torch.randn(16, 40)
        opt.step()
    assert opt.state[W]["moment_step"].item() == 1 and opt.state[W]["step"].item() == 4
    rows = opt.state[W]["basis"].nonzero()[:, 0].tolist()
    assert rows == [8, 9, 10, 11]  # the second block from the end, after the last one


def test_rest_rule_choice_and_registration():
    model = tiny_llama()
    opt = so.create("apollo-mini", model, rest="adafactor")
    rest_group = opt.param_groups[1]
    assert rest_group["rule"] == "adafactor"
    embed = model.model.embed_tokens.weight
    model(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    assert set(opt.state[embed]) == {"step", "exp_avg_sq_row", "exp_avg_sq_col"}
    with pytest.raises(ValueError, match="unknown rest='adam'; choose one of adafactor, adamw"):
        so.create("fira", model, rest="adam")
    with pytest.raises(ValueError, match="already registered"):
        so.register_rest("adamw", {"rule": "adam"})
    lion = so.create("galore-lion", model)  # Lion's betas must not reach the embeddings' AdamW
    assert lion.param_groups[0]["betas"] == (0.9, 0.99) and lion.param_groups[1]["betas"] == (0.9, 0.999)


def test_apollo_mini_with_adafactor_rest_holds_under_0_3_of_adamw_state_at_60m():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                         tie_word_embeddings=False)
    with torch.device("meta"):  # planned bytes come from shapes alone
        model = LlamaForCausalLM(config)
    adamw = sum(so.create("adamw", model).planned_state_bytes().values())
    mini = sum(quiet(so.create, "apollo-mini", model, rest="adafactor").planned_state_bytes().values())
    assert mini <= 0.30 * adamw


FAST = ("apollo-mini", "fira")


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in so.available("gradient")
                                  if n not in ("adamw", "galore-adamw")])
def test_loss_falls_on_real_text(name):
    """A small LLaMA on Python stdlib source bytes: every recipe drives the loss down."""
    data = stdlib_bytes(32 * 1024)
    model = tiny_llama(vocab_size=256, hidden=64)
    lr = {"galore-lion": 3e-3, "frugal": 3e-3}.get(name, 1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {k: v for k, v in dict(rank=16, refresh_every=10).items() if so.recipe(name).accepts(k)}
        opt = so.create(name, model, lr=lr, **kw)
    losses = train_on_text(model, opt, 40, data)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_recipe_configs_list_what_a_call_may_pass():
    """The CLI, the memory planner and the bench ask a recipe's ``Config`` what it accepts: the
    runtime options are declared explicitly by every recipe, and unknown ones are refused (the
    zeroth-order recipes run no gradient step: their options are tested in tests/optim/test_zo.py)."""
    for name in so.available("gradient"):
        names = {o.name for o in so.recipe(name).options()}
        assert "check_finite" in names and "state_bits" in names, name
    mini = {o.name: o for o in so.APOLLOMini.options()}
    assert mini["scale"].default == 128.0 and "limiter" in mini and "side" in mini
    with pytest.raises(TypeError, match="moment_bits"):
        so.create("apollo", [("mlp.w", torch.nn.Parameter(torch.randn(8, 16)))], targets="mlp",
                  moment_bits=8)