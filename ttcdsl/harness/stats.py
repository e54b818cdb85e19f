"""Statistics over dataset items for `ttc bench`: intervals and paired tests (pure functions).

The unit of sampling is the *item*: a benchmark draws its questions from a population, so the
uncertainty of an accuracy is that of a mean over items, not the spread of seeds.  Repeats of an
item are folded into one score per item (its mean over repeats) before anything else.

* `wilson` is the Wilson score interval of a proportion; for folded scores it takes their mean
  as the proportion and the number of items as n (with one repeat: the exact binomial case).
* `bootstrap_ci` is a percentile bootstrap over items of any statistic of the per-item values;
  `paired_bootstrap` resamples the *same* items for two configurations and returns the interval
  of the difference of their means (what a paired comparison needs: item difficulty cancels).
* `sign_test` is the exact two-sided sign test on per-item differences (items where one
  configuration scored higher against those where the other did; ties dropped).  With one repeat
  and 0/1 scores this is McNemar's exact test.
* Resampling is seeded (`BOOTSTRAP_SEED`), so a report reproduces exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "bootstrap_ci",
    "paired_bootstrap",
    "percentile",
    "sign_test",
    "wilson",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20231
_Z = 1.959963984540054  # the standard normal quantile at 0.975


def wilson(p: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` over ``n`` items ((0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    z2 = _Z * _Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _interval(draws: list[float]) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    return percentile(draws, tail), percentile(draws, 1 - tail)


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of ``stat`` (default: the mean) over items."""
    if not values:
        raise ValueError("an interval needs at least one item")
    fn = stat or (lambda xs: math.fsum(xs) / len(xs))
    rng = random.Random(BOOTSTRAP_SEED)
    n = len(values)
    draws = [fn([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples)]
    return _interval(draws)


def paired_bootstrap(a: Sequence[float], b: Sequence[float],
                     resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """The 95% interval of mean(b) - mean(a) with the same items resampled for both."""
    if len(a) != len(b) or not a:
        raise ValueError("a paired comparison needs the same, non-empty list of items on both sides")
    diffs = [y - x for x, y in zip(a, b)]
    return bootstrap_ci(diffs, resamples=resamples)


def sign_test(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """(items where b beat a, items where a beat b, exact two-sided p-value)."""
    if len(a) != len(b):
        raise ValueError("a paired test needs the same items on both sides")
    wins = sum(y > x for x, y in zip(a, b))
    losses = sum(y < x for x, y in zip(a, b))
    n = wins + losses
    if n == 0:
        return 0, 0, 1.0
    k = min(wins, losses)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return wins, losses, min(1.0, 2 * tail)
