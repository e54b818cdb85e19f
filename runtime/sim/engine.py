"""The simulator's engine: one object shared by the in-process backend and the HTTP server.

`SimEngine` owns the task, the tokenizer, the radix cache, the counters and the in-flight
requests, and runs one generation request at a time per call of `SimEngine.execute` (any number
concurrently).  Requests go through the same life cycle as in SGLang's scheduler:

1. admission: a slot under the batch-size limit (FIFO queue when the limit is reached);
2. prefix match: ``cached_tokens = min(matched, len(input) - 1)`` (and at most
   ``logprob_start_len`` when prompt logprobs are asked for from there);
3. prefill: ``prefill_s`` per uncached token (or one scheduling point when instant, so
   requests that arrive together all miss a cold prefix, as on SGLang), then the prompt is
   inserted into the tree;
4. decode: ``decode_s`` per token; after each token the stop strings (list order), then the
   end-of-sequence / stop token ids (unless ``ignore_eos``), then ``max_new_tokens`` are checked,
   in SGLang's order; before ``min_new_tokens`` the end-of-sequence and stop tokens are masked
   (the sim writes on instead).  Timing costs the server little CPU: a request nobody streams
   writes its tokens at once (a run of tokens at a time, `bulk.write`, with the same result as
   token by token) and then waits ``decode_s`` times their number in one sleep (an abort in
   the meantime keeps the tokens due by then); a streamed request gets one token per tick of
   a ``decode_s`` clock all requests share, so the streams of one tick wake together;
5. finish: prompt + output are inserted into the tree (also after an abort).

`SimEngine.abort` aborts in-flight requests whose rid starts with a prefix (or all); they
finish with SGLang's abort reason and their partial output.  The latency model and the faults
(`SimConfig`) are off by default: then a request completes without ever sleeping.
"""

from __future__ import annotations

import math
import random
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec
import msgspec.structs

from . import bulk, model
from .errors import ConfigError, SimRequestError
from .radix import RadixCache
from .task import SimTask
from .tokenizer import EOS_ID, tokenizer

__all__ = [
    "EngineOutput",
    "EngineRequest",
    "Faults",
    "Latency",
    "SimConfig",
    "SimEngine",
    "SimRequestError",
    "SimStats",
]

Fault = Literal["error", "reset", "stall"]


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Simulated timing; all zero (the default) means instant.

    ``prefill_s``: seconds per uncached prompt token; ``decode_s``: seconds per generated token;
    ``max_batch``: requests running at once (0 = unlimited), the rest wait in FIFO order."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    max_batch: int = 0

    def __post_init__(self) -> None:
        for name in ("prefill_s", "decode_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"latency {name} must be a finite number >= 0, got {value}")
        if self.max_batch < 0:
            raise ConfigError(
                f"latency max_batch must be >= 0 (0 = unlimited), got {self.max_batch}"
            )

    @property
    def enabled(self) -> bool:
        return self.prefill_s > 0 or self.decode_s > 0 or self.max_batch > 0


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """Fault injection for reliability tests; all off by default.  Each client generation
    request independently (in arrival order, from a generator seeded with ``seed``) fails with
    HTTP ``error_status`` with probability ``error_rate``, has its connection dropped with
    probability ``reset_rate`` (a stream after its first chunk), or hangs ``stall_s`` seconds
    before it starts with probability ``stall_rate``."""

    error_rate: float = 0.0
    error_status: int = 503
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "reset_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"faults {name} must be a probability in [0, 1], got {value}")
        total = self.error_rate + self.reset_rate + self.stall_rate
        if total > 1.0 + 1e-9:
            raise ConfigError(
                f"faults error_rate + reset_rate + stall_rate must be <= 1, got {total:g}"
            )
        if not 400 <= self.error_status <= 599:
            raise ConfigError(
                f"faults error_status must be an HTTP error status, got {self.error_status}"
            )
        if not (math.isfinite(self.stall_s) and self.stall_s >= 0.0):
            raise ConfigError(f"faults stall_s must be a finite number >= 0, got {self.stall_s}")

    @property
    def enabled(self) -> bool:
        return self.error_rate > 0 or self.reset_rate > 0 or self.stall_rate > 0


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulator behaves besides its task.  ``radix_capacity``: tokens the prefix cache
    holds before LRU eviction; ``context_length``: longest input+output; ``seed``: seeds the
    choice of seeds for requests that carry none (None: fresh OS entropy); ``model``: the name
    reported as the model path; ``cache_report``: report cached prompt tokens in the OpenAI
    routes' ``usage.prompt_tokens_details`` (SGLang's ``--enable-cache-report``)."""

    latency: Latency = Latency()
    faults: Faults = Faults()
    radix_capacity: int = 1 << 20
    context_length: int = 8192
    seed: int | None = None
    model: str = "ttc-sim"
    cache_report: bool = False

    def __post_init__(self) -> None:
        if self.radix_capacity < 0:
            raise ConfigError(f"radix_capacity must be >= 0 tokens, got {self.radix_capacity}")
        if self.context_length < 2:
            raise ConfigError(f"context_length must be >= 2 tokens, got {self.context_length}")
        if not self.model:
            raise ConfigError("model name must not be empty")


class SimStats(msgspec.Struct):
    """Counters since start (or the last `SimEngine.reset_stats`).  ``requests`` counts every
    generation the engine ran, warm-ups and the forks of an ``n > 1`` request included;
    ``unrecognised`` counts the generations (not warm-ups) whose input contains no question of
    the task, which the sim answers with generic text and the answer ``unknown``;
    ``in_flight`` counts requests admitted or queued, ``running`` those past the batch-size
    queue."""

    requests: int = 0
    warm_requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    aborted: int = 0
    faults: int = 0
    reward_requests: int = 0
    unrecognised: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0
    max_running: int = 0
    radix_tokens: int = 0


class EngineRequest(msgspec.Struct, kw_only=True):
    """One generation, already tokenized and validated."""

    rid: str
    input_ids: list[int]
    max_new_tokens: int | None = 128
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_regex: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    temperature: float = 1.0
    seed: int | None = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0


class EngineOutput(msgspec.Struct, kw_only=True):
    """The state of one request; final once ``finish`` is set.  ``finish`` has SGLang's
    ``finish_reason`` shape; logprob entries are ``(logprob, id)`` pairs.

    ``plain_bytes`` holds the bytes of the output's non-special tokens (the text before UTF-8
    decoding, special tokens skipped) and ``specials`` counts the special ones, both kept up to
    date by the engine for the first ``plain_upto`` output ids, so a streaming chunk's
    cumulative text costs one C-level decode rather than a walk over every id."""

    rid: str
    prompt_tokens: int
    output_ids: list[int] = msgspec.field(default_factory=list)
    cached_tokens: int = 0
    finish: dict[str, Any] | None = None
    output_logprobs: list[float] = msgspec.field(default_factory=list)
    output_top: list[list[tuple[int, float]]] = msgspec.field(default_factory=list)
    input_logprobs: list[tuple[float | None, int]] = msgspec.field(default_factory=list)
    input_top: list[list[tuple[int, float]] | None] = msgspec.field(default_factory=list)
    e2e_latency: float = 0.0
    plain_bytes: bytearray = msgspec.field(default_factory=bytearray)
    plain_upto: int = 0
    specials: int = 0

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)


class _Flight:
    __slots__ = ("aborted", "lock", "rid", "scope")

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.scope: anyio.CancelScope | None = None
        self.aborted = False
        self.lock: object | None = None  # radix lock handle held while running


Progress = Callable[[EngineOutput], Awaitable[None]]
ABORTED: dict[str, Any] = {
    "type": "abort",
    "message": "Aborted",
    "status_code": None,
    "err_type": None,
}


class SimEngine:
    """See the module doc.  Create it inside or outside an event loop; use it from one loop."""

    def __init__(self, task: SimTask | None = None, config: SimConfig | None = None) -> None:
        self.task = task if task is not None else SimTask.empty()
        self.config = config if config is not None else SimConfig()
        self.tokenizer = tokenizer
        self.radix = RadixCache(self.config.radix_capacity)
        self._stats = SimStats()
        self._inflight: dict[str, _Flight] = {}
        self._seeds = random.Random(self.config.seed) if self.config.seed is not None else None
        self._faults = random.Random(self.config.faults.seed)
        self._slots: anyio.Semaphore | None = None
        self._running = 0
        self._stalls: set[anyio.CancelScope] = set()
        self._closed = False
        self._inputs = _Inputs(self.task)

    # ------------------------------------------------------------------ small services

    @property
    def stats(self) -> SimStats:
        """A snapshot of the counters."""
        snap = msgspec.structs.replace(self._stats)
        snap.in_flight = len(self._inflight)
        snap.running = self._running
        snap.radix_tokens = self.radix.size
        return snap

    def reset_stats(self) -> None:
        self._stats = SimStats(max_in_flight=len(self._inflight), max_running=self._running)

    def tokenize(self, text: str) -> list[int]:
        return tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def flush_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while requests are running, like SGLang."""
        if self._inflight:
            return False
        self.radix.reset()
        return True

    def reward(self, texts: Sequence[str]) -> list[float]:
        """PRM scores of the newest step of each text (`model.prm_score`)."""
        self._stats.reward_requests += 1
        return [model.prm_score(self.task, t) for t in texts]

    def draw_fault(self) -> Fault | None:
        """The fault (if any) for the next client request; call once per client request."""
        faults = self.config.faults
        if not faults.enabled:
            return None
        u = self._faults.random()
        kind: Fault | None = None
        if u < faults.error_rate:
            kind = "error"
        elif u < faults.error_rate + faults.reset_rate:
            kind = "reset"
        elif u < faults.error_rate + faults.reset_rate + faults.stall_rate:
            kind = "stall"
        if kind is not None:
            self._stats.faults += 1
        return kind

    def fresh_seed(self) -> int:
        """A seed for a sampled request that carries none."""
        if self._seeds is not None:
            return self._seeds.getrandbits(63)
        return secrets.randbits(63)

    def abort(self, rid: str = "", *, abort_all: bool = False) -> int:
        """Abort in-flight requests whose rid starts with ``rid`` (all with ``abort_all``; an
        empty rid without it aborts nothing); returns how many were not already aborting."""
        if not rid and not abort_all:
            return 0
        hits = [
            f
            for f in self._inflight.values()
            if not f.aborted and (abort_all or f.rid.startswith(rid))
        ]
        for flight in hits:
            flight.aborted = True
            if flight.scope is not None:
                flight.scope.cancel()
        return len(hits)

    def in_flight(self, rid: str) -> bool:
        return rid in self._inflight

    def check_input(self, input_ids: Sequence[int]) -> None:
        """Raise `SimRequestError` for an input SGLang would refuse."""
        if not input_ids:
            raise SimRequestError("input_ids cannot be empty.")
        try:
            tokenizer.validate_ids(input_ids)
        except ValueError as exc:
            raise SimRequestError(str(exc)) from None
        n = len(input_ids)
        if n >= self.config.context_length:
            raise SimRequestError(
                f"The input ({n} tokens) is longer than the model's context length "
                f"({self.config.context_length} tokens)."
            )

    async def stall(self) -> None:
        """Hang for the configured stall (ended early by `shutdown` or cancelling the caller)."""
        with anyio.CancelScope() as scope:
            self._stalls.add(scope)
            try:
                await anyio.sleep(self.config.faults.stall_s)
            finally:
                self._stalls.discard(scope)

    def shutdown(self) -> None:
        """Abort everything in flight and end stalls (a server stopping gracefully); requests
        started afterwards are aborted at once."""
        self._closed = True
        for scope in list(self._stalls):
            scope.cancel()
        self.abort(abort_all=True)

    # ------------------------------------------------------------------ generation

    async def execute(
        self, req: EngineRequest, on_progress: Progress | None = None
    ) -> EngineOutput:
        """Run ``req`` to its finish; ``on_progress`` is awaited after every token except the
        last (for streaming).  Raises `SimRequestError` for a refused request."""
        self.check_input(req.input_ids)
        if req.rid in self._inflight:
            raise SimRequestError(f"Duplicate request ID detected: {req.rid}")
        flight = _Flight(req.rid)
        flight.aborted = self._closed
        self._inflight[req.rid] = flight
        self._stats.requests += 1
        self._stats.max_in_flight = max(self._stats.max_in_flight, len(self._inflight))
        if req.max_new_tokens == 0:
            self._stats.warm_requests += 1
        started = time.monotonic()
        out = EngineOutput(rid=req.rid, prompt_tokens=len(req.input_ids))
        try:
            with anyio.CancelScope() as scope:
                flight.scope = scope
                if flight.aborted:
                    scope.cancel()
                if self.config.latency.max_batch > 0:
                    if self._slots is None:
                        self._slots = anyio.Semaphore(self.config.latency.max_batch)
                    async with self._slots:
                        await self._run(req, out, flight, on_progress)
                else:
                    await self._run(req, out, flight, on_progress)
        finally:
            if flight.aborted or out.finish is None:
                self._stats.aborted += 1
                out.finish = dict(ABORTED)
            del self._inflight[req.rid]
            self._stats.completion_tokens += len(out.output_ids)
            if out.output_ids:
                self.radix.insert(req.input_ids + out.output_ids)
            if flight.lock is not None:
                self.radix.unlock(flight.lock)
            out.e2e_latency = time.monotonic() - started
        return out

    async def _run(
        self, req: EngineRequest, out: EngineOutput, flight: _Flight, on_progress: Progress | None
    ) -> None:
        """Prefill and decode ``req``, counted as running meanwhile."""
        self._running += 1
        self._stats.max_running = max(self._stats.max_running, self._running)
        try:
            await self._prefill(req, out, flight)
            if req.max_new_tokens != 0:
                await self._decode(req, out, on_progress)
            else:
                out.finish = {"type": "length", "length": 0}
        finally:
            self._running -= 1

    async def _prefill(self, req: EngineRequest, out: EngineOutput, flight: _Flight) -> None:
        ids = req.input_ids
        limit = len(ids) - 1
        if req.return_logprob and req.logprob_start_len >= 0:
            limit = min(limit, req.logprob_start_len)
        cached = min(self.radix.match(ids), max(0, limit))
        flight.lock = self.radix.lock(ids[:cached])
        out.cached_tokens = cached
        uncached = len(ids) - cached
        self._stats.prompt_tokens += len(ids)
        self._stats.cached_tokens += cached
        self._stats.prefill_tokens += uncached
        if self.config.latency.prefill_s > 0:
            await anyio.sleep(self.config.latency.prefill_s * uncached)
        else:
            # Even an instant prefill lets requests that arrived together match first, so a cold
            # burst of forks misses the cache as it does on SGLang (a warm-up must come first).
            await anyio.lowlevel.checkpoint()
        self.radix.insert(ids)
        self.radix.unlock(flight.lock)
        flight.lock = self.radix.lock(ids)
        if req.return_logprob and req.logprob_start_len >= 0:
            start = min(req.logprob_start_len, len(ids) - 1)
            for pos in range(start, len(ids)):
                null = pos == 0 or (pos == start and cached >= start)
                lp = None if null else model.input_logprob(ids[pos - 1], ids[pos])
                out.input_logprobs.append((lp, ids[pos]))
                if req.top_logprobs_num > 0:
                    if lp is None:
                        out.input_top.append(None)
                    else:
                        tok = model.Tok(ids[pos], lp)
                        out.input_top.append(
                            model.top_logprobs(ids[pos - 1], tok, req.top_logprobs_num)
                        )

    async def _decode(
        self, req: EngineRequest, out: EngineOutput, on_progress: Progress | None
    ) -> None:
        room = self.config.context_length - len(req.input_ids)
        cap = room if req.max_new_tokens is None else min(req.max_new_tokens, room)
        greedy = req.temperature < 1e-6
        seed = None if greedy else (req.seed if req.seed is not None else self.fresh_seed())
        text, recognised, analysis = self._inputs.get(self.task, req.input_ids)
        if not recognised:
            self._stats.unrecognised += 1
        runs = model.runs(
            self.task, text, seed, req.input_ids[-1], one_line="\n" in req.stop, analysis=analysis
        )
        decode_s = self.config.latency.decode_s
        if on_progress is None:
            # Nobody watches the tokens arrive: write them all, a run at a time, then wait for
            # all of them at once (one timer per request, not one per token).  An abort during
            # the wait keeps the tokens that would have been written by then.
            if req.stop_regex:
                final = next(f for f in _write(runs, req, out, cap) if f is not None)
            else:
                final = bulk.write(runs, req, out, cap)
            if decode_s > 0:
                begun = anyio.current_time()
                try:
                    await anyio.sleep(decode_s * len(out.output_ids))
                except BaseException:
                    _truncate(out, int((anyio.current_time() - begun) / decode_s) + 1)
                    raise
            out.finish = final
            return
        # Streaming: one token per tick of a clock shared by every request (so the requests of
        # one tick wake together), the chunk after each token but the last.
        tick = math.floor(anyio.current_time() / decode_s) if decode_s > 0 else 0
        for finish in _write(runs, req, out, cap):
            if decode_s > 0:
                tick += 1
                await anyio.sleep_until(tick * decode_s)
            else:
                await anyio.lowlevel.checkpoint()
            if finish is not None:
                out.finish = finish
                return
            await on_progress(out)
        out.finish = {"type": "length", "length": cap}  # pragma: no cover - the stream is endless


def _write(
    runs: Iterator[model.Run], req: EngineRequest, out: EngineOutput, cap: int
) -> Iterator[dict[str, Any] | None]:
    """Append the tokens of ``runs`` to ``out`` one at a time; after each, yield the finish
    reason it causes (None while the request goes on).  SGLang's order: stop strings (list
    order), stop regexes, then the end-of-sequence / stop token ids (unless ``ignore_eos``),
    then the length cap; before ``min_new_tokens`` those token ids are masked (skipped, nothing
    yielded).  (`bulk.write` does the same a run at a time, for requests nobody streams.)"""
    ids = req.input_ids
    stops = tuple(s for s in req.stop if s)
    regexes = req.stop_regex
    window = max((len(s.encode()) for s in stops), default=0) + (256 if regexes else 32)
    stop_ids = frozenset(req.stop_token_ids)
    eos_ends = not req.ignore_eos
    length = req.max_new_tokens if req.max_new_tokens is not None else cap
    output, plain = out.output_ids, out.plain_bytes
    min_new, logprobs, top = req.min_new_tokens, req.return_logprob, req.top_logprobs_num
    is_special, token_bytes = tokenizer.is_special, tokenizer.token_bytes
    prev = ids[-1]
    for tok in (tok for run in runs for tok in run.toks()):
        token_id = tok.id
        stop_token = token_id == EOS_ID or token_id in stop_ids
        if stop_token and len(output) < min_new:
            continue  # masked, as SGLang's min_new_tokens penalizer does
        output.append(token_id)
        if logprobs:
            out.output_logprobs.append(tok.logprob)
            if top > 0:
                out.output_top.append(model.top_logprobs(prev, tok, top))
        prev = token_id
        if is_special(token_id):
            out.specials += 1
        else:
            plain += token_bytes(token_id)
        out.plain_upto = len(output)
        finish: dict[str, Any] | None = None
        if stops or regexes:
            tail = bytes(plain[-window:]).decode("utf-8", errors="ignore")
            matched = next((s for s in stops if s in tail), None)
            if matched is None:
                matched = next((r for r in regexes if re.search(r, tail)), None)
            if matched is not None:
                finish = {"type": "stop", "matched": matched}
        if finish is None and eos_ends and stop_token:
            finish = {"type": "stop", "matched": token_id}
        if finish is None and len(output) >= cap:
            finish = {"type": "length", "length": length}
        yield finish
        if finish is not None:
            return


class _Inputs:
    """What the engine makes of an input, for the last inputs seen (the forks of a request
    share theirs): the text (special tokens skipped), whether it holds a question of the task,
    and its `model.Analysis` (frozen, so sharing it is safe).  Keyed by the exact ids."""

    def __init__(self, task: SimTask, size: int = 256) -> None:
        self.task = task
        self.size = size
        self._seen: OrderedDict[tuple[int, ...], tuple[str, bool, model.Analysis]] = OrderedDict()

    def get(self, task: SimTask, input_ids: Sequence[int]) -> tuple[str, bool, model.Analysis]:
        if task is not self.task:  # the engine was given another task: start over
            self.task, self._seen = task, OrderedDict()
        key = tuple(input_ids)
        hit = self._seen.get(key)
        if hit is not None:
            self._seen.move_to_end(key)
            return hit
        text = tokenizer.decode(input_ids, skip_special_tokens=True)
        hit = (text, self.task.find(text) is not None, model.analyse(self.task, text))
        self._seen[key] = hit
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return hit


def _truncate(out: EngineOutput, keep: int) -> None:
    """Cut ``out`` to its first ``keep`` tokens (an abort before the rest was due)."""
    if keep >= len(out.output_ids):
        return
    del out.output_ids[keep:]
    del out.output_logprobs[keep:]
    del out.output_top[keep:]
    out.plain_bytes = bytearray(
        b"".join(tokenizer.token_bytes(t) for t in out.output_ids if not tokenizer.is_special(t))
    )
    out.specials = sum(1 for t in out.output_ids if tokenizer.is_special(t))
    out.plain_upto = keep
