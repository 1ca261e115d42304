"""The planner models each activation lever exactly: planned activation bytes (at the end of the
forward pass, without the recomputed region) equal the measured saved tensors, for every lever
and combinations, on the tiny preset."""

import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

import slimtrain.optim as so
from slimtrain.activations import apply_activation_checkpointing, compressed_activations, use_chunked_loss
from slimtrain.memory import measure, plan
from slimtrain.memory.activations import LlamaShape, saved_activation_bytes
from slimtrain.models import preset_config

CASES = [  # (param dtype, autocast, checkpointing, loss, activation bits, batch)
    ("float32", False, "all", "naive", None, 2),
    ("bfloat16", False, "every:3", "naive", None, 2),
    ("float32", True, "attn", "naive", None, 2),
    ("float32", False, "mlp", "naive", None, 2),
    ("float32", False, False, "chunked", None, 2),
    ("float32", True, False, "chunked", None, 2),
    ("float32", False, False, "naive", 8, 8),
    ("bfloat16", False, False, "naive", "fp8", 8),
    ("float32", True, "every:2", "chunked", 8, 8),
    ("float32", False, "attn", "chunked", "fp8", 3),  # T·i compressed, T·h below the threshold
]


@pytest.mark.parametrize("dtype,autocast,ckpt,loss,bits,batch", CASES)
def test_planned_activation_bytes_equal_measured(dtype, autocast, ckpt, loss, bits, batch):
    config = preset_config("tiny")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    if ckpt:
        apply_activation_checkpointing(model, ckpt)
    if loss == "chunked":
        use_chunked_loss(model)
    lever = compressed_activations(model, bits) if bits else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = so.create("adamw", model)
    measured = measure(model, opt, batch_size=batch, seq_len=32, steps=1, autocast=autocast,
                       lever=lever)["activations"]
    planned = plan(config, "adamw", batch_size=batch, seq_len=32, param_dtype=dtype, autocast=autocast,
                   activation_checkpointing=ckpt, loss=loss, activation_bits=bits)
    assert planned.activations - planned.details["recompute"] == measured
    if bits:
        assert planned.details["compressed_from"] > 0


def test_each_lever_lowers_the_plan():
    shape = LlamaShape.from_config(preset_config("60m"))
    base = saved_activation_bytes(shape, 8, 256)
    total = lambda d: d["saved"] + d["logits"]  # noqa: E731
    for kwargs in ({"loss": "chunked"}, {"checkpointing": "every:2"}, {"activation_bits": 8},
                   {"activation_bits": "fp8"}, {"offload": True}):
        assert total(saved_activation_bytes(shape, 8, 256, **kwargs)) < total(base), kwargs
    off = saved_activation_bytes(shape, 8, 256, offload=True)
    assert off["offloaded"] > 0 and total(base) - total(off) == off["offloaded"]
    # 8-bit codes + a float32 scale per 256 elements: ~(1 + 4/256)/4 of fp32
    c = saved_activation_bytes(shape, 8, 256, activation_bits=8)
    assert total(base) - total(c) == pytest.approx(c["compressed_from"] * (1 - 260 / 1024))


def test_plan_records_the_levers_and_keeps_the_bool_api():
    p = plan("tiny", "adamw", activation_checkpointing="every:2", loss="chunked", activation_bits="fp8")
    assert p.settings["activation_checkpointing"] == "every:2"
    assert p.settings["loss"] == "chunked" and p.settings["activation_bits"] == "fp8"
    assert p.details["logits"] == 0 and p.temporaries >= p.details["backward_head"]
    assert plan("tiny", "adamw", activation_checkpointing=True).settings["activation_checkpointing"] is True
    with pytest.raises(ValueError, match="bad activation checkpointing policy"):
        plan("tiny", "adamw", activation_checkpointing="every:0")


def test_budget_search_includes_the_levers():
    """The levers given apply to every setting searched (more: tests/memory/test_budget_levers.py)."""
    from slimtrain.memory import fitting_settings, parse_bytes

    budget = parse_bytes("64MiB")
    plain = fitting_settings(budget, "tiny", seq_len=256, recipes=["adamw"], loss="naive",
                             checkpointing="none", activation_bits=None, offload_activations=False)
    levers = fitting_settings(budget, "tiny", seq_len=256, recipes=["adamw"],
                              checkpointing=("none", "every:2", "all"), loss="chunked",
                              activation_bits=8)
    assert {f.settings["activation_checkpointing"] for f in levers} <= {False, "every:2", "all"}
    assert all(f.settings["loss"] == "chunked" and f.settings["activation_bits"] == 8 for f in levers)
    assert max(f.max_batch for f in levers) > max(f.max_batch for f in plain)
    for f in levers:  # each listed batch is the largest under the budget
        assert plan("tiny", "adamw", batch_size=f.max_batch, seq_len=256, **f.settings).total <= budget < \
            plan("tiny", "adamw", batch_size=f.max_batch + 1, seq_len=256, **f.settings).total


def test_cli_plan_takes_the_lever_flags():
    import json

    from typer.testing import CliRunner

    from slimtrain.cli import app

    args = ["plan", "--model", "tiny", "--json", "--batch-size", "4", "--loss", "chunked",
            "--activation-checkpointing", "attn", "--activation-bits", "fp8"]
    out = json.loads(CliRunner().invoke(app, args).stdout)
    expected = plan("tiny", "adamw", batch_size=4, loss="chunked", activation_checkpointing="attn",
                    activation_bits="fp8")
    assert out["activations"] == expected.activations and out["settings"]["activation_bits"] == "fp8"
    bad = CliRunner().invoke(app, ["plan", "--model", "tiny", "--activation-bits", "4"])
    assert bad.exit_code == 2 and "activation bits must be 8 or fp8" in bad.stderr
