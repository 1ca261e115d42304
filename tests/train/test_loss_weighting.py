"""The training step's loss is normalised by the predicted tokens of the whole step: with prompt
masks and gradient accumulation it equals the loss of one batch holding all micro-batches; a
micro-batch with no predicted token contributes nothing; a step with none changes nothing."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimtrain.data.blocks import Blocks
from slimtrain.train.config import TrainConfig
from slimtrain.train.loop import train_step
from tests.helpers import tiny_llama

SEQ = 16


class Recorder(torch.optim.SGD):
    """lr 0: records the gradients each step sees, changes nothing."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])


class InOrder:
    def take(self, position, n):
        return list(range(position, position + n))


def make_run(mask_rows, grad_accum, batch_size):
    """A step over blocks whose masks (1 = predicted) are ``mask_rows``, one row per block."""
    g = torch.Generator().manual_seed(0)
    blocks = len(mask_rows)
    tokens = torch.randint(0, 256, (blocks * SEQ,), generator=g).numpy().astype(np.uint16)
    mask = np.concatenate([np.asarray(row, dtype=np.uint8) for row in mask_rows])
    model = tiny_llama(vocab_size=256)
    opt = Recorder(model.parameters())
    config = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, seq_len=SEQ, grad_clip=0.0)
    run = SimpleNamespace(config=config, train=Blocks(tokens, mask, SEQ), order=InOrder(),
                          position=0, device=torch.device("cpu"), autocast=None, model=model,
                          fused=None, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(
                              opt, lambda s: 1.0), step=0, tokens=0, optimizer_s=0.0,
                          updating=False, dist=None, train_module=None, saved_hooks=None)
    return run


def one_batch(run, blocks):
    """The loss and gradients of one batch holding ``blocks`` (the model's mean over tokens)."""
    ids, labels = run.train.batch(blocks)
    run.model.zero_grad()
    loss = run.model(input_ids=ids, labels=labels).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in run.model.parameters()]


def row(predicted):
    """A block's mask with its first SEQ − predicted tokens a prompt."""
    return [0] * (SEQ - predicted) + [1] * predicted


def test_uneven_masks_weight_tokens_not_micro_batches():
    masks = [row(15), row(14), row(2), row(3)]  # micro-batch 1 predicts ~9× the tokens of batch 2
    run = make_run(masks, grad_accum=2, batch_size=2)
    loss, _ = train_step(run)
    expected_loss, expected_grads = one_batch(run, [0, 1, 2, 3])
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    for got, want in zip(run.optimizer.seen[0], expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert run.step == 1 and run.position == 4 and run.tokens == 4 * SEQ


def test_a_fully_masked_micro_batch_contributes_nothing():
    masks = [row(12), row(10), [0] * SEQ, [0] * SEQ]
    run = make_run(masks, grad_accum=2, batch_size=2)
    loss, _ = train_step(run)
    assert torch.isfinite(loss)
    expected_loss, expected_grads = one_batch(run, [0, 1])
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    for got, want in zip(run.optimizer.seen[0], expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_step_with_no_predicted_token_changes_nothing():
    run = make_run([[0] * SEQ] * 4, grad_accum=2, batch_size=2)
    before = [p.detach().clone() for p in run.model.parameters()]
    with pytest.warns(UserWarning, match="no token of its batch is predicted"):
        loss, grad_norm = train_step(run)
    assert loss is None and grad_norm is None and not run.optimizer.seen
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    assert run.step == 1 and run.position == 4 and run.scheduler.last_epoch == 1
