"""The learning-rate protocol (``sweep.py``): a walk on the 1-2-5 ladder that ends only once the
best lr is bracketed (or the ladder ends, or the budget is spent), the seed-noise rule, the chosen
lr at every seed, and the same budget for every method — each decision from the finished trials."""

import math
import random

import pytest

from slimtrain.bench.sweep import Protocol, best_lr, ladder, neighbours, snap
from slimtrain.errors import UserError

SEEDS = (0, 1, 2)


def walk(loss, center=1e-2, trials=10, seeds=SEEDS):
    """Run a protocol where trial (lr, seed) ends with ``loss(lr, seed)`` (None: diverged); returns
    the trials in the order run, as (lr, seed, stage), and the outcome."""
    rules, results, order = Protocol(trials, tuple(seeds)), {}, []
    while (step := rules.next_trial(results, center)) is not None:
        assert (step.lr, step.seed) not in results, "a trial ran twice"
        results[(step.lr, step.seed)] = loss(step.lr, step.seed)
        order.append((step.lr, step.seed, step.stage))
    return order, rules.outcome(results)


def first_seed(order):
    return [lr for lr, seed, _ in order if seed == SEEDS[0]]


def bowl(best, seed_shift=0.0):
    """A clean optimum at ``best`` (in validation loss); the seeds only shift every lr alike."""
    return lambda lr, seed: 4.0 + math.log10(lr / best) ** 2 + seed_shift * seed


def tilted(best, tilt):
    """An optimum at ``best`` whose seeds tilt the landscape: seed 0 favours larger lrs by ``tilt``
    per decade, seed 1 smaller ones as much. Seed 0 alone picks a wrong lr; the mean does not."""
    def loss(lr, seed):
        x = math.log10(lr / best)
        return 4.0 + 0.1 * x * x + {0: -tilt, 1: tilt}.get(seed, 0.0) * x
    return loss


def test_the_ladder_is_one_two_five():
    assert ladder(1e-3, 1e-1) == [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
    assert snap(3e-3) == 2e-3 and snap(4e-3) == 5e-3 and snap(0.01) == 1e-2
    assert neighbours(1e-2) == [2e-2, 5e-3] and neighbours(10.0) == [5.0]


# The old rule stopped after exactly 3 trials, so an optimum two rungs out was an "edge"; now the
# walk goes on until a worse lr is tried on each side of the best.
@pytest.mark.parametrize("optimum,tried", [
    (1e-2, [1e-2, 2e-2, 5e-3]),                  # the centre is best: one up, one down
    (2e-2, [1e-2, 2e-2, 5e-2]),                  # up helped, one more up was worse
    (5e-2, [1e-2, 2e-2, 5e-2, 1e-1]),            # two rungs up, then the one past it
    (2e-3, [1e-2, 2e-2, 5e-3, 2e-3, 1e-3]),      # down after up failed, until worse below
])
def test_a_clean_walk_ends_once_the_best_is_bracketed(optimum, tried):
    order, outcome = walk(bowl(optimum, seed_shift=0.01))
    assert first_seed(order) == tried
    assert (outcome.lr, outcome.ended, outcome.noisy, outcome.edge) == (optimum, "bracketed", False, False)
    # then the chosen lr at the other seeds (the first of them is the noise check), and nothing else
    assert order[len(tried):] == [(optimum, 1, "seed"), (optimum, 2, "seed")]
    assert outcome.used == len(tried)


def test_a_noisy_methods_walk_goes_both_ways():
    # The case: seed 0 walks up from the centre to 0.02 and brackets it there; the optimum
    # (in the mean over seeds) is 0.005, below the centre, which a seed-0 walk never tries.
    loss = tilted(5e-3, tilt=0.1)
    assert best_lr({lr: loss(lr, 0) for lr in ladder(1e-3, 1e-1)}) == 2e-2
    order, outcome = walk(loss)
    assert order[:4] == [(1e-2, 0, "sweep"), (2e-2, 0, "sweep"), (5e-2, 0, "sweep"), (2e-2, 1, "seed")]
    # the second seed's spread at 0.02 exceeds its gap to 0.01: both neighbours rerun at seed 1 …
    assert order[4:6] == [(5e-2, 1, "noise"), (1e-2, 1, "noise")]
    # … and the two-seed means walk back down, past the centre, until 0.005 is bracketed
    assert order[6:10] == [(5e-3, 0, "sweep"), (5e-3, 1, "noise"), (2e-3, 0, "sweep"), (2e-3, 1, "noise")]
    assert order[10:] == [(5e-3, 2, "seed")]
    assert (outcome.lr, outcome.ended, outcome.noisy, outcome.used) == (5e-3, "bracketed", True, 9)
    tried = {lr for lr, _, _ in order}
    assert max(tried) > 1e-2 > min(tried)  # both sides of the centre


def test_a_two_seed_step_is_not_started_with_one_trial_left():
    # The walk above with a budget of 8: after 0.005's rerun 7 are used; 0.002 would need two
    # trials (seed 0 and seed 1) to count, so it is not begun — the walk ends on its budget.
    order, outcome = walk(tilted(5e-3, tilt=0.1), trials=8)
    assert 2e-3 not in {lr for lr, _, _ in order}
    assert (outcome.lr, outcome.ended, outcome.used, outcome.edge) == (5e-3, "budget", 7, True)


def test_the_noise_rule_compares_the_seed_spread_with_the_gap_to_the_neighbours():
    rules = Protocol(10, SEEDS)
    walked = {(1e-2, 0): 4.00, (2e-2, 0): 4.05, (5e-3, 0): 4.10}  # bracketed at 0.01, gap 0.05
    assert rules.next_trial(walked, 1e-2).seed == 1  # the noise check
    quiet = {**walked, (1e-2, 1): 4.04}    # spread 0.04 ≤ gap: the choice stands, next seed
    noisy = {**walked, (1e-2, 1): 3.94}    # spread 0.06 > gap: the neighbours rerun, the higher first
    assert not rules.noisy(quiet) and rules.next_trial(quiet, 1e-2) == (1e-2, 2, "seed")
    assert rules.noisy(noisy) and rules.next_trial(noisy, 1e-2) == (2e-2, 1, "noise")
    diverged = {**walked, (1e-2, 1): None}  # the chosen lr diverged at seed 1: infinite spread
    assert rules.noisy(diverged)
    assert not rules.noisy({(1e-2, 0): 4.0, (2e-2, 0): None, (1e-2, 1): 3.0})  # no finished neighbour


def test_the_edge_flag_disappears_once_the_walk_brackets_the_best():
    loss = bowl(5e-2)
    results, rules = {}, Protocol(10, SEEDS)
    for lr in (1e-2, 2e-2, 5e-2):  # where the old three-trial walk stopped
        results[(lr, 0)] = loss(lr, 0)
    assert rules.outcome(results).edge and rules.outcome(results).ended == "budget"
    assert Protocol(3, SEEDS).next_trial(results, 1e-2) == (5e-2, 1, "seed")  # out of budget
    step = rules.next_trial(results, 1e-2)
    assert step == (1e-1, 0, "sweep")  # a budget of 10 looks one rung further
    results[(step.lr, step.seed)] = loss(step.lr, step.seed)
    assert rules.outcome(results).ended == "bracketed" and not rules.outcome(results).edge


def test_the_ladder_end_is_stated():
    order, outcome = walk(lambda lr, seed: 4.0 - math.log(lr), center=5.0)  # larger is always better
    assert first_seed(order) == [5.0, 10.0]
    assert (outcome.lr, outcome.ended, outcome.edge) == (10.0, "ladder end", True)


def test_a_diverged_trial_counts_as_worse_and_sends_the_walk_down():
    diverges_above = lambda lr, seed: None if lr > 6e-3 else bowl(1e-3)(lr, seed)  # noqa: E731
    order, outcome = walk(diverges_above)
    assert first_seed(order) == [1e-2, 5e-3, 2e-3, 1e-3, 5e-4] and outcome.ended == "bracketed"
    order, outcome = walk(lambda lr, seed: None, trials=4)
    assert first_seed(order) == [1e-2, 5e-3, 2e-3, 1e-3] and (outcome.lr, outcome.ended) == (None, "failed")
    assert len(order) == 4  # nothing finished: no noise check, no seeds


LANDSCAPES = {
    "centre best": bowl(1e-2), "far below": bowl(1e-5), "far above": bowl(1.0),
    "noisy": tilted(5e-3, tilt=0.1), "very noisy": tilted(1e-3, tilt=0.3),
    "diverges above 3e-3": lambda lr, seed: None if lr > 3e-3 else bowl(1e-4)(lr, seed),
    "always diverges": lambda lr, seed: None,
    "seed 1 diverges": lambda lr, seed: None if seed == 1 else bowl(2e-2)(lr, seed),
}


@pytest.mark.parametrize("trials", [1, 2, 4, 6, 10])
def test_every_method_has_the_same_budget(trials):
    for name, loss in LANDSCAPES.items():
        order, outcome = walk(loss, trials=trials)
        tuning = [(lr, seed) for lr, seed, _ in order if seed in SEEDS[:2]]
        # the budget: every trial at the first two seeds but the noise check
        assert outcome.used == len(tuning) - (1 if any(s == 1 for _, s in tuning) else 0) <= trials, name
        assert len(order) <= trials + len(SEEDS) - 1, name
        if outcome.ended == "budget":  # a walk cut short used all of it (bar a two-seed lr's half)
            assert outcome.used >= trials - 1, name
        if outcome.lr is not None:  # the chosen lr ran at every seed
            assert {seed for lr, seed, _ in order if lr == outcome.lr} == set(SEEDS), name


def test_decisions_are_a_function_of_the_finished_trials_alone():
    """Resuming from a run directory rebuilds the results in whatever order: the next trial must not
    depend on it, and a walk replayed from a prefix of its own trials continues identically."""
    loss = tilted(5e-3, tilt=0.1)
    order, _ = walk(loss)
    rules = Protocol(10, SEEDS)
    for k in range(len(order)):
        done = [(lr, seed) for lr, seed, _ in order[:k]]
        for _ in range(3):
            random.Random(k).shuffle(done)
            step = rules.next_trial({key: loss(*key) for key in done}, 1e-2)
            assert (step.lr, step.seed, step.stage) == order[k]


def test_one_seed_has_no_noise_check():
    order, outcome = walk(tilted(5e-3, tilt=0.1), seeds=(0,))  # seed 0 alone is misled, and stays so
    assert order == [(1e-2, 0, "sweep"), (2e-2, 0, "sweep"), (5e-2, 0, "sweep")]
    assert (outcome.lr, outcome.noisy, outcome.ended) == (2e-2, False, "bracketed")


def test_best_lr_ignores_failures_and_prefers_the_smaller_lr_on_ties():
    assert best_lr({1e-2: 4.0, 2e-2: None, 5e-3: 4.0}) == 5e-3
    assert best_lr({1e-2: None, 2e-2: float("nan")}) is None


def test_snap_rejects_nonsense():
    with pytest.raises(UserError, match="positive"):
        snap(0.0)
    with pytest.raises(UserError, match="outside"):
        snap(100.0)


def test_the_runner_replays_the_workers_walk_from_finished_trials():
    """``method_trials`` is the worker's loop (it runs each trial) and the runner's (it looks each
    up): with the first k trials finished, the runner sees exactly the worker's first k + 1."""
    from slimtrain.bench.spec import BenchSettings, MethodSpec
    from slimtrain.bench.trials import method_trials

    loss = tilted(5e-3, tilt=0.1)
    settings = BenchSettings(methods=["apollo-mini"])
    spec = MethodSpec("apollo-mini")

    def result(trial):
        value = loss(trial.lr, trial.seed)
        return dict(status="ok", summary=dict(val_loss=value)) if value is not None else \
            dict(status="diverged", summary=None)

    ran = method_trials(spec, 1e-2, settings, result)  # the worker
    assert [(t.lr, t.seed, t.stage) for t, _ in ran] == walk(loss)[0]
    for k in range(len(ran)):
        done = {(t.lr, t.seed) for t, _ in ran[:k]}
        seen = method_trials(spec, 1e-2, settings, lambda t: result(t) if (t.lr, t.seed) in done else None)
        assert [t for t, _ in seen] == [t for t, _ in ran[:k + 1]] and seen[-1][1] is None
