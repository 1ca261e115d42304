"""``--fused-backward`` through the whole CLI: the same run as ordinary updates, the true gradient
norm logged, previous-norm clipping, gradient accumulation, and exact resume."""

import math
import shutil

from slimtrain.train.checkpoint import list_checkpoints
from slimtrain.train.metrics import read_metrics
from tests.train.conftest import assert_same_weights, base_args, cli, final_weights, trajectory

SHORT = dict(steps=8, save_every=4, eval_every=4)


def _run(model_dir, corpus, out, *flags, **settings):
    result = cli("pretrain", *base_args(model_dir, corpus, out, **{**SHORT, **settings}), *flags)
    assert result.exit_code == 0, result.stderr
    return read_metrics(out)


def test_fused_backward_equals_ordinary_updates(model_dir, corpus, tmp_path):
    """Without clipping and accumulation the steps are the same computations: same losses, lrs and
    weights, bit for bit; the logged norm is the same up to the order of summation."""
    ordinary = _run(model_dir, corpus, tmp_path / "ordinary", grad_clip=0)
    fused = _run(model_dir, corpus, tmp_path / "fused", "--fused-backward", grad_clip=0)
    for a, b in zip(ordinary, fused):
        assert (a["loss"], a["lr"], a.get("val_loss")) == (b["loss"], b["lr"], b.get("val_loss"))
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-6)
    assert_same_weights(final_weights(tmp_path / "ordinary"), final_weights(tmp_path / "fused"))


def test_fused_backward_accumulates_clips_logs_and_resumes(model_dir, corpus, tmp_path):
    """grad_accum 2 and clipping at 0.5: every step logs the true (unclipped) norm — flagged on
    steps where projected matrices accumulated their projected gradient — clipping changes the
    run, and a resume from step 4 reproduces steps 5–8 bit for bit."""
    flags = ["--fused-backward", "--grad-accum", "2"]
    out = tmp_path / "run"
    records = _run(model_dir, corpus, out, *flags, grad_clip=0.5)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0.5 for r in records)
    # refresh_every=5: steps 1 and 6 refresh (G accumulated in full, exact norm); the others not
    assert [r.get("grad_norm_exact", True) for r in records] == [s in (1, 6) for s in range(1, 9)]
    unclipped = _run(model_dir, corpus, tmp_path / "unclipped", *flags, grad_clip=0)
    assert records[0]["loss"] == unclipped[0]["loss"]  # step 1 is never clipped (no previous norm)
    assert records[-1]["loss"] != unclipped[-1]["loss"]

    reference = trajectory(out), final_weights(out)
    shutil.rmtree(list_checkpoints(out)[-1])  # a crash after step 4's checkpoint
    result = cli("pretrain", "--resume", out)
    assert result.exit_code == 0, result.stderr
    assert "step 4" in result.stdout and "layer-wise updates" in result.stdout
    assert trajectory(out) == reference[0]
    assert_same_weights(final_weights(out), reference[1])
