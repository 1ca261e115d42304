"""Fine-tuning a pretrained local model with prompt masking; config files under CLI flags."""

import ast
import json

import yaml

from slimtrain.data.corpus import stdlib_files, stdlib_root
from slimtrain.train.checkpoint import list_checkpoints
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import base_args, cli


def write_docstring_qa(path, n=120):
    """Real prompt/response pairs: a question about a stdlib module and the module's docstring."""
    with open(path, "w") as out:
        for f in stdlib_files(stdlib_root()):
            doc = ast.get_docstring(ast.parse(f.read_text(errors="replace")))
            if doc:
                out.write(json.dumps({"prompt": f"What does the Python module {f.stem} do?\n",
                                      "response": doc[:600]}) + "\n")
                n -= 1
                if n == 0:
                    break
    return path


def test_finetune_starts_from_the_pretrained_weights_and_learns(reference, tmp_path):
    pretrained = list_checkpoints(reference)[-1]
    data = write_docstring_qa(tmp_path / "qa.jsonl")
    out = tmp_path / "ft"
    result = cli("finetune", "--model", pretrained, "--data", data, "--prompt-field", "prompt",
                 "--text-field", "response", "--lr", "3e-3", "--steps", 16, "--batch-size", 4,
                 "--seq-len", 64, "--eval-every", 8, "--log-every", 1, "--val-fraction", 0.2,
                 "--rank", 8, "--out", out)
    assert result.exit_code == 0, result.stderr
    records = read_metrics(out)
    pretrained_loss = read_metrics(reference)[-1]["val_loss"]
    assert records[0]["loss"] < pretrained_loss + 0.5  # not a fresh model (that starts at ~ln 512 = 6.2)
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert evals[-1] < evals[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["kind"] == "finetune" and saved["prompt_field"] == "prompt"
    assert [p.name for p in list_checkpoints(out)] == ["step-00000016"]  # save_every: 100 in finetune


def test_finetune_refuses_a_model_without_weights(model_dir, corpus, tmp_path):
    result = cli("finetune", "--model", model_dir, "--data", corpus, "--out", tmp_path / "ft")
    assert result.exit_code == 2
    assert "fine-tuning needs pretrained weights" in result.stderr
    assert not (tmp_path / "ft").exists()


def test_config_file_values_apply_and_flags_override_them(model_dir, corpus, tmp_path):
    for name, text in [("run.yaml", "steps: 6\nlr: 0.004\nbatch-size: 2\noptim_args: {scale: 0.5}\n"),
                       ("run.toml", "steps = 6\nlr = 0.004\nbatch_size = 2\n[optim_args]\nscale = 0.5\n")]:
        config = tmp_path / name
        config.write_text(text)
        out = tmp_path / f"out-{name}"
        args = base_args(model_dir, corpus, out, steps=3, batch_size=4)
        result = cli("pretrain", "--config", config, *[a for a in args if a not in ("--batch-size", 4)])
        assert result.exit_code == 0, result.stderr
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["steps"] == 3                       # the flag beats the file
        assert saved["lr"] == 0.004 and saved["batch_size"] == 2   # the file beats the defaults
        assert saved["optim_args"] == {"scale": 0.5, "refresh_every": 5}  # merged key by key
        assert read_metrics(out)[-1]["step"] == 3
