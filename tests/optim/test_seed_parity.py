"""The seeds' optimizers against their authors' packages (test-only dependencies): 20 steps on
random matrices and vectors, float64, weights within 1e-6 relative (max |ours − theirs| over
max |theirs|, per tensor). Where a package departs from its paper, the test says so and checks
the departure rather than hiding it."""

import contextlib
import io

import pytest
import torch

import slimtrain.optim as so

SHAPES = [(24, 12), (12, 24), (16,), (1, 8)]
STEPS = 20
TOL = 1e-6


def params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64)) for s in SHAPES]


def grads(step, spike=None):
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(*s, generator=g, dtype=torch.float64) for s in SHAPES]
    if spike is not None and step == spike:
        out[0][3, 2] *= 1000.0  # one element spikes (SPAM's clipping must act)
    return out


def relative_gap(ours, theirs) -> float:
    return max(float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())
               for a, b in zip(ours, theirs))


def run_pair(ours_fn, theirs_fn, steps=STEPS, spike=None, between=None):
    """Step both on the same gradients; ``between(step, theirs, ours_inputs)`` may add a call."""
    a, b = params(), params()
    ours, theirs = ours_fn(a), theirs_fn(b)
    with contextlib.redirect_stdout(io.StringIO()):  # some packages print on their first step
        for k in range(steps):
            for p, q, g in zip(a, b, grads(k, spike)):
                p.grad, q.grad = g.clone(), g.clone()
            inputs = between(k, theirs, a) if between else {}
            ours.step(**inputs)
            theirs.step()
            if between:
                between(k, theirs, None)
    return a, b


def named(ps):
    return [(f"w{i}", p) for i, p in enumerate(ps)]


@pytest.mark.peers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_equals_lion_pytorch(wd):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    a, b = run_pair(lambda ps: so.create("lion", named(ps), lr=1e-3, weight_decay=wd),
                    lambda ps: lion_pytorch.Lion(ps, lr=1e-3, weight_decay=wd))
    assert relative_gap(a, b) <= TOL


@pytest.mark.peers
@pytest.mark.parametrize("rectify", [True, False])
def test_adabelief_equals_adabelief_pytorch(rectify):
    pkg = pytest.importorskip("adabelief_pytorch")
    with contextlib.redirect_stdout(io.StringIO()):
        a, b = run_pair(
            lambda ps: so.create("adabelief", named(ps), lr=1e-2, weight_decay=0.1, rectify=rectify),
            lambda ps: pkg.AdaBelief(ps, lr=1e-2, weight_decay=0.1, rectify=rectify,
                                     print_change_log=False))
    assert relative_gap(a, b) <= TOL


@pytest.mark.peers
@pytest.mark.parametrize("no_prox,wd", [(False, 0.0), (False, 0.05), (True, 0.05)])
def test_adan_equals_pytorch_optimizer(no_prox, wd):
    po = pytest.importorskip("pytorch_optimizer")
    a, b = run_pair(
        lambda ps: so.create("adan", named(ps), lr=1e-2, weight_decay=wd, no_prox=no_prox),
        lambda ps: po.Adan(ps, lr=1e-2, weight_decay=wd, weight_decouple=no_prox, foreach=False))
    assert relative_gap(a, b) <= TOL


@pytest.mark.peers
def test_adan_pytorch_departs_from_the_paper_at_its_first_step():
    """adan-pytorch (betas written as 1 − β) updates no moment at its first step, so its weights
    do not move there; from the same start ours (the paper's, pytorch-optimizer's) does."""
    pkg = pytest.importorskip("adan_pytorch")
    a, b = run_pair(lambda ps: so.create("adan", named(ps), lr=1e-2),
                    lambda ps: pkg.Adan(ps, lr=1e-2, betas=(0.02, 0.08, 0.01)), steps=1)
    start = params()
    assert all(torch.equal(q, s) for q, s in zip(b, start))
    assert all(not torch.equal(p, s) for p, s in zip(a, start))


@pytest.mark.peers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sgd_sai_equals_the_authors_package(wd):
    pkg = pytest.importorskip("sgd_sai")
    a, b = run_pair(lambda ps: so.create("sgd-sai", named(ps), lr=1e-2, weight_decay=wd),
                    lambda ps: pkg.SGD_sai(ps, lr=1e-2, weight_decay=wd))
    assert relative_gap(a, b) <= TOL


@pytest.mark.peers
def test_pytorch_optimizers_sgd_sai_departs_from_the_authors_at_its_first_step():
    """pytorch-optimizer's SGDSaI starts its buffer at zero, so its first step is (1 − β) of the
    authors' (and ours) on a matrix; on a vector it also drops the std from the SNR."""
    po = pytest.importorskip("pytorch_optimizer")
    start = params()
    a, b = run_pair(lambda ps: so.create("sgd-sai", named(ps), weight_decay=0.0),
                    lambda ps: po.SGDSaI(ps, weight_decay=0.0, foreach=False), steps=1)
    ours, theirs = (start[0] - a[0]).detach(), (start[0] - b[0]).detach()
    torch.testing.assert_close(theirs, (1 - 0.9) * ours, rtol=1e-9, atol=0)


@pytest.mark.peers
def test_sgd_sai_keeps_one_scale_from_the_first_gradient():
    ps = params()
    opt = so.create("sgd-sai", named(ps))
    for k in range(3):
        for p, g in zip(ps, grads(k)):
            p.grad = g
        opt.step()
        if k == 0:
            first = {id(p): opt.state[p]["gsnr"].clone() for p in ps}
    g0 = grads(0)[0]
    expected = g0.norm() / (g0.std() + 1e-8)
    torch.testing.assert_close(opt.state[ps[0]]["gsnr"], expected)
    assert all(torch.equal(opt.state[p]["gsnr"], first[id(p)]) for p in ps)
    assert set(opt.state[ps[0]]) == {"step", "momentum_buffer", "gsnr"}


@pytest.mark.peers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sophia_equals_sophia_opt(wd):
    pkg = pytest.importorskip("sophia_opt")
    k_every, bs = 3, 64
    hat = {}

    def between(k, theirs, ours_params):
        # the authors' loop: after step k (k % 3 == 2), Ĝ at the new weights → update_hessian();
        # ours: the same Ĝ handed to step k + 1, which starts from those weights
        if ours_params is not None:
            return {"hessian_grads": dict(zip(ours_params, hat[k - 1]))} if k - 1 in hat else {}
        if k % k_every == k_every - 1:
            hat[k] = grads(1000 + k)
            for q, h in zip(theirs.param_groups[0]["params"], hat[k]):
                q.grad = h.clone()
            theirs.update_hessian()
        return {}

    class BS(pkg.SophiaG):
        def step(self, closure=None):
            return super().step(closure, bs=bs)

    a, b = run_pair(lambda ps: so.create("sophia", named(ps), lr=1e-2, weight_decay=wd, bs=bs),
                    lambda ps: BS(ps, lr=1e-2, weight_decay=wd), between=between)
    assert relative_gap(a, b) <= TOL


@pytest.mark.peers
@pytest.mark.parametrize("wd,tol", [(0.0, TOL), (0.1, 5e-5)])
def test_spam_equals_pytorch_optimizer(wd, tol):
    """With weight decay the two differ by the order of decay and update (ours decays first, as
    torch's AdamW; the SPAM code after): lr²·λ·|update| per step, 1e-5 here — hence 5e-5."""
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=1e-2, weight_decay=wd)
    a, b = run_pair(
        lambda ps: so.create("spam", named(ps), reset_every=8, reset_warmup=5, spike_after=3,
                             spike_threshold=50.0, **kw),
        lambda ps: po.SPAM(ps, update_proj_gap=8, warmup_epoch=5, grad_accu_steps=3,
                           threshold=50, foreach=False, **kw), spike=12)
    assert relative_gap(a, b) <= tol


@pytest.mark.peers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_stable_spam_equals_pytorch_optimizer(wd):
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=1e-2, weight_decay=wd)
    a, b = run_pair(lambda ps: so.create("stable-spam", named(ps), reset_every=7, **kw),
                    lambda ps: po.StableSPAM(ps, update_proj_gap=7, foreach=False, **kw), spike=12)
    assert relative_gap(a, b) <= TOL


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      attention_bias=True)
    return LlamaForCausalLM(cfg).double()


@pytest.mark.peers
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_mini_equals_the_authors_package(wd):
    pkg = pytest.importorskip("adam_mini")
    ours_model, theirs_model = tiny_llama(), tiny_llama()
    ours = so.create("adam-mini", ours_model, lr=1e-2, weight_decay=wd)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = pkg.Adam_mini(theirs_model.named_parameters(), lr=1e-2, weight_decay=wd, dim=32,
                               n_heads=4, n_kv_heads=2, verbose=False)
        for k in range(STEPS):
            g = torch.Generator().manual_seed(k)
            for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
                q.grad = p.grad.clone()
            ours.step()
            theirs.step()
    a, b = list(ours_model.parameters()), list(theirs_model.parameters())
    assert relative_gap(a, b) <= TOL


def test_adam_mini_partition_follows_the_names_of_a_llama():
    model = tiny_llama()
    opt = so.create("adam-mini", model)
    shapes = {n: tuple(opt.state[p]["exp_avg_sq"].shape) for n, p in model.named_parameters()}
    layer = "model.layers.0."
    assert shapes[layer + "self_attn.q_proj.weight"] == (4,)      # one per head
    assert shapes[layer + "self_attn.k_proj.weight"] == (2,)      # one per key-value head
    assert shapes[layer + "self_attn.q_proj.bias"] == (32,)       # biases: Adam's
    assert shapes[layer + "self_attn.v_proj.weight"] == (16,)     # one per output neuron
    assert shapes[layer + "mlp.down_proj.weight"] == (32,)
    assert shapes["model.embed_tokens.weight"] == (64,)           # one per token
    assert shapes[layer + "input_layernorm.weight"] == ()         # one per tensor
    decay = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert decay["model.norm.weight"] == 0.0 and decay[layer + "mlp.up_proj.weight"] == 0.0


def test_adam_mini_needs_names_and_heads():
    with pytest.raises(ValueError, match="parameter names"):
        so.create("adam-mini", [torch.nn.Parameter(torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="n_heads="):
        so.create("adam-mini", [("attn.q_proj.weight", torch.nn.Parameter(torch.zeros(4, 4)))])
    with pytest.raises(TypeError, match="unexpected keyword argument 'rank'"):
        so.create("sophia", [("w", torch.nn.Parameter(torch.zeros(4, 4)))], rank=2)
    with pytest.raises(ValueError, match="give rank= too"):
        so.create("lion", [("w", torch.nn.Parameter(torch.zeros(4, 4)))], targets="w")
