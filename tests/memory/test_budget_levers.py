"""The budget search (``fitting_settings``, ``slimtrain plan --budget``) searches the activation
levers the planner models: the loss, checkpointing policies, compressed activations, offload (cuda
only) and FP8 optimizer states; an explicit value restricts it; each setting listed fits."""

import json

import pytest
from transformers import LlamaConfig
from typer.testing import CliRunner

from slimtrain.cli import app
from slimtrain.memory import fitting_settings, parse_bytes, plan
from slimtrain.memory.activations import saved_activation_bytes
from slimtrain.memory.budget import STATE_BITS, lever_cost

# activations and logits dominate and each saved storage is at least 1 MiB at batch 1 (offload's
# threshold): every lever alone buys batch here (2 plain; 3 chunked, 4 checkpointing all, 5 8-bit)
CONFIG = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                     tie_word_embeddings=False)
SEQ = 512
BUDGET = parse_bytes("768MiB")
PLAIN = dict(loss="naive", checkpointing="none", activation_bits=None, offload_activations=False)
FIXED = dict(recipes=["adamw"], state_bits=32, fused_backward=False, seq_len=SEQ)


def search(**kwargs):
    return fitting_settings(BUDGET, CONFIG, **{**FIXED, **kwargs})


def best(fits) -> int:
    return max(f.max_batch for f in fits)


def plan_of(fit, batch):
    return plan(CONFIG, fit.recipe, batch_size=batch, seq_len=SEQ, **fit.settings)


@pytest.mark.parametrize("lever,check", [
    ("loss", lambda s: s["loss"] == "chunked"),
    ("checkpointing", lambda s: s["activation_checkpointing"] not in (False, None)),
    ("activation_bits", lambda s: s["activation_bits"] == 8),
    ("offload_activations", lambda s: s["offload_activations"] is True),
])
def test_each_lever_searched_finds_a_larger_batch(lever, check):
    plain = search(**PLAIN)
    assert [f.levers for f in plain] == [[]]
    opened = search(**{k: v for k, v in PLAIN.items() if k != lever})  # that lever searched
    assert best(opened) > best(plain)
    top = max(opened, key=lambda f: f.max_batch)
    assert check(top.settings) and top.levers
    # by default every lever is searched: at least as large as any one of them
    assert best(search()) >= best(opened)


def test_levers_are_listed_only_where_they_buy_batch_cheapest_first():
    fits = fitting_settings(BUDGET, CONFIG, seq_len=SEQ, recipes=["adamw", "galore-adamw"])
    groups = {}
    for f in fits:
        key = (f.recipe, f.settings.get("rank"), f.settings.get("state_bits"), f.settings["fused_backward"])
        groups.setdefault(key, []).append(f)
    assert len(groups) > 4
    for group in groups.values():  # within one optimizer setting: costlier levers, larger batches
        ordered = sorted(group, key=lambda f: lever_cost(f.settings))
        batches = [f.max_batch for f in ordered]
        assert batches == sorted(set(batches)), [(f.levers, f.max_batch) for f in ordered]
    keys = [(-f.state_bytes, lever_cost(f.settings), f.settings["fused_backward"], -f.max_batch)
            for f in fits]
    assert keys == sorted(keys)
    # the chunked loss is free: a setting listed with the naive loss would not fit more chunked
    for f in fits:
        if f.settings["loss"] == "naive":
            chunked = plan(CONFIG, f.recipe, batch_size=f.max_batch + 1, seq_len=SEQ,
                           **{**f.settings, "loss": "chunked"})
            assert chunked.total > BUDGET


def test_each_listed_batch_is_the_largest_that_fits():
    fits = fitting_settings(BUDGET, CONFIG, seq_len=SEQ, recipes=["adamw", "galore-adamw8bit"])
    assert {tuple(f.levers) for f in fits} >= {("chunked loss",), ("chunked loss", "8-bit activations"),
                                               ("chunked loss", "offloaded activations")}
    for f in fits:
        at, above = plan_of(f, f.max_batch), plan_of(f, f.max_batch + 1)
        assert at.total == f.total <= BUDGET < above.total, (f.recipe, f.settings)
        assert f.state_bytes == at.optimizer_states + at.projectors
        assert f.host_bytes == at.details["offloaded"]
        assert (f.host_bytes > 0) == f.settings["offload_activations"]


def test_an_explicit_lever_restricts_the_search():
    for kwargs, key, value in ((dict(loss="naive"), "loss", "naive"),
                               (dict(loss="chunked"), "loss", "chunked"),
                               (dict(checkpointing="attn"), "activation_checkpointing", "attn"),
                               (dict(checkpointing="all"), "activation_checkpointing", "all"),
                               (dict(checkpointing="none"), "activation_checkpointing", False),
                               (dict(activation_bits="fp8"), "activation_bits", "fp8"),
                               (dict(activation_bits=None), "activation_bits", None),
                               (dict(offload_activations=False), "offload_activations", False)):
        fits = search(**kwargs)
        assert fits and {f.settings[key] for f in fits} == {value}, kwargs
    both = search(checkpointing=["none", "mlp"], activation_bits=None, offload_activations=False)
    assert {f.settings["activation_checkpointing"] for f in both} <= {False, "mlp"}
    assert "mlp" in {f.settings["activation_checkpointing"] for f in both}
    ranked = fitting_settings(BUDGET, CONFIG, seq_len=SEQ, recipes=["galore-adamw"], ranks=[64],
                              state_bits="fp8", fused_backward=True)
    assert ranked and all(f.settings["rank"] == 64 and f.settings["state_bits"] == "fp8"
                          and f.settings["fused_backward"] for f in ranked)


def test_offload_is_searched_for_cuda_only():
    cpu = search(device="cpu")
    assert cpu and not any(f.settings["offload_activations"] for f in cpu)
    assert any(f.settings["offload_activations"] for f in search(device="cuda:0"))
    assert best(search(device="cuda")) > best(cpu)
    with pytest.raises(ValueError, match="already in host memory"):
        search(device="cpu", offload_activations=True)
    # compressed activations and offload: searched apart, refused together (as the trainer does)
    assert not any(f.settings["offload_activations"] and f.settings["activation_bits"] for f in search())
    with pytest.raises(ValueError, match="pick one"):
        search(offload_activations=True, activation_bits=8)


def test_fp8_states_are_searched():
    fp8 = search(state_bits="fp8")
    assert fp8 and [f.settings["state_bits"] for f in fp8] == ["fp8"] * len(fp8)
    for f in fp8:
        assert f.state_bytes == (lambda p: p.optimizer_states + p.projectors)(plan_of(f, 1))
    # searched by default, and listed once, as 8, where it plans byte for byte as 8-bit states;
    # listed apart when asked for in a list
    same = [(f.max_batch, f.total, f.levers) for f in fp8] == \
        [(f.max_batch, f.total, f.levers) for f in search(state_bits=8)]
    assert ("fp8" in {f.settings["state_bits"] for f in search(state_bits=STATE_BITS)}) == (not same)
    assert {f.settings["state_bits"] for f in search(state_bits=[32, 8, "fp8"])} == {32, 8, "fp8"}


def test_zeroth_order_recipes_get_only_the_loss_searched():
    fits = fitting_settings(BUDGET, CONFIG, seq_len=SEQ, recipes=["mezo"])
    assert fits
    for f in fits:
        assert f.settings["activation_checkpointing"] is False and f.settings["activation_bits"] is None
        assert not f.settings["offload_activations"]


def test_one_loss_check_for_planner_and_activation_model():
    from slimtrain.memory import activations, planner

    with pytest.raises(ValueError, match="loss must be naive or chunked"):
        plan("tiny", "adamw", loss="fused")
    with pytest.raises(ValueError, match="loss must be naive or chunked"):
        saved_activation_bytes(activations.LlamaShape.from_config(CONFIG), 1, 8, loss="fused")
    with pytest.raises(ValueError, match="loss must be naive or chunked"):
        search(loss="fused")
    assert planner.check_loss is activations.check_loss


def cli(*args):
    return CliRunner().invoke(app, ["plan", "--model", "60m", "--seq-len", "1024", *args])


def test_cli_budget_shows_and_restricts_the_levers(monkeypatch):
    from slimtrain.memory import cli as plan_cli

    monkeypatch.setattr(plan_cli.console, "width", 200)  # the table whole, as in a wide terminal
    shown = cli("--budget", "3GiB", "--recipe", "galore-adamw", "--rank", "128", "--state-bits", "8",
                "--fused-backward", "--device", "cpu")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "activation levers" in text and "chunked loss" in text and "checkpointing" in text
    assert "offloaded" not in text
    out = cli("--budget", "3GiB", "--recipe", "galore-adamw", "--rank", "128", "--json", "--top", "100")
    fits = json.loads(out.stdout)["fits"]
    assert fits and {f["state_bits"] for f in fits} >= {32, 8}
    assert any(f["offload_activations"] for f in fits) and not all(f["offload_activations"] for f in fits)
    assert {f["fused_backward"] for f in fits} == {False, True}
    for f in fits:
        assert isinstance(f["levers"], list) and isinstance(f["host_bytes"], int)
        assert ("chunked loss" in f["levers"]) == (f["loss"] == "chunked")
    only = json.loads(cli("--budget", "3GiB", "--recipe", "galore-adamw", "--rank", "128", "--json",
                          "--loss", "naive", "--activation-checkpointing", "attn",
                          "--activation-bits", "none", "--no-offload-activations",
                          "--no-fused-backward", "--state-bits", "fp8").stdout)["fits"]
    assert only and all(f["loss"] == "naive" and f["activation_checkpointing"] == "attn"
                        and f["activation_bits"] is None and not f["offload_activations"]
                        and not f["fused_backward"] and f["state_bits"] == "fp8" and f["rank"] == 128
                        for f in only)


@pytest.mark.parametrize("args,message", [
    (["--budget", "3GiB", "--device", "cpu", "--offload-activations"], "already in host memory"),
    (["--device", "cpu", "--offload-activations"], "already in host memory"),
    (["--budget", "3GiB", "--offload-activations", "--activation-bits", "8"], "pick one"),
    (["--offload-activations", "--activation-bits", "fp8"], "pick one"),
    (["--budget", "3GiB", "--loss", "fused"], "loss must be naive or chunked"),
    (["--budget", "3GiB", "--activation-checkpointing", "every:0"], "bad activation checkpointing"),
    (["--budget", "3GiB", "--activation-bits", "4"], "activation bits must be 8 or fp8"),
    (["--device", "tpu"], "--device must be"),
    (["--budget", "3GiB", "--device", "cuda:x"], "--device must be"),
    (["--budget", "3GiB", "--batch-size", "4"], "--budget searches the largest batch"),
    (["--budget", "3GiB", "--grad-accum", "2"], "--budget searches the largest batch"),
])
def test_cli_bad_lever_combinations_give_one_line(args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
