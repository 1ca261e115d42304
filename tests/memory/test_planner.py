"""The planner agrees with measurement: exactly for tensors we can count, within 10% for activations."""

import json
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

import slimtrain.optim as so
from slimtrain.cli import app
from slimtrain.memory import fitting_settings, measure, parse_bytes, plan
from slimtrain.memory.budget import rank_ladder
from slimtrain.memory.planner import recipe_accepts


def small_config(**overrides):
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                tie_word_embeddings=False)
    return LlamaConfig(**{**base, **overrides})


def small_kwargs(recipe):
    return {"rank": 8} if recipe_accepts(recipe, "rank") else {}


def build(config, recipe, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, so.create(recipe, model, **kwargs)


@pytest.mark.parametrize("recipe", so.available())
def test_planned_state_bytes_equal_measured_for_every_recipe(recipe):
    config = small_config()
    kwargs = small_kwargs(recipe)
    model, opt = build(config, recipe, **kwargs)
    measured = measure(model, opt, batch_size=2, seq_len=16, steps=2)
    planned = plan(config, recipe, batch_size=2, seq_len=16, **kwargs)
    assert planned.optimizer_states == measured["optimizer_states"]
    assert planned.projectors == measured["projectors"]
    for part in ("weights", "gradients"):
        assert planned.to_dict()[part] == measured[part]


# Sophia (its step reads an input), layer sampling and weight normalisation refuse layer-wise
# updates; zeroth-order recipes have no backward to fuse (refused: tests/optim/test_zo.py)
@pytest.mark.parametrize("recipe", [n for n in so.available("gradient")
                                    if n not in ("sophia", "lisa", "owlore", "gradnorm-lorp")])
@pytest.mark.parametrize("grad_accum,refresh_from", [(1, "accumulated"), (2, "first")])
def test_planned_fused_gradients_bound_measured(recipe, grad_accum, refresh_from):
    """Layer-wise: the planned gradient bytes (the gradient being produced, at most the largest,
    plus the accumulation buffers) bound the measured peak, and equal it without accumulation.
    Below ordinary training's, except where every gradient accumulates in full (AdamW, and the
    recipes whose update reads G: APOLLO, Fira, FRUGAL) — there by that one incoming gradient."""
    config = small_config()
    kwargs = small_kwargs(recipe)
    model, opt = build(config, recipe, **kwargs)
    low_rank = any(opt.takes_low_rank(g, p) for g in opt.param_groups for p in g["params"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = measure(model, opt, batch_size=2, seq_len=16, steps=2, fused_backward=True,
                           grad_accum=grad_accum, refresh_from=refresh_from)
    planned = plan(config, recipe, batch_size=2, seq_len=16, fused_backward=True,
                   grad_accum=grad_accum, fused_refresh_from=refresh_from, **kwargs).gradients
    ordinary = plan(config, recipe, batch_size=2, seq_len=16, **kwargs).gradients
    assert measured["gradients"] <= planned
    if grad_accum == 1:
        assert measured["gradients"] == planned < ordinary
    elif low_rank:
        assert planned < ordinary
    else:
        assert planned == ordinary + max(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("dtype,autocast,ckpt", [
    (torch.float32, False, False), (torch.bfloat16, False, False),
    (torch.float32, True, False), (torch.float32, False, True)])
@pytest.mark.parametrize("batch", [2, 5])
def test_planned_activations_match_measured(dtype, autocast, ckpt, batch):
    config = small_config()
    model, opt = build(config, "adamw", dtype)
    if ckpt:
        model.gradient_checkpointing_enable()
    measured = measure(model, opt, batch_size=batch, seq_len=32, steps=1, autocast=autocast)
    planned = plan(config, "adamw", batch_size=batch, seq_len=32, param_dtype=dtype, autocast=autocast,
                   activation_checkpointing=ckpt)
    # ``measure`` sees what is saved at the end of forward; the plan adds the recomputed layer.
    expected = planned.activations - planned.details["recompute"]
    assert abs(expected / measured["activations"] - 1) < 0.10
    assert expected == measured["activations"]  # the model is exact for transformers' LLaMA


def test_paper_presets_plan_without_allocating():
    result = plan("7b", "galore-adamw", rank=1024, batch_size=1, seq_len=2048, param_dtype="bfloat16")
    assert result.details["parameters"] == 6_738_415_616
    assert result.weights == 2 * 6_738_415_616
    assert result.gradients == result.weights
    assert result.total == sum(result.to_dict()[k] for k in
                               ("weights", "gradients", "optimizer_states", "projectors", "activations",
                                "temporaries"))


def test_a_recipe_that_reads_step_inputs_is_not_planned_layer_wise():
    with pytest.raises(ValueError, match="layer-wise updates cannot hand step\(\) inputs.*plan it without fused backward"):
        plan(small_config(), "sophia", batch_size=2, seq_len=16, fused_backward=True)


def test_fused_backward_keeps_one_gradient():
    result = plan("60m", "adamw", fused_backward=True)
    assert result.gradients == 32000 * 512 * 4  # the largest parameter: embeddings / LM head


def test_fused_backward_accumulation_buffers():
    """With grad_accum > 1: low-rank buffers for GaLore's matrices with refresh_from="first"; with
    the default "accumulated" refresh the first step holds every gradient in full."""
    ordinary = plan("60m", "galore-adamw", rank=128).gradients
    largest = 32000 * 512 * 4
    accumulated = plan("60m", "galore-adamw", rank=128, fused_backward=True, grad_accum=4)
    assert accumulated.gradients == ordinary + largest
    first = plan("60m", "galore-adamw", rank=128, fused_backward=True, grad_accum=4,
                 fused_refresh_from="first")
    # 8 layers: q, k, v, o (512×512 → 128×512) and gate, up (512×1376 → 128×1376), down (1376×512 → 1376×128)
    low_rank = 8 * (4 * 128 * 512 + 3 * 128 * 1376) * 4
    rest = ordinary - 8 * (4 * 512 * 512 + 3 * 512 * 1376) * 4  # embeddings, head, norms in full
    assert first.gradients == largest + low_rank + rest
    assert first.settings["fused_refresh_from"] == "first"
    with pytest.raises(ValueError, match="fused_refresh_from"):
        plan("60m", "galore-adamw", fused_backward=True, grad_accum=2, fused_refresh_from="last")


def test_fused_backward_steps_one_matrix_at_a_time():
    """The step's low-rank temporaries (R and the direction, 2·r·max(m, n)): every matrix's at
    once when the whole group steps; the largest matrix's alone with layer-wise updates."""
    whole = plan("60m", "galore-adamw", rank=128).details["step_temporaries"]
    fused = plan("60m", "galore-adamw", rank=128, fused_backward=True).details["step_temporaries"]
    assert whole == 8 * 2 * (4 * 128 * 512 + 3 * 128 * 1376) * 4
    assert fused == 2 * 128 * 1376 * 4


def test_budget_lists_settings_that_fit_best_first():
    budget = parse_bytes("3GiB")
    fits = fitting_settings(budget, "60m", seq_len=256)
    assert fits
    assert [f.state_bytes for f in fits] == sorted((f.state_bytes for f in fits), reverse=True)
    for f in fits[:4]:  # the settings are plan()'s keywords: rank, state bits, the levers, …
        at = plan("60m", f.recipe, batch_size=f.max_batch, seq_len=256, **f.settings)
        above = plan("60m", f.recipe, batch_size=f.max_batch + 1, seq_len=256, **f.settings)
        assert at.total <= budget < above.total
    assert rank_ladder(512) == [256, 128, 64]


@pytest.mark.parametrize("args,message", [
    (["--model", "llama-3b"], "unknown model preset"),
    (["--batch-size", "-1"], "batch_size must be >= 1"),
    (["--seq-len", "4096"], "exceeds the model's max_position_embeddings"),
    (["--budget", "100MiB"], "below the weights alone"),
    (["--budget", "24G"], "ambiguous unit"),
    (["--recipe", "adamw", "--rank", "8"], "does not take rank"),
    (["--recipe", "nope"], "unknown optimizer"),
])
def test_bad_input_gives_one_clear_error(args, message):
    result = CliRunner().invoke(app, ["plan", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cli_json_has_integer_parts():
    result = CliRunner().invoke(app, ["plan", "--model", "60m", "--recipe", "galore-adamw", "--rank", "128",
                                      "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("weights", "gradients", "optimizer_states", "projectors", "activations", "temporaries", "total"):
        assert isinstance(data[key], int)
    assert data["projectors"] > 0


def test_units_are_explicit():
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("80GB") == 80 * 10**9
    with pytest.raises(ValueError, match="ambiguous"):
        parse_bytes("24G")
