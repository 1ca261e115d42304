"""The README's main job: `slimtrain pretrain` with no arguments (a few minutes: slow)."""

import json

import pytest

from tests.train.conftest import cli


@pytest.mark.slow
def test_pretrain_with_no_arguments_trains_tiny_on_the_embedded_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory is ./runs/…
    result = cli("pretrain")
    assert result.exit_code == 0, result.stderr
    assert "standard library sources" in result.stdout
    assert "validation perplexity" in result.stdout and "optimizer state" in result.stdout
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["val_ppl"] < 200
    assert summary["optimizer_state_bytes"] < summary["adamw_state_bytes"]
