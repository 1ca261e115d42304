"""Benchmark settings and method specs."""

import pytest

from slimtrain.bench.cli import DEFAULT_METHODS, GPU_PROTOCOL, SEED_METHODS, bench_settings, expand_methods
from slimtrain.bench.spec import BenchSettings, MethodSpec, parse_method
from slimtrain.errors import UserError


def test_method_specs_parse_typed_options_in_a_stable_order():
    spec = parse_method(" apollo-mini:scale=64:rest=adafactor:lr=2e-2 ")
    assert spec == MethodSpec("apollo-mini", (("lr", 0.02), ("rest", "adafactor"), ("scale", 64)))
    assert spec.text == "apollo-mini:lr=0.02:rest=adafactor:scale=64"
    assert spec.slug == "apollo-mini_lr-0.02_rest-adafactor_scale-64"
    assert parse_method(spec.text) == spec  # the text names the same method
    assert parse_method("galore-adamw:stagger=true").option_dict() == {"stagger": True}


@pytest.mark.parametrize("text", ["apollo-mini:rest", ":rank=4", "galore-adamw:=3"])
def test_malformed_specs_are_user_errors(text):
    with pytest.raises(UserError, match="--methods"):
        parse_method(text)


@pytest.mark.parametrize("change,message", [
    (dict(methods=[]), "--methods is empty"),
    (dict(tokens=100), "less than one batch"),
    (dict(seeds=[0, 0]), "distinct seeds"),
    (dict(seeds=[]), "distinct seeds"),
    (dict(methods=["adamw", "adamw"]), "twice"),
    (dict(trials=0), "--trials"),
    (dict(precision="fp16"), "--precision"),
    (dict(rank=0), "--rank"),
    (dict(weight_decay=-1.0), "--weight-decay"),
    (dict(centers="authors"), "--centers must be bench or papers"),
])
def test_bad_settings_are_user_errors(change, message):
    values = dict(methods=["adamw"], tokens=10_000, seq_len=64, batch_size=8)
    values.update(change)
    with pytest.raises(UserError, match=message):
        BenchSettings(**values).validate()


def test_steps_and_evaluations_follow_the_token_budget():
    s = BenchSettings(methods=["adamw"], tokens=600_000, seq_len=128, batch_size=16, evals=8)
    assert s.steps == 293 and s.eval_every == 37


def test_the_command_spells_out_every_setting_that_shapes_the_numbers():
    s = BenchSettings(methods=["adamw", "apollo-mini:rest=adafactor"], rank=16, seeds=[3, 4])
    command = s.command()
    for name, value in s.outcome_fields().items():
        if value is None or name == "text_field":  # spelled when --data is: it reads the data
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in command, flag
    assert "--methods adamw,apollo-mini:rest=adafactor" in command and "--seeds 3,4" in command


def test_method_keywords_expand():
    from slimtrain import optim
    from slimtrain.bench.methods import available

    assert expand_methods("default") == list(DEFAULT_METHODS)
    assert expand_methods("seeds") == list(SEED_METHODS)  # each seed recipe next to its package
    assert all(m in available() for m in SEED_METHODS)
    assert expand_methods("all") == available()
    assert expand_methods("slimtrain,adamw") == optim.available()  # no duplicates
    assert set(expand_methods("peers")) == set(available()) - set(optim.available())
    assert expand_methods("adamw, apollo-mini:rest=adafactor") == ["adamw", "apollo-mini:rest=adafactor"]


def test_the_defaults_bracket_and_repeat_three_seeds():
    s = BenchSettings(methods=["adamw"])
    assert s.trials == 10 and s.seeds == [0, 1, 2] and s.centers == "bench"


def test_the_gpu_protocol_is_the_papers_setting_under_the_same_rules(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    s = bench_settings({}, gpu_protocol=True)
    assert (s.model, s.seq_len, s.precision, s.centers) == ("60m", 256, "bf16", "papers")
    assert (s.trials, s.seeds) == (BenchSettings(methods=["x"]).trials, [0, 1, 2])  # the CPU defaults' rules
    assert s.steps == 192 and s.methods == ["adamw", "apollo-mini", "apollo-torch-mini"]
    assert bench_settings(dict(tokens=786_432, methods="adamw"), gpu_protocol=True).steps == 96  # flags win
    # The budget's arithmetic (cli.py): at the assumed 100k tokens/s per trial and ~15 s around each,
    # a method's most trials, one after another, plus a first run's ~90 s of tokenizer and cache fit
    # in 10 minutes. Raising --tokens or --trials in the preset must redo the estimate.
    most = s.trials + len(s.seeds) - 1
    assert most * (s.tokens / 100_000 + 15) + 90 <= 600
    assert len(s.methods) <= GPU_PROTOCOL["jobs"]  # every method's worker side by side


def test_the_gpu_protocol_needs_a_gpu_and_is_one_preset(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--gpu-protocol needs a CUDA GPU"):
        bench_settings({}, gpu_protocol=True)
    with pytest.raises(UserError, match="two presets"):
        bench_settings({}, quick=True, gpu_protocol=True)
