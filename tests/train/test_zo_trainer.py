"""``slimtrain finetune/pretrain --optimizer mezo``: the closure branch of the loop (no backward),
MeZO's defaults, the lr warning, exact resume, refusals, and 2 DDP ranks equal to one process."""

import json
import subprocess
import sys

import pytest
import torch.distributed as dist
import yaml

from slimtrain.train.checkpoint import list_checkpoints
from slimtrain.train.metrics import read_metrics

from .conftest import cli, resumes_exactly


def flags(model_dir, corpus, out, *extra):
    return ["--model", model_dir, "--data", corpus, "--out", out, "--steps", 10, "--batch-size", 4,
            "--seq-len", 64, "--eval-every", 10, "--save-every", 4, "--log-every", 1,
            "--eval-batches", 2, "--val-fraction", 0.2, "--optimizer", "mezo", "--lr", 1e-4,
            "--optim-arg", "q=2", *extra]


def test_mezo_resumes_exactly(model_dir, corpus, tmp_path):
    full = resumes_exactly(lambda out: flags(model_dir, corpus, out), tmp_path)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["gradient_bytes"] == 0
    assert summary["optimizer_state_bytes"] < 1024  # step counters only: the log is kilobytes
    losses = [r["loss"] for r in read_metrics(full)]
    assert all(r.get("grad_norm", 0) > 0 for r in read_metrics(full))  # ĝ's rms, logged
    assert losses[-1] < losses[0]


def test_finetune_uses_mezos_defaults_and_warns_outside_them(reference, corpus, tmp_path):
    pretrained = list_checkpoints(reference)[-1]
    out = tmp_path / "ft"
    result = cli("finetune", "--model", pretrained, "--data", corpus, "--optimizer", "mezo",
                 "--steps", 2, "--seq-len", 32, "--eval-every", 2, "--eval-batches", 1,
                 "--log-every", 1, "--val-fraction", 0.2, "--out", out)
    assert result.exit_code == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["lr"], saved["batch_size"], saved["schedule"], saved["warmup_steps"]) == \
        (None, 16, "constant", 0)
    assert "peak lr 1e-06" in result.stdout and "gradients" in result.stdout
    assert [r["lr"] for r in read_metrics(out)] == [1e-6, 1e-6]  # constant, from the first step
    loud = cli("finetune", "--model", pretrained, "--data", corpus, "--optimizer", "mezo",
               "--lr", 3e-5, "--steps", 1, "--seq-len", 32, "--eval-every", 1, "--eval-batches", 1,
               "--val-fraction", 0.2, "--out", tmp_path / "loud")
    assert loud.exit_code == 0 and "usually diverge" in loud.stdout


def test_layer_wise_updates_are_refused_in_one_line(model_dir, corpus, tmp_path):
    result = cli("pretrain", *flags(model_dir, corpus, tmp_path / "run", "--fused-backward"))
    assert result.exit_code == 2
    assert "no backward pass" in result.stderr and "Traceback" not in result.output


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_ddp_ranks_equal_one_process(model_dir, corpus, tmp_path):
    """Each rank takes half of the global batch, the ranks reduce the loss (one number) and take
    the same step: the losses equal one process at the global batch (float sums reordered)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("pretrain", *flags(model_dir, corpus, one)).exit_code == 0
    done = subprocess.run([sys.executable, "-m", "slimtrain", "pretrain",
                           *map(str, flags(model_dir, corpus, two, "--batch-size", 2)),
                           "--nproc", "2", "--parallel", "ddp"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = [r["loss"] for r in read_metrics(one)], [r["loss"] for r in read_metrics(two)]
    assert len(a) == len(b) == 10 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["gradient_bytes"] == 0
