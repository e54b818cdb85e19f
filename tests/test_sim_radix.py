"""The radix tree: longest-prefix matches, node splits, LRU eviction, locks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.runtime.sim.radix import RadixCache, _common

seqs = st.lists(st.integers(0, 3), min_size=1, max_size=12)


def _naive_match(stored: list[list[int]], ids: list[int]) -> int:
    best = 0
    for s in stored:
        n = 0
        while n < min(len(s), len(ids)) and s[n] == ids[n]:
            n += 1
        best = max(best, n)
    return best


@settings(max_examples=200)
@given(st.lists(seqs, max_size=12), seqs)
def test_match_is_the_longest_common_prefix_with_anything_inserted(
    stored: list[list[int]], probe: list[int]
) -> None:
    cache = RadixCache(capacity=10**9)
    for s in stored:
        cache.insert(s)
    assert cache.match(probe) == _naive_match(stored, probe)
    # The size counts every distinct stored token once (the number of distinct prefixes).
    assert cache.size == len({tuple(s[:i]) for s in stored for i in range(1, len(s) + 1)})


def test_insert_splits_nodes_where_sequences_diverge() -> None:
    cache = RadixCache(capacity=100)
    cache.insert([1, 2, 3, 4])
    cache.insert([1, 2, 9])
    assert cache.size == 5
    assert cache.match([1, 2, 3, 4, 5]) == 4
    assert cache.match([1, 2, 9, 9]) == 3
    assert cache.match([1, 2]) == 2
    assert cache.match([7]) == 0


def test_least_recently_used_leaves_are_evicted_first() -> None:
    cache = RadixCache(capacity=8)
    cache.insert([1, 1, 1, 1])
    cache.insert([2, 2, 2, 2])
    cache.match([1, 1, 1, 1])  # now [2...] is the least recently used
    cache.insert([3, 3, 3, 3])
    assert cache.size == 8
    assert cache.match([2, 2, 2, 2]) == 0
    assert cache.match([1, 1, 1, 1]) == 4
    assert cache.match([3, 3, 3, 3]) == 4


def test_eviction_removes_a_parent_after_its_children() -> None:
    cache = RadixCache(capacity=6)
    cache.insert([5, 5, 1, 1])
    cache.insert([5, 5, 2, 2])  # shared [5, 5] plus two leaves: 6 tokens
    cache.insert([9, 9, 9])  # over capacity: both old leaves are older than the new one
    assert cache.size <= 6
    assert cache.match([9, 9, 9]) == 3


def test_locked_prefixes_survive_eviction_until_unlocked() -> None:
    cache = RadixCache(capacity=4)
    cache.insert([1, 2, 3, 4])
    handle = cache.lock([1, 2, 3, 4])
    cache.insert([7, 7, 7, 7])
    assert cache.match([1, 2, 3, 4]) == 4  # locked: the new sequence was evicted instead
    cache.unlock(handle)
    cache.insert([8, 8, 8, 8])
    assert cache.match([1, 2, 3, 4]) == 0


def test_locks_survive_a_split_of_the_locked_node() -> None:
    cache = RadixCache(capacity=6)
    cache.insert([1, 2, 3, 4])
    handle = cache.lock([1, 2, 3, 4])
    cache.insert([1, 2, 5, 6])  # splits the locked node into [1, 2] + [3, 4]
    cache.insert([9, 9, 9, 9])
    assert cache.match([1, 2, 3, 4]) == 4
    cache.unlock(handle)
    cache.insert([8, 8, 8, 8, 8, 8])
    assert cache.match([1, 2, 3, 4]) == 0
    assert cache.size == 6


def test_zero_capacity_caches_nothing_and_reset_empties() -> None:
    cache = RadixCache(capacity=0)
    cache.insert([1, 2, 3])
    assert cache.match([1, 2, 3]) == 0 and cache.size == 0
    cache = RadixCache(capacity=100)
    cache.insert([1, 2, 3])
    cache.reset()
    assert cache.match([1, 2, 3]) == 0 and cache.size == 0


@settings(max_examples=300)
@given(st.lists(st.integers(0, 2), max_size=40), st.lists(st.integers(0, 2), max_size=40),
       st.integers(0, 10))
def test_common_prefix_by_slices_is_the_token_by_token_one(
    key: list[int], ids: list[int], start: int
) -> None:
    start = min(start, len(ids))
    naive = 0
    while naive < min(len(key), len(ids) - start) and key[naive] == ids[start + naive]:
        naive += 1
    assert _common(tuple(key), ids, start) == naive
