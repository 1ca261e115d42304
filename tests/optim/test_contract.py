"""The contract every recipe keeps (DESIGN §2), run for every entry of ``cases.CASES``."""

import io
import math
import warnings

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim import weight_norm

from ..helpers import quiet
from .cases import CASES

SHAPES = {"tall": (24, 12), "wide": (12, 24), "square": (16, 16)}


def named_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    specs = [(f"block.mlp.{k}.weight", s) for k, s in SHAPES.items()]
    specs += [("embed.weight", (40, 8)), ("norm.weight", (8,)), ("block.mlp.tall.bias", (24,))]
    return [(n, torch.nn.Parameter(torch.randn(*s, generator=g).to(dtype))) for n, s in specs]


def set_grads(named, step, scale=1.0):
    g = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        p.grad = (torch.randn(p.shape, generator=g) * scale).to(p.dtype)


def run(case, named, steps, opt=None, start=0, **overrides):
    opt = opt or case.build(named, **overrides)
    for k in range(start, start + steps):
        set_grads(named, k)
        opt.step()
    return opt


def snapshot(named):
    return [p.detach().clone() for _, p in named]


@pytest.fixture(params=CASES, ids=[f"{c.name}-{i}" for i, c in enumerate(CASES)])
def case(request):
    return request.param


BASIS_KEYS = {"basis", "seed", "basis_codes", "basis_scale", "basis_min"}


def test_every_shape_steps_and_keeps_low_rank_state(case):
    named = named_params()
    opt = run(case, named, 4)
    for name, p in named:
        state = opt.state[p]
        assert state, f"{name} has no state"
        if case.projects and name.startswith("block.mlp.") and name.endswith(".weight"):
            m, n = p.shape
            r = case.kwargs["rank"]
            low_rank = {(r, n), (m, r)}
            # the logical moments (dequantized when stored in low bits: codes + per-block scales)
            moments = {k.removesuffix("_codes"): opt.moment(p, k.removesuffix("_codes"))
                       for k, t in state.items() if t.dim() >= 1 and k not in BASIS_KEYS
                       and not k.startswith("refresh_") and not k.endswith("_absmax")
                       and k not in weight_norm.KEYS}  # GradNormLoRP's rows: not the rule's
            assert moments, f"{name} keeps no moments"
            for key, t in moments.items():
                # every moment is sized from the r×max(m, n) update: itself, a stack of it, or
                # its row / column factors — never from the m×n matrix
                if t.dim() >= 2:
                    assert tuple(t.shape[-2:]) in low_rank, (key, t.shape)
                else:  # a factor (r, m or n numbers), or one number (SGD-SaI's scale, a stage's)
                    assert t.numel() in {1, r, m, n} and t.numel() <= max(m, n), (key, t.shape)
            assert any(tuple(t.shape[-2:]) in low_rank for t in moments.values() if t.dim() >= 2) \
                or set(moments) >= {"exp_avg_sq_row", "exp_avg_sq_col"}
        assert all(torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t))


def test_full_rank_limit_equals_the_unprojected_rule(case):
    """With rank >= min(m, n) a projected recipe falls back to its rule unprojected (warned): with
    Adam it equals torch's AdamW bit for bit; with Lion / Adafactor their reference optimizers."""
    named = named_params()
    ref_named = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    overrides = {"rank": 64} if case.projects else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = case.build(named, **overrides)
    if case.projects:
        assert any("saves nothing" in str(w.message) for w in caught)
    if not case.equals_reference:
        pytest.skip("the recipe declares it cannot equal a full-precision reference (quantized states)")
    impls = [(dict(fused=True), dict(fused=True)), (dict(fused=False), dict(foreach=True)),
             (dict(fused=False, foreach=False), dict(foreach=False))]
    for ours_kw, torch_kw in impls:
        refs = case.references(ref_named, torch_kw)
        opt = quiet(case.build, named, **overrides, **ours_kw)
        for k in range(5):
            set_grads(named, k)
            set_grads(ref_named, k)
            opt.step()
            for ref in refs:
                ref.step()
        for (name, p), (_, q) in zip(named, ref_named):
            if case.exact:
                assert torch.equal(p, q), f"{name} differs from the reference ({torch_kw})"
            else:
                torch.testing.assert_close(p, q, rtol=case.rtol, atol=case.rtol / 10,
                                           msg=f"{name} ({torch_kw})")


def test_resume_is_bit_identical_across_a_refresh(case, tmp_path):
    named = named_params()
    uninterrupted = run(case, named, 10)
    expected = snapshot(named)

    named = named_params()
    first = run(case, named, 4)
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    saved_weights = snapshot(named)
    del first

    named = named_params()
    with torch.no_grad():
        for (_, p), w in zip(named, saved_weights):
            p.copy_(w)
    resumed = case.build(named)
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    run(case, named, 6, opt=resumed, start=4)
    for (name, p), e in zip(named, expected):
        assert torch.equal(p, e), f"{name} differs after resume"
    assert uninterrupted.state_dict()["format_version"] == so.STATE_FORMAT


def test_no_silent_noop(case):
    named = named_params()
    before = snapshot(named)
    run(case, named, 1)
    for (name, p), b in zip(named, before):
        assert not torch.equal(p, b), f"{name} did not change after a step with a non-zero gradient"


def test_nonfinite_gradient_never_reaches_state(case):
    named = named_params()
    opt = run(case, named, 3)  # step 3 is a refresh step for refresh_every=3
    target = dict(named)["block.mlp.wide.weight"]
    state_before = {k: v.clone() for k, v in opt.state[target].items()}
    weight_before = target.detach().clone()
    set_grads(named, 3)
    target.grad[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="NaN/Inf"):
        opt.step()
    assert torch.equal(target, weight_before)
    for k, v in opt.state[target].items():
        assert torch.equal(v, state_before[k]), f"state {k} changed on a NaN gradient"
    set_grads(named, 4)
    dict(named)["block.mlp.tall.weight"].grad[1, 1] = float("inf")
    with pytest.warns(UserWarning, match="NaN/Inf"):
        opt.step()
    for p in opt.state:
        assert all(torch.isfinite(t).all() for t in opt.state[p].values())


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "lr must be"),
    (dict(betas=(1.0, 0.999)), "beta"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_arguments(case, kwargs, match):
    if "betas" in kwargs:
        kwargs = case.bad_betas  # the recipe's own name for its decay rates (Adafactor: beta1)
        match = case.bad_betas_match
    with pytest.raises(ValueError, match=match):
        case.build(named_params(), **kwargs)


def test_bad_rank_and_targets(case):
    if not case.projects:
        pytest.skip("recipe has no rank")
    for rank in (0, -3, 2.5):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            case.build(named_params(), rank=rank)
    with pytest.raises(ValueError, match="matches no parameter"):
        case.build(named_params(), targets=r"no_such_module")


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown optimizer 'galore-adam'.*Did you mean galore-adamw"):
        so.create("galore-adam", named_params())


def test_implementations_agree_in_float64(case):
    """Every parameter's distinct code paths agree: for-loop == foreach bit for bit, fused (torch's
    kernel) == for-loop to rounding, the low-bit kernel == its eager reference to rounding. Only
    legs that run different code for a parameter are compared (``implementations``): a rule with
    one implementation (Adafactor) has nothing to compare here, and a case where no parameter has
    two is skipped, not passed."""
    results, impls = {}, {}
    for label, kw in (("forloop", dict(fused=False, foreach=False)), ("foreach", dict(fused=False)),
                      ("fused", dict(fused=True))):
        named = named_params(torch.float64)
        opt = run(case, named, 7, **kw)
        impls = {name: opt.implementations(p) for name, p in named}
        results[label] = named
    compared = 0
    for (name, p), (_, q), (_, f) in zip(results["forloop"], results["foreach"], results["fused"]):
        has = impls[name]
        if "foreach" in has:
            assert torch.equal(p, q), f"{name}: foreach != for-loop"
            compared += 1
        if "fused" in has or "kernel" in has:
            torch.testing.assert_close(f, p, rtol=1e-12, atol=1e-13, msg=f"{name}: fused != for-loop")
            compared += 1
    if not compared:
        pytest.skip("every parameter of this case has one implementation (Adafactor)")


def test_planned_state_bytes_equal_measured(case):
    named = named_params()
    opt = case.build(named)
    planned = opt.planned_state_bytes()
    run(case, named, 2, opt=opt)
    assert opt.state_bytes() == planned


def test_load_keeps_state_dtypes_and_does_not_share(case):
    named = named_params(torch.bfloat16)
    opt = run(case, named, 2)
    sd = opt.state_dict()
    # Inject a uint8 state tensor (as low-bit states carry): torch's loader would cast it to bf16.
    sd["state"][0]["codes"] = torch.arange(7, dtype=torch.uint8)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = case.build(named)
    other.load_state_dict(torch.load(buf, weights_only=True))
    first_param = other.param_groups[0]["params"][0]
    assert other.state[first_param]["codes"].dtype == torch.uint8
    for p, st in opt.state.items():
        for k, v in st.items():
            assert other.state[p][k].dtype == v.dtype, f"{k} changed dtype on load"
            assert other.state[p][k].data_ptr() != v.data_ptr(), "state shared with the source"


def test_rejects_foreign_and_mismatched_state(case):
    named = named_params()
    opt = run(case, named, 2)
    ref = torch.optim.AdamW([p for _, p in named])
    with pytest.raises(ValueError, match="not written by slimtrain"):
        opt.load_state_dict(ref.state_dict())
    other = [(n, torch.nn.Parameter(torch.randn(p.shape[::-1]) if p.dim() == 2 else p.detach().clone()))
             for n, p in named]
    with pytest.raises(ValueError, match="different model"):
        case.build(other).load_state_dict(opt.state_dict())


def test_works_with_lr_scheduler(case):
    named = named_params()
    opt = case.build(named)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for k in range(3):
        set_grads(named, k)
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], case.kwargs["lr"] * 0.125)
