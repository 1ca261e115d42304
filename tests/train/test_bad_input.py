"""Every bad input: one clear sentence on stderr, exit code 2, no traceback, and nothing lost."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch

from slimtrain.data import train_bpe
from slimtrain.train.checkpoint import STATE_FILE, WEIGHTS_FILE, list_checkpoints
from tests.train.conftest import base_args, cli


def snapshot(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def fails_with(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message


@pytest.fixture
def stopped_run(reference, tmp_path):
    """A copy of the reference run as if it had crashed after step 16's checkpoint."""
    run = tmp_path / "stopped"
    shutil.copytree(reference, run)
    shutil.rmtree(list_checkpoints(run)[-1])
    return run


def test_missing_corpus(model_dir, tmp_path):
    out = tmp_path / "out"
    fails_with(cli("pretrain", *base_args(model_dir, tmp_path / "nope.txt", out)),
               "data path", "does not exist")
    assert not out.exists()


def test_empty_corpus(model_dir, tmp_path):
    for name, text in [("empty.txt", ""), ("blank.jsonl", '{"text": "  "}\n\n')]:
        (tmp_path / name).write_text(text)
        fails_with(cli("pretrain", *base_args(model_dir, tmp_path / name, tmp_path / "out")),
                   "holds no text")


def test_jsonl_without_the_text_field(model_dir, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"body": "hello"}\n')
    fails_with(cli("pretrain", *base_args(model_dir, tmp_path / "c.jsonl", tmp_path / "out")),
               "has no field 'text'", "--text-field")


def test_tokenizer_larger_than_the_model_vocabulary(model_dir, corpus, tmp_path):
    big = tmp_path / "tok"
    train_bpe((line for line in corpus.read_text().splitlines()), 1024, big)
    fails_with(cli("pretrain", *base_args(model_dir, corpus, tmp_path / "out"), "--tokenizer", big),
               "tokenizer has 1,024 tokens", "vocabulary holds 512")


@pytest.mark.parametrize("setting,extra,fragments", [
    ({"optimizer": "galore-adamx"}, [], ("unknown optimizer 'galore-adamx'", "Did you mean galore-adamw")),
    ({"model": "llama-3b"}, [], ("unknown model preset 'llama-3b'", "60m")),
    ({"seq_len": 4096}, [], ("longer than the model's maximum of 128",)),
    ({"batch_size": 100000}, [], ("fewer than one batch",)),
    ({"lr": -1}, [], ("--lr must be a positive number",)),
    ({}, ["--optim-arg", "scale=-2"], ("optimizer galore-adamw: scale must be a number > 0",)),
    ({}, ["--optim-arg", "colour=red"], ("takes no argument 'colour'",)),
    ({}, ["--optim-arg", "scale"], ("must look like KEY=VALUE",)),
    ({}, ["--fused-backward", "--fused-refresh-from", "last"], ("--fused-refresh-from must be",)),
])
def test_bad_settings(model_dir, corpus, tmp_path, setting, extra, fragments):
    fails_with(cli("pretrain", *base_args(model_dir, corpus, tmp_path / "out", **setting), *extra),
               *fragments)
    assert not list_checkpoints(tmp_path / "out")


def test_rank_for_a_recipe_that_does_not_project(model_dir, corpus, tmp_path):
    args = base_args(model_dir, corpus, tmp_path / "out")
    args = args[:args.index("--optim-arg")]
    fails_with(cli("pretrain", *args, "--optimizer", "adamw"), "--rank does not apply to adamw")


def test_new_run_never_overwrites_another_runs_checkpoints(reference, model_dir, corpus):
    before = snapshot(reference)
    fails_with(cli("pretrain", *base_args(model_dir, corpus, reference)), "already holds checkpoints",
               f"--resume {reference}")
    assert snapshot(reference) == before


def test_resume_of_a_finished_run(reference):
    before = snapshot(reference)
    fails_with(cli("pretrain", "--resume", reference), "already finished its 24 steps")
    assert snapshot(reference) == before


def test_resume_refuses_to_change_what_the_run_computes(stopped_run):
    before = snapshot(stopped_run)
    fails_with(cli("pretrain", "--resume", stopped_run, "--lr", "0.5"), "--lr is", "start a new run")
    assert snapshot(stopped_run) == before


@pytest.mark.parametrize("damage,fragments", [
    ("truncate-weights", ("is damaged", WEIGHTS_FILE, "delete that checkpoint")),
    ("truncate-state", ("is damaged", STATE_FILE)),
    ("foreign-state", ("was not written by slimtrain",)),
    ("pickle-state", ("is damaged", STATE_FILE)),
    ("other-model", ("holds weights for a different model",)),
])
def test_damaged_or_foreign_checkpoint(stopped_run, damage, fragments):
    ckpt = list_checkpoints(stopped_run)[-1]
    if damage == "truncate-weights":
        data = (ckpt / WEIGHTS_FILE).read_bytes()
        (ckpt / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])
    elif damage == "truncate-state":
        data = (ckpt / STATE_FILE).read_bytes()
        (ckpt / STATE_FILE).write_bytes(data[:len(data) // 2])
    elif damage == "foreign-state":
        torch.save({"model": torch.zeros(3)}, ckpt / STATE_FILE)
    elif damage == "pickle-state":  # arbitrary objects are refused by weights_only loading
        torch.save({"kind": object()}, ckpt / STATE_FILE, _use_new_zipfile_serialization=True)
    else:
        from safetensors.torch import save_file
        save_file({"lm_head.weight": torch.zeros(3, 3)}, str(ckpt / WEIGHTS_FILE))
    before = snapshot(stopped_run)
    fails_with(cli("pretrain", "--resume", stopped_run), *fragments)
    assert snapshot(stopped_run) == before


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    fails_with(cli("pretrain", "--resume", tmp_path), "not a slimtrain run directory")


def test_config_file_with_an_unknown_option(model_dir, corpus, tmp_path):
    (tmp_path / "c.yaml").write_text("stpes: 3\n")
    fails_with(cli("pretrain", "--config", tmp_path / "c.yaml"), "unknown option 'stpes'")
    (tmp_path / "c.toml").write_text("steps = 'many'\n")
    fails_with(cli("pretrain", "--config", tmp_path / "c.toml"), "steps must be int")


# A child with its address space capped a little above what it uses after start-up: the first
# training step's activations cannot be allocated.
OOM_CHILD = r"""
import json, re, resource, sys
import torch, transformers  # load the big libraries before measuring
from slimtrain.cli import app
size = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 700 * 2**20, resource.RLIM_INFINITY))
app(json.loads(sys.argv[1]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_a_batch_that_does_not_fit_in_memory(reference, model_dir, corpus, tmp_path):
    out = tmp_path / "out"
    args = [str(a) for a in ["pretrain", *base_args(model_dir, corpus, out, batch_size=1000,
                                                    seq_len=128, val_fraction=0.2)]]
    child = subprocess.run([sys.executable, "-c", OOM_CHILD, json.dumps(args)], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 2, child.stderr[-2000:]
    assert "does not fit in memory" in child.stderr and "--batch-size" in child.stderr
    assert "Traceback" not in child.stderr
    assert not list_checkpoints(out)
