"""The learning-rate sweep: a walk on one ladder of learning rates, the same number of trials for
every method.

The ladder is 1, 2, 5 × 10ᵏ (steps of ~2.2×). A method's first trial is its centre (the lr its
authors recommend, snapped to the ladder); each next trial is the untried rung nearest the best so
far (on a tie, the higher one). With three trials that is: the centre, one rung up, then one more
up if that helped, else one down — a line search that ends with the optimum bracketed unless it
lies further out, which the report flags ("edge"). Every method gets exactly ``trials`` trials,
and the choice of the next one depends only on the method's own results, so it is reproducible.
"""

from __future__ import annotations

import math

from ..errors import UserError

MANTISSAS = (1.0, 2.0, 5.0)


def ladder(low: float = 1e-6, high: float = 10.0) -> list[float]:
    """1, 2, 5 × 10ᵏ between ``low`` and ``high``, spelled so they print and compare exactly."""
    values = []
    for exp in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for m in MANTISSAS:
            v = float(f"{m}e{exp}")
            if low <= v <= high:
                values.append(v)
    return values


RUNGS = ladder()


def snap(lr: float) -> float:
    """The rung nearest ``lr`` (in log distance)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"a learning rate must be a positive number, got {lr}")
    if not RUNGS[0] <= lr <= RUNGS[-1]:
        raise UserError(f"learning rate {lr:g} is outside the sweep's ladder "
                        f"({RUNGS[0]:g} … {RUNGS[-1]:g})")
    return min(RUNGS, key=lambda r: abs(math.log(r / lr)))


def best_lr(losses: dict[float, float | None]) -> float | None:
    """Of a sweep (lr → final validation loss, None when the trial did not finish), the lr with the
    lowest loss (ties: the smaller lr); None when no trial finished."""
    ok = [(loss, lr) for lr, loss in losses.items() if loss is not None and math.isfinite(loss)]
    return min(ok)[1] if ok else None


def next_lr(tried: dict[float, float | None], center: float, trials: int) -> float | None:
    """The next learning rate to try, or None when the sweep is done."""
    if len(tried) >= trials:
        return None
    if not tried:
        return snap(center)
    best = best_lr(tried)
    if best is None:  # nothing finished (diverged): step below the smallest tried
        i = RUNGS.index(min(tried)) - 1
        return RUNGS[i] if i >= 0 else None
    i = RUNGS.index(best)
    untried = [j for j, r in enumerate(RUNGS) if r not in tried]
    return RUNGS[min(untried, key=lambda j: (abs(j - i), -j))] if untried else None
