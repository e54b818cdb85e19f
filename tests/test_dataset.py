"""Dataset mode (`ttcdsl.harness.dataset`, run by `ttc run --input`): validation, one line per
item, resume, kill -9 safety, accuracy; its messages in words, and on the command line in flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from ttcdsl.cli import main
from ttcdsl.compiler import compile_file
from ttcdsl.errors import UsageError
from ttcdsl.harness import HarnessError
from ttcdsl.harness.dataset import Item, is_correct, read_items, run_dataset
from ttcdsl.runtime.aggregate import extract
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.executor import RunOptions
from ttcdsl.runtime.sim import load_task
from ttcdsl.runtime.values import Answer, Branch, Branches

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "data" / "tasks" / "demo.json"
SC = REPO / "programs" / "self_consistency.ttc"


def write_input(path: Path, n: int = 6) -> list[dict[str, str]]:
    problems = json.loads(TASK.read_text())["problems"]
    rows = [{"id": f"q{i}", "question": problems[i % len(problems)]["question"],
             "answer": problems[i % len(problems)]["answer"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run_cli(*args: str) -> int:
    return main(["run", str(SC), "--sim-task", str(TASK), "--seed", "5", "--arg", "n=3", *args])


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_every_item_is_written_once_with_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp)
    assert run_cli("--input", str(inp), "--output", str(out)) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == [f"q{i}" for i in range(6)]
    for x in lines:
        assert set(x) >= {"id", "result", "usage", "nodes", "wall_s", "answer", "correct"}
        assert x["correct"] == (x["result"]["value"] == x["answer"])
    acc = sum(x["correct"] for x in lines)
    assert f"accuracy: {acc}/6 = {acc / 6:.3f}" in capsys.readouterr().out


def test_resume_skips_done_ids_and_never_duplicates(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 5)
    partial = tmp_path / "first3.jsonl"
    partial.write_text("".join(inp.read_text().splitlines(keepends=True)[:3]))
    assert run_cli("--input", str(partial), "--output", str(out)) == 0
    first = out.read_text()
    assert run_cli("--input", str(inp), "--output", str(out), "--resume") == 0
    assert out.read_text().startswith(first)
    assert sorted(ids(out)) == [f"q{i}" for i in range(5)]


def test_existing_output_without_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 1)
    out.write_text('{"id": "x"}\n')
    assert run_cli("--input", str(inp), "--output", str(out)) == 2
    assert "already has results: pass --resume" in capsys.readouterr().err


def test_malformed_input_line_is_named_by_number(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "a"}\n\n{"id": 2, "question": \n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:3: not valid JSON"):
        read_items(bad)
    bad.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:2: expected a JSON object, got list"):
        read_items(bad)
    bad.write_text('{"id": 1}\n{"id": 1}\n')
    with pytest.raises(UsageError, match="id '1' already used on line 1"):
        read_items(bad)


def test_missing_parameter_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": "a", "prompt": "no question field"}\n')
    assert run_cli("--input", str(inp), "--output", str(out)) == 2
    assert "--input line 1 (id a)" in capsys.readouterr().err


def test_a_missing_input_file_is_named_by_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.jsonl"
    with pytest.raises(HarnessError, match=f"^the input file {missing}: no such file$"):
        read_items(missing)
    assert run_cli("--input", str(missing), "--output", str(tmp_path / "out.jsonl")) == 2
    assert capsys.readouterr().err == f"ttc: error: --input {missing}: no such file\n"


def _run(items: list[Item], out: Path, resume: bool = False) -> None:
    async def go() -> None:
        async with SimBackend(load_task(TASK)) as backend:
            await run_dataset(compile_file(SC).plan, backend, items, out, given={"n": "2"},
                              options=RunOptions(seed=1), resume=resume)

    anyio.run(go)


def test_the_engine_names_the_output_and_the_lines_in_words(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x"}\n')
    with pytest.raises(HarnessError) as info:
        _run([Item("a", 1, {"question": "q"})], out)
    assert str(info.value) == (f"the output file {out} already has results: pass resume=True to "
                               "continue it, or remove it")
    with pytest.raises(HarnessError, match=r"^the input file, line 4 \(id b\): strategy 'self_consistency' needs question"):
        _run([Item("b", 4, {"prompt": "no question"})], out, resume=True)
    out.write_text("not json\n")
    with pytest.raises(HarnessError, match=f"^the output file {out}:1: not a ttc result line; cannot resume into it$"):
        _run([Item("a", 1, {"question": "q"})], out, resume=True)


def test_torn_last_line_is_cut_before_resuming(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 3)
    assert run_cli("--input", str(inp), "--output", str(out)) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    assert run_cli("--input", str(inp), "--output", str(out), "--resume") == 0
    assert sorted(ids(out)) == ["q0", "q1", "q2"]


def test_is_correct_normalises_numbers() -> None:
    a = Answer(value="1,000", support=1, agreement=1, votes={}, branches=[])
    assert is_correct(a, "1000") and is_correct(a, 1000) and not is_correct(a, "100")
    b = Branches([Branch(id="x", root="x", parent=None, prompt="", prompt_ids=(), steps=["so 7.0"])])
    assert extract("so 7.0", "number") == "7" and is_correct(b, "7")


def _arith_input(path: Path, n: int) -> None:
    rows = [json.loads(x) for x in (REPO / "data" / "arith.jsonl").read_text().splitlines()[:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


KILL_CASES = {
    # 40 chains per item, two items at a time: slow enough that the kill lands mid-run.
    "sim": ([str(SC), "--sim-task", str(TASK), "--arg", "n=40", "--items", "2"], write_input),
    "local": ([str(REPO / "programs" / "arith_vote.ttc"), "--backend", "local", "--arg", "n=4"], _arith_input),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param("sim"), pytest.param("local", marks=pytest.mark.local)])
def test_killed_run_loses_no_finished_item_and_resume_completes(case: str, tmp_path: Path) -> None:
    """SIGKILL a dataset run mid-way, resume it: every id exactly once."""
    if case == "local":
        pytest.importorskip("llama_cpp", reason="the local extra is not installed")
    program_args, make_input = KILL_CASES[case]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    make_input(inp, 40 if case == "sim" else 12)
    expected = sorted(str(json.loads(x)["id"]) for x in inp.read_text().splitlines())
    cmd = [sys.executable, "-m", "ttcdsl.cli", "run", *program_args, "--seed", "5",
           "--input", str(inp), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done_before = len(ids(out))
    assert 0 < done_before < len(expected), "the kill should land mid-run"
    resume = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert resume.returncode == 0, resume.stderr
    final = ids(out)
    assert sorted(final) == expected
    assert len(final) == len(set(final))


def test_lines_carry_provenance_and_limit_takes_the_first_items(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 5)
    assert run_cli("--input", str(inp), "--output", str(out), "--limit", "2") == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == ["q0", "q1"]
    for x in lines:
        facts = x["provenance"]
        assert facts["strategy"] == "self_consistency" and facts["backend"] == "sim" and facts["run_seed"] == 5
        assert facts["seed"] == x["seed"] and facts["program"]["sha256"]


def test_accuracy_after_resume_counts_every_line_of_the_output(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 5)
    assert run_cli("--input", str(inp), "--output", str(out), "--limit", "3") == 0
    capsys.readouterr()
    assert run_cli("--input", str(inp), "--output", str(out), "--resume") == 0
    printed = capsys.readouterr().out
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    right = sum(x["correct"] for x in lines)
    assert f"accuracy: {right}/5 = {right / 5:.3f} over every line of {out} (this run: " in printed
    assert "/2 = " in printed


def test_limit_outside_dataset_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--arg", "question=What is 17 + 25?", "--limit", "2") == 2
    assert "--limit only applies to dataset mode" in capsys.readouterr().err
