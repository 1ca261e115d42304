"""The adapters of other libraries: each builds its package's optimizer on the same parameter
split as slimtrain's recipes, trains, and reports the state it really keeps."""

import warnings

import pytest
import torch

import slimtrain.optim as so
from slimtrain.bench.peers import PEERS, foreign_state_bytes, split_targets

from ..helpers import tiny_llama

RUNNABLE = [p for p in PEERS if p.unavailable() is None]
# torchao compiles its step with inductor: ~1 min per optimizer on a fresh machine.
COMPILED = {"torchao-adamw8bit", "torchao-adamw4bit"}


def marked(peers):
    return [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in COMPILED else [])
            for p in peers]


def one_step(model, opt, steps=1):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 256, (4, 32), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        opt.zero_grad()


@pytest.mark.peers
@pytest.mark.parametrize("peer", marked(RUNNABLE))
def test_each_adapter_trains_and_measures_its_state(peer):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = peer.build(model, 1e-2, 0.0, 8 if peer.default_rank else None, {})
    one_step(model, opt, steps=2)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, "no weight moved"
    state = opt.state_bytes() if hasattr(opt, "state_bytes") else None
    assert state is not None and sum(state.values()) > 0


def test_the_split_is_the_one_slimtrain_projects():
    model = tiny_llama()
    targets, rest = split_targets(model)
    galore = so.GaLoreAdamW(model, rank=8)
    assert [id(p) for p in targets] == [id(p) for p in galore.param_groups[0]["params"]]
    assert len(targets) + len(rest) == len(list(model.parameters()))


def peer(name):
    match = [p for p in RUNNABLE if p.name == name]
    if not match:
        pytest.skip(f"{name} cannot run here")
    return match[0]


@pytest.mark.peers
def test_torch_adamw_keeps_exactly_slimtrain_adamws_state():
    a, b = tiny_llama(), tiny_llama()
    ours, ref = so.AdamW(a), peer("torch-adamw").build(b, 1e-3, 0.0, None, {})
    one_step(a, ours)
    one_step(b, ref)
    assert sum(ref.state_bytes().values()) == sum(ours.state_bytes().values())


@pytest.mark.peers
def test_galore_torch_projectors_are_counted_by_their_matrices():
    a, b = tiny_llama(), tiny_llama()
    ours = so.GaLoreAdamW(a, rank=8)
    ref = peer("galore-torch-adamw").build(b, 1e-2, 0.0, 8, {})
    one_step(a, ours)
    one_step(b, ref)
    mine, theirs = ours.state_bytes(), ref.state_bytes()
    assert theirs["projectors"] == mine["projectors"] > 0  # r·min(m, n) fp32 per matrix, both
    # The same moments. Counters: theirs one Python int per parameter (8 bytes); ours a 4-byte step
    # per parameter and a 4-byte moment step per projected matrix.
    params, projected = len(list(b.parameters())), len(split_targets(b)[0])
    assert theirs["states"] - mine["states"] == 8 * params - 4 * (params + projected)


@pytest.mark.peers
@pytest.mark.slow
def test_torchao_states_count_their_codes_not_the_dequantized_size():
    model = tiny_llama()
    opt = peer("torchao-adamw8bit").build(model, 1e-3, 0.0, None, {})
    one_step(model, opt)
    fp32_moments = 2 * sum(p.nbytes for p in model.parameters())
    assert sum(opt.state_bytes().values()) < 0.5 * fp32_moments


def test_shared_tensors_count_once():
    class Projector:
        def __init__(self, matrix):
            self.ortho_matrix, self.rank = matrix, 4

    shared = torch.zeros(100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    opt.state = {0: {"a": shared, "b": shared, "step": 3, "projector": Projector(torch.zeros(10))}}
    assert foreign_state_bytes(opt) == {"states": 400 + 8, "projectors": 40}


@pytest.mark.peers
def test_lora_trains_adapters_and_everything_outside_the_matrices():
    model = tiny_llama()
    opt = peer("lora").build(model, 1e-3, 0.0, 4, {})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and "model.embed_tokens.weight" in trainable
    assert "lm_head.weight" in trainable and not any("base_layer" in n for n in trainable)
    one_step(model, opt)
    full = sum(so.AdamW(tiny_llama()).planned_state_bytes().values())
    assert sum(opt.state_bytes().values()) < full


def test_adamw_pergroup_gives_the_matrices_a_fraction_of_the_lr():
    model = tiny_llama()
    opt = peer("adamw-pergroup").build(model, 1e-2, 0.0, None, {"matrix_lr_ratio": 0.5})
    targets, rest = split_targets(model)
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 1e-2]
    assert len(opt.param_groups[0]["params"]) == len(targets)


@pytest.mark.peers
def test_galore_torch_8bit_steps_on_a_cpu_and_leaves_cuda_synchronize_alone():
    sync = torch.cuda.synchronize
    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    # rank 64: low-rank tensors of ≥ 4096 elements take bitsandbytes' 8-bit path; under 4096 (its
    # 32-bit path) the package leaves the matrices unchanged on a CPU (see the adapter's docstring)
    opt = peer("galore-torch-adamw8bit").build(model, 1e-2, 0.0, 64, {})
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # it wraps optimizer.step
    one_step(model, opt, steps=2)
    schedule.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.dim() == 2)
    assert torch.cuda.synchronize is sync


@pytest.mark.peers
def test_sophia_opt_takes_the_trainers_curvature_estimate():
    pytest.importorskip("sophia_opt")
    peer = next(p for p in PEERS if p.name == "sophia-opt")
    model = tiny_llama()
    opt = peer.build(model, 1e-3, 0.0, None, {"tokens_per_step": 128, "hessian_every": 3})
    assert opt.step_inputs == {"hessian_grads"} and opt.config.hessian_every == 3
    one_step(model, opt)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step(hessian_grads={p: torch.full_like(p, 2.0) for p in params})
    h = opt.state[params[0]]["hessian"]
    assert torch.allclose(h, torch.full_like(h, (1 - 0.99) * 4.0))
    assert torch.equal(params[0].grad, torch.ones_like(params[0]))  # the step's own gradient back


def test_torch_muon_peer_equals_slimtrains_muon():
    """The torch-muon adapter (torch's Muon + fused AdamW, stepped as one, a scheduler reaching
    both) trains exactly as slimtrain's muon recipe."""
    a, b = tiny_llama(), tiny_llama()
    b.load_state_dict(a.state_dict())
    ours = so.create("muon", a, lr=2e-2)
    ref = peer("torch-muon").build(b, 2e-2, 0.1, None, {})
    torch.optim.lr_scheduler.LambdaLR(ref, lambda k: 0.5)  # halves every group's lr
    assert sorted(g["lr"] for g in ref.param_groups) == [5e-4, 1e-2]
    for g in ours.param_groups:
        g["lr"] *= 0.5
    for _ in range(2):
        one_step(a, ours)
        one_step(b, ref)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    saved = ref.state_dict()  # the trainer's checkpoint round-trips it
    ref.load_state_dict(saved)
    assert len(saved["optimizers"]) == 2
    muon = sum(len(g["params"]) for g in ours.param_groups if g["rule"] == "muon")
    # the same moments; torch's Muon keeps no step counter (ours: 4 bytes a matrix)
    assert ref.state_bytes()["states"] == ours.state_bytes()["states"] - 4 * muon
