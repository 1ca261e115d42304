"""Inputs that are not what they claim, and the user errors that used to end in a traceback: each
class gets one line on stderr, exit code 2, and nothing written."""

import gzip
import json
import subprocess
import sys

import pytest

from slimtrain.train.checkpoint import STATE_FILE, list_checkpoints
from tests.train.conftest import base_args, cli
from tests.train.test_bad_input import fails_with, snapshot


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,make,fragments", [
    ("corpus.txt.gz", lambda text: gzip.compress(text), ("gzip-compressed", "gunzip")),
    ("corpus.jsonl", lambda text: gzip.compress(text), ("gzip-compressed",)),
    ("corpus.txt", lambda text: b"\x00\x01\x02" * 3000, ("not text", "NUL bytes")),
    ("corpus.txt", lambda text: text.decode().encode("utf-16"), ("UTF-16", "iconv")),
    ("corpus.txt", lambda text: bytes(range(128, 256)) * 400, ("not UTF-8 text", "iconv")),
])
def test_files_that_are_not_utf8_text(model_dir, tmp_path, name, make, fragments):
    text = ("A paragraph of ordinary text.\n\n" * 2000).encode()
    data = _write(tmp_path / name, make(text))
    out = tmp_path / "out"
    fails_with(cli("pretrain", *base_args(model_dir, data, out)), *fragments)
    assert not out.exists()


def test_a_dataset_column_that_is_not_text(model_dir, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": list(range(50))}).save_to_disk(str(tmp_path / "ds"))
    fails_with(cli("pretrain", *base_args(model_dir, tmp_path / "ds", tmp_path / "out")),
               "column 'text' holds int64, not text")


@pytest.mark.parametrize("flags,fragments", [
    (["--text-field", "body"], ("--text-field names a JSONL field", "plain text")),
    (["--fused-refresh-from", "first"], ("--fused-refresh-from applies to layer-wise updates",)),
    (["--threads", "4096"], ("--threads 4096 exceeds the",)),
    (["--allow-data-change"], ("--allow-data-change applies to --resume",)),
])
def test_flags_that_do_not_apply(model_dir, tmp_path, flags, fragments):
    data = tmp_path / "c.txt"
    data.write_text("ordinary text.\n\n" * 3000)
    fails_with(cli("pretrain", *base_args(model_dir, data, tmp_path / "out"), *flags), *fragments)


@pytest.mark.parametrize("args,fragments", [
    (["--top", "0", "--budget", "8GiB"], ("--top must be at least 1",)),
    (["--model", "{config}"], ("is not valid JSON",)),
    (["--model", "{dir}"], ("is not valid JSON",)),
])
def test_plan_refuses_what_makes_no_sense(tmp_path, args, fragments):
    from tests.train.conftest import cli as run_cli

    (tmp_path / "config.json").write_text("{ not json")
    args = [a.replace("{config}", str(tmp_path / "config.json")).replace("{dir}", str(tmp_path))
            for a in args]
    fails_with(run_cli("plan", *args), *fragments)


def test_finetune_of_damaged_weights(model_dir, corpus, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file at all")
    fails_with(cli("finetune", "--model", broken, "--data", corpus, "--seq-len", 64,
                   "--val-fraction", 0.2, "--out", tmp_path / "ft"),
               "could not build a causal language model", "damaged")


def test_an_empty_trainer_state(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(list_checkpoints(run)[-1])
    (list_checkpoints(run)[-1] / STATE_FILE).write_bytes(b"")
    before = snapshot(run)
    fails_with(cli("pretrain", "--resume", run), "is damaged", "is empty", "delete that checkpoint")
    assert snapshot(run) == before


# A child whose files may not grow past a limit (and which ignores SIGXFSZ, so a write fails with
# EFBIG as on a full disk): the first checkpoint cannot be written.
DISK_FULL_CHILD = r"""
import json, resource, signal, sys
from slimtrain.cli import app
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
app(json.loads(sys.argv[1]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_FSIZE")
def test_a_disk_that_fills_up_during_a_checkpoint(reference, model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    args = [str(a) for a in ["pretrain", *base_args(model_dir, corpus, out, steps=8)]]
    # the micro model's weights are ~1 MB: a 300 kB limit stops the checkpoint, not the log
    child = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, json.dumps(args), str(300_000)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, child.stderr[-2000:]
    message = child.stderr.strip().splitlines()[-1]
    assert message.startswith("error: could not write checkpoint") and "free disk space" in message
    assert "Traceback" not in child.stderr
    assert not list_checkpoints(out)
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())


def test_damaged_cache_entries_are_rebuilt(model_dir, corpus, tmp_path, monkeypatch):
    from slimtrain.paths import cache_dir

    monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path / "cache"))
    result = cli("pretrain", *base_args(model_dir, corpus, tmp_path / "a", steps=2))
    assert result.exit_code == 0, result.stderr
    (entry,) = list(cache_dir("tokens").iterdir())
    data = (entry / "train.bin").read_bytes()
    (entry / "train.bin").write_bytes(data[: len(data) // 3])  # a partial file
    with pytest.warns(UserWarning, match="damaged"):
        result = cli("pretrain", *base_args(model_dir, corpus, tmp_path / "b", steps=2))
    assert result.exit_code == 0, result.stderr
    assert (entry / "train.bin").read_bytes() == data


def test_a_damaged_cached_tokenizer_is_trained_again(corpus, tmp_path, monkeypatch):
    from slimtrain.paths import cache_dir

    monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path / "cache"))
    args = ["--data", corpus, "--steps", 1, "--batch-size", 2, "--seq-len", 32, "--val-fraction",
            0.2, "--eval-batches", 1]
    result = cli("pretrain", *args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    (entry,) = list(cache_dir("tokenizers").iterdir())
    (entry / "tokenizer.json").write_text("{ damaged")
    with pytest.warns(UserWarning, match="cached tokenizer .* is damaged"):
        result = cli("pretrain", *args, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.stderr


def test_warnings_on_the_command_line_are_one_line_about_the_run(model_dir, corpus, tmp_path):
    """The CLI prints a warning as ``warning: …`` — not as a source location inside typer."""
    from slimtrain import cli as cli_module

    line = cli_module._cli_warning(UserWarning("the rank is too large"), UserWarning,
                                   "/venv/lib/python3.11/site-packages/typer/main.py", 1445)
    assert line == "warning: the rank is too large\n"
    child = subprocess.run([sys.executable, "-m", "slimtrain.cli", "pretrain",
                            *map(str, base_args(model_dir, corpus, tmp_path / "run", steps=2,
                                                rank=64))], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    warned = [ln for ln in child.stderr.splitlines() if "saves nothing" in ln]
    assert warned and all(ln.startswith("warning: ") for ln in warned)
    assert "typer/main.py" not in child.stderr
