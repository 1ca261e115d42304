"""``slimtrain pretrain --optimizer lisa``: the trainer runs the sampled blocks and a run resumed
mid-period continues exactly (the sampler's state travels with the optimizer's)."""

import torch

from slimtrain.train.checkpoint import STATE_FILE, list_checkpoints

from .conftest import cli, resumes_exactly


def flags(model_dir, corpus, out):
    return ["--model", model_dir, "--data", corpus, "--out", out, "--steps", 10, "--batch-size", 4,
            "--seq-len", 64, "--eval-every", 10, "--save-every", 4, "--log-every", 1,
            "--eval-batches", 2, "--val-fraction", 0.2, "--optimizer", "lisa", "--lr", 1e-3,
            "--optim-arg", "layers_active=1", "--optim-arg", "layers_every=3"]


def test_lisa_trains_and_resumes_exactly(model_dir, corpus, tmp_path):
    # resumed from step 8: mid-period (K = 3)
    full = resumes_exactly(lambda out: flags(model_dir, corpus, out), tmp_path)
    state = torch.load(list_checkpoints(full)[-1] / STATE_FILE, weights_only=True)["optimizer"]
    assert state["param_groups"][0]["_layer_sampling"][0] == 10  # steps taken


def test_lisa_with_layer_wise_updates_is_one_clear_error(model_dir, corpus, tmp_path):
    result = cli("pretrain", *flags(model_dir, corpus, tmp_path / "run"), "--fused-backward")
    assert result.exit_code == 2
    assert "drop --fused-backward" in result.stderr and "Traceback" not in result.output
