"""Layer-wise updates under DDP (2 processes, gloo, CPU) equal ordinary DDP and single-process
training on the same global batch: the update runs after the all-reduce (fused_ddp.py)."""

import pytest
import torch
import torch.distributed as dist

from . import ddp_worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ddp_worker.run_workers(str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(ddp_worker.WORLD)]


@pytest.mark.parametrize("recipe", list(ddp_worker.RECIPES))
def test_ddp_fused_equals_ordinary_ddp_and_single_process(ranks, recipe):
    fused = [r[f"{recipe}/fused"] for r in ranks]
    ordinary = [r[f"{recipe}/ordinary"] for r in ranks]
    # replicas stay identical: every process updates from the same averaged gradient
    assert all(torch.equal(a, b) for a, b in zip(fused[0]["weights"], fused[1]["weights"]))
    # the same all-reduce and the same update as ordinary DDP: bitwise, norms included
    assert all(torch.equal(a, b) for a, b in zip(fused[0]["weights"], ordinary[0]["weights"]))
    assert fused[0]["norms"] == ordinary[0]["norms"]
    # one process on the whole global batch: the mean over 8 vs the mean of two means of 4
    single = ddp_worker.train(recipe, rank=None, fused=False)
    for a, b in zip(single["weights"], fused[0]["weights"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert fused[0]["norms"] == pytest.approx(single["norms"], rel=1e-5)
    assert min(single["norms"]) > ddp_worker.MAX_NORM  # clipping was active on every step


def test_ddp_with_unused_parameters_is_refused(ranks):
    assert "find_unused_parameters=False" in ranks[0]["unused_error"]
