"""The trainer on 2 processes (gloo, CPU): DDP and FSDP2 runs equal one process at the same global
batch, an FSDP checkpoint resumes on 1 and on 2 ranks, a killed worker stops the job and the run
resumes, and a NaN on one rank stops every rank with the same error — no hang."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from slimtrain.train.checkpoint import list_checkpoints
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import base_args, cli

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")
TIMEOUT = 300


def launch(*args, timeout=TIMEOUT):
    """The real command line: ``python -m slimtrain …`` (it runs torchrun's launcher itself)."""
    return subprocess.run([sys.executable, "-m", "slimtrain", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


def close(a, b, tol=1e-4):
    assert len(a) == len(b) and all(abs(x - y) <= tol * abs(y) for x, y in zip(a, b)), (a, b)


@pytest.fixture(scope="module")
def single(tmp_path_factory, model_dir, corpus):
    """One process at the global batch (2 ranks × 2), with accumulation."""
    out = {}
    for accum in (2,):
        run = tmp_path_factory.mktemp("single") / "run"
        result = cli("pretrain", *base_args(model_dir, corpus, run, steps=12, batch_size=4,
                                            grad_accum=accum, save_every=4))
        assert result.exit_code == 0, result.stderr
        out[accum] = run
    return out


# with accumulation (no_sync on all but the last micro-batch, the harder case); the checkpoint
# (FSDP), kill and NaN (DDP) tests below train at accumulation 1
@pytest.mark.parametrize("accum", [2])
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_at_the_same_global_batch(single, model_dir, corpus, tmp_path,
                                                              parallel, accum):
    run = tmp_path / "run"
    done = launch("pretrain", *base_args(model_dir, corpus, run, steps=12, batch_size=2,
                                         grad_accum=accum, save_every=4),
                  "--nproc", 2, "--parallel", parallel)
    assert done.returncode == 0, done.stderr[-3000:]
    close(losses(run), losses(single[accum]))
    records = read_metrics(run)
    assert [r["tokens"] for r in records] == [r["tokens"] for r in read_metrics(single[accum])]
    assert "2 ranks" in done.stdout and done.stdout.count("step     12/12") == 1  # rank 0 speaks
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["steps"] == 12
    # memory is one rank's: an FSDP2 rank holds half the weights and of AdamW's state, a DDP
    # rank all of them; the table says so
    whole = json.loads((single[accum] / "summary.json").read_text())
    share = 0.5 if parallel == "fsdp" else 1.0
    for key in ("weight_bytes", "adamw_state_bytes"):
        assert abs(summary[key] - share * whole[key]) <= 0.01 * whole[key], key
    assert summary["optimizer_state_bytes"] <= 0.6 * whole["optimizer_state_bytes"] \
        if parallel == "fsdp" else summary["optimizer_state_bytes"] == whole["optimizer_state_bytes"]
    assert "optimizer state (per rank)" in done.stdout


def test_an_fsdp_checkpoint_resumes_on_one_and_on_two_ranks(model_dir, corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    done = launch("pretrain", *base_args(model_dir, corpus, run, steps=12, batch_size=2,
                                         save_every=4), "--nproc", 2, "--parallel", "fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (list_checkpoints(run)[-1] / "dcp" / ".metadata").is_file()
    for nproc in (1, 2):
        again = tmp_path / f"resumed-{nproc}"
        shutil.copytree(run, again)
        shutil.rmtree(list_checkpoints(again)[-1])  # as if stopped after step 8
        done = launch("pretrain", "--resume", again, "--nproc", nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        close(losses(again), losses(run))


def _children(pid):
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_a_killed_worker_stops_the_job_and_the_run_resumes(model_dir, corpus, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "slimtrain", "pretrain",
            *map(str, base_args(model_dir, corpus, run, steps=400, batch_size=2, save_every=4,
                                eval_every=1000)), "--nproc", "2", "--parallel", "ddp"]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list_checkpoints(run)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(run), "no checkpoint appeared"
        workers = [p for p in _children(job.pid) if "slimtrain" in " ".join(p.cmdline())]
        os.kill(workers[-1].pid, signal.SIGKILL)
        code = job.wait(timeout=120)  # the job ends: torchrun stops the other rank
    finally:
        if job.poll() is None:
            for child in _children(job.pid):
                child.kill()
            job.kill()
    assert code != 0
    kept = list_checkpoints(run)[-1]
    done = launch("pretrain", "--resume", run, "--nproc", 2)
    assert f"resuming from {kept}" in done.stdout, done.stderr[-3000:]


NAN_RANK = r"""
import os, sys, torch
from slimtrain.cli import app

# from step 3 on, rank 1's forward returns NaN logits (a bad batch on one rank only)
import transformers.models.llama.modeling_llama as llama
forward = llama.LlamaForCausalLM.forward
calls = [0]

def poisoned(self, *args, **kwargs):
    out = forward(self, *args, **kwargs)
    if self.training and os.environ.get("RANK") == "1":
        calls[0] += 1
        if calls[0] >= 3:
            out.loss = out.loss * float("nan")
    return out

llama.LlamaForCausalLM.forward = poisoned
app(sys.argv[1:])
"""


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(model_dir, corpus, tmp_path):
    script = tmp_path / "nan_rank.py"
    script.write_text(NAN_RANK)
    run = tmp_path / "run"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), "pretrain",
                           *map(str, base_args(model_dir, corpus, run, steps=12, batch_size=2)),
                           "--parallel", "ddp",
                           "--loss", "naive"],  # the poison is in the class's forward, which
                          capture_output=True, text=True, timeout=TIMEOUT)  # chunked bypasses
    assert time.monotonic() - started < TIMEOUT
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the training loss became nan at step 3" in errors[0], done.stderr[-2000:]
