"""Intervals over items and paired tests (`ttcdsl.harness.stats`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttcdsl.harness.stats import bootstrap_ci, paired_bootstrap, percentile, sign_test, wilson


def test_wilson_matches_the_textbook_values() -> None:
    lo, hi = wilson(0.5, 30)
    assert math.isclose(lo, 0.3315, abs_tol=1e-3) and math.isclose(hi, 0.6685, abs_tol=1e-3)
    lo, hi = wilson(1.0, 30)  # all right: the interval still has width
    assert math.isclose(hi, 1.0) and math.isclose(lo, 0.8865, abs_tol=1e-3)
    assert wilson(0.3, 0) == (0.0, 1.0)


@given(st.floats(0, 1), st.integers(1, 500))
def test_wilson_contains_the_proportion(p: float, n: int) -> None:
    lo, hi = wilson(p, n)
    assert 0 <= lo <= p + 1e-12 and p - 1e-12 <= hi <= 1


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.9) == 5
    assert percentile(list(range(11)), 0.9) == 9
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_bootstrap_is_reproducible_and_brackets_the_mean() -> None:
    values = [1.0] * 20 + [0.0] * 10
    first, second = bootstrap_ci(values), bootstrap_ci(values)
    assert first == second
    assert first[0] < 2 / 3 < first[1] and first[1] - first[0] > 0.2


def test_a_paired_difference_cancels_item_difficulty() -> None:
    # b is right exactly where a is, plus two items: the paired interval is narrow and positive.
    a = [1.0] * 10 + [0.0] * 20
    b = [1.0] * 12 + [0.0] * 18
    lo, hi = paired_bootstrap(a, b)
    assert 0 <= lo <= 2 / 30 <= hi <= 0.2
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_sign_test_is_mcnemar_exact_on_binary_outcomes() -> None:
    a = [0.0] * 8 + [1.0] * 2 + [1.0] * 5
    b = [1.0] * 8 + [0.0] * 2 + [1.0] * 5
    wins, losses, p = sign_test(a, b)
    assert (wins, losses) == (8, 2)
    assert math.isclose(p, 2 * sum(math.comb(10, k) for k in range(3)) / 2**10)
    assert sign_test([1.0, 0.0], [1.0, 0.0]) == (0, 0, 1.0)
