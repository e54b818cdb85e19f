"""Budget tree: reservation, settlement, the fair split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttcdsl.runtime.budget import Budget, split


def test_reservation_must_fit_every_level() -> None:
    root = Budget(100)
    node = root.child(30, "node")
    node.reserve(30)
    with pytest.raises(ValueError, match="exceeds the 0 available"):
        node.reserve(1)
    assert root.available() == 70


def test_settle_keeps_used_and_refunds_the_rest_at_every_level() -> None:
    root = Budget(100)
    node = root.child(50, "node")
    r = node.reserve(40)
    r.settle(25)
    assert (node.spent, node.reserved, root.spent, root.reserved) == (25, 0, 25, 0)
    assert node.available() == 25 and root.available() == 75
    assert root.violations() == []


def test_settling_more_than_reserved_is_refused() -> None:
    r = Budget(10).reserve(5)
    with pytest.raises(ValueError):
        r.settle(6)


def test_release_refunds_everything_once() -> None:
    root = Budget(10)
    r = root.reserve(7)
    r.release()
    r.release()
    assert root.available() == 10 and root.spent == 0


def test_unlimited_level_defers_to_its_parent() -> None:
    root = Budget(12)
    assert root.child(None, "free").available() == 12
    assert Budget(None).available() is None


def test_split_gives_everyone_their_want_when_it_fits() -> None:
    assert split(100, [10, 20, 30]) == [10, 20, 30]
    assert split(None, [5, 5]) == [5, 5]


def test_split_shares_equally_with_remainder_to_the_first() -> None:
    assert split(10, [8, 8, 8]) == [4, 3, 3]
    assert split(2, [8, 8, 8, 8]) == [1, 1, 0, 0]


def test_split_lets_small_wants_keep_what_they_ask() -> None:
    assert split(10, [1, 8, 8]) == [1, 5, 4]


@given(st.integers(0, 500), st.lists(st.integers(0, 100), max_size=12))
def test_split_never_exceeds_available_or_wants(available: int, wants: list[int]) -> None:
    alloc = split(available, wants)
    assert len(alloc) == len(wants)
    assert sum(alloc) <= max(available, 0) or sum(wants) <= available
    assert all(0 <= a <= w for a, w in zip(alloc, wants))
    if sum(wants) > available:
        # Every token is handed out, and nobody gets more than one token above a fork that was
        # cut short (water-filling: forks wanting little keep it, the rest share equally).
        assert sum(alloc) == available
        cut = [a for a, w in zip(alloc, wants) if a < w]
        assert all(a <= min(cut) + 1 for a in alloc)
