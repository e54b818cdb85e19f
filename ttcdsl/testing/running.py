"""Running a strategy for a property test, synchronously, with everything a check needs.

    run_strategy(program, strategy=None, args={...}, backend=..., seed=0) -> StrategyResult
    sim_backend(task)                  the simulator on a task (a task-file dict or a `SimTask`)
    run_on(plan, backend, args, ...)   the first kit's runner (a `CheckedRun`), kept as it was
    assert_budgets(run)                the first kit's budget check of a `CheckedRun`

`run_strategy` binds arguments exactly as `ttc run --arg` does (`ttcdsl.args.bind_args`): a
misspelt, missing or mistyped parameter is a `UsageError`, never a run on an empty question.  It
runs in test mode: every `expect` of the program is evaluated and every step's inputs and output
are kept (`StrategyResult.steps`), which is what `check_invariants` reads.  Test mode spends
exactly what a normal run spends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ttcdsl import plan as P
from ttcdsl.args import bind_args
from ttcdsl.compiler import Compiled, compile_file, compile_source
from ttcdsl.errors import UsageError
from ttcdsl.runtime.backend import Backend
from ttcdsl.runtime.backends.recording import RecordingBackend, recording
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.client import RetryPolicy
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim.task import SimTask
from ttcdsl.runtime.steps import StepRecord
from ttcdsl.runtime.values import (
    Answer,
    Branch,
    Branches,
    ExpectOutcome,
    NodeUsage,
    RunResult,
    TraceRecord,
    Usage,
)

__all__ = ["CheckedRun", "StrategyResult", "assert_budgets", "run_on", "run_strategy", "sim_backend"]

# No real server to spare in a test: transient errors are retried at once.
TEST_RETRY = RetryPolicy(attempts=5, base_s=0.0, cap_s=0.0)


def sim_backend(task: SimTask | Mapping[str, Any], **options: Any) -> Backend:
    """The in-process simulator serving `task`: a `SimTask` or a dict in the task-file format
    (validated like a task file: a bad task is a `TaskError` naming the problem).  `options`
    go to `SimBackend` (latency and fault models)."""
    from ttcdsl.runtime.backends.sim import SimBackend

    if not isinstance(task, SimTask):
        task = SimTask.from_dict(task, "<sim_backend task>")
    return SimBackend(task, **options)


@dataclass
class StrategyResult:
    """One test-mode run: the `RunResult` and what the run did on the way.

    ``branches``: the branches a strategy returned (for an answer: the branches backing it);
    ``answer``: the `Answer` (value, support, agreement, votes) or None; ``usage``/``nodes``:
    totals and per-node usage (with each node's budget); ``trace``: one record per backend
    request attempt; ``expects``: every evaluation of an `expect`; ``steps``: every step
    invocation with its inputs and output (snapshots); ``root``: the top of the budget tree;
    ``backend``: the recording wrapper (requests and results as the backend answered them)."""

    result: RunResult
    plan: P.Plan
    root: Budget
    backend: RecordingBackend
    trace: list[TraceRecord]
    expects: list[ExpectOutcome]
    steps: list[StepRecord]
    args: dict[str, Any]
    cap: int | None = None
    program: str = ""

    def __repr__(self) -> str:
        value = self.result.value
        shown = (f"answer {value.value!r} (agreement {value.agreement:.2f})" if isinstance(value, Answer)
                 else f"{len(value.items)} branches" if isinstance(value, Branches) else repr(value))
        failed = len(self.failed_expects)
        return (f"StrategyResult({self.result.strategy}: {shown}, {self.usage.completion_tokens} completion "
                f"tokens, {self.usage.requests} requests, seed {self.result.seed}"
                f"{f', {failed} failed expect(s)' if failed else ''})")

    @property
    def value(self) -> Any:
        return self.result.value

    @property
    def answer(self) -> Answer | None:
        return self.result.value if isinstance(self.result.value, Answer) else None

    @property
    def branches(self) -> list[Branch]:
        value = self.result.value
        if isinstance(value, Branches):
            return list(value.items)
        if isinstance(value, Answer):
            return list(value.branches)
        return []

    @property
    def usage(self) -> Usage:
        return self.result.usage

    @property
    def nodes(self) -> list[NodeUsage]:
        return self.result.nodes

    @property
    def failed_expects(self) -> list[ExpectOutcome]:
        return [e for e in self.expects if not e.held]


def _snapshot(b: Branch) -> Branch:
    return msgspec.structs.replace(b, ids=list(b.ids), steps=list(b.steps), step_scores=list(b.step_scores))


def _frozen(record: StepRecord) -> StepRecord:
    """A copy of a step record whose branches later steps cannot change."""
    out = record.output
    if isinstance(out, Branches):
        out = Branches([_snapshot(b) for b in out.items])
    elif isinstance(out, Answer):
        out = msgspec.structs.replace(out, votes=dict(out.votes), branches=[_snapshot(b) for b in out.branches])
    inputs = [_snapshot(b) for b in record.inputs] if record.inputs is not None else None
    return StepRecord(record.node, record.where, out, inputs, record.keep)


def _compiled(program: str | Path | Compiled | P.Plan, strategy: str | None) -> tuple[P.Plan, str]:
    if isinstance(program, P.Plan):
        if strategy is not None and strategy not in program.strategies:
            raise UsageError(f"no strategy named '{strategy}' in the plan")
        return (msgspec.structs.replace(program, entry=strategy) if strategy else program), ""
    if isinstance(program, Compiled):
        return program.plan, ""
    text = str(program)
    if isinstance(program, Path) or ("\n" not in text and text.endswith(".ttc")):
        return compile_file(text, strategy).plan, text
    return compile_source(text, "<run_strategy>", strategy).plan, ""


def _backend(backend: Backend | SimTask | Mapping[str, Any] | Script | None) -> Backend:
    if backend is None:
        return ScriptedBackend()
    if isinstance(backend, Script):
        return ScriptedBackend(backend)
    if isinstance(backend, (SimTask, Mapping)):
        return sim_backend(backend)
    return backend


def run_strategy(program: str | Path | Compiled | P.Plan, strategy: str | None = None,
                 args: Mapping[str, Any] | None = None,
                 backend: Backend | SimTask | Mapping[str, Any] | Script | None = None, seed: int = 0, *,
                 budget: int | None = None, sequential: bool = False, allow_verifier: bool = False,
                 timeout_s: float = 120.0, concurrency: int = 64) -> StrategyResult:
    """Run a strategy once in test mode and return a `StrategyResult`.

    ``program``: a `.ttc` path, source text, a `Compiled` or a `Plan`; ``strategy``: which one
    (default: the last of the file); ``args``: parameter values, bound and converted exactly as
    `ttc run --arg` binds them; ``backend``: a `Backend`, a sim task (dict or `SimTask`), a
    `Script` for `ScriptedBackend`, or None for a default `ScriptedBackend`; ``seed``: the run
    seed; ``budget``: an extra cap on the run's completion tokens (`ttc run --budget`).  A
    backend is entered for the run and left after it.  Transient errors are retried at once; a
    hang fails after ``timeout_s``."""
    plan, path = _compiled(program, strategy)
    values = bind_args(plan.strategy(), dict(args or {}), where="args")
    watch: RecordingBackend = recording(_backend(backend))
    root = Budget(budget, None, "run")
    trace: list[TraceRecord] = []
    expects: list[ExpectOutcome] = []
    steps: list[StepRecord] = []
    options = RunOptions(seed=seed, sequential=sequential, allow_verifier=allow_verifier, timeout_s=timeout_s,
                         concurrency=concurrency, retry=TEST_RETRY, trace=trace.append,
                         expect=expects.append, observe=lambda r: steps.append(_frozen(r)))

    async def main() -> RunResult:
        async with watch:
            return await run_plan(plan, watch, values, options, root)

    result = anyio.run(main)
    return StrategyResult(result, plan, root, watch, trace, expects, steps, values, budget, path)


# ---- the first kit's runner ----


@dataclass
class CheckedRun:
    """A finished run with what is needed to check it: the result, the root of its budget tree
    and the completion tokens the backend reported (counted beside the runtime, not by it)."""

    result: RunResult
    root: Budget
    backend: RecordingBackend


def run_on(plan: P.Plan, backend: Backend, args: Mapping[str, Any], *, seed: int = 0,
           budget: int | None = None, **options: Any) -> CheckedRun:
    """Run `plan` (its entry strategy) on `backend` with `args`, parameters' defaults filling in
    the rest; `budget` caps the whole run; `options` go to `RunOptions` (a 120 s timeout by
    default, so a hang fails the test with a message instead of stalling it).  Unlike
    `run_strategy`, `args` are not checked against the parameters."""
    options.setdefault("timeout_s", 120.0)
    watch: RecordingBackend = RecordingBackend(backend)
    root = Budget(budget, None, "run")
    values = {p.name: p.default for p in plan.strategy().params if not p.required}
    values.update(args)

    async def main() -> RunResult:
        async with watch:
            return await run_plan(plan, watch, values, RunOptions(seed=seed, **options), root)

    return CheckedRun(anyio.run(main), root, watch)


def assert_budgets(run: CheckedRun, plan: P.Plan | None = None) -> None:
    """Fail unless, at every budget level (run, strategy, call, step invocation), the tokens
    spent stayed within the limit, nothing is left reserved, and the tokens the backend reported
    equal the tokens the budget tree recorded and the run reported."""
    problems = run.root.violations()
    assert not problems, "budget invariant broken: " + "; ".join(problems)
    reported, spent, usage = run.backend.reported, run.root.spent, run.result.usage.completion_tokens
    assert reported == spent == usage, f"backend reported {reported}, budgets recorded {spent}, run says {usage}"
    cap = plan.strategy().budget if plan is not None else None
    if cap is not None:
        assert usage <= cap, f"{usage} tokens > strategy budget {cap}"
