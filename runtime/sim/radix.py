"""A radix tree over token ids with LRU eviction: the simulator's prefix cache.

It answers the question SGLang's radix cache answers: how many leading tokens of a request are
already computed?  Edges are labelled with runs of token ids; a node splits when a new sequence
diverges inside its run.  Every node records when it was last used (a logical clock, so behaviour
is deterministic), and nodes on the path of an in-flight request are locked.  When the tree holds
more than ``capacity`` tokens, unlocked leaves are evicted least-recently-used first (a parent
whose last child goes becomes a leaf in turn), like SGLang's default ``lru`` policy.

Eviction bookkeeping is incremental: a heap of candidate leaves is kept up to date as nodes are
used, created, locked and unlocked (stale entries are skipped when popped and the heap is rebuilt
once they outnumber the nodes), so an insert costs O(log n) amortised however many leaves the
tree holds, never a scan of every leaf.  `RadixCache.work` counts the heap operations and nodes
visited, for tests that bound the work per insert.

What SGLang reports as ``cached_tokens`` (at most ``len(input) - 1``: the last prompt token is
always recomputed for its logits) is the engine's business, not the tree's: `match` returns the
raw matched length.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

__all__ = ["RadixCache"]


class _Node:
    __slots__ = ("alive", "children", "key", "last_used", "locks", "parent", "serial")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, serial: int) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.last_used = 0
        self.locks = 0
        self.serial = serial  # creation order: a deterministic tie-break for eviction
        self.alive = True  # False once evicted (its heap entries are then stale)


class RadixCache:
    """Token-id prefix cache; not thread-safe (the simulator runs on one event loop)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"radix capacity must be >= 0 tokens, got {capacity}")
        self.capacity = capacity
        self._serial = 0
        self._root = self._new((), None)
        self._size = 0
        self._clock = 0
        self._nodes = 0  # nodes in the tree besides the root
        self._heap: list[tuple[int, int, int, _Node]] = []  # eviction candidates, maybe stale
        self._pushes = 0  # a unique tie-break, so heap entries never compare nodes
        self.work = 0  # heap pushes and pops plus nodes visited by rebuilds

    def _new(self, key: tuple[int, ...], parent: _Node | None) -> _Node:
        self._serial += 1
        return _Node(key, parent, self._serial)

    @property
    def size(self) -> int:
        """Tokens currently stored."""
        return self._size

    def _candidate(self, node: _Node) -> None:
        """Note that ``node`` may now be an evictable leaf (checked again when popped)."""
        if node.children or node.locks or node is self._root:
            return
        self.work += 1
        self._pushes += 1
        heapq.heappush(self._heap, (node.last_used, node.serial, self._pushes, node))
        if len(self._heap) > 2 * self._nodes + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        """Drop stale heap entries: one entry per evictable leaf."""
        leaves = self._leaves()
        self.work += self._nodes
        self._heap = [(n.last_used, n.serial, 0, n) for n in leaves if n.locks == 0]
        heapq.heapify(self._heap)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _walk(self, ids: Sequence[int]) -> tuple[int, list[_Node]]:
        """Matched length and the nodes fully or partly matched on the way."""
        node = self._root
        matched = 0
        path: list[_Node] = []
        while matched < len(ids):
            child = node.children.get(ids[matched])
            if child is None:
                break
            n = _common(child.key, ids, matched)
            path.append(child)
            matched += n
            if n < len(child.key):
                break
            node = child
        return matched, path

    def match(self, ids: Sequence[int]) -> int:
        """Length of the longest cached prefix of ``ids``; marks it recently used."""
        matched, path = self._walk(ids)
        now = self._tick()
        for node in path:
            node.last_used = now
        if path:
            self._candidate(path[-1])
        return matched

    def insert(self, ids: Sequence[int]) -> None:
        """Cache ``ids`` (every prefix of it becomes a hit), then evict down to capacity."""
        now = self._tick()
        node = self._root
        i = 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                leaf = self._new(tuple(ids[i:]), node)
                leaf.last_used = now
                node.children[ids[i]] = leaf
                self._size += len(leaf.key)
                self._nodes += 1
                self._candidate(leaf)
                break
            n = _common(child.key, ids, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_used = now
            node = child
            i += n
        else:
            self._candidate(node)
        self.evict()

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node``'s run after ``at`` tokens; returns the new upper node."""
        parent = node.parent
        assert parent is not None
        upper = self._new(node.key[:at], parent)
        upper.last_used = node.last_used
        upper.locks = node.locks
        parent.children[upper.key[0]] = upper
        node.key = node.key[at:]
        node.parent = upper
        upper.children[node.key[0]] = node
        self._nodes += 1
        return upper

    def lock(self, ids: Sequence[int]) -> object:
        """Protect the cached prefix of ``ids`` (and its ancestors) from eviction; returns a
        handle for `unlock`.  Locks survive node splits: a split copies the count upwards."""
        _, path = self._walk(ids)
        deepest = path[-1] if path else self._root
        node: _Node | None = deepest
        while node is not None and node is not self._root:
            node.locks += 1
            node = node.parent
        return deepest

    def unlock(self, handle: object) -> None:
        assert isinstance(handle, _Node)
        node: _Node | None = handle
        while node is not None and node is not self._root:
            node.locks -= 1
            if node.locks == 0:
                self._candidate(node)
            node = node.parent
        self.evict()

    def evict(self) -> int:
        """Evict least-recently-used unlocked leaves until within capacity; tokens evicted."""
        freed = 0
        heap = self._heap
        while self._size > self.capacity and heap:
            used, _, _, leaf = heapq.heappop(heap)
            self.work += 1
            if not leaf.alive or leaf.children or leaf.locks or used != leaf.last_used:
                continue  # stale: the node was used, locked, grew children or is gone
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            leaf.alive = False
            self._nodes -= 1
            self._size -= len(leaf.key)
            freed += len(leaf.key)
            self._candidate(parent)
        return freed

    def _leaves(self) -> list[_Node]:
        out: list[_Node] = []
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out

    def reset(self) -> None:
        """Drop everything (``/flush_cache``)."""
        self._root = self._new((), None)
        self._size = 0
        self._nodes = 0
        self._heap = []


def _common(key: tuple[int, ...], ids: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``key`` and ``ids[start:]``.  Slices are compared whole
    (in C), bisecting only where they differ: a walk down a long prompt costs a few
    comparisons per node, not a Python step per token."""
    n = min(len(key), len(ids) - start)
    if key[:n] == tuple(ids[start : start + n]):
        return n
    lo, hi = 0, n  # key[:lo] matches; key[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if key[lo:mid] == tuple(ids[start + lo : start + mid]):
            lo = mid
        else:
            hi = mid
    return lo
