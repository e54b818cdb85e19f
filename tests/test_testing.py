"""The public testing kit: its strategies draw what they promise and its checks can fail."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl.compiler import compile_source
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.sim.task import SimTask
from ttcdsl.testing import CheckedRun, assert_budgets, programs, run_on, scripts, sim_tasks

SLOW = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SLOW
@given(source=programs(), task=sim_tasks(), seed=st.integers(0, 2**20), run_cap=st.none() | st.integers(1, 3000))
def test_any_generated_program_on_any_simulated_task_keeps_every_budget(source: str, task: SimTask, seed: int,
                                                                        run_cap: int | None) -> None:
    plan = compile_source(source, "gen.ttc").plan
    run = run_on(plan, SimBackend(task), {"question": task.problems[0].question}, seed=seed, budget=run_cap)
    assert_budgets(run, plan)
    if run_cap is not None:
        assert run.result.usage.completion_tokens <= run_cap


@SLOW
@given(source=programs(), script=scripts(), seed=st.integers(0, 2**20))
def test_any_generated_program_on_a_misbehaving_model_keeps_every_budget(source: str, script: Script,
                                                                          seed: int) -> None:
    plan = compile_source(source, "gen.ttc").plan
    run = run_on(plan, ScriptedBackend(script), {"question": "What is 2 + 2?"}, seed=seed)
    assert_budgets(run, plan)


@given(sim_tasks())
def test_sim_tasks_are_valid_task_files(task: SimTask) -> None:
    data = {"problems": [{"id": p.id, "question": p.question, "answer": p.answer, "answers": p.answers,
                          "steps": list(p.steps), "step_tokens": list(p.step_tokens), "prm_noise": p.prm_noise}
                         for p in task.problems]}
    assert SimTask.from_dict(data).problems == task.problems


def test_assert_budgets_catches_a_run_that_overspent() -> None:
    plan = compile_source('strategy s(question: text) { return sample 2 from question with max_tokens = 5 }').plan
    run = run_on(plan, ScriptedBackend(), {"question": "q"})
    assert_budgets(run, plan)
    run.root.limit = run.root.spent - 1
    with pytest.raises(AssertionError, match="budget invariant broken: run: spent"):
        assert_budgets(run)
    bad = CheckedRun(run.result, run.root, run.backend)
    bad.root.limit = None
    bad.backend.reported += 1
    with pytest.raises(AssertionError, match="backend reported"):
        assert_budgets(bad)
