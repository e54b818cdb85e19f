"""What each step of the language does at run time: sample, expand, score, prune, vote, call.

A step is an async function ``step(ev, frame, node)`` registered in `STEPS` by its plan node type.
It evaluates its inputs through the interpreter that runs it (`Evaluator`: the concurrent one in
`interpreter.py` or the sequential reference in `reference.py`), reserves budget, talks to the
model through `ModelClient` and returns the step's value.  So the two interpreters share the
meaning of every step and differ only in how they schedule evaluation (`Evaluator.gather` runs
forks concurrently or one after another).

Scorers are registered in `SCORERS` by the name the language uses (`score ... with NAME`): a
scorer takes the branches and returns one score per branch (None leaves a branch unscored).

Seeds: each request's seed is `derive_seed` of (run seed or the step's own `seed`, frame path and
loop iterations, the step's *draw position*, fork index), so a run with ``--seed`` reproduces
exactly on deterministic backends whatever the scheduling.  The draw position of a `sample` or
`expand` is its place among the strategy's generating steps in source order (``g0``, ``g1``...),
not its node id, so two programs whose generating steps line up draw the same random numbers
(common random numbers: self-consistency's chains are the first round of adaptive voting's when
prompt and settings agree), however many other nodes (constants, votes) each has.  Judges and
resampling keep their node id.  Branch ids say where a branch was made:
``n9.3`` (fork 3 of node 9), ``n18@2.5`` (in loop iteration 2), ``c4/n7.0`` (inside call node 4).

Trace: when the run writes one, each generation is tied to its branch (`ModelClient.lineage`)
and score, prune, resample and vote note their decisions by branch id (`ModelClient.note`), so
a trace alone rebuilds the search tree (`ttcdsl.tracetree`).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import msgspec

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime import semantics as sem
from ttcdsl.runtime.backend import GenRequest, GenResult, Sampling
from ttcdsl.runtime.budget import Budget, Reservation, split
from ttcdsl.runtime.client import ModelClient, RequestNote, Stats, op_name
from ttcdsl.runtime.seeds import derive_seed
from ttcdsl.runtime.thinking import Thinking, think_fork
from ttcdsl.runtime.values import Answer, Branch, Branches, ExpectOutcome
from ttcdsl.vocabulary import DEFAULT_MAX_TOKENS, JUDGE_TOKENS, SAMPLING_KEYS

__all__ = ["SCORERS", "STEPS", "Evaluator", "Frame", "RunState", "StepRecord", "run_step"]

T = TypeVar("T")
JUDGE_TOP_LOGPROBS = 20


def _default(key: str) -> float:
    """The value the language gives a sampling key a `with` clause leaves out."""
    default = SAMPLING_KEYS[key].default
    assert default is not None, key
    return default


@dataclass
class Frame:
    """Where an expression is evaluated: one strategy invocation, its bindings, its budget level,
    its place in the run (call path and loop iterations).  ``env`` maps names to whatever the
    interpreter binds (values, or slots of values still computing)."""

    strategy: P.StrategyPlan
    nodes: dict[int, P.Node]
    env: dict[str, Any]
    budget: Budget
    key: str = ""  # call path, e.g. "" or "c12/"
    loops: tuple[int, ...] = ()
    chain: tuple[int, ...] = ()  # enclosing call node ids (for usage attribution)

    def tag(self) -> str:
        return self.key + "".join(f"@{i}" for i in self.loops)


@dataclass(frozen=True)
class StepRecord:
    """One finished step invocation, for test-mode observers: the node, where it ran (call path
    and loop iterations), its value, its input branches (steps that take branches) and, for a
    prune, its `keep` count.  The branches are the live objects: copy what must not change."""

    node: P.Node
    where: str
    output: Any
    inputs: list[Branch] | None = None
    keep: int | None = None


@dataclass
class RunState:
    """What every step of one run shares."""

    client: ModelClient
    stats: Stats
    seed: int
    allow_verifier: bool = False
    exhausted: bool = False  # some request got less than it asked for, or none at all
    # Where `expect` outcomes go in test mode; None skips `expect` statements.
    expect: Callable[[ExpectOutcome], None] | None = None
    # Test mode: told every step's inputs and output (`StepRecord`); None costs nothing.
    observe: Callable[[StepRecord], None] | None = None

    def observed(self, frame: Frame, n: P.Node, output: Any, inputs: list[Branch] | None = None,
                 keep: int | None = None) -> None:
        if self.observe is not None:
            self.observe(StepRecord(n, frame.tag(), output, inputs, keep))

    def expected(self, frame: Frame, st: P.Expect, held: Any) -> None:
        """Report one outcome of `expect` statement `st` (test mode only)."""
        if self.expect is not None:
            span = st.span
            self.expect(ExpectOutcome(strategy=frame.strategy.name, file=span.file, line=span.line,
                                      col=span.col, text=st.text, where=frame.tag(), held=bool(held)))
    # The run's own thinking tags (``--think-tags``); None: ask the backend.
    think_tags: tuple[str, str] | None = None
    leaves: list[Branch] = field(default_factory=list)  # branches finished, in finish order
    entry_budget: int | None = None  # the entry strategy's `budget EXPR tokens`, evaluated

    @contextmanager
    def measure(self, n: P.Node) -> Iterator[None]:
        """Counts one invocation of step `n` and its wall time (inputs already evaluated)."""
        t0 = time.monotonic()
        yield
        usage = self.stats.nodes[n.id]
        usage.calls += 1
        usage.wall_s += time.monotonic() - t0


class Evaluator(Protocol):
    """What a step needs from the interpreter running it."""

    state: RunState

    async def ev(self, frame: Frame, ref: P.Ref) -> Any:
        """The value of a plan node in `frame`."""
        ...

    async def gather(self, thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run the thunks (concurrently or in order) and return their values in order."""
        ...

    async def ev_all(self, frame: Frame, refs: Sequence[P.Ref]) -> list[Any]:
        """The values of several plan nodes, in order."""
        ...

    async def call(self, name: str, args: Mapping[str, Any], budget: Budget, key: str,
                   chain: tuple[int, ...]) -> Any:
        """Run strategy `name` with bound `args` as a new frame and return its value."""
        ...

    async def generate(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                       reservations: Sequence[Reservation],
                       notes: Sequence[RequestNote] | None = None) -> list[GenResult]:
        """The generations of one step (each settles its reservation), results in order."""
        ...

    async def generate_until(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                             reservations: Sequence[Reservation],
                             enough: Callable[[int, GenResult], bool],
                             notes: Sequence[RequestNote] | None = None) -> tuple[list[GenResult | None], list[bool]]:
        """The generations of an anytime step: ``enough(i, result)`` after each; once it holds
        the rest are stopped.  Results (None where stopped) and which requests were sent."""
        ...


Step = Callable[[Evaluator, Frame, Any], Awaitable[Any]]
Scorer = Callable[[Evaluator, Frame, P.Score, list[Branch]], Awaitable[list[float | None]]]


async def run_step(ev: Evaluator, frame: Frame, n: P.Node) -> Any:
    """Evaluate step node `n` with the step registered for its type."""
    return await STEPS[type(n)](ev, frame, n)


# ---- inputs ----


# The most forks one invocation of `sample` or `expand` may make: far beyond any useful strategy,
# small enough that a mistaken count fails at once instead of filling memory.
MAX_FORKS = 100_000


def _count(value: Any, n: P.Node) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise NodeFailed(f"{op_name(n)} count must be a non-negative int at run time, got {value!r}", n.span)
    return value


def _forks(count: int, per: int, n: P.Node) -> int:
    """``count`` forks of each of ``per`` branches, refused when more than `MAX_FORKS`."""
    if count * per > MAX_FORKS:
        product = f" ({count} for each of {per} branches)" if per > 1 else ""
        raise NodeFailed(
            f"{op_name(n)} would make {count * per} forks{product}; one step makes at most {MAX_FORKS}",
            n.span,
        )
    return count


async def _both(ev: Evaluator, frame: Frame, a: P.Ref, b: P.Ref) -> list[Any]:
    return await ev.ev_all(frame, [a, b])


async def _settings(ev: Evaluator, frame: Frame, s: P.Settings) -> dict[str, Any]:
    keys = [k for k in s.__struct_fields__ if getattr(s, k) is not None]
    values = await ev.ev_all(frame, [getattr(s, k) for k in keys])
    return dict(zip(keys, values))


def _node_budget(frame: Frame, n: P.Sample | P.Expand | P.Score) -> Budget:
    if n.budget is None:
        return frame.budget
    return frame.budget.child(n.budget, f"node n{n.id}")


def _seed(state: RunState, frame: Frame, node: int | str, fork: int, user_seed: int | None) -> int:
    return derive_seed(state.seed if user_seed is None else user_seed, frame.tag(), node, fork)


def _draw_position(strategy: P.StrategyPlan, node: int) -> str:
    """``g{k}``: the k-th `sample`/`expand` of ``strategy`` in node order (see the module doc)."""
    generating = [m.id for m in strategy.nodes if isinstance(m, (P.Sample, P.Expand))]
    return f"g{generating.index(node)}"


def _branch_id(frame: Frame, node: int, fork: int) -> str:
    return f"{frame.key}n{node}" + "".join(f"@{i}" for i in frame.loops) + f".{fork}"


# ---- generating steps ----


async def sample(ev: Evaluator, frame: Frame, n: P.Sample, anytime: _Anytime | None = None) -> Branches:
    count, prompt = await _both(ev, frame, n.count, n.prompt)
    settings = await _settings(ev, frame, n.settings)
    with ev.state.measure(n):
        count, text = _forks(_count(count, n), 1, n), sem.interpolate(prompt)
        client = ev.state.client
        prompt_ids = tuple(await client.tokenize(n, text))
        branches = []
        for i in range(count):
            bid = _branch_id(frame, n.id, i)
            branches.append(Branch(id=bid, root=bid, parent=None, prompt=text, prompt_ids=prompt_ids))
        if count > 1:
            # Done once per invocation (so which node is charged never depends on scheduling).
            await client.warm(n, frame.chain, prompt_ids)
        await _generate_forks(ev, frame, n, [(b, i) for i, b in enumerate(branches)], settings, anytime)
        ev.state.observed(frame, n, Branches(branches))
        return Branches(branches)


async def expand(ev: Evaluator, frame: Frame, n: P.Expand, anytime: _Anytime | None = None) -> Branches:
    """Fork every unfinished branch; finished branches pass through unchanged, also with
    ``after TEXT`` (a finished branch takes no injection: probing it yields the branch itself).
    The injected text is tokenized once per run and appended to each child, text and exact ids,
    as a step of its own, before the child continues."""
    branches, count = await _both(ev, frame, n.branches, n.count)
    settings = await _settings(ev, frame, n.settings)
    inject = await ev.ev(frame, n.inject) if n.inject is not None else None
    with ev.state.measure(n):
        count = _forks(_count(count, n), sum(not b.finished for b in branches.items), n)
        ids: tuple[int, ...] = ()
        if inject is not None:
            text = sem.interpolate(inject)
            if not text:
                raise NodeFailed("`after` has no text to inject (it is empty at run time)", n.span)
            ids = await ev.state.client.piece(n, text)
        out: list[Branch] = []
        pending: list[tuple[Branch, int]] = []
        for j, b in enumerate(branches.items):
            if b.finished:
                out.append(b)
                continue
            for c in range(count):
                fork = j * count + c
                child = b.child(_branch_id(frame, n.id, fork))
                if inject is not None:
                    child.ids.extend(ids)
                    child.steps.append(text)
                out.append(child)
                pending.append((child, fork))
        await _generate_forks(ev, frame, n, pending, settings, anytime, len(ids))
        ev.state.observed(frame, n, Branches(out), branches.items)
        return Branches(out)


@dataclass(frozen=True)
class _Generation:
    """The sampling settings of one `sample`/`expand` invocation, checked."""

    base: Sampling
    stops: list[str] = field(default_factory=list)
    step: str | None = None
    seed: int | None = None
    chunk: bool = False  # `chunk = N`: running out of tokens ends a step, not the branch

    @classmethod
    def of(cls, n: P.Sample | P.Expand, settings: dict[str, Any]) -> _Generation:
        key = "chunk" if "chunk" in settings else "max_tokens"
        max_tokens = settings.get(key, DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise NodeFailed(f"{key} must be a positive int, got {max_tokens!r}", n.span)
        for key, value in settings.items():
            # Values that only arrive at run time (`--arg`, a dataset line) get the checks that
            # `ttc check` gives literals: a temperature of -1 or NaN is refused, not sent.
            spec = SAMPLING_KEYS.get(key)
            if spec is not None and spec.valid is not None and isinstance(value, (int, float)) \
                    and not spec.valid(value):
                raise NodeFailed(f"{key} must be {spec.rule}, got {value!r}", n.span)
        stop = settings.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        step = settings.get("step")
        base = Sampling(
            max_new_tokens=max_tokens,
            temperature=float(settings.get("temperature", _default("temperature"))),
            top_p=float(settings.get("top_p", _default("top_p"))),
            top_k=int(settings.get("top_k", _default("top_k"))),
            min_p=float(settings.get("min_p", _default("min_p"))),
            stop=tuple(stops + ([step] if step and step not in stops else [])),
        )
        return cls(base, stops, step, settings.get("seed"), key == "chunk")


async def _generate_forks(ev: Evaluator, frame: Frame, n: P.Sample | P.Expand,
                          forks: list[tuple[Branch, int]], settings: dict[str, Any],
                          anytime: _Anytime | None = None, injected: int = 0) -> None:
    """One request per fork, each continuing its branch's exact tokens, sent together through
    the interpreter (`Evaluator.generate`); the node's remaining budget is split fairly across the
    forks (`budget.split`) before any is sent.  Driven by an anytime vote, the requests are
    streamed and each branch is handed to the vote as it finishes (`_Anytime`).  With a thinking
    budget each fork is a short run of requests instead (`thinking.think_fork`).  ``injected``:
    tokens injected at the end of every branch that its first request reports."""
    if not forks:
        return
    state = ev.state
    gen = _Generation.of(n, settings)
    think = Thinking.of(n, settings)
    max_tokens = gen.base.max_new_tokens
    wants = max_tokens + (think.cap if think is not None else 0)
    budget = _node_budget(frame, n)
    alloc = split(budget.available(), [wants] * len(forks))
    work: list[tuple[Branch, int, int, Reservation]] = []
    position = _draw_position(frame.strategy, n.id)
    for (branch, fork), tokens in zip(forks, alloc):
        if tokens < wants:
            state.exhausted = True
        if tokens <= 0:
            branch.finished, branch.finish_reason = True, "budget"
            state.leaves.append(branch)
            continue
        work.append((branch, fork, tokens, budget.reserve(tokens)))
    if think is not None:
        await _think_forks(ev, frame, n, work, gen, think, injected, anytime)
        _note_finished(state, n, forks)
        return

    requests = [
        GenRequest(
            rid=state.client.new_rid(), input_ids=(*branch.prompt_ids, *branch.ids),
            sampling=msgspec.structs.replace(
                gen.base, max_new_tokens=tokens, seed=_seed(state, frame, position, fork, gen.seed)
            ),
            logprobs=n.logprobs, stream=anytime is not None,
        )
        for branch, fork, tokens, _ in work
    ]
    reservations = [res for *_, res in work]
    if state.client.tracing:
        for (branch, *_), request in zip(work, requests):
            state.client.lineage(request.rid, branch.id, branch.parent, len(branch.steps))
    notes = [RequestNote(injected=injected)] * len(requests) if injected else None
    if anytime is None:
        results = await ev.generate(n, frame.chain, requests, reservations, notes)
        for (branch, _, tokens, _), result in zip(work, results):
            sem.apply(branch, result, tokens < max_tokens, gen.stops, gen.step, gen.chunk)
            if branch.finished:
                state.leaves.append(branch)
        _note_finished(state, n, forks)
        return

    def finished(i: int, result: GenResult) -> bool:
        branch, _, tokens, _ = work[i]
        sem.apply(branch, result, tokens < max_tokens, gen.stops, gen.step, gen.chunk)
        if branch.finished:
            state.leaves.append(branch)
        return anytime.counted(branch)

    _, sent = await ev.generate_until(n, frame.chain, requests, reservations, finished, notes)
    anytime.aborted = sum(sent) - len(anytime.votes)
    anytime.unsent = len(sent) - sum(sent)
    for (branch, *_), was_sent in zip(work, sent):
        if branch not in anytime.votes and not branch.finished:
            branch.finished, branch.finish_reason = True, "abort" if was_sent else "budget"
            state.leaves.append(branch)
    _note_finished(state, n, forks)


def _note_finished(state: RunState, n: P.Sample | P.Expand, forks: list[tuple[Branch, int]]) -> None:
    """Trace which branches this step finished, and why (the others stay open)."""
    if state.client.tracing:
        done = [b for b, _ in forks if b.finished]
        if done:
            state.client.note("finish", n.id, branches=[b.id for b in done],
                              values=[b.finish_reason for b in done])


async def _think_forks(ev: Evaluator, frame: Frame, n: P.Sample | P.Expand,
                       work: list[tuple[Branch, int, int, Reservation]], gen: _Generation, think: Thinking,
                       injected: int, anytime: _Anytime | None) -> None:
    """The forks of a step with a thinking budget, each run by `thinking.think_fork` holding its
    share of the budget; the forks run as the interpreter schedules them (`Evaluator.gather`)."""
    state = ev.state
    client = state.client
    try:
        if anytime is not None:
            raise NodeFailed("an anytime vote cannot stop a step with a thinking budget", n.span)
        tags = await client.think_tags(n, "think_max", state.think_tags)

        async def fork(branch: Branch, index: int, hold: Reservation) -> None:
            first = _seed(state, frame, _draw_position(frame.strategy, n.id), index, gen.seed)
            sent = [0]

            async def send(more: tuple[int, ...], max_new: int, stops: tuple[str, ...], res: Reservation,
                           note: RequestNote) -> GenResult:
                seed = first if sent[0] == 0 else derive_seed(first, sent[0])
                sent[0] += 1
                request = GenRequest(
                    rid=client.new_rid(), input_ids=(*branch.prompt_ids, *branch.ids, *more),
                    sampling=msgspec.structs.replace(gen.base, max_new_tokens=max_new, seed=seed, stop=stops),
                    logprobs=n.logprobs,
                )
                if client.tracing:
                    client.lineage(request.rid, branch.id, branch.parent, len(branch.steps))
                return await client.generate(n, frame.chain, request, res, note)

            result, cut = await think_fork(
                send, hold, think, tags, gen.base.max_new_tokens, gen.base.stop, tags[1] in branch.text,
                partial(client.piece, n), partial(client.detokenize, n), injected,
            )
            sem.apply(branch, result, cut, gen.stops, gen.step)
            if branch.finished:
                state.leaves.append(branch)

        await ev.gather([partial(fork, branch, index, hold) for branch, index, _, hold in work])
    finally:
        for *_, hold in work:
            hold.release()


# ---- score and its scorers ----


async def score(ev: Evaluator, frame: Frame, n: P.Score) -> Branches:
    branches = await ev.ev(frame, n.branches)
    with ev.state.measure(n):
        items = branches.items
        values = await SCORERS[n.scorer.kind](ev, frame, n, items)
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
        if ev.state.client.tracing:
            ev.state.client.note("score", n.id, branches=[b.id for b in out], scores=[b.score for b in out])
        ev.state.observed(frame, n, Branches(out), items)
        return Branches(out)


async def _prm(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """The reward model scores each branch's newest step (prompt and text so far)."""
    if not items:
        return []
    values: list[float | None] = list(await ev.state.client.reward(n, frame.chain, [b.prompt + b.text for b in items]))
    ev.state.stats.scoring(n.id, frame.chain, sum(len(b.prompt_ids) + len(b.ids) for b in items))
    return values


async def _logprob(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """Mean token logprob of each branch (None for a branch with no generated token: injected
    tokens carry none).  A backend that returns no logprobs fails the generating step
    (`ModelClient`), so every generated token here has one."""
    values = [b.mean_logprob for b in items]
    bad = next((v for v in values if v is not None and not v <= _LOGPROB_SLACK), None)
    if bad is not None:  # NaN, or above log(1) by more than rounding
        raise NodeFailed(f"the backend broke the protocol: a mean token logprob of {bad} "
                         "(a log probability is at most 0)", n.span)
    return values


_LOGPROB_SLACK = 1e-3


async def _judge(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """The model answers the filled template with one token; the score is P(yes)."""
    template = n.scorer.template or []
    refs = [p for p in template if isinstance(p, P.Ref)]
    values = iter(await ev.ev_all(frame, refs))
    filled = [p if isinstance(p, (str, P.BranchText)) else sem.interpolate(next(values)) for p in template]
    state = ev.state
    budget = _node_budget(frame, n)
    alloc = split(budget.available(), [JUDGE_TOKENS] * len(items))
    scores: list[float | None] = [None] * len(items)
    if any(a < JUDGE_TOKENS for a in alloc):
        state.exhausted = True

    graded = [i for i, a in enumerate(alloc) if a >= JUDGE_TOKENS]
    reservations = [budget.reserve(alloc[i]) for i in graded]
    try:
        texts = ["".join(items[i].text if isinstance(p, P.BranchText) else p for p in filled) for i in graded]
        ids = await ev.gather([partial(state.client.tokenize, n, text) for text in texts])
        requests = [
            GenRequest(
                rid=state.client.new_rid(), input_ids=tuple(prompt),
                sampling=Sampling(max_new_tokens=JUDGE_TOKENS, temperature=0.0,
                                  seed=_seed(state, frame, n.id, i, None)),
                top_logprobs=JUDGE_TOP_LOGPROBS,
            )
            for i, prompt in zip(graded, ids)
        ]
        results = await ev.generate(n, frame.chain, requests, reservations)
        state.stats.scoring(n.id, frame.chain, sum(len(prompt) for prompt in ids))
    finally:
        for res in reservations:
            res.release()
    for i, result in zip(graded, results):
        scores[i] = sem.p_yes(result)
    return scores


async def _verifier(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """The user's Python function of the branch text (only with ``--allow-verifier``)."""
    target = n.scorer.target or ""
    if not ev.state.allow_verifier:
        raise NodeFailed(f"verifier({target!r}) runs your Python code: allow it with --allow-verifier", n.span)
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


SCORERS: dict[str, Scorer] = {"prm": _prm, "logprob": _logprob, "judge": _judge, "verifier": _verifier}


# ---- steps without model calls ----


async def prune(ev: Evaluator, frame: Frame, n: P.Prune) -> Branches:
    branches, keep = await _both(ev, frame, n.branches, n.keep)
    with ev.state.measure(n):
        out = Branches(agg.prune(branches.items, _count(keep, n), n.by, n.per))
        if ev.state.client.tracing:
            ev.state.client.note("prune", n.id, branches=[b.id for b in branches.items],
                                 kept=[b.id for b in out.items])
    ev.state.observed(frame, n, out, branches.items, keep)
    return out


async def vote(ev: Evaluator, frame: Frame, n: P.Vote) -> Any:
    if n.until is not None:
        return await _anytime_vote(ev, frame, n)
    branches = await ev.ev(frame, n.branches)
    with ev.state.measure(n):
        answer = agg.vote(branches.items, n.on, n.pattern, n.weighted, n.unfinished)
        _note_vote(ev.state, n, branches.items, answer)
    ev.state.observed(frame, n, answer, branches.items)
    return answer


def _note_vote(state: RunState, n: P.Vote, items: Sequence[Branch], answer: Answer) -> None:
    """Trace who could vote, what each said and who was counted for the answer."""
    if state.client.tracing:
        state.client.note("vote", n.id, branches=[b.id for b in items],
                          values=[agg.extract(b.text, n.on, n.pattern) for b in items],
                          voters=[b.id for b in answer.branches], answer=answer.value)


@dataclass
class _Anytime:
    """The state of an anytime vote while its input step runs: the branches that voted, in the
    order they finished, and whether the stopping rule holds yet."""

    n: P.Vote
    threshold: float
    min_votes: int
    votes: list[Branch] = field(default_factory=list)
    answer: Answer | None = None
    stopped: bool = False
    aborted: int = 0
    unsent: int = 0

    def counted(self, branch: Branch) -> bool:
        """Count a finished branch; True once the vote may stop (the rest are then aborted)."""
        self.votes.append(branch)
        self.answer = agg.vote(self.votes, self.n.on, self.n.pattern, self.n.weighted, self.n.unfinished)
        assert self.n.until is not None
        self.stopped = agg.settled(self.answer, self.n.until, self.threshold, self.min_votes)
        return self.stopped


async def _anytime_vote(ev: Evaluator, frame: Frame, n: P.Vote) -> Answer:
    """`vote ... until RULE >= T after K`: runs its input step itself, counts each branch as it
    finishes, and once the rule holds stops the step: requests still generating are aborted on
    the server, those not yet sent are never sent, and their reservations are refunded."""
    assert n.threshold is not None and n.min_votes is not None
    threshold, min_votes = await ev.ev_all(frame, [n.threshold, n.min_votes])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise NodeFailed(f"the vote's threshold must be a number, got {threshold!r}", n.span)
    anytime = _Anytime(n, float(threshold), _count(min_votes, n))
    source = frame.nodes[n.branches.node]
    if isinstance(source, P.Sample):
        await sample(ev, frame, source, anytime)
    elif isinstance(source, P.Expand):
        await expand(ev, frame, source, anytime)
    else:
        raise NodeFailed("an anytime vote takes its branches straight from a sample or expand", n.span)
    with ev.state.measure(n):
        # The decision is the rule's in arrival order; the answer lists its ballots in fork
        # order, so the same ballots read the same however the requests were scheduled.
        def fork(b: Branch) -> int:
            return int(b.id.rsplit(".", 1)[1])

        ballots = sorted(anytime.votes, key=fork)
        answer = anytime.answer or agg.vote([], n.on, n.pattern, n.weighted, n.unfinished)
        answer.branches = sorted(answer.branches, key=fork)
        answer.ballots = sorted(answer.ballots, key=fork)
        answer.used = len(anytime.votes)
        answer.aborted = anytime.aborted
        answer.unsent = anytime.unsent
        answer.stopped_early = anytime.stopped
        _note_vote(ev.state, n, ballots, answer)
    ev.state.observed(frame, n, answer, ballots)
    return answer


async def resample(ev: Evaluator, frame: Frame, n: P.Resample) -> Branches:
    """Draw branches with replacement in proportion to their scores (`aggregate.weights`,
    `aggregate.resample`); each copy is a child of the branch it copies and continues from its
    exact tokens, so copies share their prefix.  Reproducible: the draw's seed is derived like a
    request's."""
    refs = [r for r in (n.count, n.temperature) if r is not None]
    branches, *extra = await ev.ev_all(frame, [n.branches, *refs])
    values = iter(extra)
    count = next(values) if n.count is not None else None
    temperature = next(values) if n.temperature is not None else None
    with ev.state.measure(n):
        items = branches.items
        draws = len(items) if count is None else _count(count, n)
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not temperature > 0):
            raise NodeFailed(f"the softmax temperature must be a number > 0, got {temperature!r}", n.span)
        if not items:
            return Branches([])
        rng = random.Random(_seed(ev.state, frame, n.id, 0, None))
        picks = agg.resample(agg.weights(items, temperature), draws, n.method, rng)
        out = []
        for k, i in enumerate(picks):
            copy = items[i].child(_branch_id(frame, n.id, k))
            copy.finished, copy.finish_reason = items[i].finished, items[i].finish_reason
            out.append(copy)
        if ev.state.client.tracing:
            ev.state.client.note("resample", n.id, branches=[b.id for b in items], kept=[b.id for b in out],
                                  sources=[items[i].id for i in picks])
    ev.state.observed(frame, n, Branches(out), items)
    return Branches(out)


async def call(ev: Evaluator, frame: Frame, n: P.Call) -> Any:
    names = list(n.args)
    values = await ev.ev_all(frame, [n.args[k] for k in names])
    budget = frame.budget.child(n.budget, f"call {n.strategy.name}") if n.budget is not None else frame.budget
    with ev.state.measure(n):
        return await ev.call(n.strategy.name, dict(zip(names, values)), budget,
                             f"{frame.tag()}c{n.id}/", (*frame.chain, n.id))


STEPS: dict[type, Step] = {
    P.Sample: sample,
    P.Expand: expand,
    P.Score: score,
    P.Prune: prune,
    P.Vote: vote,
    P.Resample: resample,
    P.Call: call,
}
