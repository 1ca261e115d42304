"""The whole CLI path on a micro LLaMA: pretrain, loss falls, checkpoints, exact resume, Ctrl-C."""

import json
import math
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from slimtrain import optim
from slimtrain.train.checkpoint import list_checkpoints, load_trainer_state
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import (assert_same_weights, base_args, cli, final_weights, trajectory)


def test_pretrain_learns_and_writes_a_complete_run_directory(reference):
    records = read_metrics(reference)
    assert [r["step"] for r in records] == list(range(1, 25))
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.25  # validation loss falls
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert all(r["optimizer_state_bytes"] > 0 and r["peak_memory_bytes"] > 0 for r in records)
    assert [p.name for p in list_checkpoints(reference)] == ["step-00000008", "step-00000016",
                                                             "step-00000024"]
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["val_loss"] == evals[-1]
    assert (reference / "loss.png").stat().st_size > 10_000
    # A checkpoint is a model directory in Hugging Face layout.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = list_checkpoints(reference)[-1]
    model = AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True)
    assert AutoTokenizer.from_pretrained(ckpt).eos_token == "<|endoftext|>"
    assert torch.equal(model.state_dict()["lm_head.weight"], final_weights(reference)["lm_head.weight"])


def test_resume_continues_bit_identically(reference, model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", *base_args(model_dir, corpus, out)).exit_code == 0
    assert trajectory(out) == trajectory(reference)  # runs are reproducible
    # A crash after step 16's checkpoint: step 24 is gone and must be recomputed identically.
    shutil.rmtree(list_checkpoints(out)[-1])
    result = cli("pretrain", "--resume", out)
    assert result.exit_code == 0, result.stderr
    assert "resuming from" in result.stdout and "step 16" in result.stdout
    assert trajectory(out) == trajectory(reference)
    assert_same_weights(final_weights(out), final_weights(reference))


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(model_dir, corpus, tmp_path):
    args = dict(steps=160, save_every=1000, eval_every=40)
    full = tmp_path / "full"
    assert cli("pretrain", *base_args(model_dir, corpus, full, **args)).exit_code == 0
    out = tmp_path / "interrupted"

    def press_ctrl_c_once_training_runs():
        deadline = time.time() + 60
        while time.time() < deadline:
            if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=press_ctrl_c_once_training_runs)
    watcher.start()
    result = cli("pretrain", *base_args(model_dir, corpus, out, **args))
    watcher.join()
    assert result.exit_code == 130
    assert "checkpoint saved" in result.stderr and f"--resume {out}" in result.stderr
    (ckpt,) = list_checkpoints(out)
    stopped = load_trainer_state(ckpt)["step"]
    assert 3 <= stopped < 160 and read_metrics(out)[-1]["step"] == stopped

    assert cli("pretrain", "--resume", out).exit_code == 0
    assert trajectory(out) == trajectory(full)
    assert_same_weights(final_weights(out), final_weights(full))


def _run(model_dir, corpus, out, **settings):
    result = cli("pretrain", *base_args(model_dir, corpus, out, **settings))
    assert result.exit_code == 0, result.stderr
    return read_metrics(out)


def test_gradient_accumulation_equals_the_larger_batch(model_dir, corpus, tmp_path):
    one = _run(model_dir, corpus, tmp_path / "one", steps=4, batch_size=4, grad_clip=0)
    accumulated = _run(model_dir, corpus, tmp_path / "acc", steps=4, batch_size=2, grad_accum=2,
                       grad_clip=0)
    for a, b in zip(one, accumulated):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4


def test_activation_checkpointing_recomputes_the_same_numbers(model_dir, corpus, tmp_path):
    plain = _run(model_dir, corpus, tmp_path / "plain", steps=3, eval_every=3)
    checkpointed = _run(model_dir, corpus, tmp_path / "ckpt", steps=3, eval_every=3,
                        activation_checkpointing="all")
    assert trajectory(tmp_path / "plain") == trajectory(tmp_path / "ckpt")
    assert len(plain) == len(checkpointed) == 3


def test_bf16_autocast_trains(model_dir, corpus, tmp_path):
    records = _run(model_dir, corpus, tmp_path / "bf16", steps=8, precision="bf16")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.parametrize("recipe", optim.available())
def test_every_registered_recipe_trains_through_the_cli(recipe, model_dir, corpus, tmp_path):
    out = tmp_path / recipe
    result = cli("pretrain", "--model", model_dir, "--data", corpus, "--optimizer", recipe, "--out", out,
                 "--steps", 3, "--batch-size", 2, "--seq-len", 32, "--eval-every", 3, "--log-every", 1,
                 "--val-fraction", 0.2, "--eval-batches", 1)
    assert result.exit_code == 0, result.stderr
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3] and math.isfinite(records[-1]["val_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["optimizer_state_bytes"]
