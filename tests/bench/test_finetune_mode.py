"""``slimtrain bench`` on a model directory with weights fine-tunes from them: trials run as
``slimtrain finetune`` (prompt masked), sweeps centre on fine-tuning lrs (3e-5; MeZO's own 1e-6),
zeroth-order recipes run beside first-order ones, and the report says which mode it was."""

import json
import shutil

from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tests.bench.test_quick import records_by_method
from tests.train.conftest import cli


def pretrained_dir(model_dir, tmp_path):
    """The micro LLaMA's directory (config, tokenizer) with weights: what finetune starts from."""
    path = tmp_path / "pretrained"
    shutil.copytree(model_dir, path)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    model.save_pretrained(path)
    return path, model


def qa_data(corpus, path):
    """Prompt → response pairs cut from the real-text corpus."""
    with open(path, "w") as out:
        for line in corpus.read_text().splitlines()[:60]:
            text = json.loads(line)["text"]
            out.write(json.dumps({"prompt": f"Continue: {text[:80]}", "response": text[80:2000]}) + "\n")
    return path


def test_bench_fine_tunes_a_model_with_weights(model_dir, corpus, tmp_path):
    model, pretrained = pretrained_dir(model_dir, tmp_path)
    data = qa_data(corpus, tmp_path / "qa.jsonl")
    out = tmp_path / "bench"
    result = cli("bench", "--quick", "--model", model, "--data", data, "--text-field", "response",
                 "--prompt-field", "prompt", "--val-fraction", 0.2, "--methods", "adamw,mezo",
                 "--out", out)
    assert result.exit_code == 0, result.output
    by = records_by_method(out)
    assert {r["lr"] for r in by["adamw"] if r["stage"] == "sweep"} <= {2e-5, 3e-5, 5e-5, 1e-5}
    assert {r["lr"] for r in by["mezo"] if r["stage"] == "sweep"} <= {5e-7, 1e-6, 2e-6}
    assert all(r["status"] == "ok" for rs in by.values() for r in rs)
    assert all(r["gradient_bytes"] == 0 for r in by["mezo"])
    spec = json.loads(next((out / "runs").rglob("spec.json")).read_text())
    assert spec["kind"] == "finetune" and spec["train"]["prompt_field"] == "prompt"
    run = next(p for p in (out / "runs").rglob("config.yaml"))
    assert "kind: finetune" in run.read_text()
    report = (out / "results.md").read_text()
    assert "fine-tuned from its weights" in report and "--prompt-field prompt" in report
    assert set(load_file(model / "model.safetensors")) == set(pretrained.state_dict())
