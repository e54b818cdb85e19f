"""`ttcdsl.harness.curves` on the simulator: accuracy curves, seeds, points and notes, and its
messages, which name roles ("the sweep", "the input file") rather than flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.harness import HarnessError
from ttcdsl.harness.curves import BenchProgram, bench_points, check_dataset, repeat_seed, run_bench
from ttcdsl.harness.dataset import Item, run_dataset
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.executor import RunOptions
from ttcdsl.runtime.sim import load_task

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "math.json")
SC = str(REPO / "programs" / "self_consistency.ttc")

# A cheap program without an `n` parameter: one sample, answer by vote.
ONE_SHOT = """
strategy one_shot(question: text) {
    budget 1024 tokens
    return vote (sample 1 from "Problem: {question}\\n" with max_tokens = 512, temperature = 0.7) on number
}
"""


def _sc() -> BenchProgram:
    return BenchProgram("self_consistency", compile_file(SC).plan, SC)


def _items(problems: Any) -> list[Item]:
    return [Item(p.id, i + 1, {"id": p.id, "question": p.question, "answer": p.answer})
            for i, p in enumerate(problems)]


def _bench(points: Any, items: list[Item], seed: int, repeats: int = 1) -> Any:
    async def go() -> Any:
        async with SimBackend(load_task(TASK)) as backend:
            return await run_bench(points, backend, items, sweep="n", given={}, options=RunOptions(seed=seed),
                                   repeats=repeats)

    return anyio.run(go)


def test_self_consistency_accuracy_grows_with_n_where_the_right_answer_is_the_plurality() -> None:
    task = load_task(TASK)
    # Problems whose right answer leads every wrong one by at least 0.1: voting must help there.
    plural = [p for p in task.problems
              if p.p_correct - max(v for k, v in p.answers.items() if k != p.answer) >= 0.1]
    assert len(plural) >= 12
    points, notes = bench_points([_sc()], "n", ["1", "4", "16"], {})
    assert notes == [] and [pt.value for pt in points] == [1, 4, 16]
    results = _bench(points, _items(plural), seed=0, repeats=2)
    acc = [r.accuracy[0] for r in results]
    mean_p = sum(p.p_correct for p in plural) / len(plural)
    # One sample is right about as often as the task says; sixteen votes are right much more often.
    assert abs(acc[0] - mean_p) < 0.2
    assert acc[2] >= acc[0] + 0.15 and acc[2] >= 0.7
    assert acc[1] >= acc[0] - 0.05
    tokens = [r.tokens_per_item[0] for r in results]
    assert tokens[0] < tokens[1] < tokens[2]
    assert 3 < tokens[2] / tokens[1] < 5  # tokens scale with n


def test_one_repeat_reproduces_dataset_mode_with_the_same_seed(tmp_path: Path) -> None:
    task = load_task(TASK)
    items = _items(task.problems[:6])
    program = _sc()
    points, _ = bench_points([program], "n", ["3"], {})
    [result] = _bench(points, items, seed=11)

    async def dataset() -> Any:
        async with SimBackend(task) as backend:
            return await run_dataset(program.plan, backend, items, tmp_path / "out.jsonl", given={"n": "3"},
                                     options=RunOptions(seed=11))

    summary = anyio.run(dataset)
    [rep] = result.repeats
    assert rep.seed == 11 and rep.items == 6
    assert rep.correct == summary.correct
    assert rep.completion_tokens == summary.completion_tokens


def test_repeat_seeds_keep_the_run_seed_first_and_differ_after() -> None:
    seeds = [repeat_seed(7, r) for r in range(20)]
    assert seeds[0] == 7
    assert len(set(seeds)) == 20
    assert seeds == [repeat_seed(7, r) for r in range(20)]


def test_a_program_without_the_swept_parameter_runs_once_and_says_so() -> None:
    other = BenchProgram("one_shot", compile_source(ONE_SHOT).plan, "<one_shot>")
    points, notes = bench_points([_sc(), other], "n", ["2", "8"], {})
    assert [(p.program.label, p.value) for p in points] == [
        ("self_consistency", 2), ("self_consistency", 8), ("one_shot", None)]
    assert notes == ["one_shot has no parameter 'n': it runs once, with its defaults"]


@pytest.mark.parametrize(
    ("sweep", "values", "given", "message"),
    [
        ("k", ["1"], {}, "the sweep k: no program has a parameter 'k' (parameters: self_consistency: question, n)"),
        ("n", ["4", "many"], {}, "the sweep n='many': expected an int"),
        ("n", ["4"], {"n": "2"}, "the sweep n and the argument n=... both set 'n': drop one of them"),
        (None, [], {"width": "2"}, "the argument width: no program has a parameter 'width'"),
    ],
)
def test_bad_points_name_the_sweep_and_the_arguments_in_words(
    sweep: str | None, values: list[str], given: dict[str, str], message: str
) -> None:
    with pytest.raises(HarnessError) as info:
        bench_points([_sc()], sweep, values, given)
    assert str(info.value).startswith(message)
    assert "--" not in str(info.value)


def test_ungradable_datasets_name_the_input_file_in_words() -> None:
    points, _ = bench_points([_sc()], "n", ["1"], {})
    with pytest.raises(HarnessError, match=r"^the input file in.jsonl: no items to benchmark$"):
        check_dataset(points, [], {}, "n", "in.jsonl")
    mixed = [Item("a", 1, {"question": "q", "answer": "1"}), Item("b", 2, {"question": "r"})]
    with pytest.raises(HarnessError, match=r"^the input file in.jsonl:2: item 'b' has no \"answer\" field"):
        check_dataset(points, mixed, {}, "n", "in.jsonl")
    unfit = [Item("a", 1, {"prompt": "q", "answer": "1"})]
    with pytest.raises(HarnessError, match=r"^the input file, line 1 \(id a\), self_consistency: .*needs question"):
        check_dataset(points, unfit, {}, "n", "in.jsonl")


def test_repeats_below_one_are_refused_before_anything_runs() -> None:
    points, _ = bench_points([_sc()], "n", ["1"], {})
    with pytest.raises(HarnessError, match=r"^repeats must be >= 1, got 0$"):
        _bench(points, [], seed=0, repeats=0)


def test_configurations_share_random_draws_whatever_their_other_nodes() -> None:
    # The first round of adaptive voting (with a constant and a loop the plain program lacks) draws
    # exactly self-consistency's chains: seeds follow the generating steps, not node ids.
    adaptive = compile_file(str(REPO / "programs" / "adaptive_vote.ttc")).plan
    one_round = BenchProgram("adaptive", adaptive, "adaptive_vote.ttc")
    items = _items(load_task(TASK).problems[:8])
    sc_points, _ = bench_points([_sc()], "n", ["4"], {})
    ad_points, _ = bench_points([one_round], "rounds", ["1"], {})
    [sc] = _bench(sc_points, items, seed=3)

    async def go() -> Any:
        async with SimBackend(load_task(TASK)) as backend:
            return await run_bench(ad_points, backend, items, sweep="rounds", given={},
                                   options=RunOptions(seed=3))

    [ad] = anyio.run(go)
    def drawn(r: Any) -> dict[str, Any]:
        return {k: {f: v for f, v in o.to_json().items() if f != "wall_s"} for k, o in r.repeats[0].outcomes.items()}

    assert drawn(sc) == drawn(ad) and len(drawn(sc)) == 8
