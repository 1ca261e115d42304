"""The trainer hands the optimizer the step inputs its rules declare (here: the step's loss), and
refuses, in one line, an optimizer that needs one it cannot provide."""

import json

import pytest
import torch

import slimtrain.optim as so
from slimtrain.optim import registry
from slimtrain.optim.recipes.adamw import AdamWConfig
from slimtrain.optim.rules import RULES, Rule
from tests.train.conftest import cli

SEEN: list[float] = []


class LossScaled(Rule):
    """D = loss · G: reads the step's loss from ``step(loss=…)``."""

    needs = ("loss",)

    def moment_shapes(self, shape, group):
        return {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        for c in counts:
            c += 1
        loss = inputs["loss"][0]
        SEEN.append(float(loss))
        return [g * loss for g in grads], [1.0] * len(grads)


class NeedsHessian(LossScaled):
    needs = ("hessian",)


@pytest.fixture
def recipes():
    added = []
    for name, rule in (("test-loss-scaled", LossScaled), ("test-needs-hessian", NeedsHessian)):
        so.register_rule(name, rule)
        recipe = type(name.title().replace("-", ""), (so.Recipe,), {"Config": AdamWConfig,
                                                                    "rule": name})
        so.register(name, recipe, "a test recipe")
        added.append(name)
    SEEN.clear()
    yield
    for name in added:
        RULES.pop(name)
        registry._RECIPES.pop(name)


def args(model_dir, corpus, out, optimizer):
    return ["--model", model_dir, "--data", corpus, "--out", out, "--steps", 4, "--batch-size", 2,
            "--seq-len", 32, "--eval-every", 4, "--log-every", 1, "--val-fraction", 0.2,
            "--optimizer", optimizer, "--lr", 1e-3]


def test_the_trainer_provides_the_loss(recipes, model_dir, corpus, tmp_path):
    result = cli("pretrain", *args(model_dir, corpus, tmp_path / "run", "test-loss-scaled"))
    assert result.exit_code == 0, result.stderr
    logged = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(SEEN) == 4  # one group, one rule call per step, each with that step's loss
    torch.testing.assert_close(torch.tensor(SEEN), torch.tensor(logged), rtol=1e-6, atol=0)


def test_an_input_the_trainer_cannot_provide_is_a_clear_error(recipes, model_dir, corpus, tmp_path):
    result = cli("pretrain", *args(model_dir, corpus, tmp_path / "run", "test-needs-hessian"))
    assert result.exit_code == 2
    assert "needs the step input(s) hessian" in result.stderr and "Traceback" not in result.output
