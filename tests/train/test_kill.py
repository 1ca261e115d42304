"""A process killed (SIGKILL) while writing a checkpoint leaves the previous one loadable."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from slimtrain.train.checkpoint import list_checkpoints, load_trainer_state
from tests.train.conftest import assert_same_weights, base_args, cli, final_weights, trajectory

# The child runs the real CLI; its second trainer-state write stops half-way and waits to be killed.
CHILD = r"""
import json, sys, time
import torch

real_save, calls = torch.save, []

def save_then_hang(obj, f, *args, **kwargs):
    calls.append(f)
    if len(calls) < 2:
        return real_save(obj, f, *args, **kwargs)
    with open(f, "wb") as out:
        out.write(b"half a checkpoint")
        out.flush()
    print("WRITING", flush=True)
    time.sleep(600)

torch.save = save_then_hang
from slimtrain.cli import app
app(json.loads(sys.argv[1]), standalone_mode=False)
"""


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(reference, model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    args = [str(a) for a in ["pretrain", *base_args(model_dir, corpus, out)]]
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        for line in child.stdout:
            if line.startswith("WRITING"):
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (previous,) = list_checkpoints(out)  # the killed write is not a checkpoint
    assert previous.name == "step-00000008"
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p != previous]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step-00000016.tmp-")
    assert load_trainer_state(previous)["step"] == 8

    result = cli("pretrain", "--resume", out)  # sweeps the unfinished write and carries on
    assert result.exit_code == 0, result.stderr
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())
    assert trajectory(out) == trajectory(reference)
    assert_same_weights(final_weights(out), final_weights(reference))


# The child resumes a run; it says when it starts to rewrite metrics.jsonl, to be killed then.
RESUME_CHILD = r"""
import json, sys
import slimtrain.train.metrics as metrics

real = metrics.write_text_atomic

def announced(path, text):
    print("REWRITING", flush=True)
    real(path, text)

metrics.write_text_atomic = announced
from slimtrain.cli import app
app(json.loads(sys.argv[1]), standalone_mode=False)
"""


def _kill_resume_at(run, delay):
    child = subprocess.Popen([sys.executable, "-c", RESUME_CHILD,
                              json.dumps(["pretrain", "--resume", str(run)])],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in child.stdout:
            if line.startswith("REWRITING"):
                break
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()


def _kills_during_resume(reference, tmp_path, delays):
    """SIGKILL at moments inside and after the rewrite of a large log: every time, the log is
    whole (every record up to the checkpoint is there), and the run still resumes exactly."""
    import shutil

    from slimtrain.train.metrics import read_metrics

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(list_checkpoints(run)[-1])  # as if it had crashed after step 16
    log = run / "metrics.jsonl"
    padding = "".join(json.dumps({"step": 1, "note": "x" * 100}) + "\n" for _ in range(150_000))
    kept = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["step"] <= 16]
    log.write_text(log.read_text() + padding)  # ~17 MB of records a resume keeps: a slow rewrite
    for delay in delays:
        _kill_resume_at(run, delay)
        lines = log.read_text().splitlines()
        records = [json.loads(line) for line in lines[:-1]]  # whole lines, every one of them
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:  # only the line a trainer was appending may be cut
            pass
        assert len([r for r in records if r["step"] <= 16]) == len(kept) + 150_000
    if list_checkpoints(run)[-1].name != "step-00000024":  # a late kill may find it finished
        result = cli("pretrain", "--resume", run)
        assert result.exit_code == 0, result.stderr
    records = [r for r in read_metrics(run) if "note" not in r]
    assert [r["step"] for r in records] == list(range(1, 25))
    assert trajectory(run)[-8:] == trajectory(reference)[-8:]


def test_sigkill_during_a_resume_leaves_the_metrics_log_whole(reference, tmp_path):
    _kills_during_resume(reference, tmp_path, [0.0, 0.2])  # more moments: the slow test below


@pytest.mark.slow
def test_sigkill_during_a_resume_at_many_moments(reference, tmp_path):
    rng = random.Random(0)
    _kills_during_resume(reference, tmp_path, [rng.uniform(0, 0.5) for _ in range(10)])
