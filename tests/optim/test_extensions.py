"""The optimizer's extension seams: a rule registered from outside the package, the shape-aware
fallback of matrix-only rules, the extra-inputs channel of ``step()``, and no silent no-op."""

import io
import warnings
from dataclasses import dataclass

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim.config import Hyper, option
from slimtrain.optim.recipes.base import Base, Projection, Runtime
from slimtrain.optim.rules import RULES, Rule

from .test_contract import named_params, set_grads, snapshot


@dataclass
class MomentumHyper(Hyper):
    momentum: float = option(0.9, "decay of the momentum", low=0, high=1, open_high=True)


class SignMomentum(Rule):
    """A toy rule from outside the package: D = sign(M), M ← μM + G; one moment."""

    Hyper = MomentumHyper
    implementations = ("forloop",)
    reprojectable = {"momentum_buffer": "first"}

    def moment_shapes(self, shape, group):
        return {"momentum_buffer": tuple(shape)}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        out = []
        for g, m, c in zip(grads, moments, counts):
            c += 1
            m["momentum_buffer"].mul_(group["momentum"]).add_(g)
            out.append(m["momentum_buffer"].sign())
        return out, [1.0] * len(grads)


class MatrixScale(Rule):
    """A toy matrix-only rule: D = G / ‖G‖_F (refuses anything but a matrix)."""

    matrix_only = True

    def moment_shapes(self, shape, group):
        assert len(shape) == 2, f"a matrix-only rule got shape {shape}"
        return {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        for c in counts:
            c += 1
        return [g / g.norm() for g in grads], [1.0] * len(grads)


class Scaled(Rule):
    """A toy rule that needs an extra input: D = scale · G (``step(scale=…)``)."""

    needs = ("scale",)

    def moment_shapes(self, shape, group):
        return {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        for c in counts:
            c += 1
        scales = [1.0 if s is None else s for s in inputs["scale"]]  # None: not given for it
        return [g * s for g, s in zip(grads, scales)], [1.0] * len(grads)


class ClosureRule(Rule):
    """A toy rule that calls the closure itself and steps by the loss it returns."""

    needs = ("closure",)

    def moment_shapes(self, shape, group):
        return {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        for c in counts:
            c += 1
        loss = float(inputs["closure"][0]())
        return [g * loss for g in grads], [1.0] * len(grads)


for _name, _rule in (("test-sign-momentum", SignMomentum), ("test-matrix-scale", MatrixScale),
                     ("test-scaled", Scaled), ("test-closure", ClosureRule)):
    if _name not in RULES:
        so.register_rule(_name, _rule)


def groups_with(rule, named, **keys):
    return [{"params": named, "rule": rule, **keys}]


@pytest.mark.parametrize("extra", [dict(), dict(rank=3, refresh_every=2), dict(state_bits=8,
                                                                               quantize_min_numel=64)])
def test_a_registered_rule_trains_checkpoints_and_resumes(extra, tmp_path):
    def build(named):
        return so.PipelineOptimizer(groups_with("test-sign-momentum", named, **extra),
                                    {"lr": 1e-2, "momentum": 0.8})

    named = named_params()
    opt = build(named)
    assert opt.param_groups[0]["momentum"] == 0.8 and "betas" not in opt.param_groups[0]
    for k in range(8):
        set_grads(named, k)
        opt.step()
    expected = snapshot(named)
    assert opt.state_bytes() == opt.planned_state_bytes()

    named = named_params()
    first = build(named)
    for k in range(3):
        set_grads(named, k)
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    weights = snapshot(named)
    named = named_params()
    with torch.no_grad():
        for (_, p), w in zip(named, weights):
            p.copy_(w)
    resumed = build(named)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for k in range(3, 8):
        set_grads(named, k)
        resumed.step()
    for (name, p), e in zip(named, expected):
        assert torch.equal(p, e), f"{name} differs after resume"


def test_the_rule_checks_its_own_hyperparameters():
    with pytest.raises(ValueError, match="momentum must be a number >= 0 and < 1"):
        so.PipelineOptimizer(groups_with("test-sign-momentum", named_params()), {"momentum": 1.5})
    with pytest.raises(ValueError, match="unknown rule 'test-sign-momentun'.*test-sign-momentum"):
        so.PipelineOptimizer(groups_with("test-sign-momentun", named_params()), {})
    with pytest.raises(ValueError, match="already registered"):
        so.register_rule("adam", SignMomentum)


def test_matrix_only_rule_hands_other_parameters_to_adamw():
    named = named_params()  # three matrices, an embedding (2-D), a norm and a bias
    ref = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = so.PipelineOptimizer(groups_with("test-matrix-scale", named), {"lr": 0.05})
    said = [str(w.message) for w in caught if "works on matrices only" in str(w.message)]
    assert len(said) == 1 and "norm.weight" in said[0] and "block.mlp.tall.bias" in said[0]
    matrices, others = opt.param_groups
    assert [opt.plan_of(p).name for p in matrices["params"]] == [n for n, p in named if p.dim() == 2]
    assert others["rule"] == "adam" and others["lr"] == 1e-3 and others["betas"] == (0.9, 0.999)
    adamw = torch.optim.AdamW([p for _, p in ref if p.dim() != 2], lr=1e-3, weight_decay=0.0)
    for k in range(4):
        set_grads(named, k)
        set_grads(ref, k)
        expected = {n: p.detach() - 0.05 * p.grad / p.grad.norm() for n, p in named if p.dim() == 2}
        opt.step()
        adamw.step()
        for (name, p), (_, q) in zip(named, ref):
            if p.dim() == 2:
                torch.testing.assert_close(p.detach(), expected[name], rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(p, q), f"{name} is not AdamW's"
    custom = so.PipelineOptimizer(groups_with("test-matrix-scale", named_params(),
                                              fallback={"lr": 3e-4, "betas": (0.8, 0.9)}), {})
    assert custom.param_groups[1]["lr"] == 3e-4 and custom.param_groups[1]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="fallback takes"):
        so.PipelineOptimizer(groups_with("test-matrix-scale", named_params(),
                                         fallback={"momentum": 0.5}), {})


def test_a_matrix_only_recipe_leaves_its_lr_to_the_rest():
    """The embeddings, head and norms of a Muon-like recipe train at AdamW's lr, not the rule's."""

    @dataclass
    class ToyConfig(Runtime, Projection, Base):
        pass

    class ToyMatrixRecipe(so.ProjectedRecipe):
        Config = ToyConfig
        rule = "test-matrix-scale"

    model_params = named_params()
    opt = ToyMatrixRecipe(model_params, lr=0.05, rank=None, targets=r"\.mlp\.\w+\.weight$")
    rule_group, rest = opt.param_groups
    assert rule_group["rule"] == "test-matrix-scale" and rule_group["lr"] == 0.05
    assert rest["rule"] == "adam" and rest["lr"] == 1e-3


def test_extra_inputs_reach_the_rules_that_declared_them():
    named = named_params()
    opt = so.PipelineOptimizer(groups_with("test-scaled", named), {"lr": 0.1})
    assert opt.step_inputs == {"scale"}
    set_grads(named, 0)
    before = snapshot(named)
    opt.step(scale=torch.tensor(2.0))
    for (name, p), b in zip(named, before):
        torch.testing.assert_close(p.detach(), b - 0.1 * 2.0 * p.grad, msg=name)
    tall = dict(named)["block.mlp.tall.weight"]
    before = snapshot(named)
    opt.step(scale={tall: 3.0, "norm.weight": 0.0})  # by parameter and by name; others absent
    for (name, p), b in zip(named, before):
        if name == "block.mlp.tall.weight":
            torch.testing.assert_close(p.detach(), b - 0.3 * p.grad)
        elif name == "norm.weight":
            assert torch.equal(p, b)
        else:
            torch.testing.assert_close(p.detach(), b - 0.1 * p.grad, msg=name)
    with pytest.raises(ValueError, match="step\\(\\) got the input 'hessian', which no rule"):
        opt.step(hessian=torch.ones(()))
    with pytest.raises(ValueError, match="no rule"):
        so.create("adamw", named_params()).step(scale=1.0)


def test_a_rule_may_take_the_closure():
    named = named_params()
    opt = so.PipelineOptimizer(groups_with("test-closure", named), {"lr": 0.1})
    calls = []
    set_grads(named, 0)
    before = snapshot(named)
    assert opt.step(lambda: calls.append(1) or torch.tensor(0.5)) is None  # the rule called it
    assert calls == [1]
    for (name, p), b in zip(named, before):
        torch.testing.assert_close(p.detach(), b - 0.1 * 0.5 * p.grad, msg=name)


def test_layerwise_refuses_rules_that_need_inputs():
    from tests.helpers import tiny_llama

    model = tiny_llama()
    opt = so.PipelineOptimizer([{"params": list(model.named_parameters()), "rule": "test-scaled"}],
                               {})
    with pytest.raises(ValueError, match="layer-wise updates cannot hand step\\(\\) inputs"):
        so.fuse_backward(model, opt)


def test_a_step_without_any_gradient_says_so_once():
    named = named_params()
    opt = so.create("adamw", named)
    with pytest.warns(UserWarning, match="found no parameter with a gradient"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # said once
    set_grads(named, 0)
    opt.step()
