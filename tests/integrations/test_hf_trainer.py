"""slimtrain optimizers in a real ``transformers.Trainer``: ``hf.optimizer`` through
``optimizer_cls_and_kwargs`` honours ``TrainingArguments``; a run resumed from a Trainer
checkpoint equals the uninterrupted one; ``hf.Trainer(fused_backward=True)`` with gradient
accumulation equals the ordinary Trainer, clips by the previous norm and resumes exactly."""

import re
import shutil

import pytest
import torch
import transformers

import slimtrain.optim as so
from slimtrain.integrations import hf
from tests.helpers import tiny_llama

from .hf_helpers import logged, max_diff, run, trainer, training_args


def names_by_group(opt):
    return [(g.get("rank"), g["weight_decay"], sorted(g["param_names"])) for g in opt.param_groups]


# ------------------------------------------------------------------ TrainingArguments → options
def test_training_arguments_become_the_recipes_options(tmp_path):
    model = tiny_llama()
    args = training_args(tmp_path, learning_rate=2e-3, weight_decay=0.1,
                         optim_args="rank=8,update_proj_gap=50,scale=0.5,proj_type=right")
    options = hf.options_from_training_args("galore-adamw", args, model)
    opt = so.create("galore-adamw", model, **options)
    projected = [g for g in opt.param_groups if g.get("rank")]
    assert {g["rank"] for g in projected} == {8} and {g["refresh_every"] for g in projected} == {50}
    assert {g["scale"] for g in projected} == {0.5} and {g["side"] for g in projected} == {"right"}
    assert {g["lr"] for g in opt.param_groups} == {2e-3}
    named = {n for g in projected for n in g["param_names"]}
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and (".self_attn." in n or ".mlp." in n)}
    assert named == linear  # the linear modules of self_attn and mlp, nothing else
    # weight decay: transformers' own rule exempts the norms (no biases in LLaMA)
    exempt = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in g["param_names"]}
    decayed = {n for g in opt.param_groups if g["weight_decay"] == 0.1 for n in g["param_names"]}
    assert exempt == {n for n, _ in model.named_parameters() if "norm" in n}
    assert decayed | exempt == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("spec, expect", [
    ("all-linear", lambda n: True),                     # every nn.Linear, lm_head included
    (r".*\.mlp\.(up|down)_proj", lambda n: ".mlp.up_proj" in n or ".mlp.down_proj" in n),
    (["q_proj", "model.layers.1.mlp.gate_proj"],
     lambda n: "q_proj" in n or n.startswith("model.layers.1.mlp.gate_proj")),
])
def test_optim_target_modules_as_transformers_reads_them(spec, expect):
    model = tiny_llama()
    patterns = [re.compile(p) for p in hf.target_modules(model, spec)]
    chosen = {n for n, _ in model.named_parameters() if any(p.search(n) for p in patterns)}
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert chosen == {f"{n}.weight" for n in linear if expect(n)} and chosen


@pytest.mark.parametrize("make, message", [
    (lambda a: setattr(a, "optim_args", "rank=8,gap"), "is not KEY=VALUE"),
    (lambda a: setattr(a, "optim_args", "rnak=8"), "does not take"),
    (lambda a: setattr(a, "optim_target_modules", ["no_such_module"]), "matches no linear module"),
])
def test_bad_training_arguments_are_refused_with_what_to_do(tmp_path, make, message):
    args = training_args(tmp_path)
    make(args)
    with pytest.raises(ValueError, match=message):
        hf.options_from_training_args("galore-adamw", args, tiny_llama())


def test_target_modules_on_a_recipe_that_projects_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="projects nothing"):
        hf.options_from_training_args("adamw8bit", training_args(tmp_path, optim_args=None),
                                      tiny_llama())


def test_bad_options_fail_when_the_factory_is_made_not_at_train():
    with pytest.raises(TypeError, match="rnak"):
        hf.optimizer("galore-adamw", rnak=8)
    with pytest.raises(ValueError, match="unknown optimizer"):
        hf.optimizer("galore-adamx")


def test_options_given_to_optimizer_win_over_training_arguments(tmp_path):
    t = trainer(tmp_path, options={"rank": 4, "lr": 1e-4})
    t.create_optimizer()
    opt = t.optimizer
    assert {g["rank"] for g in opt.param_groups if g.get("rank")} == {4}
    assert {g["lr"] for g in opt.param_groups} == {1e-4}


# ------------------------------------------------------------------ resume from a Trainer checkpoint
@pytest.mark.parametrize("recipe", ["galore-adamw", "apollo-mini", "adamw8bit"])
def test_resume_from_a_trainer_checkpoint_equals_the_uninterrupted_run(recipe, tmp_path):
    """The plain ``transformers.Trainer``: ``optimizer.pt`` holds slimtrain's state (loaded by
    the Trainer with weights_only), bases and seeds included."""
    whole, weights = run(trainer(tmp_path / "whole", recipe, cls=transformers.Trainer))
    assert len(whole) == 8 and whole[-1] < whole[0]
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", again / "checkpoint-4")
    resumed, resumed_weights = run(trainer(again, recipe, cls=transformers.Trainer),
                                   resume=str(again / "checkpoint-4"))
    assert resumed == whole  # the checkpoint's history, then the same four steps
    assert max_diff(resumed_weights, weights) == 0.0


# ------------------------------------------------------------------ layer-wise updates in Trainer
@pytest.mark.parametrize("recipe", ["galore-adamw", "adamw8bit", "apollo-mini"])
@pytest.mark.parametrize("accumulate", ["full", "subspace"])
def test_fused_backward_with_accumulation_equals_the_ordinary_trainer(recipe, accumulate, tmp_path):
    """``full``: every gradient accumulated as the ordinary Trainer does — the same numbers.
    ``subspace``: projected matrices sum R = project(G) per micro-batch, equal to project(ΣG) to
    float rounding; a later subspace refresh on a nearly flat spectrum (this untrained model)
    can amplify that rounding, so here the basis is chosen once, at step 1."""
    gap = "rank=8,update_proj_gap=100"
    plain, plain_weights = run(trainer(tmp_path / "plain", recipe, gradient_accumulation_steps=2,
                                       optim_args=gap))
    t = trainer(tmp_path / "fused", recipe, gradient_accumulation_steps=2, optim_args=gap,
                fused_backward=True, fused_options={"accumulate": accumulate})
    fused, fused_weights = run(t)
    assert t.fused is not None and t.fused.grad_accum == 2  # the layer-wise mode really ran
    assert len(fused) == 8 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(fused, plain))
    assert max_diff(fused_weights, plain_weights) <= (0.0 if accumulate == "full" else 1e-5)


def test_fused_backward_clips_by_the_previous_norm_logs_norms_and_resumes_exactly(tmp_path):
    settings = dict(gradient_accumulation_steps=2, max_grad_norm=0.5, fused_backward=True)
    t = trainer(tmp_path / "whole", **settings)
    whole, weights = run(t)
    norms = logged(t, "grad_norm")
    assert len(norms) == 8 and all(n > 0.5 for n in norms)  # clipping active on every step
    assert t.fused.clip_coef < 1.0
    plain = run(trainer(tmp_path / "plain", gradient_accumulation_steps=2, max_grad_norm=0.5))[0]
    assert whole[:1] == pytest.approx(plain[:1], rel=1e-5)  # step 1: no previous norm yet
    assert whole != pytest.approx(plain, rel=1e-6)          # then the previous-norm strategy
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", again / "checkpoint-4")
    resumed, resumed_weights = run(trainer(again, **settings), resume=str(again / "checkpoint-4"))
    assert resumed == whole and max_diff(resumed_weights, weights) == 0.0


def test_fused_backward_refuses_what_it_cannot_do(tmp_path):
    t = trainer(tmp_path / "torch", "adamw", fused_backward=True)
    t.optimizer_cls_and_kwargs = None
    t.args.optim = "adamw_torch"
    with pytest.raises(ValueError, match="needs a slimtrain optimizer"):
        run(t)
