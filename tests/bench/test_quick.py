"""``slimtrain bench --quick`` end to end: worker processes, the sweep and the second seed, a peer
package, a method that fails and one that cannot run here, the report, the plots, and reuse."""

import importlib.util
import json
from collections import defaultdict

import pytest

from slimtrain.bench.methods import get
from tests.train.conftest import cli

METHODS = ("adamw,galore-adamw,galore-torch-adamw,"
           "adamw-pergroup:matrix_lr_ratio=-1,"  # a negative lr for the matrices: the optimizer refuses it
           "fira-adamw")                         # its package hidden below: skipped


def records_by_method(out):
    by = defaultdict(list)
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        by[record["method"]].append(record)
    return by


def test_quick_benchmark_runs_the_whole_pipeline(model_dir, corpus, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fira" else real(name, *a))
    out = tmp_path / "bench"
    args = ["bench", "--quick", "--model", model_dir, "--data", corpus, "--val-fraction", 0.2, "--methods",
            METHODS, "--out", out]  # a small corpus has few documents: hold out more
    result = cli(*args)
    assert result.exit_code == 0, result.output
    by = records_by_method(out)

    for method in ("adamw", "galore-adamw") + (("galore-torch-adamw",) if get(
            "galore-torch-adamw").unavailable() is None else ()):
        trials = by[method]
        sweep = [r for r in trials if r["stage"] == "sweep"]
        assert [r["seed"] for r in sweep] == [0, 0] and len({r["lr"] for r in sweep}) == 2
        best = min(sweep, key=lambda r: r["val_loss"])
        (repeat,) = [r for r in trials if r["stage"] == "seed"]
        assert (repeat["lr"], repeat["seed"]) == (best["lr"], 1)
        assert all(r["status"] == "ok" and r["steps"] == 20 for r in trials)
        assert all(r["curve"][-1][1] < r["curve"][0][1] for r in trials)  # validation loss falls
        assert all(r["optimizer_state_bytes"] > 0 and r["peak_memory_bytes"] > 0 for r in trials)
    assert by["galore-adamw"][0]["optimizer_state_bytes"] < by["adamw"][0]["optimizer_state_bytes"]

    failed = by["adamw-pergroup:matrix_lr_ratio=-1"]
    assert len(failed) == 2 and all(r["status"] == "failed" and "lr" in r["error"] for r in failed)
    (skipped,) = by["fira-adamw"]
    assert skipped["status"] == "skipped" and "fira is not installed" in skipped["error"]

    report = (out / "results.md").read_text()
    assert f"--methods {METHODS}" in report and f"--out {out}" in report
    assert "| adamw (slimtrain adamw) |" in report and "AdamW baseline" in report
    assert "failed: optimizer adamw-pergroup" in report
    for name in ("loss_vs_tokens.png", "memory_vs_ppl.png", "memory_breakdown.png"):
        assert (out / name).stat().st_size > 10_000, name

    # The same command again: every finished trial is reused (no trial file is rewritten), the
    # numbers are the same.
    written = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "reusing 11 finished trial(s)" in again.output
    assert written and {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == written
    after = records_by_method(out)
    assert [r["val_ppl"] for r in after["adamw"]] == [r["val_ppl"] for r in by["adamw"]]
    assert all(r["reused"] for r in after["adamw"])


@pytest.mark.slow
def test_quick_benchmark_on_the_embedded_corpus(tmp_path):
    """What CI's smoke run does: the defaults of --quick (tiny preset, embedded corpus)."""
    out = tmp_path / "bench"
    result = cli("bench", "--quick", "--out", out)
    assert result.exit_code == 0, result.output
    assert all(r["status"] in ("ok", "skipped") for rs in records_by_method(out).values() for r in rs)
