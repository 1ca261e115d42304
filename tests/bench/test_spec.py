"""Benchmark settings and method specs."""

import pytest

from slimtrain.bench.cli import DEFAULT_METHODS, SEED_METHODS, expand_methods
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
