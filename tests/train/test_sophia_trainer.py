"""``slimtrain pretrain --optimizer sophia``: the trainer estimates SophiaG's curvature every k
steps (sampled labels, one extra backward) and a resumed run draws the same labels."""

import torch

from slimtrain.train.checkpoint import STATE_FILE, list_checkpoints

from .conftest import cli, resumes_exactly


def flags(model_dir, corpus, out):
    return ["--model", model_dir, "--data", corpus, "--out", out, "--steps", 12, "--batch-size", 4,
            "--seq-len", 64, "--eval-every", 12, "--save-every", 4, "--log-every", 1,
            "--eval-batches", 2, "--val-fraction", 0.2, "--optimizer", "sophia", "--lr", 1e-3,
            "--optim-arg", "hessian_every=3"]


def test_the_trainer_estimates_the_curvature_and_resumes_exactly(model_dir, corpus, tmp_path):
    # resumed from step 8: an estimate falls at step 9
    full = resumes_exactly(lambda out: flags(model_dir, corpus, out), tmp_path)
    state = torch.load(list_checkpoints(full)[-1] / STATE_FILE, weights_only=True)["optimizer"]
    assert all(float(s["hessian"].abs().sum()) > 0 for s in state["state"].values())
    assert state["param_groups"][0]["bs"] == 4 * 64  # tokens per step


def test_sophia_with_layer_wise_updates_is_one_clear_error(model_dir, corpus, tmp_path):
    result = cli("pretrain", *flags(model_dir, corpus, tmp_path / "run"), "--fused-backward")
    assert result.exit_code == 2
    assert "drop --fused-backward" in result.stderr and "Traceback" not in result.output
