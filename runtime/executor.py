"""Runs a `Plan` on a `Backend`: the runtime's entry point.

`run_plan` sets up one run — its seed, budget root, limiter, model client and usage table — and
hands the entry strategy to an interpreter: the concurrent one (`interpreter.py`, the default) or
the sequential reference (`reference.py`, ``RunOptions(sequential=True)``), which share the meaning
of every step (`steps.py`) and differ only in scheduling.  Backend calls go through
`client.ModelClient` (limiter, retries, trace, accounting).

Budgets (see `budget.py`): every step invocation draws from its own budget level (if it has
`budget N`) under the strategy's, under the caller's, up to the run's.  A request's
``max_new_tokens`` is reserved before it is sent and settled with the reported completion tokens.

Failures: `TransientBackendError` is retried with capped exponential backoff; any other backend
error fails the node with a `NodeFailed` naming the `.ttc` line, which cancels the run.
Cancellation (timeout, Ctrl-C, a failing sibling) cancels in-flight requests; backends abort them
on the server.
"""

from __future__ import annotations

import linecache
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ttcdsl import plan as P
from ttcdsl.errors import RunError, TTCError
from ttcdsl.runtime.backend import Backend, first_failure
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.client import ModelClient, RetryPolicy, Stats
from ttcdsl.runtime.interpreter import Interpreter
from ttcdsl.runtime.reference import Reference
from ttcdsl.runtime.steps import RunState, StepRecord
from ttcdsl.runtime.values import (
    Answer,
    Branches,
    ExpectOutcome,
    NodeLabel,
    NodeUsage,
    RunResult,
    TraceRecord,
)

__all__ = ["DEFAULT_CONCURRENCY", "RetryPolicy", "RunOptions", "run_plan"]

# Requests in flight at once.  An SGLang server batches far more than this, and the forks of a
# 64-way self-consistency then go out together (one batch request on a direct server).
DEFAULT_CONCURRENCY = 64


@dataclass(frozen=True)
class RunOptions:
    seed: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Run with the sequential reference interpreter (the oracle) instead of the concurrent one.
    sequential: bool = False
    allow_verifier: bool = False
    # An extra cap on the whole run's completion tokens (on top of the strategy's own budget).
    budget: int | None = None
    timeout_s: float | None = None
    # How the timeout message says to raise it (dataset mode's per-item limit has its own flag).
    timeout_flag: str = "--timeout"
    trace: Callable[[TraceRecord], None] | None = None
    # Test mode: evaluate every `expect` statement and report each outcome here.  None (the
    # default) skips them, so they cost nothing.
    expect: Callable[[ExpectOutcome], None] | None = None
    # Test mode: every step's inputs and output (`steps.StepRecord`), for invariant checks.
    observe: Callable[[StepRecord], None] | None = None
    # A shared limiter (dataset mode shares one across items); else one per run.
    limiter: anyio.CapacityLimiter | None = None
    # The model's (opening, closing) thinking tags for thinking budgets; None: ask the backend.
    think_tags: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if self.think_tags is not None and not all(self.think_tags):
            raise ValueError(f"think_tags must be two non-empty strings, got {self.think_tags!r}")


def _usage_table(plan: P.Plan) -> Stats:
    stats = Stats()
    for s in plan.strategies.values():
        for n in s.nodes:
            if isinstance(n, P.Step):
                stats.nodes[n.id] = NodeUsage(
                    id=n.id, op=n.op, strategy=s.name, file=n.span.file, line=n.span.line,
                    budget=n.budget if isinstance(n, P.Budgeted) else None,
                )
    return stats


async def run_plan(plan: P.Plan, backend: Backend, args: Mapping[str, Any],
                   options: RunOptions | None = None, root: Budget | None = None) -> RunResult:
    """Run `plan.entry` with `args` (already bound and converted) on an entered backend.

    `root` lets a caller own the top of the budget tree (tests inspect it afterwards); by default
    it is a fresh level capped by ``options.budget``."""
    opts = options or RunOptions()
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    stats = _usage_table(plan)
    limiter = opts.limiter or anyio.CapacityLimiter(opts.concurrency)
    client = ModelClient(backend, limiter, opts.retry, stats, seed, opts.trace)
    state = RunState(client, stats, seed, allow_verifier=opts.allow_verifier, expect=opts.expect,
                     observe=opts.observe, think_tags=opts.think_tags)
    interpreter = (Reference if opts.sequential else Interpreter)(plan, state)
    root = root if root is not None else Budget(opts.budget, None, "run")
    if client.tracing:
        client.note("plan", 0, labels=_labels(plan))
    t0 = time.monotonic()
    try:
        with anyio.fail_after(opts.timeout_s):
            value = await interpreter.call(plan.entry, args, root, "", ())
    except TimeoutError:
        if opts.timeout_s is None:
            raise
        raise RunError(f"the run timed out after {opts.timeout_s:g} s (raise {opts.timeout_flag})") from None
    except BaseExceptionGroup as eg:
        err = first_failure(eg)
        if isinstance(err, TTCError):
            raise err from None
        raise
    wall = time.monotonic() - t0
    if client.tracing:
        _note_result(client, value)
    entry = plan.strategy()
    reached = [u for u in stats.nodes.values() if u.calls or u.requests]
    return RunResult(
        strategy=plan.entry,
        value=value,
        usage=stats.total,
        nodes=sorted(reached, key=lambda u: u.id),
        wall_s=wall,
        seed=seed,
        budget=entry.budget if entry.budget is not None else state.entry_budget,
        budget_exhausted=state.exhausted,
        run_budget=opts.budget,
        leaves=state.leaves,
    )


def _labels(plan: P.Plan) -> dict[int, NodeLabel]:
    """Every step node's keyword, strategy, line and source line, for the trace's first record
    (so a trace names its nodes without the program beside it)."""
    return {
        n.id: NodeLabel(op=n.op, strategy=s.name, line=n.span.line,
                        source=linecache.getline(n.span.file, n.span.line).strip())
        for s in plan.strategies.values() for n in s.nodes if isinstance(n, P.Step)
    }


def _note_result(client: ModelClient, value: Any) -> None:
    if isinstance(value, Answer):
        client.note("result", 0, branches=[b.id for b in value.branches], answer=value.value)
    elif isinstance(value, Branches):
        client.note("result", 0, branches=[b.id for b in value.items])
    else:
        client.note("result", 0, answer=str(value))
