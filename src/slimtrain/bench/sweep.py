"""The learning-rate protocol: a bracketed walk on one ladder of learning rates, a seed-noise rule,
then the chosen lr at every seed — the same rules and the same maximum number of trials for every
method, each decision a pure function of the method's finished trials (``Results``: (lr, seed) →
final validation loss, None when the trial diverged or failed), so a rerun that reuses finished
trials retraces the same walk.

The ladder is 1, 2, 5 × 10ᵏ (steps of ~2.2×); s₀ and s₁ are the first two seeds.

1. **Walk at s₀.** The first trial is the method's centre (its authors' lr, snapped to the ladder);
   each next one is an untried ladder neighbour of the best lr so far (the higher one first). The
   walk ends when the best is *bracketed* — both its neighbours were tried and neither is better
   (a diverged trial counts as worse) — or the best is a ladder end and its one neighbour was tried,
   or the budget is spent. While no trial has finished it steps down from the smallest lr tried.
2. **Noise check.** The best lr b is run again at s₁. Its *spread* is |L(b, s₁) − L(b, s₀)| (∞ when
   the s₁ trial diverged); its *gap* is the smallest L(n, s₀) − L(b, s₀) over its ladder neighbours n
   that finished at s₀. When spread > gap, which neighbour is better is decided by the seed, not
   the lr, and the method becomes *noisy*:
3. **Walk on two-seed means (noisy methods only).** An lr's score is the mean of its losses at s₀
   and s₁ (∞ if either diverged); it is *complete* once both ran (or s₀ diverged). The anchor is the
   complete lr with the lowest score; its ladder neighbours are completed (s₀ first, then s₁, the
   higher neighbour first) until both are complete — the anchor then is the choice — or the budget
   is spent (an lr not yet run costs two trials here, and is not started with one left). So the
   neighbours of b are rerun at s₁, and the walk moves on, either way, if a neighbour's mean beats
   b's.
4. **Seeds.** The chosen lr runs at every remaining seed (``--seeds``, three by default).

Budget: ``trials`` is the most trials a method spends on choosing its lr: every trial at s₀ or s₁
except the first trial at s₁ (the noise check, which every method with a finished trial runs, and
which is the chosen lr's second seed unless the noise rule moves the choice). The seeds of step 4
are outside it, so a method runs at most ``trials + len(seeds) − 1`` trials. With one seed there is
no noise check: the choice is the walk's.

How the walk ended — ``bracketed``, ``ladder end`` or ``budget`` — is part of its ``Outcome``; the
report flags the last two ("edge"): the best lr may lie beyond what was tried.

Why these rules: a three-trial greedy walk let seed noise pick the direction (a 2% win at one seed,
inside a 25% seed spread, walked a method away from its optimum and never back). Bracketing makes
the walk look on both sides of its best; the noise rule pays for a second seed only where the
comparison that made the choice is smaller than the seed spread, the same test for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import UserError

MANTISSAS = (1.0, 2.0, 5.0)

Results = dict[tuple[float, int], float | None]  # (lr, seed) → final validation loss; None: diverged


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


def neighbours(lr: float) -> list[float]:
    """The rungs next to ``lr``, the higher first (one at a ladder end)."""
    i = RUNGS.index(lr)
    return [RUNGS[j] for j in (i + 1, i - 1) if 0 <= j < len(RUNGS)]


def _ok(loss: float | None) -> bool:
    return loss is not None and math.isfinite(loss)


def best_lr(losses: dict[float, float | None]) -> float | None:
    """Of lr → loss (None when the trial did not finish), the lr with the lowest loss (ties: the
    smaller lr); None when no trial finished."""
    ok = [(loss, lr) for lr, loss in losses.items() if _ok(loss)]
    return min(ok)[1] if ok else None


class Step(NamedTuple):
    """The next trial of a method: its lr, seed and stage — "sweep" (the walk at s₀), "seed" (the
    noise check, and the chosen lr at the other seeds) or "noise" (the two-seed walk's s₁ trials)."""

    lr: float
    seed: int
    stage: str


@dataclass(frozen=True)
class Outcome:
    lr: float | None  # the chosen lr; None when no trial finished
    ended: str        # "bracketed", "ladder end" or "budget" (or "failed": nothing finished)
    noisy: bool       # chosen on the mean over s₀ and s₁ (the noise rule fired)
    used: int         # trials spent on choosing the lr (see the module docstring)

    @property
    def edge(self) -> bool:
        """The best lr may lie beyond what was tried."""
        return self.ended in ("ladder end", "budget")


@dataclass(frozen=True)
class Protocol:
    trials: int             # the most trials a method spends on choosing its lr
    seeds: tuple[int, ...]  # s₀ (the walk), s₁ (the noise check), then the others

    def __post_init__(self):
        if self.trials < 1 or not self.seeds:
            raise UserError(f"a sweep needs at least one trial and one seed, got {self.trials} "
                            f"trial(s) and seeds {list(self.seeds)}")

    # -- what the finished trials say ---------------------------------------------------------

    def used(self, results: Results) -> int:
        first = sum(seed == self.seeds[0] for _, seed in results)
        second = sum(seed == self._s1 for _, seed in results) if self._s1 is not None else 0
        return first + max(second - 1, 0)  # the noise check is not counted

    def noisy(self, results: Results) -> bool:
        """Some lr run at s₀ and s₁ has a seed spread larger than its gap to a ladder neighbour
        that finished at s₀. Before the rule fires the only lr with an s₁ trial is the noise check's.
        Trials are only ever added, and a pair that makes this true stays, so once a method is noisy
        it stays noisy: the walk never flips back to one seed."""
        if self._s1 is None:
            return False
        s0, s1 = self.seeds[0], self._s1
        for (lr, seed), loss in results.items():
            base = results.get((lr, s0))
            if seed != s1 or not _ok(base):
                continue
            spread = abs(loss - base) if _ok(loss) else math.inf
            gaps = [abs(results[(n, s0)] - base) for n in neighbours(lr) if _ok(results.get((n, s0)))]
            if gaps and spread > min(gaps):
                return True
        return False

    def outcome(self, results: Results) -> Outcome:
        noisy = self.noisy(results)
        if noisy:
            lr = self._anchor(results)
            done = all(self._complete(results, n) for n in neighbours(lr))
        else:
            lr = best_lr(self._first(results))
            done = lr is not None and all((n, self.seeds[0]) in results for n in neighbours(lr))
        if lr is None:
            ended = "failed"
        elif not done:
            ended = "budget"
        else:
            ended = "ladder end" if len(neighbours(lr)) < 2 else "bracketed"
        return Outcome(lr, ended, noisy, self.used(results))

    # -- what runs next -----------------------------------------------------------------------

    def next_trial(self, results: Results, center: float) -> Step | None:
        """The method's next trial, or None when its protocol is done."""
        s0, s1 = self.seeds[0], self._s1
        left = self.trials - self.used(results)
        if self.noisy(results):
            anchor = self._anchor(results)
            for n in neighbours(anchor):
                if self._complete(results, n):
                    continue
                if (n, s0) in results and left >= 1:
                    return Step(n, s1, "noise")
                if left >= 2:  # a new lr costs two trials here; one would leave it half-run
                    return Step(n, s0, "sweep")
            return self._seeds(results, anchor)
        first = self._first(results)
        if not first:
            return Step(snap(center), s0, "sweep")
        best = best_lr(first)
        if best is None:  # nothing finished (diverged): step below the smallest tried
            i = RUNGS.index(min(first)) - 1
            return Step(RUNGS[i], s0, "sweep") if left > 0 and i >= 0 else None
        untried = [n for n in neighbours(best) if n not in first]
        if untried and left > 0:
            return Step(untried[0], s0, "sweep")
        return self._seeds(results, best)  # the noise check first

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _s1(self) -> int | None:
        return self.seeds[1] if len(self.seeds) > 1 else None

    def _first(self, results: Results) -> dict[float, float | None]:
        return {lr: loss for (lr, seed), loss in results.items() if seed == self.seeds[0]}

    def _complete(self, results: Results, lr: float) -> bool:
        s0 = results.get((lr, self.seeds[0]), math.nan)
        return (lr, self.seeds[0]) in results and (not _ok(s0) or (lr, self._s1) in results)

    def _score(self, results: Results, lr: float) -> float:
        a, b = results[(lr, self.seeds[0])], results.get((lr, self._s1))
        return (a + b) / 2 if _ok(a) and _ok(b) else math.inf

    def _anchor(self, results: Results) -> float:
        """The complete lr with the lowest two-seed mean (ties: the smaller); the first seed's best
        while no complete lr has a finite mean (the noise check's s₁ trial diverged)."""
        scores = {lr: self._score(results, lr) for lr, _ in results if self._complete(results, lr)}
        finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
        return best_lr(finite) if finite else best_lr(self._first(results))

    def _seeds(self, results: Results, lr: float) -> Step | None:
        """The chosen lr at the first seed it has not run (the noise check is the first of them)."""
        missing = [s for s in self.seeds if (lr, s) not in results]
        return Step(lr, missing[0], "seed") if missing else None
