"""What `ttc test` runs: a strategy over generated cases, checked, with a reproduction on failure.

A *case* is one run: either the simulator on a generated task (`strategies.sim_tasks`), asked
one of its questions, or an adversarial scripted model (`strategies.backend_behaviours`), with a
run seed.  Each run is checked with `check_invariants`, which includes the file's `expect`
statements; a run that fails with an error fails the case too.  Hypothesis draws the cases
(derandomized by the given seed, no example database: the same command tries the same cases
everywhere) and shrinks a failing one; the shrunk case is written to disk as something `ttc run`
can run again: the task file for a simulated case, a `--record` file of the run for a scripted
one (replayed with `--backend replay`).

`explore(...)` returns a `Report`; the command prints it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ttcdsl import plan as P
from ttcdsl.args import bind_args
from ttcdsl.errors import TTCError, UsageError
from ttcdsl.runtime.backends.replay import ReplayBackend, record_to
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim.task import SimTask
from ttcdsl.testing import strategies as S
from ttcdsl.testing.invariants import violations
from ttcdsl.testing.running import TEST_RETRY, run_strategy, sim_backend

__all__ = ["Case", "Report", "check_one", "explore", "question_param"]

SCRIPTED_QUESTION = "What is 2 + 2?"


@dataclass(frozen=True)
class Case:
    """One generated run: a task and the index of its question, or a scripted behaviour."""

    seed: int
    task: SimTask | None = None
    problem: int = 0
    script: Script | None = None

    def question(self) -> str:
        return self.task.problems[self.problem].question if self.task is not None else SCRIPTED_QUESTION

    def describe(self) -> str:
        if self.task is not None:
            p = self.task.problems[self.problem]
            return (f"simulated task ({len(self.task.problems)} problem(s)), question {p.question!r}, "
                    f"answers {p.answers}, steps {list(p.steps)}, prm_noise {p.prm_noise:g}, seed {self.seed}")
        s = self.script
        assert s is not None
        parts = [f"text {S.describe_text(s)}", f"chaos {s.chaos}" if s.chaos is not None else "no chaos",
                 f"a transient error every {s.transient_every} requests" if s.transient_every else "no errors",
                 f"latency {s.latency_s * 1000:g} ms", f"reward bias {s.reward_bias:+.3f}"]
        return f"adversarial scripted model ({', '.join(parts)}), seed {self.seed}"


@dataclass
class Report:
    """The outcome: examples run, and for a failure the shrunk case, what it violated and the
    files and commands that reproduce it."""

    strategy: str
    examples: int = 0
    simulated: int = 0
    scripted: int = 0
    expects: int = 0
    case: Case | None = None
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.case is None


def question_param(strategy: P.StrategyPlan) -> str:
    """The parameter a case's question goes to: the first required text parameter."""
    for p in strategy.params:
        if p.type == "text" and p.required:
            return p.name
    raise UsageError(
        f"ttc test: strategy '{strategy.name}' has no required text parameter to ask a question with"
    )


def _cases(kind: str) -> st.SearchStrategy[Case]:
    if kind == "sim":
        return S.sim_tasks().flatmap(lambda task: st.builds(
            Case, seed=S.seeds(), task=st.just(task), problem=st.integers(0, len(task.problems) - 1)))
    return st.builds(Case, seed=S.seeds(), script=S.backend_behaviours())


def _shares(examples: int, backends: tuple[str, ...]) -> list[tuple[str, int]]:
    """Examples per kind of case: two thirds simulated, a third adversarial, when both run."""
    if len(backends) == 1:
        return [(backends[0], examples)]
    sim = max(1, (2 * examples + 2) // 3)
    return [("sim", sim), ("scripted", examples - sim)] if examples > sim else [("sim", sim)]


def _check(plan: P.Plan, given: Mapping[str, Any], qname: str, case: Case, allow_verifier: bool) -> list[str]:
    backend = sim_backend(case.task) if case.task is not None else ScriptedBackend(case.script or Script())
    try:
        result = run_strategy(plan, args={**given, qname: case.question()}, backend=backend, seed=case.seed,
                              allow_verifier=allow_verifier)
    except TTCError as exc:
        return [f"the run failed: {exc}"]
    return violations(result)


def explore(plan: P.Plan, file: str, given: Mapping[str, str], *, examples: int = 30, seed: int = 0,
            out: str = "ttc-test-failure", backends: tuple[str, ...] = ("sim", "scripted"),
            allow_verifier: bool = False) -> Report:
    """Run `plan`'s entry strategy on `examples` generated cases (see the module doc)."""
    strategy = plan.strategy()
    qname = question_param(strategy)
    bind_args(strategy, {**given, qname: SCRIPTED_QUESTION})  # every other parameter is given or defaulted
    report = Report(plan.entry, expects=_count_expects(plan))
    for kind, count in _shares(examples, backends):
        failing = _phase(plan, given, qname, kind, count, seed, allow_verifier, report)
        if failing is not None:
            report.case, report.problems = failing
            _reproduce(report, plan, file, given, qname, out, allow_verifier)
            break
    return report


def _phase(plan: P.Plan, given: Mapping[str, Any], qname: str, kind: str, examples: int, seed: int,
           allow_verifier: bool, report: Report) -> tuple[Case, list[str]] | None:
    """Run `examples` cases of one kind; the shrunk failing case and its problems, or None."""
    failing: list[tuple[Case, list[str]]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              # a case is a whole run of the strategy: slow draws are the runs, not the generators
              suppress_health_check=[HealthCheck.too_slow])
    @hypothesis.given(case=_cases(kind))
    def run(case: Case) -> None:
        report.examples += 1
        if kind == "sim":
            report.simulated += 1
        else:
            report.scripted += 1
        problems = _check(plan, given, qname, case, allow_verifier)
        if problems:
            failing.append((case, problems))
            raise AssertionError(problems[0])

    with contextlib.suppress(AssertionError):  # the failing cases are in `failing`
        run()
    return failing[-1] if failing else None  # hypothesis runs the shrunk case last


def _count_expects(plan: P.Plan) -> int:
    def count(body: list[P.Stmt]) -> int:
        n = 0
        for st_ in body:
            if isinstance(st_, P.Expect):
                n += 1
            elif isinstance(st_, P.Repeat):
                n += count(st_.body)
            elif isinstance(st_, P.If):
                n += count(st_.then) + count(st_.orelse)
        return n

    return sum(count(s.body) for s in plan.strategies.values())


def _reproduce(report: Report, plan: P.Plan, file: str, given: Mapping[str, str], qname: str, out: str,
               allow_verifier: bool) -> None:
    case = report.case
    assert case is not None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    args = [a for k, v in {**given, qname: case.question()}.items() for a in ("--arg", f"{k}={v}")]
    head = ["ttc", "run", file, "--strategy", plan.entry]
    flags = ["--allow-verifier"] if allow_verifier else []
    if case.task is not None:
        task = folder / "task.json"
        task.write_text(json.dumps(S.task_dict(case.task), indent=2) + "\n", encoding="utf-8")
        report.files.append(str(task))
        backend = ["--backend", "sim", "--sim-task", str(task)]
    else:
        replay = folder / "replay.jsonl"
        _record_scripted(plan, {**given, qname: case.question()}, case, str(replay), allow_verifier)
        report.files.append(str(replay))
        backend = ["--backend", "replay", "--replay", str(replay)]
    tail = [*backend, "--seed", str(case.seed), *args, *flags]
    report.commands = [shlex.join([*head, *tail]), shlex.join(["ttc", "test", file, "--strategy", plan.entry, *tail])]


def _record_scripted(plan: P.Plan, args: Mapping[str, Any], case: Case, path: str, allow_verifier: bool) -> None:
    """Run the scripted case once more, recording its traffic to `path` for `--backend replay`."""
    values = bind_args(plan.strategy(), args)
    backend = record_to(ScriptedBackend(case.script or Script()), path)
    options = RunOptions(seed=case.seed, retry=TEST_RETRY, allow_verifier=allow_verifier, timeout_s=120.0)

    async def main() -> None:
        async with backend:
            with contextlib.suppress(TTCError):  # a failing run is what is being reproduced
                await run_plan(plan, backend, values, options)

    anyio.run(main)


def check_one(plan: P.Plan, given: Mapping[str, str], *, seed: int, sim_task: str | None = None,
              replay: str | None = None, allow_verifier: bool = False) -> list[str]:
    """Check one run given on the command line (`ttc test ... --sim-task T` or `--replay R`)."""
    from ttcdsl.runtime.backends.sim import load_task

    backend = load_task(sim_task) if sim_task is not None else ReplayBackend(replay or "")
    try:
        result = run_strategy(plan, args=given, backend=backend, seed=seed, allow_verifier=allow_verifier)
    except TTCError as exc:
        return [f"the run failed: {exc}"]
    return violations(result)
