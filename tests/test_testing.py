"""The public testing kit: its strategies draw what they promise and its checks can fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl import testing as kit
from ttcdsl.compiler import compile_source
from ttcdsl.errors import UsageError
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.sim.task import SimTask
from ttcdsl.runtime.values import Answer, Branches
from ttcdsl.testing import (
    CheckedRun,
    assert_budgets,
    check_invariants,
    programs,
    run_on,
    run_strategy,
    scripts,
    sim_backend,
    sim_tasks,
    strategies,
)
from ttcdsl.testing.strategies import task_dict

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


# ---- the kit v2: run_strategy, check_invariants, strategies ----

BEAM = "programs/beam_search.ttc"
DEMO = "data/tasks/demo.json"
KIT = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=False)
def repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(("args", "message"), [
    ({"qusetion": "q"}, "strategy 'self_consistency' has no parameter 'qusetion'"),
    ({}, "strategy 'self_consistency' needs question (text)"),
    ({"question": "q", "n": "many"}, "args n='many': expected an int"),
])
def test_run_strategy_validates_arguments_like_ttc_run(repo: None, args: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        run_strategy("programs/self_consistency.ttc", args=args)


def test_run_strategy_exposes_what_a_property_needs(repo: None) -> None:
    task = json.loads(Path(DEMO).read_text())
    q = task["problems"][0]["question"]
    voted = run_strategy("programs/self_consistency.ttc", args={"question": q, "n": 4}, backend=task, seed=2)
    assert isinstance(voted.answer, Answer) and 0 <= voted.answer.agreement <= 1
    assert voted.branches == voted.answer.branches and all(b.finished for b in voted.branches)
    assert voted.usage.completion_tokens == sum(n.completion_tokens for n in voted.nodes) > 0
    assert [t.kind for t in voted.trace].count("generate") == 4
    assert repr(voted).startswith("StrategyResult(self_consistency: answer ")
    check_invariants(voted)
    beams = run_strategy(BEAM, args={"question": q, "width": 2, "branch": 2, "depth": 2},
                         backend=sim_backend(task), seed=2)
    assert isinstance(beams.value, Branches) and beams.answer is None and len(beams.branches) == 1
    assert {n.op for n in beams.nodes} >= {"sample", "expand", "score", "prune"}
    check_invariants(beams)


def test_run_strategy_takes_source_text_and_a_strategy_name() -> None:
    source = "strategy a(question: text) { return sample 1 from question }\nstrategy b(q: text) { return sample 2 from q }"
    assert len(run_strategy(source, "a", {"question": "x"}).branches) == 1
    assert len(run_strategy(source, args={"q": "x"}).branches) == 2


@KIT
@given(source=strategies.programs(), task=strategies.sim_tasks(), seed=strategies.seeds(),
       cap=st.none() | st.integers(1, 3000))
def test_every_invariant_holds_for_any_program_on_any_simulated_task(source: str, task: SimTask, seed: int,
                                                                       cap: int | None) -> None:
    result = run_strategy(source, args={"question": task.problems[0].question}, backend=task, seed=seed, budget=cap)
    check_invariants(result)


@KIT
@given(source=strategies.programs(), script=strategies.backend_behaviours(), seed=strategies.seeds())
def test_every_invariant_holds_for_any_program_on_an_adversarial_model(source: str, script: Script, seed: int) -> None:
    check_invariants(run_strategy(source, args={"question": "What is 2 + 2?"}, backend=script, seed=seed))


@given(strategies.sim_tasks(difficulty=(0.2, 0.4), spread=(2, 3), steps=(2, 3), prm_noise=(0.1, 0.2)))
def test_sim_tasks_validate_and_keep_their_bounds(task: SimTask) -> None:
    assert SimTask.from_dict(task_dict(task)).problems == task.problems
    for p in task.problems:
        assert 0.6 - 1e-9 <= p.p_correct <= 0.8 + 1e-9
        assert 2 <= len(p.answers) <= 3 and 2 <= p.steps[0] <= p.steps[1] <= 3 and 0.1 <= p.prm_noise <= 0.2


def test_strategy_arguments_are_checked() -> None:
    from hypothesis.errors import InvalidArgument

    for bad in ({"difficulty": (0.5, 0.1)}, {"spread": (0, 2)}, {"max_problems": 0}):
        with pytest.raises(InvalidArgument):
            strategies.sim_tasks(**bad).example()  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        strategies.backend_behaviours(max_latency_s=5)


def test_a_broken_prune_in_the_runtime_is_caught(repo: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real = agg.prune
    args = {"question": "What is 17 + 25?", "width": 2, "branch": 2, "depth": 2}
    monkeypatch.setattr(agg, "prune", lambda b, k, by="score", per="all": list(reversed(real(b, k, by, per))))
    with pytest.raises(AssertionError, match="the kept branches are not in order by score"):
        check_invariants(run_strategy(BEAM, args=args, backend=load_demo(), seed=1))
    monkeypatch.setattr(agg, "prune", lambda b, k, by="score", per="all": real(b, k + 1, by, per))
    with pytest.raises(AssertionError, match="kept 3 of 4 branches, keep 2 per all means 2"):
        check_invariants(run_strategy(BEAM, args=args, backend=load_demo(), seed=1))


def test_a_backend_that_hides_tokens_and_a_wrong_budget_tree_are_caught() -> None:
    class Hiding(ScriptedBackend):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            result = await super().generate(request)
            result.completion_tokens = max(0, len(result.output_ids) - 1)
            return result

    source = "strategy s(question: text) { return sample 3 from question with max_tokens = 40 }"
    with pytest.raises(AssertionError, match=r"returned \d+ tokens but reported \d+ completion tokens"):
        check_invariants(run_strategy(source, args={"question": "q"}, backend=Hiding()))
    result = run_strategy(source, args={"question": "q"})
    check_invariants(result)
    result.root.limit = result.root.spent - 1
    result.result.usage.requests += 1
    with pytest.raises(AssertionError, match="2 invariants violated") as info:
        check_invariants(result)
    assert "budget: run: spent" in str(info.value) and "usage: the run's totals" in str(info.value)


def test_a_strategy_whose_prune_drops_every_finished_branch_is_caught_and_shrunk() -> None:
    source = """
    strategy my_beam(question: text, width: int = 2) {
        p = "{question}\\nSolve step by step; separate steps with a blank line.\\n"
        beams = sample width from p with step = "\\n\\n", max_tokens = 64
        repeat 6 until finished(beams) {
            beams = expand beams by 2 with step = "\\n\\n", max_tokens = 64 | score with prm
            beams = prune active(beams) keep width by score
        }
        return vote beams
    }"""
    seen: list[SimTask] = []

    @settings(max_examples=20, deadline=None)
    @given(task=strategies.sim_tasks(steps=(1, 4)), seed=strategies.seeds())
    def always_answers(task: SimTask, seed: int) -> None:
        result = run_strategy(source, args={"question": task.problems[0].question}, backend=task, seed=seed)
        check_invariants(result)  # the runtime is fine: the strategy is wrong
        if result.answer is None or result.answer.value is None:
            seen.append(task)
            raise AssertionError("the search ended without an answer")

    with pytest.raises(AssertionError, match="without an answer"):
        always_answers()
    shrunk = seen[-1].problems
    assert len(shrunk) == 1 and shrunk[0].steps[0] == 1


def test_expect_failures_are_violations() -> None:
    source = """strategy s(question: text) {
        b = sample 2 from question with max_tokens = 8
        expect size(b) == 3
        return b
    }"""
    with pytest.raises(AssertionError, match=r"expect: <run_strategy>:3: `size\(b\) == 3` does not hold"):
        check_invariants(run_strategy(source, args={"question": "q"}))


def test_the_first_kits_names_still_import() -> None:
    for name in ("CheckedRun", "assert_budgets", "grammar_programs", "keywords", "modules", "programs",
                 "run_on", "scripts", "sim_tasks"):
        assert callable(getattr(kit, name))


def load_demo() -> SimTask:
    from ttcdsl.runtime.backends.sim import load_task

    return load_task(DEMO)
