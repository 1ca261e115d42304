"""The trainer with an optimizer built by the caller (``optimizer_factory``): how the benchmark
trains other libraries' optimizers and LoRA with the one training loop."""

import json

import pytest
import torch
from rich.console import Console

from slimtrain.train import Diverged, session


def flags(model_dir, corpus, out, optimizer):
    return dict(model=str(model_dir), data=str(corpus), out=str(out), optimizer=optimizer, steps=6,
                batch_size=4, seq_len=64, eval_every=3, save_every=6, log_every=1, eval_batches=2,
                val_fraction=0.2)


def test_a_factory_replaces_the_registry(model_dir, corpus, tmp_path):
    built = []

    def sgd_on_the_head_only(model):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("lm_head"))
        built.append(model)
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)

    out = tmp_path / "run"
    f = flags(model_dir, corpus, out, "sgd-head")  # not a recipe name: the registry is not asked
    summary = session.run("pretrain", f, None, None, Console(quiet=True), optimizer_factory=sgd_on_the_head_only)
    head = built[0].lm_head.weight
    assert summary["optimizer"] == "sgd-head" and summary["steps"] == 6
    assert summary["gradient_bytes"] == head.nbytes < summary["weight_bytes"]
    assert summary["optimizer_state_bytes"] == 0 and summary["optimizer_ms_per_step"] > 0
    assert json.loads((out / "summary.json").read_text())["val_loss"] < 6.3  # it learned (ln 512 = 6.24)


def test_a_nan_loss_is_a_divergence(model_dir, corpus, tmp_path):
    class Poison(torch.optim.SGD):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.fill_(float("nan"))

    f = flags(model_dir, corpus, tmp_path / "run", "poison")
    with pytest.raises(Diverged, match="the training loss became nan at step 2"):
        session.run("pretrain", f, None, None, Console(quiet=True),
                    optimizer_factory=lambda m: Poison(m.parameters(), lr=1.0))

