"""Reliability, one test per class of failure: a user's files are never lost, divergence is
detected, the checkpoint is the source of truth on resume, and errors say what is really wrong."""

import json
import math
import shutil

import pytest
import torch

import slimtrain.optim as so
from slimtrain.train.checkpoint import STATE_FILE, WEIGHTS_FILE, list_checkpoints
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import base_args, cli
from tests.train.test_bad_input import fails_with, snapshot, stopped_run  # noqa: F401 (fixture)


# ------------------------------------------------------------------ never lose a user's file
def test_a_new_run_never_writes_over_a_users_files(model_dir, corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("config.yaml", "my: settings\n"), ("metrics.jsonl", '{"mine": 1}\n'),
                       ("summary.json", "{}")):
        (out / name).write_text(text)
    before = snapshot(out)
    fails_with(cli("pretrain", *base_args(model_dir, corpus, out)), "is not empty", "config.yaml",
               "nothing is overwritten")
    assert snapshot(out) == before
    (tmp_path / "a-file").write_text("x")
    fails_with(cli("pretrain", *base_args(model_dir, corpus, tmp_path / "a-file")), "is a file")
    fails_with(cli("pretrain", *base_args(model_dir, corpus, tmp_path / "a-file" / "run")),
               "lies under", "which is a file")


def test_a_damaged_last_line_of_the_log_is_dropped_with_a_warning(stopped_run):
    log = stopped_run / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 17, "loss": 5.')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="not whole JSON records"):
        records = read_metrics(stopped_run)
    assert len(records) == len(whole.splitlines())
    result = cli("pretrain", "--resume", stopped_run)
    assert result.exit_code == 0, result.stderr
    steps = [r["step"] for r in read_metrics(stopped_run)]
    assert steps == list(range(1, 25))


def test_a_run_that_ends_in_an_error_keeps_its_last_step(model_dir, corpus, tmp_path, monkeypatch):
    """An error in the final evaluation (or anywhere between steps) still writes the checkpoint
    of the step that completed."""
    import slimtrain.train.loop as loop

    real, calls = loop.evaluate, []

    def failing(run):
        calls.append(run.step)
        if len(calls) == 2:
            raise RuntimeError("the evaluation broke")
        return real(run)

    monkeypatch.setattr(loop, "evaluate", failing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="the evaluation broke") as caught:
        cli("pretrain", *base_args(model_dir, corpus, out, steps=10, eval_every=5, save_every=100))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000010"]
    assert "was saved" in "".join(getattr(caught.value, "__notes__", []))
    monkeypatch.setattr(loop, "evaluate", real)


def test_perplexity_overflow_is_inf_and_the_log_strict_json(tmp_path):
    from slimtrain.train.metrics import MetricsLog, perplexity

    assert perplexity(1000.0) == math.inf
    log = MetricsLog(tmp_path, None)
    log.write({"step": 1, "loss": float("nan"), "val_ppl": math.inf})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "loss": None, "val_ppl": None} and "NaN" not in line


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("name", so.available())
def test_divergence_is_detected_for_every_recipe(name, model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    args = base_args(model_dir, corpus, out, steps=12, lr=1e6, save_every=100, eval_every=100)
    if not so.recipe(name).accepts("refresh_every"):
        args = args[:args.index("--optim-arg")]
    if not so.recipe(name).accepts("rank"):
        args = args[:args.index("--rank")] + args[args.index("--rank") + 2:]
    result = cli("pretrain", *args, "--optimizer", name)
    fails_with(result, "the run diverged", "lower --lr")
    for record in read_metrics(out):  # strict JSON: never a bare NaN
        assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in record.values())
    for ckpt in list_checkpoints(out):  # a checkpoint it leaves holds the last good weights
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / WEIGHTS_FILE)).values())


def test_a_loss_far_above_its_best_is_divergence(model_dir, corpus, tmp_path):
    result = cli("pretrain", *base_args(model_dir, corpus, tmp_path / "run", steps=20, lr=3.0,
                                        save_every=100, eval_every=100), "--optimizer", "galore-adamw")
    fails_with(result, "rose to", "above its best", "the run diverged")


# ------------------------------------------------------------------ the checkpoint is the truth
def test_resume_refuses_an_edited_config(stopped_run):
    path = stopped_run / "config.yaml"
    text = path.read_text()
    for old, new, field in (("optimizer: galore-adamw", "optimizer: galore-lion", "optimizer"),
                            ("steps: 24", "steps: 40", "steps"), ("seq_len: 64", "seq_len: 32", "seq_len")):
        assert old in text
        path.write_text(text.replace(old, new))
        before = snapshot(stopped_run)
        fails_with(cli("pretrain", "--resume", stopped_run), f"says {field}:", "was trained with",
                   "start a new run")
        assert snapshot(stopped_run) == before
    path.write_text(text)


def test_resume_refuses_changed_data_unless_asked(stopped_run, corpus, tmp_path):
    import yaml

    edited = tmp_path / "edited.jsonl"
    shutil.copy(corpus, edited)
    config = yaml.safe_load((stopped_run / "config.yaml").read_text())
    config["data"] = str(edited)
    (stopped_run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for ckpt in list_checkpoints(stopped_run):  # the run as if it had been trained on `edited`
        state = torch.load(ckpt / STATE_FILE, weights_only=True)
        run_settings = dict(state["config"], data=str(edited))
        key = state["data"].split("\0")
        from slimtrain.data import fingerprint

        key[0] = fingerprint(edited)
        torch.save({**state, "config": run_settings, "data": "\0".join(key)}, ckpt / STATE_FILE)
    with open(edited, "a") as f:  # then the file changes
        f.write(json.dumps({"text": "a document added after the run started. " * 40}) + "\n")
    fails_with(cli("pretrain", "--resume", stopped_run), "the data changed since",
               "--allow-data-change")
    resumed_from = list_checkpoints(stopped_run)[-1]
    result = cli("pretrain", "--resume", stopped_run, "--allow-data-change")
    assert result.exit_code == 0, result.stderr
    assert f"tokenizer: 512 tokens ({resumed_from})" in result.stdout  # the run's own tokenizer


def test_resume_refuses_weights_that_do_not_belong_or_are_not_finite(stopped_run, reference):
    from safetensors.torch import load_file, save_file

    ckpt = list_checkpoints(stopped_run)[-1]
    weights = load_file(str(ckpt / WEIGHTS_FILE))
    other = load_file(str(list_checkpoints(reference)[0] / WEIGHTS_FILE))  # another step's weights
    save_file(other, str(ckpt / WEIGHTS_FILE), metadata={"format": "pt"})
    fails_with(cli("pretrain", "--resume", stopped_run), "is not the file its trainer_state.pt")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(ckpt / WEIGHTS_FILE), metadata={"format": "pt"})
    fails_with(cli("pretrain", "--resume", stopped_run), "holds NaN/Inf weights",
               "resume from an earlier checkpoint")


# ------------------------------------------------------------------ errors that tell the truth
def test_a_single_document_corpus_is_said_to_be_one(model_dir, tmp_path):
    data = tmp_path / "one.txt"
    data.write_text("one long line of text without any blank line " * 4000)
    fails_with(cli("pretrain", *base_args(model_dir, data, tmp_path / "out")),
               "holds 1 document", "split the text into more documents")


def test_steps_of_prompts_only_change_nothing_and_say_so(reference, tmp_path):
    """Long prompts fill whole blocks: such a step predicts no token. It is skipped with a warning
    — not reported as a NaN loss and divergence."""
    data = tmp_path / "qa.jsonl"
    with open(data, "w") as f:
        for i in range(200):
            f.write(json.dumps({"prompt": f"question {i}: " + "what does it do? " * 40,
                                "response": "it works."}) + "\n")
    with pytest.warns(UserWarning, match="no token of its batch is predicted"):
        result = cli("finetune", "--model", list_checkpoints(reference)[-1], "--data", data,
                     "--prompt-field", "prompt", "--text-field", "response", "--seq-len", 32,
                     "--batch-size", 1, "--steps", 12, "--val-fraction", 0.3, "--log-every", 1,
                     "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.stderr
    records = read_metrics(tmp_path / "ft")
    assert any(r["loss"] is None for r in records) and any(r["loss"] is not None for r in records)
