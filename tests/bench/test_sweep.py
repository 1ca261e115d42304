"""The learning-rate sweep: a walk on the 1-2-5 ladder with the same number of trials for every
method, each step decided by the method's own results."""

import pytest

from slimtrain.bench.sweep import best_lr, ladder, next_lr, snap
from slimtrain.errors import UserError


def walk(center, trials, loss):
    """The lrs a sweep tries when trial ``lr`` ends with ``loss(lr)`` (None: diverged)."""
    tried = {}
    while (lr := next_lr(tried, center, trials)) is not None:
        tried[lr] = loss(lr)
    return list(tried)


def bowl(best):
    import math

    return lambda lr: (math.log(lr / best)) ** 2


def test_the_ladder_is_one_two_five():
    assert ladder(1e-3, 1e-1) == [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
    assert snap(3e-3) == 2e-3 and snap(4e-3) == 5e-3 and snap(0.01) == 1e-2


@pytest.mark.parametrize("optimum,tried", [
    (1e-2, [1e-2, 2e-2, 5e-3]),   # the centre is best: one up, one down — bracketed
    (2e-2, [1e-2, 2e-2, 5e-2]),   # up helped: keep going up
    (5e-2, [1e-2, 2e-2, 5e-2]),   # the optimum lies further out: the last trial is the edge
    (5e-3, [1e-2, 2e-2, 5e-3]),
    (2e-3, [1e-2, 2e-2, 5e-3]),
])
def test_three_trials_walk_towards_the_optimum(optimum, tried):
    assert walk(1e-2, 3, bowl(optimum)) == tried


def test_more_trials_keep_walking_and_every_method_gets_the_same_count():
    assert walk(1e-2, 5, bowl(2e-3)) == [1e-2, 2e-2, 5e-3, 2e-3, 1e-3]
    for optimum in (1e-4, 1e-2, 1.0):
        assert len(walk(1e-3, 4, bowl(optimum))) == 4


def test_a_diverged_trial_sends_the_walk_down():
    diverges_above = lambda lr: None if lr > 6e-3 else bowl(1e-3)(lr)  # noqa: E731
    assert walk(1e-2, 3, diverges_above) == [1e-2, 5e-3, 2e-3]
    assert walk(5e-3, 3, diverges_above) == [5e-3, 1e-2, 2e-3]


def test_best_lr_ignores_failures_and_prefers_the_smaller_lr_on_ties():
    assert best_lr({1e-2: 4.0, 2e-2: None, 5e-3: 4.0}) == 5e-3
    assert best_lr({1e-2: None, 2e-2: float("nan")}) is None


def test_snap_rejects_nonsense():
    with pytest.raises(UserError, match="positive"):
        snap(0.0)
    with pytest.raises(UserError, match="outside"):
        snap(100.0)
