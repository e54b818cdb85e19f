"""Executes a `Plan` on a `Backend`.

Scheduling policy.  A run is one anyio task group per strategy invocation (a *frame*).  Statements
are processed in order: `x = EXPR` starts a task that evaluates EXPR against the bindings visible
at that point (a snapshot of slots, so later rebinding cannot leak backwards) and binds `x` to a
slot that is filled when the task ends; reading a name waits for its slot.  So independent steps
run concurrently and dependent ones in dataflow order.  `repeat`, `if` and `return` wait for the
values they test.  All forks of a step run concurrently; every backend request holds one slot of a
single `CapacityLimiter` (``concurrency``) for its duration.  Forks of one prompt are sent after a
prefix warm-up (`Backend.warm`), so the prefix is prefilled once and every fork hits the cache;
continuations are sent as exact token ids.

With ``sequential=True`` the same semantics run one thing at a time (binds inline, forks one after
another): the reference executor used as the oracle for the concurrent one.

Budgets (see `budget.py`): every step invocation draws from its own budget level (if it has
`budget N`) under the strategy's, under the caller's, up to the run's.  A request's
``max_new_tokens`` is reserved before it is sent and settled with the reported completion tokens.
When independent steps run concurrently and the remaining budget cannot cover both, the one that
reserves first (its inputs ready first) gets its share first; results are then timing-dependent.

Seeds: each request's seed is derived from (run seed, frame path, loop iterations, node id, fork
index), so a run with ``--seed`` reproduces exactly on deterministic backends whatever the
scheduling.

Failures: `TransientBackendError` is retried with capped exponential backoff; any other backend
error fails the node with a `NodeFailed` naming the `.ttc` line, which cancels the run.
Cancellation (timeout, Ctrl-C, a failing sibling) cancels in-flight requests; backends abort them
on the server.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import msgspec

from ttcdsl import plan as P
from ttcdsl.bounds import DEFAULT_MAX_TOKENS, JUDGE_TOKENS
from ttcdsl.errors import (
    BackendError,
    NodeFailed,
    ProtocolViolation,
    RunError,
    TransientBackendError,
    TTCError,
)
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime import semantics as sem
from ttcdsl.runtime.backend import Backend, GenRequest, GenResult, Sampling
from ttcdsl.runtime.budget import Budget, Reservation, split
from ttcdsl.runtime.seeds import derive_seed
from ttcdsl.runtime.values import (
    Branch,
    Branches,
    NodeUsage,
    RunResult,
    TraceRecord,
    Usage,
)

__all__ = ["RetryPolicy", "RunOptions", "execute", "run_plan"]

T = TypeVar("T")
UNBOUNDED_BUDGET_LEFT = 2**31 - 1
JUDGE_TOP_LOGPROBS = 20


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
class RunOptions:
    seed: int | None = None
    concurrency: int = 16
    retry: RetryPolicy = RetryPolicy()
    sequential: bool = False
    allow_verifier: bool = False
    # An extra cap on the whole run's completion tokens (on top of the strategy's own budget).
    budget: int | None = None
    timeout_s: float | None = None
    trace: Callable[[TraceRecord], None] | None = None
    # A shared limiter (dataset mode shares one across items); else one per run.
    limiter: anyio.CapacityLimiter | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")


class _Slot:
    """A binding whose value may still be computing."""

    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Any = None

    def set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    async def get(self) -> Any:
        await self._event.wait()
        return self._value


@dataclass
class _Ctx:
    """Where an expression is evaluated: a frame, its bindings, its budget and loop position."""

    strategy: P.StrategyPlan
    nodes: dict[int, P.Node]
    env: dict[str, _Slot]
    budget: Budget
    key: str  # frame path, e.g. "" or "c12/"
    loops: tuple[int, ...] = ()
    chain: tuple[int, ...] = ()  # enclosing call node ids (for usage attribution)

    def tag(self) -> str:
        return self.key + "".join(f"@{i}" for i in self.loops)


@dataclass(frozen=True)
class _Return:
    value: Any


@dataclass
class _Stats:
    nodes: dict[int, NodeUsage] = field(default_factory=dict)
    total: Usage = field(default_factory=Usage)


def _first_error(group: BaseException) -> BaseException:
    """anyio task groups raise exception groups; surface the first real error."""
    while isinstance(group, BaseExceptionGroup):
        inner = [e for e in group.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        group = (inner or list(group.exceptions))[0]
    return group


class _Run:
    def __init__(self, plan: P.Plan, backend: Backend, options: RunOptions, seed: int) -> None:
        self.plan = plan
        self.backend = backend
        self.opts = options
        self.seed = seed
        self.limiter = options.limiter or anyio.CapacityLimiter(options.concurrency)
        self.stats = _Stats()
        self.exhausted = False
        self._tokens: dict[str, list[int]] = {}
        self._tokenizing: dict[str, anyio.Event] = {}
        self._warming: dict[tuple[int, ...], anyio.Event] = {}
        self._t0 = time.monotonic()
        self._rid = 0
        for s in plan.strategies.values():
            for n in s.nodes:
                if isinstance(n, P.STEP_NODES):
                    self.stats.nodes[n.id] = NodeUsage(
                        id=n.id,
                        op=n.__class__.__name__.lower(),
                        strategy=s.name,
                        file=n.span.file,
                        line=n.span.line,
                        budget=getattr(n, "budget", None),
                    )

    # ---- scheduling primitives ----

    async def gather(self, thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        if self.opts.sequential or len(thunks) <= 1:
            return [await t() for t in thunks]
        results: list[Any] = [None] * len(thunks)

        async def one(i: int) -> None:
            results[i] = await thunks[i]()

        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(thunks)):
                    tg.start_soon(one, i)
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None
        return results

    # ---- frames and statements ----

    async def call(self, name: str, args: Mapping[str, Any], budget: Budget, key: str,
                   chain: tuple[int, ...]) -> Any:
        s = self.plan.strategies[name]
        if s.budget is not None:
            budget = budget.child(s.budget, f"strategy {name}")
        env: dict[str, _Slot] = {}
        for p in s.params:
            slot = _Slot()
            slot.set(args.get(p.name, p.default))
            env[p.name] = slot
        ctx = _Ctx(s, {n.id: n for n in s.nodes}, env, budget, key, (), chain)
        try:
            async with anyio.create_task_group() as tg:
                # A `return` does not cancel steps still running: the frame waits for them, so
                # usage does not depend on scheduling.
                ret = await self.block(ctx, s.body, tg)
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None
        if ret is None:
            raise NodeFailed(f"strategy '{name}' ended without returning a value", s.span)
        return ret.value

    async def block(self, ctx: _Ctx, stmts: Sequence[P.Stmt], tg: anyio.abc.TaskGroup) -> _Return | None:
        """Run statements; a `return` ends the block (and every enclosing one) with its value."""
        for st in stmts:
            match st:
                case P.Bind():
                    slot = _Slot()
                    view = _Ctx(ctx.strategy, ctx.nodes, dict(ctx.env), ctx.budget, ctx.key, ctx.loops, ctx.chain)
                    ctx.env[st.name] = slot
                    if self.opts.sequential:
                        slot.set(await self.ev(view, st.value))
                    else:
                        tg.start_soon(self._fill, slot, view, st.value)
                case P.Return():
                    return _Return(await self.ev(ctx, st.value))
                case P.If():
                    cond = await self.ev(ctx, st.cond)
                    ret = await self.block(ctx, st.then if cond else st.orelse, tg)
                    if ret is not None:
                        return ret
                case P.Repeat():
                    times = await self.ev(ctx, st.times)
                    if not isinstance(times, int) or isinstance(times, bool):
                        raise NodeFailed(f"repeat count must be an int, got {times!r}", st.span)
                    outer = ctx.loops
                    for i in range(max(0, times)):
                        ctx.loops = (*outer, i)
                        try:
                            # Tested before every pass: an early stop spends nothing more.
                            if st.until is not None and await self.ev(ctx, st.until):
                                break
                            ret = await self.block(ctx, st.body, tg)
                            if ret is not None:
                                return ret
                        finally:
                            ctx.loops = outer
        return None

    async def _fill(self, slot: _Slot, ctx: _Ctx, ref: P.Ref) -> None:
        slot.set(await self.ev(ctx, ref))

    # ---- expressions ----

    async def ev(self, ctx: _Ctx, ref: P.Ref) -> Any:
        n = ctx.nodes[ref.node]
        match n:
            case P.Const():
                return list(n.value) if isinstance(n.value, list) else n.value
            case P.Param() | P.Var():
                slot = ctx.env.get(n.name)
                if slot is None:
                    raise NodeFailed(f"'{n.name}' has no value here (was the loop or branch that binds it skipped?)", n.span)
                return await slot.get()
            case P.Prompt():
                values = await self.gather([partial(self.ev, ctx, r) for r in n.parts if isinstance(r, P.Ref)])
                it = iter(values)
                return "".join(p if isinstance(p, str) else sem.interpolate(next(it)) for p in n.parts)
            case P.ListOf():
                return [sem.interpolate(v) for v in await self.gather([partial(self.ev, ctx, r) for r in n.items])]
            case P.Arith():
                a, b = await self.gather([lambda: self.ev(ctx, n.left), lambda: self.ev(ctx, n.right)])
                return sem.arith(n, a, b)
            case P.Union():
                a, b = await self.gather([lambda: self.ev(ctx, n.left), lambda: self.ev(ctx, n.right)])
                return Branches([*a.items, *b.items])
            case P.Compare():
                a, b = await self.gather([lambda: self.ev(ctx, n.left), lambda: self.ev(ctx, n.right)])
                return sem.compare(n.operator, a, b)
            case P.Logic():
                left = await self.ev(ctx, n.left)
                if n.operator == "and":
                    return bool(left) and bool(await self.ev(ctx, n.right))
                return bool(left) or bool(await self.ev(ctx, n.right))
            case P.Not():
                return not await self.ev(ctx, n.operand)
            case P.Neg():
                return -(await self.ev(ctx, n.operand))
            case P.Builtin():
                args = await self.gather([partial(self.ev, ctx, r) for r in n.args])
                return self.builtin(ctx, n, args)
        return await self.step(ctx, n)

    def builtin(self, ctx: _Ctx, n: P.Builtin, args: list[Any]) -> Any:
        match n.name:
            case "best":
                top = agg.best(args[0].items)
                return Branches([top] if top is not None else [])
            case "active":
                return Branches([b for b in args[0].items if not b.finished])
            case "done":
                return Branches([b for b in args[0].items if b.finished])
            case "size":
                return len(args[0].items)
            case "finished":
                return all(b.finished for b in args[0].items)
            case "agreement":
                return float(args[0].agreement)
            case "best_score":
                scores = [b.score for b in args[0].items if b.score is not None]
                return max(scores) if scores else 0.0
            case "budget_left":
                left = ctx.budget.available()
                return UNBOUNDED_BUDGET_LEFT if left is None else left
        raise AssertionError(n.name)

    async def step(self, ctx: _Ctx, n: P.Node) -> Any:
        usage = self.stats.nodes[n.id]
        result: Any
        match n:
            case P.Sample():
                count, prompt = await self.gather([lambda: self.ev(ctx, n.count), lambda: self.ev(ctx, n.prompt)])
                settings = await self.settings(ctx, n.settings)
                t0 = time.monotonic()
                result = await self.sample(ctx, n, _count(count, n), sem.interpolate(prompt), settings)
            case P.Expand():
                branches, count = await self.gather([lambda: self.ev(ctx, n.branches), lambda: self.ev(ctx, n.count)])
                settings = await self.settings(ctx, n.settings)
                t0 = time.monotonic()
                result = await self.expand(ctx, n, branches, _count(count, n), settings)
            case P.Score():
                branches = await self.ev(ctx, n.branches)
                t0 = time.monotonic()
                result = await self.score(ctx, n, branches)
            case P.Prune():
                branches, keep = await self.gather([lambda: self.ev(ctx, n.branches), lambda: self.ev(ctx, n.keep)])
                t0 = time.monotonic()
                result = Branches(agg.prune(branches.items, _count(keep, n), n.by, n.per))
            case P.Vote():
                branches = await self.ev(ctx, n.branches)
                t0 = time.monotonic()
                result = agg.vote(branches.items, n.on, n.pattern, n.weighted)
            case P.Call():
                names = list(n.args)
                values = await self.gather([partial(self.ev, ctx, n.args[k]) for k in names])
                budget = ctx.budget.child(n.budget, f"call {n.strategy.name}") if n.budget is not None else ctx.budget
                t0 = time.monotonic()
                result = await self.call(
                    n.strategy.name, dict(zip(names, values)), budget, f"{ctx.tag()}c{n.id}/", (*ctx.chain, n.id)
                )
            case _:
                raise AssertionError(n)
        usage.calls += 1
        usage.wall_s += time.monotonic() - t0
        return result

    async def settings(self, ctx: _Ctx, s: P.Settings) -> dict[str, Any]:
        keys = [k for k in s.__struct_fields__ if getattr(s, k) is not None]
        values = await self.gather([partial(self.ev, ctx, getattr(s, k)) for k in keys])
        return dict(zip(keys, values))

    # ---- the steps that talk to the backend ----

    def _seed(self, ctx: _Ctx, node: int, fork: int, user_seed: int | None) -> int:
        base = self.seed if user_seed is None else user_seed
        return derive_seed(base, ctx.tag(), node, fork)

    def _branch_id(self, ctx: _Ctx, node: int, fork: int) -> str:
        """E.g. ``n9.3`` (fork 3 of node 9), ``n18@2.5`` (in loop iteration 2), ``c4/n7.0``
        (inside call node 4)."""
        return f"{ctx.key}n{node}" + "".join(f"@{i}" for i in ctx.loops) + f".{fork}"

    async def sample(self, ctx: _Ctx, n: P.Sample, count: int, prompt: str, settings: dict[str, Any]) -> Branches:
        prompt_ids = tuple(await self.tokenize(ctx, n, prompt))
        branches = []
        for i in range(count):
            bid = self._branch_id(ctx, n.id, i)
            branches.append(Branch(id=bid, root=bid, parent=None, prompt=prompt, prompt_ids=prompt_ids))
        if count > 1:
            await self.warm(ctx, n, prompt_ids)
        await self.generate_forks(ctx, n, [(b, i) for i, b in enumerate(branches)], settings)
        return Branches(branches)

    async def expand(self, ctx: _Ctx, n: P.Expand, branches: Branches, count: int, settings: dict[str, Any]) -> Branches:
        out: list[Branch] = []
        pending: list[tuple[Branch, int]] = []
        for j, b in enumerate(branches.items):
            if b.finished:
                out.append(b)
                continue
            for c in range(count):
                fork = j * count + c
                child = b.child(self._branch_id(ctx, n.id, fork))
                out.append(child)
                pending.append((child, fork))
        await self.generate_forks(ctx, n, pending, settings)
        return Branches(out)

    def _node_budget(self, ctx: _Ctx, n: P.Sample | P.Expand | P.Score) -> Budget:
        if n.budget is None:
            return ctx.budget
        return ctx.budget.child(n.budget, f"node n{n.id}")

    async def generate_forks(self, ctx: _Ctx, n: P.Sample | P.Expand, forks: list[tuple[Branch, int]],
                             settings: dict[str, Any]) -> None:
        if not forks:
            return
        max_tokens = settings.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise NodeFailed(f"max_tokens must be a positive int, got {max_tokens!r}", n.span)
        budget = self._node_budget(ctx, n)
        alloc = split(budget.available(), [max_tokens] * len(forks))
        work: list[tuple[Branch, int, int, Reservation]] = []
        for (branch, fork), tokens in zip(forks, alloc):
            if tokens < max_tokens:
                self.exhausted = True
            if tokens <= 0:
                branch.finished, branch.finish_reason = True, "budget"
                continue
            work.append((branch, fork, tokens, budget.reserve(tokens)))
        stop = settings.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        step = settings.get("step")
        user_seed = settings.get("seed")
        base = Sampling(
            max_new_tokens=max_tokens,
            temperature=float(settings.get("temperature", 1.0)),
            top_p=float(settings.get("top_p", 1.0)),
            top_k=int(settings.get("top_k", -1)),
            min_p=float(settings.get("min_p", 0.0)),
            stop=tuple(stops + ([step] if step and step not in stops else [])),
        )

        def one(branch: Branch, fork: int, tokens: int, res: Reservation) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                sampling = msgspec.structs.replace(
                    base, max_new_tokens=tokens, seed=self._seed(ctx, n.id, fork, user_seed)
                )
                request = GenRequest(
                    rid=self._new_rid(), input_ids=(*branch.prompt_ids, *branch.ids), sampling=sampling,
                    logprobs=n.logprobs,
                )
                result = await self.generate(ctx, n, request, res)
                sem.apply(branch, result, tokens < max_tokens, stops, step)

            return go

        await self.gather([one(*w) for w in work])

    async def score(self, ctx: _Ctx, n: P.Score, branches: Branches) -> Branches:
        items = branches.items
        kind = n.scorer.kind
        if kind == "prm":
            texts = [b.prompt + b.text for b in items]
            values: list[float | None] = list(await self.reward(ctx, n, texts)) if texts else []
        elif kind == "logprob":
            values = [b.mean_logprob for b in items]
            if any(v is None and b.ids for v, b in zip(values, items)):
                raise NodeFailed("`score with logprob` needs token logprobs, but the backend returned none", n.span)
        elif kind == "judge":
            values = await self.judge(ctx, n, items)
        else:
            values = await self.verify(n, items)
        out = []
        for b, v in zip(items, values):
            if v is None:
                out.append(b)
                continue
            scores = list(b.step_scores)
            if b.scored_steps < len(b.steps) or not scores:
                scores.append(float(v))
            else:
                scores[-1] = float(v)
            out.append(msgspec.structs.replace(
                b, step_scores=scores, scored_steps=len(b.steps), score=agg.aggregate(scores, n.agg)
            ))
        return Branches(out)

    async def judge(self, ctx: _Ctx, n: P.Score, items: list[Branch]) -> list[float | None]:
        template = n.scorer.template or []
        refs = [p for p in template if isinstance(p, P.Ref)]
        values = iter(await self.gather([partial(self.ev, ctx, r) for r in refs]))
        filled = [p if isinstance(p, (str, P.BranchText)) else sem.interpolate(next(values)) for p in template]
        budget = self._node_budget(ctx, n)
        alloc = split(budget.available(), [JUDGE_TOKENS] * len(items))
        scores: list[float | None] = [None] * len(items)
        if any(a < JUDGE_TOKENS for a in alloc):
            self.exhausted = True

        def one(i: int, res: Reservation) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                text = "".join(items[i].text if isinstance(p, P.BranchText) else p for p in filled)
                ids = await self.tokenize(ctx, n, text)
                request = GenRequest(
                    rid=self._new_rid(), input_ids=tuple(ids),
                    sampling=Sampling(max_new_tokens=JUDGE_TOKENS, temperature=0.0,
                                      seed=self._seed(ctx, n.id, i, None)),
                    top_logprobs=JUDGE_TOP_LOGPROBS,
                )
                scores[i] = sem.p_yes(await self.generate(ctx, n, request, res))

            return go

        work = [one(i, budget.reserve(a)) for i, a in enumerate(alloc) if a >= JUDGE_TOKENS]
        await self.gather(work)
        return scores

    async def verify(self, n: P.Score, items: list[Branch]) -> list[float | None]:
        target = n.scorer.target or ""
        if not self.opts.allow_verifier:
            raise NodeFailed(
                f"verifier({target!r}) runs your Python code: allow it with --allow-verifier", n.span
            )
        module_name, _, func_name = target.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise NodeFailed(f"cannot load verifier {target!r}: {exc}", n.span) from None
        out: list[float | None] = []
        for b in items:
            try:
                value = await anyio.to_thread.run_sync(func, b.text)
            except Exception as exc:  # the user's code: report, never hide
                raise NodeFailed(f"verifier {target!r} raised {exc.__class__.__name__}: {exc}", n.span) from None
            if not isinstance(value, (int, float)):
                raise NodeFailed(f"verifier {target!r} must return a number or bool, got {value!r}", n.span)
            out.append(float(value))
        return out

    # ---- backend calls, with retries, accounting and trace ----

    def _new_rid(self) -> str:
        self._rid += 1
        return f"ttc-{self.seed:x}-{self._rid}-{random.getrandbits(32):08x}"

    def _account(self, ctx: _Ctx, node: int, completion: int, prompt: int, cached: int) -> None:
        for nid in (node, *ctx.chain):
            u = self.stats.nodes[nid]
            u.completion_tokens += completion
            u.prompt_tokens += prompt
            u.cached_tokens += cached
            u.requests += 1
        t = self.stats.total
        t.completion_tokens += completion
        t.prompt_tokens += prompt
        t.cached_tokens += cached
        t.requests += 1

    def _trace(self, **fields: Any) -> None:
        if self.opts.trace is not None:
            self.opts.trace(TraceRecord(**fields))

    async def _retrying(self, n: P.Node, kind: str, rid: str, fn: Callable[[], Awaitable[T]],
                        describe: Callable[[T], dict[str, Any]], trace: dict[str, Any]) -> T:
        attempt = 0
        while True:
            attempt += 1
            t_start = time.monotonic() - self._t0
            try:
                async with self.limiter:
                    value = await fn()
            except TransientBackendError as exc:
                self._trace(kind=kind, node=n.id, rid=rid, attempt=attempt, t_start=t_start,
                            t_end=time.monotonic() - self._t0, error=str(exc), **trace)
                if attempt >= self.opts.retry.attempts:
                    raise NodeFailed(
                        f"{_op(n)} failed after {attempt} attempts: {exc}", n.span
                    ) from None
                await anyio.sleep(self.opts.retry.delay(attempt))
                continue
            except ProtocolViolation as exc:
                raise NodeFailed(f"{_op(n)}: the backend broke the protocol: {exc}", n.span) from None
            except BackendError as exc:
                raise NodeFailed(f"{_op(n)} failed: {exc}", n.span) from None
            self._trace(kind=kind, node=n.id, rid=rid, attempt=attempt, t_start=t_start,
                        t_end=time.monotonic() - self._t0, **trace, **describe(value))
            return value

    async def generate(self, ctx: _Ctx, n: P.Node, request: GenRequest, res: Reservation) -> GenResult:
        limit = request.sampling.max_new_tokens
        try:
            result = await self._retrying(
                n, "generate", request.rid, lambda: self.backend.generate(request),
                lambda r: {"text": r.text, "finish": r.finish, "completion_tokens": r.completion_tokens,
                           "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens},
                {"input_tokens": len(request.input_ids), "max_new_tokens": limit, "seed": request.sampling.seed},
            )
            if result.completion_tokens > limit or result.completion_tokens < 0:
                raise NodeFailed(
                    f"{_op(n)}: the backend broke the protocol: it reported {result.completion_tokens} "
                    f"completion tokens for a request allowed {limit}", n.span,
                )
            res.settle(result.completion_tokens)
        finally:
            res.release()
        self._account(ctx, n.id, result.completion_tokens, result.prompt_tokens, result.cached_tokens)
        return result

    async def warm(self, ctx: _Ctx, n: P.Node, ids: tuple[int, ...]) -> None:
        """Prefill a prompt before its forks are sent.  Done once per `sample` invocation (so
        which node is charged never depends on scheduling); a warm-up of ids already being
        warmed waits for that one first, so the server prefills them once and the second warm-up
        is a cache hit."""
        if not ids:
            return
        pending = self._warming.get(ids)
        if pending is not None:
            await pending.wait()
        event = self._warming[ids] = anyio.Event()
        try:
            result = await self._retrying(
                n, "warm", "", lambda: self.backend.warm(ids),
                lambda r: {"prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens},
                {"input_tokens": len(ids)},
            )
        finally:
            if self._warming.get(ids) is event:
                del self._warming[ids]
            event.set()
        self._account(ctx, n.id, 0, result.prompt_tokens, result.cached_tokens)

    async def tokenize(self, ctx: _Ctx, n: P.Node, text: str) -> list[int]:
        while text not in self._tokens:
            pending = self._tokenizing.get(text)
            if pending is not None:
                await pending.wait()
                continue
            event = self._tokenizing[text] = anyio.Event()
            try:
                self._tokens[text] = await self._retrying(
                    n, "tokenize", "", lambda: self.backend.tokenize(text), lambda r: {"input_tokens": len(r)}, {}
                )
            finally:
                del self._tokenizing[text]
                event.set()
        return self._tokens[text]

    async def reward(self, ctx: _Ctx, n: P.Node, texts: list[str]) -> list[float]:
        values = await self._retrying(n, "reward", "", lambda: self.backend.reward(texts), lambda r: {}, {})
        if len(values) != len(texts):
            raise NodeFailed(
                f"{_op(n)}: the reward model returned {len(values)} scores for {len(texts)} texts", n.span
            )
        for u in (self.stats.nodes[n.id], *(self.stats.nodes[c] for c in ctx.chain)):
            u.requests += 1
        self.stats.total.requests += 1
        return values


# ---- helpers ----


def _op(n: P.Node) -> str:
    return n.__class__.__name__.lower()


def _count(value: Any, n: P.Node) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise NodeFailed(f"{_op(n)} count must be a non-negative int at run time, got {value!r}", n.span)
    return value


# ---- entry points ----


async def run_plan(plan: P.Plan, backend: Backend, args: Mapping[str, Any],
                   options: RunOptions | None = None, root: Budget | None = None) -> RunResult:
    """Run `plan.entry` with `args` (already bound and converted) on an entered backend.

    `root` lets a caller own the top of the budget tree (tests inspect it afterwards); by default
    it is a fresh level capped by ``options.budget``."""
    opts = options or RunOptions()
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    run = _Run(plan, backend, opts, seed)
    root = root if root is not None else Budget(opts.budget, None, "run")
    t0 = time.monotonic()
    try:
        if opts.timeout_s is not None:
            with anyio.fail_after(opts.timeout_s):
                value = await run.call(plan.entry, args, root, "", ())
        else:
            value = await run.call(plan.entry, args, root, "", ())
    except TimeoutError:
        raise RunError(f"the run timed out after {opts.timeout_s:g} s (raise --timeout)") from None
    except BaseExceptionGroup as eg:
        err = _first_error(eg)
        if isinstance(err, TTCError):
            raise err from None
        raise
    wall = time.monotonic() - t0
    entry = plan.strategy()
    reached = [u for u in run.stats.nodes.values() if u.calls or u.requests]
    return RunResult(
        strategy=plan.entry,
        value=value,
        usage=run.stats.total,
        nodes=sorted(reached, key=lambda u: u.id),
        wall_s=wall,
        seed=seed,
        budget=entry.budget,
        budget_exhausted=run.exhausted,
    )


def execute(plan: P.Plan, backend: Backend, args: Mapping[str, Any], options: RunOptions | None = None) -> RunResult:
    """Synchronous convenience: enter `backend`, run, leave."""

    async def main() -> RunResult:
        async with backend:
            return await run_plan(plan, backend, args, options)

    return anyio.run(main)
