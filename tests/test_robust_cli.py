"""The one error path of `ttc` and its deadlines: a fast `--help`, one line for every user mistake
and bad file, "internal error" for bugs (the traceback only under --debug), `--timeout` holding
over start-up and CPU-bound loops, and Ctrl-C ending a busy run within a second with one line,
whenever it comes."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ttcdsl import cli
from ttcdsl.cli import SUMMARIES, build_parser, main

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "math.json")
TTC = [sys.executable, "-m", "ttcdsl.cli"]
HEAVY = ("lark", "aiohttp", "anyio", "rich", "msgspec", "ttcdsl.runtime", "ttcdsl.parse",
         "ttcdsl.commands.run")

LOOP = """\
strategy spin(q: text) {
    budget 100 tokens
    b = sample 1 from q with max_tokens = 50
    repeat 1000000000 {
        c = sample 1 from q with max_tokens = 50
        b = b + c
    }
    return best(b)
}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message"
    assert lines[0].startswith(("ttc: error: ", "ttc: interrupted")) or ": error: " in lines[0], err
    return lines[0]


# ---- start-up -----------------------------------------------------------------------------------


def test_help_imports_none_of_the_heavy_modules() -> None:
    probe = textwrap.dedent(f"""
        import sys
        from ttcdsl.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = [m for m in sys.modules if m.startswith({HEAVY!r})]
        print("HEAVY", heavy, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "check .ttc files for errors" in proc.stdout
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_the_summaries_are_the_help_each_command_registers() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    assert helps == SUMMARIES


def test_a_command_builds_only_its_own_parser() -> None:
    parser = build_parser("check")
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert action.choices["check"]._actions != action.choices["run"]._actions
    assert [a.dest for a in action.choices["run"]._actions] == ["help"]


# ---- one error path ---------------------------------------------------------------------------


def test_an_internal_error_is_one_line_and_debug_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import ttcdsl.commands.check as check_command

    def broken(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("a bug\nover two lines")

    real = check_command.register

    def register(sub: argparse._SubParsersAction) -> None:
        real(sub)
        sub.choices["check"].set_defaults(func=broken)

    monkeypatch.setattr(check_command, "register", register)
    program = write(tmp_path, "ok.ttc", "strategy s() { return 1 }\n")
    assert main(["check", program]) == 70
    err = capsys.readouterr().err
    assert err == (f"ttc: internal error (ZeroDivisionError: a bug over two lines); {cli.REPORT}; "
                   "rerun with --debug for the traceback\n")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "check", program])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("dz.ttc", 'import "/dev/zero"\nstrategy s() { return 1 }\n',
         "dz.ttc:1:1: error: cannot import '/dev/zero': expected a .ttc file (looked at /dev/zero)"),
        ("pw.ttc", 'import "/etc/passwd"\nstrategy s() { return 1 }\n',
         "pw.ttc:1:1: error: cannot import '/etc/passwd': expected a .ttc file (looked at /etc/passwd)"),
        ("nul.ttc", 'import "a\\0b.ttc"\nstrategy s() { return 1 }\n',
         "nul.ttc:1:1: error: cannot import 'a\\x00b.ttc': not a valid file name (it contains a NUL "
         "byte)"),
    ],
)
def test_bad_imports_are_one_located_error_that_never_quotes_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, name, text)
    assert main(["check", name]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(message)
    assert "root:" not in err


@pytest.mark.parametrize(("target", "message"), [
    ("/dev/zero", "ttc: error: /dev/zero: not a regular file; expected a .ttc file"),
    ("/", "ttc: error: /: is a directory, not a .ttc file"),
])
def test_a_main_file_that_is_no_regular_file_is_refused(
    capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert main(["check", target]) == 1
    assert capsys.readouterr().err == message + "\n"


def test_an_import_chain_hundreds_deep_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(400):
        write(tmp_path, f"c{i}.ttc", f'import "c{i + 1}.ttc"\nstrategy s{i}() {{ return {i} }}\n')
    write(tmp_path, "c400.ttc", "strategy s400() { return 1 }\n")
    assert main(["check", str(tmp_path / "c0.ttc")]) == 0


def test_a_call_chain_hundreds_deep_is_one_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"strategy s{i}(q: text) {{ return s{i + 1}(q) }}" for i in range(300)]
    lines.append("strategy s300(q: text) { return sample 1 from q }")
    program = write(tmp_path, "calls.ttc", "\n".join(lines) + "\n")
    assert main(["check", program]) == 1
    first = one_error_line(capsys.readouterr().err)
    assert first.startswith(f"{program}:32:")
    assert "strategy calls nest more than 32 deep from here (s31 -> s32 -> ...)" in first


@pytest.mark.parametrize(("value", "message"), [
    ("nan", "must be positive, got nan"), ("-1", "must be positive, got -1"),
    ("0", "must be positive, got 0"),
    ("inf", "must be a finite number of seconds (leave it out for no limit)"),
])
def test_timeout_must_be_a_positive_finite_number(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "x.ttc", "--timeout", value])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"ttc run: error: argument --timeout: {message}\n"


def test_temperature_from_an_arg_is_checked_like_a_literal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = write(tmp_path, "t.ttc", "strategy s(q: text, t: float = 0.5) {\n"
                    "    return sample 2 from q with max_tokens = 5, temperature = t\n}\n")
    base = ["run", program, "--backend", "sim", "--sim-task", TASK, "--arg", "q=hi"]
    assert main([*base, "--arg", "t=-1"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == \
        f"{program}:2:12: error: temperature must be at least 0, got -1.0"
    assert main([*base, "--arg", "t=nan"]) == 2
    assert capsys.readouterr().err == "ttc: error: --arg t='nan': expected a finite float\n"


# ---- deadlines and signals (real processes) -----------------------------------------------------


def test_timeout_ends_a_cpu_bound_loop_in_time(tmp_path: Path) -> None:
    program = write(tmp_path, "spin.ttc", LOOP)
    t0 = time.monotonic()
    proc = subprocess.run([*TTC, "run", program, "--backend", "sim", "--sim-task", TASK,
                           "--arg", "q=hi", "--timeout", "1.5"],
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == "ttc: error: the run timed out after 1.5 s (raise --timeout)"
    assert took < 1.5 + 8  # start-up of a fresh interpreter included


@pytest.mark.slow
def test_bench_timeout_ends_a_cpu_bound_loop_in_time(tmp_path: Path) -> None:
    program = write(tmp_path, "spin.ttc", LOOP.replace("spin(q: text)", "spin(question: text)")
                    .replace("from q", "from question"))
    data = write(tmp_path, "in.jsonl", '{"id": "q1", "question": "What is 17 + 25?", "answer": "42"}\n')
    t0 = time.monotonic()
    proc = subprocess.run([*TTC, "bench", program, "--input", data, "--backend", "sim", "--sim-task", TASK,
                           "--timeout", "1.5"], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == "ttc: error: the bench timed out after 1.5 s (raise --timeout)"
    assert took < 1.5 + 8  # start-up of a fresh interpreter included


def test_ctrl_c_at_random_moments_ends_within_a_second_with_one_line(tmp_path: Path) -> None:
    program = write(tmp_path, "spin.ttc", LOOP)
    rng = random.Random(12)
    for delay in [rng.uniform(0.0, 2.5) for _ in range(4)]:
        proc = subprocess.Popen([*TTC, "run", program, "--backend", "sim", "--sim-task", TASK,
                                 "--arg", "q=hi"], stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            status = proc.wait(timeout=10)
            took = time.monotonic() - t0
            err = proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert status == 130, (delay, err)
        assert err == "ttc: interrupted\n", (delay, err)
        assert took < 1.5, (delay, took)


def test_sigterm_ends_a_run_with_one_line(tmp_path: Path) -> None:
    program = write(tmp_path, "spin.ttc", LOOP)
    proc = subprocess.Popen([*TTC, "run", program, "--backend", "sim", "--sim-task", TASK,
                             "--arg", "q=hi"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
        assert proc.stderr is not None and proc.stderr.read() == "ttc: terminated\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_while_the_parser_is_built_leaves_a_cache_the_next_run_survives(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    check = [*TTC, "check", str(REPO / "programs" / "beam_search.ttc")]
    for delay in (0.2, 0.45):
        proc = subprocess.Popen(check, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env)
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            status = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err and status in (0, 130, -signal.SIGINT), (status, err)
    for cache in tmp_path.glob(".lark_cache_*"):  # as a Ctrl-C in the middle of writing leaves it
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    again = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and "Traceback" not in again.stderr
    assert again.stderr.strip().endswith("ok: 1 file checked")


def test_sigterm_while_the_command_is_still_importing_is_one_line() -> None:
    # The signal lands before the command's guard is up (here: at once, then a slow "import").
    script = textwrap.dedent("""
        import os, signal, sys, time
        from ttcdsl import cli

        def slow(words, hard):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

        cli._main = slow
        sys.argv = ["ttc", "run", "x.ttc"]
        sys.exit(cli.main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (143, "ttc: terminated\n")
