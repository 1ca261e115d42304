"""A Hugging Face Trainer trains a model made by ``use_chunked_loss`` exactly as the plain model:
the Trainer's own ``num_items_in_batch`` (token-weighted accumulation over micro-batches with
different numbers of predicted tokens) reaches the chunked loss."""

import datasets

from slimtrain.activations import use_chunked_loss
from tests.helpers import tiny_llama
from tests.integrations.hf_helpers import run, text_dataset, trainer


def masked_dataset() -> datasets.Dataset:
    """Rows whose first ``i % 9`` labels are a masked prompt: micro-batches weigh differently."""
    rows = text_dataset()
    labels = [[-100] * (i % 9) + row[i % 9:] for i, row in enumerate(rows["labels"])]
    return datasets.Dataset.from_dict({"input_ids": rows["input_ids"], "labels": labels})


def train(out, model):
    t = trainer(out, "adamw", model=model, gradient_accumulation_steps=2)
    t.train_dataset = masked_dataset()
    return run(t)


def test_hf_trainer_with_the_chunked_loss_equals_the_plain_model(tmp_path):
    plain, plain_weights = train(tmp_path / "plain", tiny_llama())
    chunked, chunked_weights = train(tmp_path / "chunked", use_chunked_loss(tiny_llama()))
    assert len(chunked) == len(plain) == 8
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(chunked, plain)), (chunked, plain)
    worst = max(((chunked_weights[k] - w).abs().max() / w.abs().max()).item()
                for k, w in plain_weights.items())
    assert worst <= 1e-5, worst
