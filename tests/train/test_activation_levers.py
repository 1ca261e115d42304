"""The activation levers in the trainer: each checkpointing policy recomputes the same numbers,
8-bit and FP8 saved activations train close to the exact run, offload is refused on CPU, config
files of before the policies still load, and a run may resume with checkpointing switched on."""

import pytest
import yaml

from slimtrain.train.checkpoint import list_checkpoints
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import base_args, cli, trajectory


def run(model_dir, corpus, out, *extra, **settings):
    result = cli("pretrain", *base_args(model_dir, corpus, out, **settings), *extra)
    assert result.exit_code == 0, result.stderr
    return read_metrics(out)


@pytest.fixture(scope="module")
def plain(model_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    run(model_dir, corpus, out, steps=6, eval_every=3, save_every=3)
    return out


# the test model has 2 decoder layers: every:2 wraps layer 0; attn and mlp a block of each
@pytest.mark.parametrize("policy, wrapped", [("every:2", ["LlamaDecoderLayer"]),
                                              ("attn", ["LlamaAttention"] * 2),
                                              ("mlp", ["LlamaMLP"] * 2)])
def test_each_checkpointing_policy_recomputes_the_same_numbers(plain, model_dir, corpus, tmp_path,
                                                               policy, wrapped, monkeypatch):
    """The same trajectory, and the policy really ran: the blocks it names were wrapped and their
    forwards went through torch's checkpoint (a trajectory alone would not see a dropped policy)."""
    from slimtrain.activations import checkpointing

    kinds, calls = [], []
    real_wrap, real_checkpoint = checkpointing._wrap, checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "_wrap",
                        lambda module: kinds.append(type(module).__name__) or real_wrap(module))
    monkeypatch.setattr(checkpointing, "checkpoint",
                        lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    out = tmp_path / "ckpt"
    run(model_dir, corpus, out, "--activation-checkpointing", policy, steps=6, eval_every=3,
        save_every=3)
    assert kinds == wrapped
    assert calls, "no forward was checkpointed"
    assert trajectory(out) == trajectory(plain)


@pytest.mark.parametrize("bits", ["8", "fp8"])
def test_compressed_saved_activations_train_close_to_the_exact_run(plain, model_dir, corpus,
                                                                   tmp_path, bits):
    out = tmp_path / "bits"
    records = run(model_dir, corpus, out, "--activation-bits", bits, steps=6, eval_every=3,
                  save_every=3)
    exact = read_metrics(plain)
    assert records[0]["loss"] == exact[0]["loss"]  # the forward is exact; backward reads codes
    # measured: within 0.012% (8-bit) and 0.031% (fp8) of the exact run's losses over 6 steps
    assert all(abs(a["loss"] - b["loss"]) <= 0.002 * b["loss"] for a, b in zip(records, exact))
    assert any(a["loss"] != b["loss"] for a, b in zip(records, exact))  # the codes were used
    assert records[-1]["loss"] < records[0]["loss"]


def test_bad_levers_are_refused_in_one_line(model_dir, corpus, tmp_path):
    for extra, message in ((["--activation-checkpointing", "every:0"], "every:K"),
                           (["--activation-bits", "4"], "8 or fp8"),
                           (["--offload-activations"], "already in host memory")):
        result = cli("pretrain", *base_args(model_dir, corpus, tmp_path / "x"), *extra)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_run_resumes_with_checkpointing_switched_on_and_old_configs_load(plain, model_dir, corpus,
                                                                           tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(plain, out)
    for ckpt in list_checkpoints(out)[1:]:
        shutil.rmtree(ckpt)  # back to step 3
    (out / "metrics.jsonl").write_text("".join(
        line + "\n" for line in (out / "metrics.jsonl").read_text().splitlines()[:3]))
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["activation_checkpointing"] = True  # as written before the policies: a bool
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    result = cli("pretrain", "--resume", out)
    assert result.exit_code == 0, result.stderr
    assert trajectory(out) == trajectory(plain)
