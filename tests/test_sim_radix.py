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


class _Rescan(RadixCache):
    """The old eviction: rebuild a heap from every leaf on each call (the reference order)."""

    def evict(self) -> int:
        import heapq

        if self._size <= self.capacity:
            return 0
        heap = [(n.last_used, n.serial, n) for n in self._leaves() if n.locks == 0]
        heapq.heapify(heap)
        freed = 0
        while self._size > self.capacity and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            self._size -= len(leaf.key)
            freed += len(leaf.key)
            if parent is not self._root and not parent.children and parent.locks == 0:
                heapq.heappush(heap, (parent.last_used, parent.serial, parent))
        return freed


ops = st.lists(
    st.tuples(st.sampled_from(["insert", "match", "lock", "unlock"]), seqs), max_size=40
)


@settings(max_examples=120, deadline=None)
@given(ops, st.integers(0, 16))
def test_incremental_eviction_evicts_exactly_what_a_full_rescan_does(
    script: list[tuple[str, list[int]]], capacity: int
) -> None:
    fast, slow = RadixCache(capacity), _Rescan(capacity)
    handles: list[tuple[object, object]] = []
    for op, ids in script:
        if op == "insert":
            fast.insert(ids)
            slow.insert(ids)
        elif op == "match":
            assert fast.match(ids) == slow.match(ids)
        elif op == "lock":
            handles.append((fast.lock(ids), slow.lock(ids)))
        elif handles:
            a, b = handles.pop(0)
            fast.unlock(a)
            slow.unlock(b)
        assert fast.size == slow.size
    for ids in {tuple(ids) for _, ids in script}:
        assert fast.match(list(ids)) == slow.match(list(ids))


def test_an_insert_into_a_full_cache_does_bounded_work_however_many_leaves() -> None:
    # 20 000 distinct sequences of 8 tokens under one shared prefix, into a cache that holds
    # about 10 000 leaves: once full, every insert evicts.  A rescan would visit ~10 000 leaves
    # per insert; the heap does a few operations (amortised over the occasional rebuild).
    cache = RadixCache(capacity=80_000)
    prefix = list(range(1000, 1016))
    for i in range(10_000):
        cache.insert([*prefix, i, i + 1, i + 2, i + 3, 7, 7, 7, 7])
    before = cache.work
    for i in range(10_000, 20_000):
        cache.insert([*prefix, i, i + 1, i + 2, i + 3, 7, 7, 7, 7])
        cache.match([*prefix, i - 5000, i - 4999])
    per_insert = (cache.work - before) / 10_000
    assert cache.size <= 80_000
    assert per_insert < 12, per_insert
