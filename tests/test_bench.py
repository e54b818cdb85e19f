"""`ttc bench`, the command: parsing the sweep, the table, JSON and plot, and the one-line errors
for bad sweeps and ungradable datasets, worded with the flags the user typed.  The engine,
`ttcdsl.harness.curves`, is tested in tests/test_curves.py."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ttcdsl.cli import main
from ttcdsl.commands._options import harness_flags
from ttcdsl.commands.bench import parse_sweep
from ttcdsl.compiler import compile_file
from ttcdsl.errors import UsageError
from ttcdsl.harness.curves import BenchProgram, bench_points, check_dataset, repeat_seed
from ttcdsl.harness.dataset import Item

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
    with pytest.raises(UsageError) as info, harness_flags():
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
    with pytest.raises(UsageError, match="no line has an \"answer\" field, so accuracy cannot be measured"), harness_flags():
        check_dataset(points, bare, {}, "n", "in.jsonl")
    mixed = [Item("a", 1, {"question": "q", "answer": "1"}), Item("b", 2, {"question": "r"})]
    with pytest.raises(UsageError, match=r"^--input in.jsonl:2: item 'b' has no \"answer\" field"), harness_flags():
        check_dataset(points, mixed, {}, "n", "in.jsonl")
    unfit = [Item("a", 1, {"prompt": "q", "answer": "1"})]
    with pytest.raises(UsageError, match=r"--input line 1 \(id a\), self_consistency: .*needs question"), harness_flags():
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


def test_json_has_intervals_over_items_paired_comparisons_metrics_and_x_axes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out_json = tmp_path / "b.json"
    assert main(["bench", SC, "--input", DATA, "--limit", "10", "--sim-task", TASK, "--sweep", "n=1,5",
                 "--seed", "3", "--x", "prefill", "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "prefill+dec/q" in captured.out and "Δ vs baseline" in captured.out and "pass@k" in captured.out
    data = json.loads(out_json.read_text())
    assert data["x_axis"] == "prefill" and set(data["x_axes"]) == {"completion", "scored", "prefill", "wall"}
    one, five = data["points"]
    lo, hi = five["metrics"]["accuracy_ci95"]
    assert lo <= five["accuracy"] <= hi and hi - lo > 0.2  # 10 items: a wide interval, even with 1 repeat
    m = five["metrics"]
    assert m["pass_at_k"] >= m["majority_at_k"] - 1e-9 and m["pass_at_k"] >= m["single_sample_accuracy"]
    assert m["tokens_p90"] >= m["tokens_mean"] * 0.5 and m["samples_per_item"] == 5
    assert one["metrics"]["single_sample_accuracy"] == one["accuracy"]  # one sample, one vote
    assert five["x"]["prefill"] >= five["x"]["completion"] == five["completion_tokens_per_item"]
    assert len(five["repeats"][0]["outcomes"]) == 10
    [comparison] = data["comparisons"]
    assert (comparison["point"], comparison["baseline"]) == ("self_consistency n=5", "self_consistency n=1")
    assert comparison["items"] == 10
    assert abs(comparison["diff"] - (five["accuracy"] - one["accuracy"])) < 1e-9
    lo, hi = comparison["diff_ci95"]
    assert lo <= comparison["diff"] <= hi and 0 < comparison["p_value"] <= 1


def test_bench_json_records_provenance_per_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "b.json"
    assert main(["bench", SC, "--input", DATA, "--limit", "2", "--sim-task", TASK, "--seed", "4",
                 "--arg", "n=1", "--json", str(out_json)]) == 0
    [facts] = json.loads(out_json.read_text())["provenance"]["programs"]
    assert facts["program"]["path"] == SC and facts["strategy"] == "self_consistency"
    assert (facts["backend"], facts["seed"], facts["args"]) == ("sim", 4, {"n": "1"})


def test_bench_json_is_written_after_every_pass_and_resume_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ttcdsl.commands.bench as bench_cmd

    out_json = tmp_path / "b.json"
    base = ["bench", SC, "--input", DATA, "--limit", "3", "--sim-task", TASK, "--seed", "2",
            "--json", str(out_json)]
    writes: list[int] = []
    save = bench_cmd._save

    def counting(path: str | None, report: Any) -> None:
        writes.append(sum(len(r.repeats) for r in report.results))
        save(path, report)

    monkeypatch.setattr(bench_cmd, "_save", counting)
    assert main([*base, "--sweep", "n=1,2"]) == 0
    assert writes[:2] == [1, 2]  # one file per finished pass, before the end
    first = json.loads(out_json.read_text())
    capsys.readouterr()
    assert main([*base, "--sweep", "n=1,2,3", "--resume"]) == 0
    assert "2 pass(es) already there are kept" in capsys.readouterr().err
    second = json.loads(out_json.read_text())
    assert [p["value"] for p in second["points"]] == [1, 2, 3]
    for old, new in zip(first["points"], second["points"]):
        assert new["repeats"] == old["repeats"]  # kept, not re-run (wall times included)
    assert "--resume needs --json OUT.json" in _error([*base[:-2], "--resume"], capsys)


def test_empty_results_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.ttc"
    cut.write_text('strategy cut(question: text) {\n'
                   '    return sample 2 from "Problem: {question}\\n" with max_tokens = 3 | vote on number\n}\n')
    assert main(["bench", str(cut), "--input", DATA, "--limit", "2", "--sim-task", TASK]) == 0
    assert "warning: cut: 2 of 2 runs gave no answer (graded wrong)" in capsys.readouterr().err


# ---- deadlines: --timeout the whole bench, --item-timeout each item's run (as `ttc run`) ----

# With a budget of 40 tokens, `passes` beyond it spin without tokens: a run as long as one likes.
SPIN = """
strategy spin(question: text, passes: int = 0) {
    budget 40 tokens
    b = sample 1 from question with max_tokens = 40
    repeat passes {
        c = sample 1 from question with max_tokens = 40
    }
    return vote b on number
}
"""


def _spin(tmp_path: Path) -> str:
    path = tmp_path / "spin.ttc"
    path.write_text(SPIN)
    return str(path)


def test_item_timeout_stops_the_bench_at_the_slow_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", _spin(tmp_path), "--input", _small_dataset(tmp_path, 1), "--sim-task", TASK,
            "--arg", f"passes={10**9}", "--item-timeout", "0.3"]
    t0 = time.monotonic()
    assert main(argv) == 1
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ttc: error: bench stopped: ") and err[-1].endswith(
        "the run timed out after 0.3 s (raise --item-timeout)"), err


def test_timeout_limits_the_whole_bench_and_says_what_was_kept(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    argv = ["bench", _spin(tmp_path), "--input", _small_dataset(tmp_path, 2), "--sim-task", TASK,
            "--sweep", f"passes=0,{10**9}", "--json", str(out), "--timeout", "2"]
    t0 = time.monotonic()
    assert main(argv) == 1
    assert time.monotonic() - t0 < 12
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"ttc: error: the bench timed out after 2 s (raise --timeout); the 1 finished "
                       f"pass(es) are in {out} (--resume continues)"), err
    assert [p["value"] for p in json.loads(out.read_text())["points"]] == [0]
