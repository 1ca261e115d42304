"""A micro LLaMA in a local model directory (config.json + tokenizer, no weights) and a real-text
corpus: the whole CLI path runs on them in about a second per run."""

import json

import pytest
from typer.testing import CliRunner

from slimtrain.cli import app
from slimtrain.data import train_bpe
from tests.helpers import write_stdlib_jsonl

MICRO = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512, hidden_size=64,
             intermediate_size=144, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_stdlib_jsonl(tmp_path_factory.mktemp("corpus") / "stdlib.jsonl", 400_000)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("micro-llama")
    (path / "config.json").write_text(json.dumps(MICRO))
    texts = (json.loads(line)["text"] for line in corpus.read_text().splitlines())
    train_bpe(texts, MICRO["vocab_size"], path)
    return path


def cli(*args):
    """Run the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def base_args(model_dir, corpus, out, steps=24, **extra):
    args = dict(model=model_dir, data=corpus, out=out, steps=steps, batch_size=4, seq_len=64,
                eval_every=8, save_every=8, log_every=1, keep_last=3, rank=8, eval_batches=2,
                val_fraction=0.2)  # a small corpus has few documents: hold out more
    args.update(extra)
    flat = []
    for key, value in args.items():
        flat += [f"--{key.replace('_', '-')}"] + ([] if value is None else [value])  # None: a bare flag
    return flat + ["--optim-arg", "refresh_every=5"]  # subspace refreshes fall on both sides of a resume


COMPARED = ("step", "loss", "lr", "tokens", "grad_norm", "val_loss")  # not timings or memory


def trajectory(run_dir):
    """What must match between an interrupted-and-resumed run and an uninterrupted one."""
    from slimtrain.train.metrics import read_metrics

    return [{k: r[k] for k in COMPARED if k in r} for r in read_metrics(run_dir)]


def final_weights(run_dir):
    from safetensors.torch import load_file

    from slimtrain.train.checkpoint import WEIGHTS_FILE, list_checkpoints

    return load_file(str(list_checkpoints(run_dir)[-1] / WEIGHTS_FILE))


def assert_same_weights(a, b):
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def resumes_exactly(flags, tmp_path):
    """Run ``pretrain *flags(out)`` whole, and again stopped before its last checkpoint then
    resumed: the two trajectories and final weights must be equal. Returns the whole run's
    directory."""
    import shutil

    from slimtrain.train.checkpoint import list_checkpoints

    full, out = tmp_path / "full", tmp_path / "resumed"
    for run in (full, out):
        result = cli("pretrain", *flags(run))
        assert result.exit_code == 0, result.stderr
    shutil.rmtree(list_checkpoints(out)[-1])
    result = cli("pretrain", "--resume", out)
    assert result.exit_code == 0, result.stderr
    assert trajectory(out) == trajectory(full)
    assert_same_weights(final_weights(out), final_weights(full))
    return full


@pytest.fixture(scope="session")
def reference(tmp_path_factory, model_dir, corpus):
    """An uninterrupted 24-step run (checkpoints at 8, 16, 24)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = cli("pretrain", *base_args(model_dir, corpus, out))
    assert result.exit_code == 0, result.stderr
    return out
