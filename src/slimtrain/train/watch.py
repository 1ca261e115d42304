"""What the loop watches between steps: the losses, read from the device with one host sync per
logged step, and the signs of divergence.

A run has diverged when (checked at every step read, tested with a huge lr for every recipe):

* a loss is NaN or infinite;
* the loss stays more than ln(vocabulary) above its running minimum for ``PATIENCE`` steps in a row
  — a model V times more perplexed than it has already been (a fresh model's loss is about
  ln V, so this is worse than guessing uniformly); one bad batch does not trigger it;
* every trainable parameter's update was skipped (NaN/Inf gradients) for ``PATIENCE`` steps in a
  row: the optimizer's per-parameter skip is meant for a rare bad batch, not for a run whose
  gradients are all gone. The weights then are still those of the last good step, which the
  trainer saves as a checkpoint before stopping;
* the gradient norm is exactly 0 for ``PATIENCE`` steps in a row: the network is saturated
  (dead activations after a huge step) and nothing can train it any more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import UserError

PATIENCE = 3


class Diverged(UserError):
    """The run diverged (a learning rate too high, usually). ``weights_good``: the weights are
    still those of the last good step (only updates were skipped), so they can be saved."""

    def __init__(self, message: str, weights_good: bool = False):
        super().__init__(message)
        self.weights_good = weights_good


_ADVICE = "lower --lr (or raise --warmup-steps) and start a new run"


@dataclass
class Watch:
    vocab_size: int
    reduce: object = None   # several ranks: sums each rank's share of the losses (all-reduce)
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    last: float = math.nan
    best: float = math.inf
    above: int = 0          # consecutive steps far above the best loss
    norms: list[tuple[int, object]] = field(default_factory=list)  # unread gradient norms
    zero: int = 0           # consecutive steps with a zero gradient norm
    skipped: list[int] = field(default_factory=list)  # consecutive steps with every update skipped

    def add(self, step: int, loss: torch.Tensor | None, grad_norm=None) -> None:
        if loss is not None:
            self.pending.append((step, loss))
        if grad_norm is not None:
            self.norms.append((step, grad_norm))

    def read(self) -> float:
        """The latest step's loss (NaN when no step had a predicted token yet), after checking
        every loss since the last read."""
        self._check_norms()
        if not self.pending:
            return self.last
        stacked = torch.stack([loss for _, loss in self.pending])
        if self.reduce is not None:  # each rank holds its share: the step's loss is their sum
            stacked = self.reduce(stacked)
        values = stacked.tolist()
        steps = [step for step, _ in self.pending]
        self.pending.clear()
        margin = math.log(max(self.vocab_size, 2))
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise Diverged(f"the training loss became {value} at step {step}: the run diverged; "
                               f"{_ADVICE}")
            self.above = self.above + 1 if value > self.best + margin else 0
            if self.above >= PATIENCE:
                raise Diverged(f"the training loss rose to {value:.4g} at step {step}, more than "
                               f"ln(vocabulary) = {margin:.2f} above its best ({self.best:.3f}) "
                               f"for {PATIENCE} steps: the run diverged; {_ADVICE}")
            self.best = min(self.best, value)
        self.last = values[-1]
        return self.last

    def _check_norms(self) -> None:
        norms = [(step, float(n)) for step, n in self.norms]
        self.norms.clear()
        for step, value in norms:
            self.zero = self.zero + 1 if value == 0.0 else 0
            if self.zero >= PATIENCE:
                raise Diverged(f"the gradient norm was exactly 0 for {PATIENCE} steps up to step "
                               f"{step}: the network is saturated and cannot train any more, the "
                               f"run diverged; {_ADVICE}")

    def updates(self, step: int, optimizer) -> None:
        """After a step: did the optimizer skip every parameter's update (NaN/Inf gradients)?"""
        seen = getattr(optimizer, "last_step_params", 0)
        if seen and getattr(optimizer, "last_step_skipped", 0) == seen:
            self.skipped.append(step)
            if len(self.skipped) >= PATIENCE:
                raise Diverged(f"every parameter's gradient was NaN or infinite at steps "
                               f"{self.skipped[0]}–{step}, so no update was applied: the run "
                               f"diverged; {_ADVICE}", weights_good=True)
        else:
            self.skipped.clear()
