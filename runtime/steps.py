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
loop iterations, node id, fork index), so a run with ``--seed`` reproduces exactly on
deterministic backends whatever the scheduling.  Branch ids say where a branch was made:
``n9.3`` (fork 3 of node 9), ``n18@2.5`` (in loop iteration 2), ``c4/n7.0`` (inside call node 4).
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
from ttcdsl.runtime.client import ModelClient, Stats, op_name
from ttcdsl.runtime.seeds import derive_seed
from ttcdsl.runtime.values import Answer, Branch, Branches
from ttcdsl.vocabulary import DEFAULT_MAX_TOKENS, JUDGE_TOKENS, SAMPLING_KEYS

__all__ = ["SCORERS", "STEPS", "Evaluator", "Frame", "RunState", "run_step"]

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


@dataclass
class RunState:
    """What every step of one run shares."""

    client: ModelClient
    stats: Stats
    seed: int
    allow_verifier: bool = False
    exhausted: bool = False  # some request got less than it asked for, or none at all

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
                       reservations: Sequence[Reservation]) -> list[GenResult]:
        """The generations of one step (each settles its reservation), results in order."""
        ...

    async def generate_until(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                             reservations: Sequence[Reservation],
                             enough: Callable[[int, GenResult], bool]) -> tuple[list[GenResult | None], list[bool]]:
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


def _seed(state: RunState, frame: Frame, node: int, fork: int, user_seed: int | None) -> int:
    return derive_seed(state.seed if user_seed is None else user_seed, frame.tag(), node, fork)


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
        return Branches(branches)


async def expand(ev: Evaluator, frame: Frame, n: P.Expand, anytime: _Anytime | None = None) -> Branches:
    branches, count = await _both(ev, frame, n.branches, n.count)
    settings = await _settings(ev, frame, n.settings)
    with ev.state.measure(n):
        count = _forks(_count(count, n), sum(not b.finished for b in branches.items), n)
        out: list[Branch] = []
        pending: list[tuple[Branch, int]] = []
        for j, b in enumerate(branches.items):
            if b.finished:
                out.append(b)
                continue
            for c in range(count):
                fork = j * count + c
                child = b.child(_branch_id(frame, n.id, fork))
                out.append(child)
                pending.append((child, fork))
        await _generate_forks(ev, frame, n, pending, settings, anytime)
        return Branches(out)


@dataclass(frozen=True)
class _Generation:
    """The sampling settings of one `sample`/`expand` invocation, checked."""

    base: Sampling
    stops: list[str] = field(default_factory=list)
    step: str | None = None
    seed: int | None = None

    @classmethod
    def of(cls, n: P.Sample | P.Expand, settings: dict[str, Any]) -> _Generation:
        max_tokens = settings.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise NodeFailed(f"max_tokens must be a positive int, got {max_tokens!r}", n.span)
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
        return cls(base, stops, step, settings.get("seed"))


async def _generate_forks(ev: Evaluator, frame: Frame, n: P.Sample | P.Expand,
                          forks: list[tuple[Branch, int]], settings: dict[str, Any],
                          anytime: _Anytime | None = None) -> None:
    """One request per fork, each continuing its branch's exact tokens, sent together through
    the interpreter (`Evaluator.generate`); the node's remaining budget is split fairly across the
    forks (`budget.split`) before any is sent.  Driven by an anytime vote, the requests are
    streamed and each branch is handed to the vote as it finishes (`_Anytime`)."""
    if not forks:
        return
    state = ev.state
    gen = _Generation.of(n, settings)
    max_tokens = gen.base.max_new_tokens
    budget = _node_budget(frame, n)
    alloc = split(budget.available(), [max_tokens] * len(forks))
    work: list[tuple[Branch, int, int, Reservation]] = []
    for (branch, fork), tokens in zip(forks, alloc):
        if tokens < max_tokens:
            state.exhausted = True
        if tokens <= 0:
            branch.finished, branch.finish_reason = True, "budget"
            continue
        work.append((branch, fork, tokens, budget.reserve(tokens)))

    requests = [
        GenRequest(
            rid=state.client.new_rid(), input_ids=(*branch.prompt_ids, *branch.ids),
            sampling=msgspec.structs.replace(
                gen.base, max_new_tokens=tokens, seed=_seed(state, frame, n.id, fork, gen.seed)
            ),
            logprobs=n.logprobs, stream=anytime is not None,
        )
        for branch, fork, tokens, _ in work
    ]
    reservations = [res for *_, res in work]
    if anytime is None:
        results = await ev.generate(n, frame.chain, requests, reservations)
        for (branch, _, tokens, _), result in zip(work, results):
            sem.apply(branch, result, tokens < max_tokens, gen.stops, gen.step)
        return

    def finished(i: int, result: GenResult) -> bool:
        branch, _, tokens, _ = work[i]
        sem.apply(branch, result, tokens < max_tokens, gen.stops, gen.step)
        return anytime.counted(branch)

    _, sent = await ev.generate_until(n, frame.chain, requests, reservations, finished)
    anytime.aborted = sum(sent) - len(anytime.votes)
    anytime.unsent = len(sent) - sum(sent)
    for (branch, *_), was_sent in zip(work, sent):
        if branch not in anytime.votes and not branch.finished:
            branch.finished, branch.finish_reason = True, "abort" if was_sent else "budget"


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
        return Branches(out)


async def _prm(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """The reward model scores each branch's newest step (prompt and text so far)."""
    if not items:
        return []
    return list(await ev.state.client.reward(n, frame.chain, [b.prompt + b.text for b in items]))


async def _logprob(ev: Evaluator, frame: Frame, n: P.Score, items: list[Branch]) -> list[float | None]:
    """Mean token logprob of each branch."""
    values = [b.mean_logprob for b in items]
    if any(v is None and b.ids for v, b in zip(values, items)):
        raise NodeFailed("`score with logprob` needs token logprobs, but the backend returned none", n.span)
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
        return Branches(agg.prune(branches.items, _count(keep, n), n.by, n.per))


async def vote(ev: Evaluator, frame: Frame, n: P.Vote) -> Any:
    if n.until is not None:
        return await _anytime_vote(ev, frame, n)
    branches = await ev.ev(frame, n.branches)
    with ev.state.measure(n):
        return agg.vote(branches.items, n.on, n.pattern, n.weighted)


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
        self.answer = agg.vote(self.votes, self.n.on, self.n.pattern, self.n.weighted)
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
        answer = anytime.answer or agg.vote([], n.on, n.pattern, n.weighted)
        answer.used = len(anytime.votes)
        answer.aborted = anytime.aborted
        answer.unsent = anytime.unsent
        answer.stopped_early = anytime.stopped
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
