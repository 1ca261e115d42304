"""A process killed (SIGKILL) while writing a checkpoint leaves the previous one loadable."""

import json
import os
import signal
import subprocess
import sys

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
