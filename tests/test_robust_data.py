"""Robustness of dataset mode and the files around a run: malformed, deep or huge JSON in task
files, dataset lines and resumed outputs; outputs that cannot be written (a directory, under a
file, the input itself, a full disk); `--trace` in dataset mode; per-item and whole-run timeouts;
and signals at random moments, after which no finished line is lost or written twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.cli import main
from ttcdsl.harness import HarnessError
from ttcdsl.harness.dataset import read_items

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "math.json")
SC = str(REPO / "programs" / "self_consistency.ttc")
QUESTIONS = ["What is 17 + 25?", "What is 38 + 47?", "What is 12 * 13?"]

# Each item spins through `passes` cheap passes (its budget is spent at once), so an item takes
# as long as its line says, without any I/O.
SPIN = """\
strategy spin(question: text, passes: int = 0) {
    budget 40 tokens
    b = sample 1 from question with max_tokens = 40
    repeat passes {
        c = sample 1 from question with max_tokens = 40
    }
    return vote b on number
}
"""


def write(path: Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def dataset(path: Path, passes: list[int]) -> str:
    lines = [json.dumps({"id": f"q{i}", "question": QUESTIONS[i % 3], "passes": n})
             for i, n in enumerate(passes)]
    return write(path, "\n".join(lines) + "\n")


def run_args(program: str, data: str, out: str, *extra: str) -> list[str]:
    return ["run", program, "--backend", "sim", "--sim-task", TASK, "--input", data,
            "--output", out, "--seed", "1", *extra]


def ids_in(path: Path) -> list[str]:
    if not path.exists():  # a signal before the output was opened
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


# ---- malformed JSON -----------------------------------------------------------------------------

json_like = st.one_of(
    st.text(alphabet='{}[]":,0123456789.-+eEtruefalsn \\\t', max_size=60),
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
    st.integers(4301, 6000).map(lambda d: '{"id": ' + "7" * d + "}"),
    st.builds(lambda k, v: json.dumps({k: v}), st.text(max_size=5), st.text(max_size=5)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(json_like, min_size=1, max_size=4))
def test_any_dataset_text_reads_or_names_its_bad_line(tmp_path_factory: pytest.TempPathFactory,
                                                      lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("data") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        items = read_items(path)
    except HarnessError as exc:
        assert "\n" not in str(exc) and str(exc).startswith((str(path), "the input file"))
    else:
        assert all(isinstance(item.fields, dict) for item in items)


@pytest.mark.parametrize(("line", "reason"), [
    ('{"id": 1, "question": ' + "[" * 100_000 + "}", "nested too deeply"),
    ('{"id": ' + "9" * 5000 + "}", "a number with more than 4300 digits"),
])
def test_deep_or_huge_dataset_lines_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, reason: str
) -> None:
    data = write(tmp_path / "in.jsonl", line + "\n")
    assert main(run_args(SC, data, str(tmp_path / "out.jsonl"))) == 2
    assert capsys.readouterr().err == f"ttc: error: {data}:1: not valid JSON ({reason})\n"


@pytest.mark.parametrize(("body", "reason"), [
    ("[" * 100_000, "nested too deeply"),
    ('{"problems": [' + "9" * 5000 + "]}", "a number is too long"),
])
def test_deep_or_huge_task_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, reason: str
) -> None:
    task = write(tmp_path / "task.json", body)
    assert main(["run", SC, "--backend", "sim", "--sim-task", task, "--arg", "question=x"]) == 2
    assert capsys.readouterr().err == f"ttc: error: {task}: task file is not valid JSON: {reason}\n"


@pytest.mark.parametrize("bad", [b"\xff\xfe not utf-8\n", b"[" * 50_000 + b"\n", b'{"id": 1}x\n'])
def test_a_resumed_output_that_is_no_result_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes
) -> None:
    data = dataset(tmp_path / "in.jsonl", [0])
    out = write(tmp_path / "out.jsonl", bad)
    assert main(run_args(SC, data, out, "--resume")) == 2
    assert capsys.readouterr().err == \
        f"ttc: error: --output {out}:1: not a ttc result line; cannot resume into it\n"


# ---- outputs that cannot be written ------------------------------------------------------------


def test_outputs_that_cannot_be_written_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = dataset(tmp_path / "in.jsonl", [0, 0])
    cases = {
        str(tmp_path): f"--output {tmp_path} is a directory; name a file",
        f"{data}/out.jsonl": f"--output {data}/out.jsonl: a folder on the way is a file",
        data: f"--output {data} is the input file too; write the results elsewhere",
    }
    for out, message in cases.items():
        assert main(run_args(SC, data, out, "--resume")) == 2, out
        assert capsys.readouterr().err == f"ttc: error: {message}\n"
    assert Path(data).read_text().count("\n") == 2  # the input is untouched


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_for_output_and_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = dataset(tmp_path / "in.jsonl", [0])
    assert main(run_args(SC, data, "/dev/full", "--arg", "n=2")) == 2
    assert capsys.readouterr().err.startswith(
        "ttc: error: --output /dev/full: cannot write a result (No space left on device)")
    assert main(["run", SC, "--backend", "sim", "--sim-task", TASK, "--arg", "question=x",
                 "--arg", "n=2", "--trace", "/dev/full"]) == 1
    assert capsys.readouterr().err == \
        "ttc: error: --trace /dev/full: cannot write a record (No space left on device)\n"


def test_trace_in_dataset_mode_records_every_items_requests(tmp_path: Path) -> None:
    data = dataset(tmp_path / "in.jsonl", [0, 0, 0])
    trace = tmp_path / "trace.jsonl"
    assert main(run_args(SC, data, str(tmp_path / "out.jsonl"), "--arg", "n=2",
                         "--trace", str(trace))) == 0
    kinds = [json.loads(line)["kind"] for line in trace.read_text().splitlines()]
    assert kinds.count("generate") == 6  # two forks for each of the three items


# ---- timeouts ---------------------------------------------------------------------------------


def test_item_timeout_fails_only_the_slow_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = write(tmp_path / "spin.ttc", SPIN)
    data = dataset(tmp_path / "in.jsonl", [0, 10**9, 0])
    out = tmp_path / "out.jsonl"
    assert main(run_args(program, data, str(out), "--item-timeout", "0.5")) == 1
    assert sorted(ids_in(out)) == ["q0", "q2"]
    err = [line for line in capsys.readouterr().err.splitlines() if "q1" in line]
    assert err == ["error: item q1 (line 2): the run timed out after 0.5 s (raise --item-timeout)"]


def test_timeout_limits_the_whole_dataset_run_and_keeps_finished_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = write(tmp_path / "spin.ttc", SPIN)
    data = dataset(tmp_path / "in.jsonl", [0, 10**9, 0, 10**9])
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    assert main(run_args(program, data, str(out), "--timeout", "1", "--items", "4")) == 1
    assert time.monotonic() - t0 < 4
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ttc: error: the run timed out after 1 s (raise --timeout); the 2 item(s) finished "
        f"before it are in {out} (--resume continues)")
    assert sorted(ids_in(out)) == ["q0", "q2"]


def test_item_timeout_is_refused_outside_dataset_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SC, "--backend", "sim", "--sim-task", TASK, "--item-timeout", "1"]) == 2
    assert capsys.readouterr().err.startswith("ttc: error: --item-timeout only applies to dataset mode")


# ---- signals at random moments ------------------------------------------------------------------


@pytest.mark.slow
def test_signals_at_random_moments_lose_and_repeat_no_finished_line(tmp_path: Path) -> None:
    program = write(tmp_path / "spin.ttc", SPIN)
    rng = random.Random(7)
    passes = [rng.choice([0, 2000, 6000]) for _ in range(9)]
    data = dataset(tmp_path / "in.jsonl", passes)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "ttcdsl.cli", *run_args(program, data, str(out), "--items", "3")]
    for attempt in range(3):
        proc = subprocess.Popen([*argv, "--resume"] if attempt else argv,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(rng.uniform(0.8, 2.5))
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            t0 = time.monotonic()
            proc.send_signal(sig)
            status = proc.wait(timeout=10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err
        assert status in (0, 128 + sig), (status, err)
        assert took < 1.5
        done = ids_in(out)  # every line whole JSON
        assert len(done) == len(set(done))
    finish = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr
    assert sorted(ids_in(out)) == sorted(f"q{i}" for i in range(len(passes)))


@pytest.mark.parametrize(("argv", "message"), [
    (["fmt", "/dev/zero"], "ttc: error: /dev/zero: cannot read it (not a regular file; expected a .ttc file)"),
    (["trace", "show", "/dev/zero"], "ttc: error: /dev/zero: not a regular file; expected a trace file (JSON lines)"),
    (["sim", "check", "/dev/zero"], "ttc: error: task file /dev/zero is not a regular file; expected a JSON file"),
    (["run", SC, "--backend", "sim", "--sim-task", TASK, "--input", "/dev/zero", "--output", "o.jsonl"],
     "ttc: error: --input /dev/zero: not a regular file; expected a JSONL file"),
])
def test_devices_are_refused_by_every_command_that_reads_a_file(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) in (1, 2)
    assert capsys.readouterr().err.splitlines()[0] == message


def test_a_long_item_error_stays_on_one_line_on_a_non_terminal_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = write(tmp_path / "spin.ttc", SPIN)
    long_id = "item-" + "x" * 150
    data = write(tmp_path / "in.jsonl", json.dumps({"id": long_id, "question": QUESTIONS[0],
                                                    "passes": 10**9}) + "\n")
    assert main(run_args(program, data, str(tmp_path / "out.jsonl"), "--item-timeout", "0.3")) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "xxxx" in line]
    assert lines == [f"error: item {long_id} (line 1): the run timed out after 0.3 s "
                     "(raise --item-timeout)"]


def test_judge_logprobs_that_would_overflow_exp_are_read_as_at_most_certain() -> None:
    from ttcdsl.runtime.backend import GenResult
    from ttcdsl.runtime.semantics import p_yes

    def verdict(top: dict[str, float]) -> float:
        return p_yes(GenResult(text="", output_ids=[], finish="stop", completion_tokens=1,
                               prompt_tokens=1, top_logprobs=[top]))

    assert verdict({"Yes": 1e6, "No": -1e6}) == 1.0
    assert verdict({"Yes": float("nan"), "No": 0.0}) == 0.0
    assert verdict({"Yes": 800.0, "No": 800.0}) == 0.5
