"""The model client: every backend call the runtime makes goes through here.

`ModelClient` owns what is the same for every request, whatever step sends it:

* the capacity limiter: every request in flight holds one slot of one `anyio.CapacityLimiter`;
* retries: `TransientBackendError` is retried with the capped exponential backoff of
  `RetryPolicy`; any other `BackendError` fails the node with a `NodeFailed` naming its `.ttc`
  line (and `ProtocolViolation` says the backend broke the protocol);
* the trace: one `TraceRecord` per attempt, failed attempts included (a generation the steps
  tied to a branch with `lineage` names it), and the steps' decisions (`note`);
* usage accounting: completion, prompt and cached tokens and requests, charged to the node, to
  every call node it runs under, and to the run's total (reward calls included);
* protocol re-checks: a backend that reports more completion tokens than a request was allowed
  fails the node, whatever the backend itself checked;
* single flight: a prompt is tokenized once per run even when many forks ask at once, and a
  prefix warm-up waits for an identical one already in flight (so the server prefills it once and
  the second one is a cache hit);
* injection: `piece` gives the exact ids of a text to append to a branch (tokenized once per run,
  without the special tokens a prompt starts with), and `think_tags` the model's thinking tags
  (the run's own, else the backend's, asked once); a request may carry a `RequestNote` saying
  its phase of a thinking budget and how many of its input tokens were injected, which the
  trace records and the usage counts (thinking tokens are completion tokens like any other);
* the lean fork path (`generate_many`): the forks of a step go out in as few round trips as the
  backend allows.  A `BatchBackend` that batches gets as many forks in one batch request as there
  are free limiter slots (a batch holds one slot per fork until it returns); the forks left over
  go one request each as slots free, through at most ``concurrency`` worker tasks, so a waiting
  fork is a list entry, not an idle task.

Step semantics (what to send, how results change branches) live in `steps.py`; budgets are
reserved by the steps and settled here when the backend answers.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from ttcdsl import plan as P
from ttcdsl.errors import BackendError, NodeFailed, ProtocolViolation, TransientBackendError
from ttcdsl.runtime.backend import (
    Backend,
    BatchBackend,
    GenRequest,
    GenResult,
    StreamingBackend,
    ThinkingBackend,
    first_failure,
)
from ttcdsl.runtime.budget import Reservation
from ttcdsl.runtime.values import NodeUsage, TraceRecord, Usage

__all__ = ["ModelClient", "RequestNote", "RetryPolicy", "SingleFlight", "Stats", "op_name"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for transient backend errors."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError(f"RetryPolicy needs 0 <= base_s <= cap_s, got {self.base_s}, {self.cap_s}")

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** (attempt - 1))


@dataclass(frozen=True)
class RequestNote:
    """What the trace and the usage should know of a request beyond the request itself: its phase
    of a thinking budget ("think" or "answer"; None outside one) and how many of its input tokens
    the runtime injected since the branch's previous request."""

    phase: str | None = None
    injected: int = 0

    def trace(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.phase is not None:
            out["phase"] = self.phase
        if self.injected:
            out["injected_tokens"] = self.injected
        return out


_PLAIN = RequestNote()


@dataclass
class Stats:
    """Usage per step node and in total."""

    nodes: dict[int, NodeUsage] = field(default_factory=dict)
    total: Usage = field(default_factory=Usage)

    def charge(self, node: int, chain: tuple[int, ...], completion: int = 0, prompt: int = 0,
               cached: int = 0, note: RequestNote = _PLAIN) -> None:
        """One request's usage, charged to `node`, every call node in `chain`, and the total."""
        usages: list[NodeUsage | Usage] = [self.nodes[nid] for nid in (node, *chain)]
        thinking = completion if note.phase == "think" else 0
        for usage in (*usages, self.total):
            usage.completion_tokens += completion
            usage.prompt_tokens += prompt
            usage.cached_tokens += cached
            usage.requests += 1
            usage.thinking_tokens += thinking
            usage.injected_tokens += note.injected

    def scoring(self, node: int, chain: tuple[int, ...], tokens: int) -> None:
        """Tokens a scorer read (no request of its own is counted)."""
        usages: list[NodeUsage | Usage] = [self.nodes[nid] for nid in (node, *chain)]
        for usage in (*usages, self.total):
            usage.scoring_tokens += tokens


class SingleFlight(Generic[K]):
    """Keyed de-duplication of concurrent async calls.

    `once` runs ``fn`` at most once per key for the life of the object and hands every caller
    the same value (the first caller computes it; concurrent callers wait).  `after` runs ``fn``
    for every caller but never two with the same key at once: a caller waits for the one in
    flight, then runs its own.
    """

    def __init__(self) -> None:
        self._values: dict[K, Any] = {}
        self._pending: dict[K, anyio.Event] = {}

    async def once(self, key: K, fn: Callable[[], Awaitable[T]]) -> T:
        while key not in self._values:
            if key in self._pending:
                await self._pending[key].wait()
                continue
            async with self._flight(key):
                self._values[key] = await fn()
        value: T = self._values[key]
        return value

    async def after(self, key: K, fn: Callable[[], Awaitable[T]]) -> T:
        pending = self._pending.get(key)
        if pending is not None:
            await pending.wait()
        async with self._flight(key):
            return await fn()

    def _flight(self, key: K) -> _Flight[K]:
        return _Flight(self._pending, key)


class _Flight(Generic[K]):
    """Marks ``key`` in flight for the body of an ``async with``; always wakes the waiters."""

    def __init__(self, pending: dict[K, anyio.Event], key: K) -> None:
        self._pending, self._key = pending, key
        self._event = anyio.Event()

    async def __aenter__(self) -> None:
        self._pending[self._key] = self._event

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pending.get(self._key) is self._event:
            del self._pending[self._key]
        self._event.set()


def op_name(n: P.Node) -> str:
    """The step's keyword as users write it (`sample`, `score`, ...)."""
    return n.op


class ModelClient:
    """The runtime's one way to reach a `Backend` (see the module doc)."""

    def __init__(self, backend: Backend, limiter: anyio.CapacityLimiter, retry: RetryPolicy,
                 stats: Stats, seed: int, trace: Callable[[TraceRecord], None] | None = None) -> None:
        self.backend = backend
        self.limiter = limiter
        self.retry = retry
        self.stats = stats
        self._seed = seed
        self._trace_sink = trace
        self._t0 = time.monotonic()
        self._rid = 0
        self._tokens: SingleFlight[str] = SingleFlight()
        self._warming: SingleFlight[tuple[int, ...]] = SingleFlight()
        self._lineage: dict[str, dict[str, Any]] = {}
        self._pieces: SingleFlight[str] = SingleFlight()
        self._tags: SingleFlight[int] = SingleFlight()

    @property
    def tracing(self) -> bool:
        """Whether the run writes a trace (steps skip building decision records otherwise)."""
        return self._trace_sink is not None

    def lineage(self, rid: str, branch: str, parent: str | None, step: int) -> None:
        """Tie request ``rid`` to the branch it grows: its trace records will name it."""
        if self._trace_sink is not None:
            self._lineage[rid] = {"branch": branch, "parent": parent, "step": step}

    def note(self, kind: str, node: int, **fields: Any) -> None:
        """Trace one decision of the run (see `TraceRecord`), stamped with the current time."""
        if self._trace_sink is not None:
            t = time.monotonic() - self._t0
            self._trace_sink(TraceRecord(kind=kind, node=node, t_start=t, t_end=t, **fields))

    def new_rid(self) -> str:
        self._rid += 1
        return f"ttc-{self._seed:x}-{self._rid}-{random.getrandbits(32):08x}"

    # ---- the calls ----

    async def generate(self, n: P.Node, chain: tuple[int, ...], request: GenRequest,
                       res: Reservation, note: RequestNote = _PLAIN) -> GenResult:
        """One generation; settles ``res`` with the completion tokens the backend reported.
        A streamed request on a `StreamingBackend` that is cancelled (an anytime vote stopped)
        is charged the tokens the server generated for it before the abort."""
        backend = self.backend
        if not (request.stream and isinstance(backend, StreamingBackend)):
            (result,) = await self._generations(n, chain, [request], [res], 1,
                                                lambda: self._one(request), notes=[note])
            return result
        seen = [0]

        def progress(tokens: int) -> None:
            seen[0] = tokens

        async def streamed() -> list[GenResult]:
            seen[0] = 0  # a retried attempt starts over
            return [await backend.generate_stream(request, progress)]

        (result,) = await self._generations(n, chain, [request], [res], 1, streamed,
                                            aborted=lambda: seen[0], notes=[note])
        return result

    async def generate_many(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                            reservations: Sequence[Reservation],
                            notes: Sequence[RequestNote] | None = None) -> list[GenResult]:
        """The forks of one step (see the module doc); results in request order."""
        notes = list(notes) if notes is not None else [_PLAIN] * len(requests)
        results: list[GenResult | None] = [None] * len(requests)
        backend = self.backend
        batch = 0
        if (len(requests) > 1 and isinstance(backend, BatchBackend) and backend.batches
                and not any(r.stream for r in requests)):
            batch = min(len(requests), int(self.limiter.available_tokens))
        first = batch if batch > 1 else 0

        async def batched() -> None:
            assert isinstance(backend, BatchBackend)
            part = list(requests[:batch])
            done = await self._generations(n, chain, part, reservations[:batch], batch,
                                           lambda: backend.generate_batch(part), notes=notes[:batch])
            results[:batch] = done

        async def one(i: int) -> None:
            results[i] = await self.generate(n, chain, requests[i], reservations[i], notes[i])

        try:
            async with anyio.create_task_group() as tg:
                if batch > 1:
                    tg.start_soon(batched)
                await _Pool(tg, first, len(requests), self._workers(), one).work()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        return [r for r in results if r is not None]

    async def generate_until(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                             reservations: Sequence[Reservation],
                             enough: Callable[[int, GenResult], bool],
                             notes: Sequence[RequestNote] | None = None,
                             ) -> tuple[list[GenResult | None], list[bool]]:
        """The forks of an anytime step: one request each (no batch, so each result arrives as
        its generation ends), ``enough(i, result)`` asked after every result; once it says yes,
        every request still running is cancelled (the backend aborts it on the server) and
        every reservation not settled is refunded at every level.  Returns the results in
        request order (None for a request aborted or never sent) and which requests were sent."""
        notes = list(notes) if notes is not None else [_PLAIN] * len(requests)
        results: list[GenResult | None] = [None] * len(requests)
        sent = [False] * len(requests)
        try:
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    sent[i] = True
                    results[i] = result = await self.generate(n, chain, requests[i], reservations[i],
                                                              notes[i])
                    if enough(i, result):
                        tg.cancel_scope.cancel()

                await _Pool(tg, 0, len(requests), self._workers(), one).work()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        finally:
            for res in reservations:
                res.release()
        return results, sent

    def _workers(self) -> int:
        """The most worker tasks one step's forks get: the limiter's size."""
        return max(1, int(self.limiter.total_tokens))

    async def _one(self, request: GenRequest) -> list[GenResult]:
        return [await self.backend.generate(request)]

    async def _generations(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                           reservations: Sequence[Reservation], slots: int,
                           send: Callable[[], Awaitable[list[GenResult]]],
                           aborted: Callable[[], int] | None = None,
                           notes: Sequence[RequestNote] = ()) -> list[GenResult]:
        """Send generations (one, or a batch holding ``slots`` limiter slots), check what came
        back against each request's allowance, settle the reservations and charge the usage.
        ``aborted`` (one streamed request) tells how many tokens the server had generated when
        the request was cancelled: those are charged, and traced as an aborted attempt."""
        try:
            results = await self._retrying(
                n, "generate", [r.rid for r in requests], send,
                lambda rs: [{"text": r.text, "finish": r.finish, "completion_tokens": r.completion_tokens,
                             "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens} for r in rs],
                lambda: [{"input_tokens": len(r.input_ids), "max_new_tokens": r.sampling.max_new_tokens,
                          "seed": r.sampling.seed, **note.trace()}
                         for r, note in zip(requests, notes or [_PLAIN] * len(requests))],
                slots,
            )
            if len(results) != len(requests):
                raise NodeFailed(f"{op_name(n)}: the backend broke the protocol: it answered "
                                 f"{len(requests)} requests with {len(results)} results", n.span)
            for request, result, res in zip(requests, results, reservations):
                limit = request.sampling.max_new_tokens
                if result.completion_tokens > limit or result.completion_tokens < 0:
                    raise NodeFailed(
                        f"{op_name(n)}: the backend broke the protocol: it reported {result.completion_tokens} "
                        f"completion tokens for a request allowed {limit}", n.span,
                    )
                _check_counts(n, result.prompt_tokens, result.cached_tokens)
                if request.logprobs and result.completion_tokens and result.logprobs is None:
                    # Only `score with logprob` asks; without them it would score nothing.
                    raise NodeFailed(f"{op_name(n)}: `score with logprob` needs token logprobs, but "
                                     f"the backend returned none", n.span)
                res.settle(result.completion_tokens)
        except anyio.get_cancelled_exc_class():
            if aborted is not None:
                self._charge_aborted(n, chain, requests[0], reservations[0], aborted())
            raise
        finally:
            for res in reservations:
                res.release()
        for result, note in zip(results, notes or [_PLAIN] * len(results)):
            self.stats.charge(n.id, chain, result.completion_tokens, result.prompt_tokens, result.cached_tokens,
                              note)
        return results

    def _charge_aborted(self, n: P.Node, chain: tuple[int, ...], request: GenRequest,
                        res: Reservation, tokens: int) -> None:
        used = max(0, min(tokens, res.tokens))
        res.settle(used)
        self.stats.charge(n.id, chain, used)
        if self._trace_sink is not None:
            self._trace_sink(TraceRecord(
                kind="generate", node=n.id, rid=request.rid, t_end=time.monotonic() - self._t0,
                input_tokens=len(request.input_ids), max_new_tokens=request.sampling.max_new_tokens,
                seed=request.sampling.seed, finish="abort", completion_tokens=used, error="aborted",
                **self._lineage.get(request.rid, {}),
            ))

    async def warm(self, n: P.Node, chain: tuple[int, ...], ids: tuple[int, ...]) -> None:
        """Prefill a prompt before its forks are sent (see `SingleFlight.after`)."""
        if not ids:
            return
        result = await self._warming.after(ids, lambda: self._retrying(
            n, "warm", [""], lambda: self.backend.warm(ids),
            lambda r: [{"prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens}],
            lambda: [{"input_tokens": len(ids)}],
        ))
        _check_counts(n, result.prompt_tokens, result.cached_tokens)
        self.stats.charge(n.id, chain, 0, result.prompt_tokens, result.cached_tokens)

    async def tokenize(self, n: P.Node, text: str) -> list[int]:
        """Token ids of a prompt, asked of the backend once per run (not charged as usage)."""
        return await self._tokens.once(text, lambda: self._retrying(
            n, "tokenize", [""], lambda: self.backend.tokenize(text),
            lambda r: [{"input_tokens": len(r)}], lambda: [{}],
        ))

    async def piece(self, n: P.Node, text: str) -> tuple[int, ...]:
        """The exact ids of ``text`` appended to a branch: its tokens as a prompt, less the
        special tokens (BOS) every prompt starts with, asked once per run."""
        async def ids() -> tuple[int, ...]:
            specials, alone = await self.tokenize(n, ""), await self.tokenize(n, text)
            return tuple(alone[len(specials):] if specials and alone[: len(specials)] == specials else alone)

        return await self._pieces.once(text, ids)

    async def detokenize(self, n: P.Node, ids: Sequence[int]) -> str:
        """The text of ``ids`` (not charged as usage)."""
        return await self._retrying(n, "detokenize", [""], lambda: self.backend.detokenize(ids),
                                    lambda r: [{}], lambda: [{"input_tokens": len(ids)}])

    async def think_tags(self, n: P.Node, key: str, given: tuple[str, str] | None) -> tuple[str, str]:
        """The thinking tags a thinking budget needs: ``given`` (the run's ``--think-tags``), else
        the backend's own, asked once; neither fails the node naming the key that needs them."""
        if given is not None:
            return given
        backend = self.backend

        async def ask() -> tuple[str, str] | None:
            if not isinstance(backend, ThinkingBackend):
                return None
            return await self._retrying(n, "think_tags", [""], backend.think_tags, lambda r: [{}], lambda: [{}])

        tags = await self._tags.once(0, ask)
        if tags is None:
            raise NodeFailed(
                f"`{key}` needs the model's thinking tags, and the {backend.info.name} backend cannot tell "
                f"them for model {backend.info.model!r}; pass --think-tags OPEN,CLOSE "
                "(e.g. --think-tags '<think>,</think>')", n.span,
            )
        return tags

    async def reward(self, n: P.Node, chain: tuple[int, ...], texts: Sequence[str]) -> list[float]:
        """Reward-model scores, one per text."""
        values = await self._retrying(n, "reward", [""], lambda: self.backend.reward(texts),
                                      lambda r: [{}], lambda: [{}])
        if len(values) != len(texts):
            raise NodeFailed(
                f"{op_name(n)}: the reward model returned {len(values)} scores for {len(texts)} texts", n.span
            )
        self.stats.charge(n.id, chain)
        return values

    # ---- plumbing ----

    def _trace(self, n: P.Node, kind: str, rids: list[str], attempt: int, t_start: float,
               fields: list[dict[str, Any]], error: str | None = None) -> None:
        """One trace record per request of an attempt (a batch has several)."""
        assert self._trace_sink is not None
        t_end = time.monotonic() - self._t0
        for rid, extra in zip(rids, fields):
            record = TraceRecord(kind=kind, node=n.id, rid=rid, attempt=attempt, t_start=t_start,
                                 t_end=t_end, **extra, **self._lineage.get(rid, {}))
            if error is not None:
                record.error = error
            self._trace_sink(record)

    async def _retrying(self, n: P.Node, kind: str, rids: list[str], fn: Callable[[], Awaitable[T]],
                        describe: Callable[[T], list[dict[str, Any]]],
                        trace: Callable[[], list[dict[str, Any]]], slots: int = 1) -> T:
        """``fn()`` under ``slots`` limiter slots, retried on transient errors.  ``trace`` and
        ``describe`` give each request's trace fields before and after; they are only called
        when the run writes a trace."""
        attempt = 0
        tracing = self._trace_sink is not None
        while True:
            attempt += 1
            t_start = time.monotonic() - self._t0
            try:
                if slots == 1:
                    await self._slot()
                    try:
                        value = await fn()
                    finally:
                        self.limiter.release()
                else:
                    async with self._slots(slots):
                        value = await fn()
            except TransientBackendError as exc:
                if tracing:
                    self._trace(n, kind, rids, attempt, t_start, trace(), error=str(exc))
                if attempt >= self.retry.attempts:
                    raise NodeFailed(f"{op_name(n)} failed after {attempt} attempts: {exc}", n.span) from None
                await anyio.sleep(self.retry.delay(attempt))
                continue
            except ProtocolViolation as exc:
                raise NodeFailed(f"{op_name(n)}: the backend broke the protocol: {exc}", n.span) from None
            except BackendError as exc:
                raise NodeFailed(f"{op_name(n)} failed: {exc}", n.span) from None
            if tracing:
                self._trace(n, kind, rids, attempt, t_start,
                            [{**t, **d} for t, d in zip(trace(), describe(value))])
            return value

    async def _slot(self) -> None:
        """Take one slot of the limiter (the caller releases it)."""
        try:
            self.limiter.acquire_nowait()  # a free slot: no trip through the event loop
        except anyio.WouldBlock:
            await self.limiter.acquire()

    @asynccontextmanager
    async def _slots(self, k: int) -> AsyncIterator[None]:
        """Hold ``k`` > 1 slots of the limiter.  Batches take theirs one at a time under a lock
        shared by every client of the limiter, so two batches never deadlock each holding part
        of what they need."""
        held: list[object] = []
        try:
            async with _batch_lock(self.limiter):
                for _ in range(k):
                    token = object()
                    await self.limiter.acquire_on_behalf_of(token)
                    held.append(token)
            yield
        finally:
            for token in held:
                self.limiter.release_on_behalf_of(token)


class _Pool:
    """Runs ``job(i)`` for every ``i`` from ``first`` up to ``end`` in order, at most ``limit``
    at a time.  The task calling `work` is the first worker; another worker task is started only
    once every worker started so far has begun, so forks a backend answers without suspending
    are served by one task, and forks that wait on the server get up to ``limit`` tasks, one more
    per turn of the event loop.  A waiting fork is an index not reached yet, never an idle task."""

    def __init__(self, tg: anyio.abc.TaskGroup, first: int, end: int, limit: int,
                 job: Callable[[int], Awaitable[None]]) -> None:
        self.tg, self.next, self.end, self.limit, self.job = tg, first, end, limit, job
        self.alive = 0
        self.starting = False

    async def work(self) -> None:
        self.starting = False
        self.alive += 1
        try:
            # Once an anytime step has what it needs (its scope is cancelled) nothing more is sent.
            while self.next < self.end and not self.tg.cancel_scope.cancel_called:
                i = self.next
                self.next += 1
                if self.next < self.end and not self.starting and self.alive < self.limit:
                    self.starting = True
                    self.tg.start_soon(self.work)
                await self.job(i)
        finally:
            self.alive -= 1


_BATCH_LOCKS: weakref.WeakKeyDictionary[anyio.CapacityLimiter, anyio.Lock] = weakref.WeakKeyDictionary()


def _batch_lock(limiter: anyio.CapacityLimiter) -> anyio.Lock:
    lock = _BATCH_LOCKS.get(limiter)
    if lock is None:
        lock = _BATCH_LOCKS[limiter] = anyio.Lock()
    return lock


# More prompt tokens than this in one request is no real count (context windows are far smaller).
MAX_PROMPT_TOKENS = 2**31 - 1


def _check_counts(n: P.Node, prompt: int, cached: int) -> None:
    """Prompt and cached token counts a backend reports must be possible: 0 <= cached <= prompt."""
    if not 0 <= prompt <= MAX_PROMPT_TOKENS or not 0 <= cached <= prompt:
        raise NodeFailed(
            f"{op_name(n)}: the backend broke the protocol: it reported {prompt} prompt tokens "
            f"of which {cached} cached (expected 0 <= cached <= prompt)", n.span,
        )
