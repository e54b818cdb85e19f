"""`ttc bench` and its engine on the simulator: accuracy curves, seeds, the table, JSON and plot,
and the one-line errors for bad sweeps and ungradable datasets."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from ttcdsl.cli import main
from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.errors import UsageError
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.bench import (
    BenchProgram,
    bench_points,
    check_dataset,
    parse_sweep,
    repeat_seed,
    run_bench,
)
from ttcdsl.runtime.dataset import Item, run_dataset
from ttcdsl.runtime.executor import RunOptions
from ttcdsl.runtime.sim import load_task

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "math.json")
DATA = str(REPO / "data" / "sim_math.jsonl")
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
        ("k", ["1"], {}, "--sweep k: no program has a parameter 'k' (parameters: self_consistency: question, n)"),
        ("n", ["4", "many"], {}, "--sweep n='many': expected an int"),
        ("n", ["2.5"], {}, "--sweep n='2.5': expected an int"),
        ("n", ["4"], {"n": "2"}, "--sweep n and --arg n=... both set 'n': drop one of them"),
        (None, [], {"width": "2"}, "--arg width: no program has a parameter 'width'"),
    ],
)
def test_bad_sweeps_are_one_line_errors(sweep: str | None, values: list[str], given: dict[str, str],
                                        message: str) -> None:
    with pytest.raises(UsageError) as info:
        bench_points([_sc()], sweep, values, given)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n", "--sweep 'n': expected NAME=V1,V2,..."),
        ("=1,2", "--sweep '=1,2': expected NAME=V1,V2,..."),
        ("n=", "--sweep 'n=': expected a comma-separated list of values after 'n='"),
        ("n=1,,2", "--sweep 'n=1,,2': expected a comma-separated list"),
        ("n=1,2,1", "--sweep n: value '1' is listed twice"),
    ],
)
def test_malformed_sweep_text_is_rejected(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        parse_sweep(text)


def test_parse_sweep_keeps_the_order_given() -> None:
    assert parse_sweep("n = 16, 1,4") == ("n", ["16", "1", "4"])


def test_a_dataset_without_answers_cannot_be_benchmarked() -> None:
    points, _ = bench_points([_sc()], "n", ["1"], {})
    bare = [Item("a", 1, {"question": "What is 48 / 3?"})]
    with pytest.raises(UsageError, match="no line has an \"answer\" field, so accuracy cannot be measured"):
        check_dataset(points, bare, {}, "n", "in.jsonl")
    mixed = [Item("a", 1, {"question": "q", "answer": "1"}), Item("b", 2, {"question": "r"})]
    with pytest.raises(UsageError, match=r"^--input in.jsonl:2: item 'b' has no \"answer\" field"):
        check_dataset(points, mixed, {}, "n", "in.jsonl")
    unfit = [Item("a", 1, {"prompt": "q", "answer": "1"})]
    with pytest.raises(UsageError, match=r"--input line 1 \(id a\), self_consistency: .*needs question"):
        check_dataset(points, unfit, {}, "n", "in.jsonl")


# ---- the command line ----


def _small_dataset(tmp_path: Path, n: int = 4) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line for line in Path(DATA).read_text().splitlines(keepends=True)[:n]))
    return str(path)


def test_cli_prints_a_table_and_writes_json_and_a_png_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_shot = tmp_path / "one_shot.ttc"
    one_shot.write_text(ONE_SHOT)
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    status = main(["bench", SC, "--input", DATA, "--limit", "4", "--sim-task", TASK, "--sweep", "n=1,3",
                   "--repeats", "2", "--compare", str(one_shot), "--seed", "5",
                   "--json", str(out_json), "--plot", str(out_png)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "one_shot has no parameter 'n': it runs once" in captured.err
    lines = captured.out.splitlines()
    assert "4 items × 2 repeats, seed 5" in lines[0]
    header = next(line for line in lines if "accuracy" in line)
    for col in ("program", "n", "accuracy", "tokens/q", "req/q", "cached", "budget cut", "wall s"):
        assert col in header
    rows = [line for line in lines if "│" in line]
    assert len(rows) == 3  # n=1, n=3, one_shot
    assert rows[0].split("│")[0].strip() == "self_consistency" and rows[0].split("│")[1].strip() == "1"
    assert rows[1].split("│")[0].strip() == "" and rows[1].split("│")[1].strip() == "3"
    assert rows[2].split("│")[0].strip() == "one_shot" and rows[2].split("│")[1].strip() == "-"
    assert "±" in rows[0]

    data = json.loads(out_json.read_text())
    assert data["sweep"] == "n" and data["items"] == 4 and data["repeats"] == 2 and data["seed"] == 5
    assert [(p["program"], p["value"]) for p in data["points"]] == [
        ("self_consistency", 1), ("self_consistency", 3), ("one_shot", None)]
    point = data["points"][1]
    assert set(point) >= {"accuracy", "accuracy_stderr", "completion_tokens_per_item", "requests_per_item",
                          "cached_share", "budget_exhausted_share", "wall_s", "repeats"}
    assert [r["seed"] for r in point["repeats"]] == [5, repeat_seed(5, 1)]
    for r in point["repeats"]:
        assert r["items"] == 4 and 0 <= r["correct"] <= 4 and r["requests"] == 4 * 4  # warm-up + 3 forks
    assert point["requests_per_item"] == 4.0
    assert 0 <= point["accuracy"] <= 1 and point["accuracy_stderr"] is not None
    assert data["points"][2]["param"] is None

    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_without_sweep_runs_each_program_once_and_json_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", SC, "--input", _small_dataset(tmp_path, 2), "--sim-task", TASK, "--arg", "n=2",
                 "--json", "-"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # `--json -`: stdout is the JSON alone, the table goes to stderr
    assert "accuracy" in captured.err
    assert data["sweep"] is None and len(data["points"]) == 1
    assert data["points"][0]["accuracy_stderr"] is None


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors_are_one_line_and_come_before_any_request(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = _small_dataset(tmp_path)
    base = ["bench", SC, "--input", data, "--sim-task", TASK]
    assert "no program has a parameter 'width'" in _error([*base, "--sweep", "width=1,2"], capsys)
    assert "--sweep n='x': expected an int" in _error([*base, "--sweep", "n=1,x"], capsys)
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"id": "q", "question": "What is 48 / 3?"}\n')
    err = _error(["bench", SC, "--input", str(bare), "--sim-task", TASK, "--sweep", "n=1"], capsys)
    assert "accuracy cannot be measured" in err
    assert "folder" in _error([*base, "--plot", str(tmp_path / "missing" / "x.png")], capsys)


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    err = _error(["bench", SC, "--input", _small_dataset(tmp_path), "--sim-task", TASK, "--sweep", "n=1",
                  "--plot", str(tmp_path / "x.png")], capsys)
    assert "pip install 'ttcdsl[plot]'" in err
    assert not (tmp_path / "x.png").exists()
