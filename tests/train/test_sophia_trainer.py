"""``slimtrain pretrain --optimizer sophia``: the trainer estimates SophiaG's curvature every k
steps (sampled labels, one extra backward) and a resumed run draws the same labels."""

import shutil

import torch

from slimtrain.train.checkpoint import STATE_FILE, list_checkpoints

from .conftest import assert_same_weights, cli, final_weights, trajectory


def flags(model_dir, corpus, out):
    return ["--model", model_dir, "--data", corpus, "--out", out, "--steps", 12, "--batch-size", 4,
            "--seq-len", 64, "--eval-every", 12, "--save-every", 4, "--log-every", 1,
            "--eval-batches", 2, "--val-fraction", 0.2, "--optimizer", "sophia", "--lr", 1e-3,
            "--optim-arg", "hessian_every=3"]


def test_the_trainer_estimates_the_curvature_and_resumes_exactly(model_dir, corpus, tmp_path):
    full = tmp_path / "full"
    result = cli("pretrain", *flags(model_dir, corpus, full))
    assert result.exit_code == 0, result.stderr
    state = torch.load(list_checkpoints(full)[-1] / STATE_FILE, weights_only=True)["optimizer"]
    assert all(float(s["hessian"].abs().sum()) > 0 for s in state["state"].values())
    assert state["param_groups"][0]["bs"] == 4 * 64  # tokens per step
    out = tmp_path / "resumed"
    assert cli("pretrain", *flags(model_dir, corpus, out)).exit_code == 0
    shutil.rmtree(list_checkpoints(out)[-1])  # resume from step 8: an estimate falls at step 9
    result = cli("pretrain", "--resume", out)
    assert result.exit_code == 0, result.stderr
    assert trajectory(out) == trajectory(full)
    assert_same_weights(final_weights(out), final_weights(full))


def test_sophia_with_layer_wise_updates_is_one_clear_error(model_dir, corpus, tmp_path):
    result = cli("pretrain", *flags(model_dir, corpus, tmp_path / "run"), "--fused-backward")
    assert result.exit_code == 2
    assert "drop --fused-backward" in result.stderr and "Traceback" not in result.output
