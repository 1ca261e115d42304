"""``--loss chunked`` in the trainer: the same trajectory as the naive loss, on one process and as
two FSDP2 ranks (the head's weight is the root module's, unsharded by its hooks), and a clear
refusal for a model whose logits are not ``lm_head(hidden)``."""

import pytest
import torch.distributed as dist

from slimtrain.activations import use_chunked_loss, uses_chunked_loss
from slimtrain.train.metrics import read_metrics
from tests.helpers import tiny_llama
from tests.train.conftest import base_args, cli
from tests.train.test_distributed import close, launch, losses


def run_once(model_dir, corpus, out, *extra):
    result = cli("pretrain", *base_args(model_dir, corpus, out, steps=8, batch_size=4,
                                        save_every=4), *extra)
    assert result.exit_code == 0, result.stderr
    # the run says which loss it trains with: a chunked run that silently fell back would not
    assert ("loss: chunked" in result.stdout) == ("chunked" in extra), result.stdout
    return out


def test_chunked_loss_follows_the_naive_trajectory(model_dir, corpus, tmp_path):
    naive = run_once(model_dir, corpus, tmp_path / "naive", "--loss", "naive")
    chunked = run_once(model_dir, corpus, tmp_path / "chunked", "--loss", "chunked")
    close(losses(chunked), losses(naive), tol=1e-4)
    assert [r["val_loss"] for r in read_metrics(chunked) if "val_loss" in r] == pytest.approx(
        [r["val_loss"] for r in read_metrics(naive) if "val_loss" in r], rel=1e-4)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_fsdp_ranks_with_the_chunked_loss_equal_one_process(model_dir, corpus, tmp_path):
    one = run_once(model_dir, corpus, tmp_path / "one", "--loss", "chunked")
    two = tmp_path / "two"
    done = launch("pretrain", *base_args(model_dir, corpus, two, steps=8, batch_size=2,
                                         save_every=4), "--loss", "chunked", "--nproc", 2,
                  "--parallel", "fsdp")
    assert done.returncode == 0, done.stderr[-3000:]
    close(losses(two), losses(one))


def test_bad_loss_name_and_unsupported_models_are_refused(model_dir, corpus, tmp_path):
    result = cli("pretrain", *base_args(model_dir, corpus, tmp_path / "x"), "--loss", "fused")
    assert result.exit_code != 0 and "--loss must be auto, naive or chunked" in result.stderr
    model = tiny_llama(vocab_size=64)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        use_chunked_loss(model)
    model.config.final_logit_softcapping = None
    assert uses_chunked_loss(use_chunked_loss(model))
