"""The defining behaviour of the three sequential-scaling programs on the simulator's reasoning
mode (`programs/budget_forcing.ttc`, `think_then_vote.ttc`, `probe_exit.ttc`).

They need the simulator's reasoning mode (`ttcdsl.runtime.sim.reasoning` and the task file
data/tasks/math_reasoning.json, whose problems have thinking curves) and skip until it is there.
Each test runs a program over every problem of the task with a few seeds and asserts what the
program is for, on accuracy the thinking curves make exact in expectation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import anyio
import pytest

from ttcdsl.compiler import compile_file
from ttcdsl.runtime.backends.sim import SimBackend, load_task
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import Answer, RunResult

REPO = Path(__file__).resolve().parents[1]
TASK_FILE = REPO / "data" / "tasks" / "math_reasoning.json"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ttcdsl.runtime.sim.reasoning") is None or not TASK_FILE.exists(),
    reason="needs the simulator's reasoning mode (runtime/sim/reasoning.py, data/tasks/math_reasoning.json)",
)

SEEDS = (1, 2, 3)


def sweep(program: str, **args: Any) -> tuple[float, float, list[RunResult]]:
    """Accuracy and completion tokens per run of `program` over every problem and seed."""
    task = load_task(TASK_FILE)
    plan = compile_file(REPO / "programs" / program).plan
    defaults = {p.name: p.default for p in plan.strategy().params}
    results: list[RunResult] = []
    right = 0

    async def main() -> None:
        nonlocal right
        async with SimBackend(task) as backend:
            for problem in task.problems:
                for seed in SEEDS:
                    root = Budget(None)
                    values = defaults | args | {"question": problem.question}
                    r = await run_plan(plan, backend, values, RunOptions(seed=seed, timeout_s=120), root)
                    assert root.violations() == []
                    assert isinstance(r.value, Answer)
                    right += r.value.value == problem.answer
                    results.append(r)

    anyio.run(main)
    runs = len(results)
    return right / runs, sum(r.usage.completion_tokens for r in results) / runs, results


def test_budget_forcing_caps_thinking_and_accuracy_rises_with_the_cap() -> None:
    low, low_tokens, runs = sweep("budget_forcing.ttc", think=128)
    high, high_tokens, more = sweep("budget_forcing.ttc", think=768)
    for r in runs:
        assert r.usage.thinking_tokens <= 128
    for r in more:
        assert r.usage.thinking_tokens <= 768
    assert high > low + 0.1 and high_tokens > low_tokens


def test_budget_forcing_extends_a_chain_that_closes_early() -> None:
    # With the floor at the cap, every chain that closes before it is told to "Wait" and think on.
    _, _, forced = sweep("budget_forcing.ttc", think=1500, waits=2)
    _, _, free = sweep("budget_forcing.ttc", think=1500, waits=0)
    thought = sum(r.usage.thinking_tokens for r in forced)
    assert thought > sum(r.usage.thinking_tokens for r in free)
    assert sum(r.usage.injected_tokens > 0 for r in forced) > sum(r.usage.injected_tokens > 0 for r in free)


def test_think_then_vote_beats_one_chain_at_the_same_cap() -> None:
    one, _, _ = sweep("think_then_vote.ttc", n=1, think=512)
    many, _, runs = sweep("think_then_vote.ttc", n=5, think=512)
    assert many > one
    assert all(r.usage.thinking_tokens <= 5 * 512 for r in runs)


def test_probe_exit_stops_once_its_probes_agree() -> None:
    # Dynasor on the simulator's reasoning task: a chain that has not found the answer wavers,
    # so agreeing probes mark the moment it has.  Exiting there keeps the accuracy of the
    # best thinking cap on fewer tokens than that cap spends.
    accuracy, tokens, runs = sweep("probe_exit.ttc", chunk=128, chunks=16, k=3)
    caps = [sweep("budget_forcing.ttc", think=t, waits=0)[:2] for t in (512, 1024, 2048)]
    best_accuracy, best_tokens = max(caps)
    assert accuracy >= 0.9 * best_accuracy
    assert tokens < 0.85 * best_tokens
    assert all(r.usage.injected_tokens > 0 for r in runs)
    # Asking for fewer agreeing probes stops sooner.
    _, sooner, _ = sweep("probe_exit.ttc", chunk=128, chunks=16, k=2)
    assert sooner < tokens
