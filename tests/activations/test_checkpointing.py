"""Selective activation checkpointing: the same gradients, the same state dict, less saved."""

import pytest
import torch

from slimtrain.activations import apply_activation_checkpointing, parse_policy
from slimtrain.memory.measure import saved_tensor_bytes
from tests.helpers import tiny_llama

POLICIES = ["all", "every:2", "attn", "mlp"]


def _run(policy):
    model = tiny_llama(layers=4, seed=0)
    apply_activation_checkpointing(model, policy)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with saved_tensor_bytes(model) as saved:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return model, loss.item(), {n: p.grad for n, p in model.named_parameters()}, saved["bytes"]


@pytest.mark.parametrize("policy", POLICIES)
def test_gradients_equal_no_checkpointing(policy):
    ref_model, ref_loss, ref, _ = _run(None)
    model, loss, got, _ = _run(policy)
    assert loss == ref_loss
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert list(model.state_dict()) == list(ref_model.state_dict())


def test_saved_bytes_decrease_as_expected():
    saved = {p: _run(p)[3] for p in [None, *POLICIES]}
    assert saved["all"] < saved["every:2"] < saved[None]
    assert saved["attn"] < saved[None] and saved["mlp"] < saved[None]
    # every:2 checkpoints layers 0 and 2 of 4: about half of what "all" removes
    assert abs((saved[None] - saved["every:2"]) / (saved[None] - saved["all"]) - 0.5) < 0.05


def test_evaluation_runs_the_plain_forward():
    model = apply_activation_checkpointing(tiny_llama(), "all")
    with torch.no_grad():
        assert model(input_ids=torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, 256)


@pytest.mark.parametrize("bad", ["every:0", "every:x", "some", "ffn"])
def test_bad_policy_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"bad activation checkpointing policy.*all, every:K"):
        parse_policy(bad)
