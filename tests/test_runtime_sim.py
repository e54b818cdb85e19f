"""The runtime on the simulator: exact statistics, executor agreement, budgets on any program."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.runtime.backends.recording import RecordingBackend
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import load_task
from ttcdsl.runtime.values import Answer, Branches, RunResult
from ttcdsl.testing import programs

REPO = Path(__file__).resolve().parents[1]
TASK = load_task(REPO / "data" / "tasks" / "demo.json")
QUESTION = TASK.problems[0].question  # "What is 17 + 25?": 42 (0.45), 32 (0.35), 41 (0.20)


def run(plan: Any, args: dict[str, Any], root: Budget | None = None, backend: Any = None, **opts: Any) -> RunResult:
    backend = backend or SimBackend(TASK)
    opts.setdefault("timeout_s", 120.0)  # a hang fails with a message instead of stalling
    values = {p.name: p.default for p in plan.strategy().params}
    values.update(args)

    async def main() -> RunResult:
        async with backend:
            return await run_plan(plan, backend, values, RunOptions(**opts), root)

    return anyio.run(main)


def majority_probability(dist: dict[str, float], n: int, winner: str) -> float:
    """P(`winner` wins a plurality vote of n i.i.d. draws), ties split evenly (the earliest
    supporter wins, and by exchangeability each tied value is equally likely to come first)."""
    values = list(dist)
    total = 0.0
    for counts in itertools.product(range(n + 1), repeat=len(values)):
        if sum(counts) != n:
            continue
        prob = math.factorial(n)
        for v, c in zip(values, counts):
            prob *= dist[v] ** c / math.factorial(c)
        top = max(counts)
        tied = [v for v, c in zip(values, counts) if c == top]
        if winner in tied:
            total += prob / len(tied)
    return total


def test_self_consistency_matches_the_exact_majority_vote_probability() -> None:
    plan = compile_file(REPO / "programs" / "self_consistency.ttc").plan
    n, runs = 5, 400
    wins = sum(
        run(plan, {"question": QUESTION, "n": n}, seed=seed).value.value == "42" for seed in range(runs)
    )
    exact = majority_probability(TASK.problems[0].answers, n, "42")
    sigma = math.sqrt(exact * (1 - exact) / runs)
    assert abs(wins / runs - exact) < 4 * sigma, (wins / runs, exact)


def test_majority_probability_reference_values() -> None:
    assert majority_probability({"a": 1.0}, 3, "a") == 1.0
    assert abs(majority_probability({"a": 0.5, "b": 0.5}, 2, "a") - 0.5) < 1e-12


def _summary(r: RunResult) -> Any:
    """Everything a run decides.  Cached tokens are left out: they are the server's cache state,
    which legitimately depends on which of two concurrent requests for one prefix came first."""
    v = r.value
    if isinstance(v, Branches):
        v = [(b.id, b.text, b.score, b.finish_reason) for b in v.items]
    elif isinstance(v, Answer):
        v = (v.value, v.agreement, v.votes)
    u = r.usage
    return (v, (u.completion_tokens, u.prompt_tokens, u.requests),
            [(n.id, n.completion_tokens, n.prompt_tokens, n.requests, n.calls) for n in r.nodes])


ORDER_DEPENDENT = {"early_stop_vote.ttc"}


@pytest.mark.parametrize("program", sorted(p.name for p in (REPO / "programs").glob("*.ttc") if p.name != "arith_vote.ttc"))
def test_reference_and_concurrent_executors_agree_on_the_sim(program: str) -> None:
    plan = compile_file(REPO / "programs" / program).plan
    args = {"question": QUESTION}
    small = {"n": 4, "depth": 3, "width": 2, "branch": 2, "subtrees": 2, "rounds": 2, "k": 2}
    args.update({k: v for k, v in small.items() if any(p.name == k for p in plan.strategy().params)})
    # An anytime vote counts branches in the order they finish, which concurrency makes a matter
    # of timing (tests/test_anytime.py pins it against the offline rule in that order); one
    # request in flight at a time makes the order the forks' own, as in the reference.
    opts: dict[str, Any] = {"concurrency": 1} if program in ORDER_DEPENDENT else {}
    # The thinking programs need tags, which the demo task (no reasoning problems) does not give.
    opts["think_tags"] = ("<think>", "</think>")
    concurrent = run(plan, args, seed=11, **opts)
    sequential = run(plan, args, seed=11, sequential=True, think_tags=opts["think_tags"])
    assert _summary(concurrent) == _summary(sequential)


def test_forks_hit_the_cache_after_the_warm_up() -> None:
    plan = compile_file(REPO / "programs" / "self_consistency.ttc").plan
    backend = RecordingBackend(SimBackend(TASK))
    r = run(plan, {"question": QUESTION, "n": 6}, backend=backend, seed=3)
    prompt = len(backend.warms[0])
    assert [res.cached_tokens for _, res in backend.calls] == [prompt - 1] * 6
    assert r.usage.cached_tokens >= 6 * (prompt - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(source=programs(), problem=st.sampled_from(TASK.problems), seed=st.integers(0, 2**16))
def test_budgets_hold_for_any_generated_program_on_the_sim(source: str, problem: Any, seed: int) -> None:
    plan = compile_source(source, "gen.ttc").plan
    root = Budget(None)
    backend = RecordingBackend(SimBackend(TASK))
    r = run(plan, {"question": problem.question}, root=root, backend=backend, seed=seed)
    assert root.violations() == []
    assert backend.reported == root.spent == r.usage.completion_tokens
    entry = plan.strategy()
    if entry.budget is not None:
        assert r.usage.completion_tokens <= entry.budget


def test_concurrent_calls_warming_one_prompt_prefill_it_once() -> None:
    src = """
strategy sc(question: text) {
    return vote (sample 3 from "Q: {question}\\n" with max_tokens = 40) on number
}
strategy both(question: text) {
    a = sc(question)
    b = sc(question)
    return vote (sample 2 from "{a} or {b}" with max_tokens = 5) on number
}
"""
    plan = compile_source(src, "t.ttc").plan
    concurrent, sequential = SimBackend(TASK), SimBackend(TASK)
    run(plan, {"question": QUESTION}, backend=concurrent, seed=1)
    run(plan, {"question": QUESTION}, backend=sequential, seed=1, sequential=True)
    # One warm-up per sample invocation, charged deterministically ...
    assert concurrent.stats.warm_requests == sequential.stats.warm_requests == 3
    # ... and the second warm-up of the shared prompt waited for the first, so the server
    # prefilled exactly what the one-at-a-time reference made it prefill.
    assert concurrent.stats.prefill_tokens == sequential.stats.prefill_tokens
