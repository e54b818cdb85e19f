"""The front-half commands, run in-process through `ttcdsl.cli.main`: `ttc check` (exit codes,
errors, warnings), `ttc plan` (json that decodes to the compiled plan, Graphviz dot, --strategy,
--arg) and `ttc fmt` (in place, --check, --diff, stdin, refusing syntax errors); plus one real
subprocess showing that a user mistake never prints a traceback."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ttcdsl import plan as P
from ttcdsl.cli import main
from ttcdsl.compiler import compile_file
from ttcdsl.launch import TTC
from ttcdsl.program import MAX_SOURCE_BYTES

PLANS = Path(__file__).resolve().parent / "fixtures" / "plans"

GOOD = """\
strategy helper(q: text) {
    return sample 2 from q with max_tokens = 10
}

strategy sc(question: text, n: int = 4) {
    budget 1000 tokens
    chains = sample n from question with max_tokens = 100
    return vote chains on number
}
"""

OVER_BUDGET = """\
strategy s(question: text) {
    budget 100 tokens
    return sample 4 from question with max_tokens = 50
}
"""

SEMANTIC = """\
strategy s(question: text) {
    b = sample 0 from questoin
    return b
}
"""

SYNTAX = """\
strategy s(question: text) {
    b = sample 2 from question
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---- ttc check ----


def test_check_passes_a_good_file_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "check", write(tmp_path, "good.ttc", GOOD)) == (0, "", "ok: 1 file checked\n")


def test_check_reports_a_syntax_error_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.ttc", SYNTAX)
    status, out, err = run(capsys, "check", path)
    assert (status, out) == (1, "")
    assert err == (
        f"{path}:2:31: error: unexpected end of file; expected '}}', 'budget', 'with', an operator or a new statement "
        "(the '{' opened at line 1 is still open: close it with '}')\n"
        "        b = sample 2 from question\n"
        "                                  ^\n"
    )


def test_check_reports_every_error_of_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.ttc", GOOD)
    bad = write(tmp_path, "bad.ttc", SEMANTIC)
    status, _, err = run(capsys, "check", good, bad, tmp_path / "missing.ttc")
    assert status == 1
    assert re.findall(r"^\S.*$", err, re.M) == [
        f"{bad}:2:16: error: the sample count must be at least 1, got 0",
        f"{bad}:2:23: error: unknown name 'questoin'; did you mean 'question'?",
        f"ttc: error: {tmp_path / 'missing.ttc'}: no such file",
    ]


def test_check_warns_about_worst_cases_over_budget_but_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "over.ttc", OVER_BUDGET)
    status, out, err = run(capsys, "check", path)
    assert (status, out) == (0, "")
    assert err == (
        f"{path}:1:1: warning: worst case of strategy 's' is 200 tokens, above its budget of 100 tokens: "
        "a run may end early with a partial result\n"
        "    strategy s(question: text) {\n"
        "    ^\n"
        "ok: 1 file checked\n"
    )
    assert run(capsys, "check", "--quiet", path) == (0, "", "")


def test_check_accepts_every_library_program(capsys: pytest.CaptureFixture[str]) -> None:
    programs = sorted((PLANS.parent.parent.parent / "programs").glob("*.ttc"))
    status, _, err = run(capsys, "check", "--quiet", *programs)
    assert (status, err) == (0, "")


# ---- ttc plan ----


def test_plan_json_decodes_to_the_compiled_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.ttc", GOOD)
    status, out, _ = run(capsys, "plan", path, "--format", "json")
    assert status == 0
    assert P.decode(out) == compile_file(path).plan


def test_plan_strategy_and_args_choose_the_entry_and_its_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.ttc", GOOD)
    status, out, _ = run(capsys, "plan", path, "--format", "json", "--strategy", "helper")
    assert status == 0 and P.decode(out).entry == "helper"
    status, out, _ = run(capsys, "plan", path, "--format", "json", "--arg", "n=7")
    sample = next(n for n in P.decode(out).strategy().nodes if isinstance(n, P.Sample))
    assert sample.bound == P.Bound(700, 1, 700)


def test_plan_text_lists_steps_with_bounds_and_budgets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.ttc", GOOD)
    status, out, _ = run(capsys, "plan", path)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"strategy sc  ({path}:5)  budget 1000, worst case 400 tokens  [entry]"
    assert lines[1].split() == ["node", "op", "line", "inputs", "/", "parameters", "worst/call", "calls", "worst", "total", "budget"]
    assert lines[2].split()[:3] == ["n8", "sample", "7"] and lines[2].split()[-4:] == ["400", "1", "400", "-"]


def test_plan_rejects_bad_arguments_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.ttc", GOOD)
    assert run(capsys, "plan", path, "--arg", "m=3") == (
        2, "", "ttc: error: strategy 'sc' has no parameter 'm' (its parameters: question, n)\n"
    )
    assert run(capsys, "plan", path, "--arg", "n=many") == (2, "", "ttc: error: --arg n='many': expected an int\n")
    assert run(capsys, "plan", path, "--strategy", "nope") == (
        2, "", f"ttc: error: no strategy named 'nope' in {path}; it defines: helper, sc\n"
    )


def test_plan_of_a_program_with_errors_renders_all_of_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.ttc", SEMANTIC)
    status, out, err = run(capsys, "plan", path)
    assert (status, out) == (1, "")
    assert err.count(": error: ") == 2 and "Traceback" not in err


def _dot_structure(dot: str) -> tuple[set[str], list[tuple[str, str]]]:
    declared = set(re.findall(r'^\s*(n\d+|"[^"]+") \[', dot, re.M))
    edges = re.findall(r'^\s*(n\d+|"[^"]+") -> (n\d+|"[^"]+")', dot, re.M)
    return declared, edges


def test_plan_dot_is_a_graph_graphviz_can_render(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PLANS)
    status, dot, _ = run(capsys, "plan", "calls.ttc", "--format", "dot")
    assert status == 0
    assert dot.startswith("digraph plan {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    declared, edges = _dot_structure(dot)
    plan = compile_file("calls.ttc").plan
    assert {f"n{n.id}" for s in plan.strategies.values() for n in s.nodes} <= declared
    assert edges and all(src in declared and dst in declared for src, dst in edges)
    if shutil.which("dot"):
        rendered = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        assert "<svg" in rendered.stdout


# ---- ttc fmt ----

UNFORMATTED = "strategy s(q:text){return sample 2 from q|vote}  # answer\n"
FORMATTED = "strategy s(q: text) {\n    return sample 2 from q\n         | vote\n}  # answer\n"


def test_fmt_rewrites_files_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = write(tmp_path, "messy.ttc", UNFORMATTED)
    tidy = write(tmp_path, "tidy.ttc", FORMATTED)
    assert run(capsys, "fmt", messy, tidy) == (
        0, "", f"reformatted {messy}\n1 file reformatted, 1 file already formatted\n"
    )
    assert messy.read_text() == FORMATTED and tidy.read_text() == FORMATTED


def test_fmt_check_lists_files_that_would_change_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = write(tmp_path, "messy.ttc", UNFORMATTED)
    tidy = write(tmp_path, "tidy.ttc", FORMATTED)
    assert run(capsys, "fmt", "--check", messy, tidy) == (
        1, "", f"would reformat {messy}\n1 file would be reformatted, 1 file already formatted\n"
    )
    assert messy.read_text() == UNFORMATTED
    assert run(capsys, "fmt", "--check", tidy) == (0, "", "1 file already formatted\n")


def test_fmt_diff_prints_a_unified_diff_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = write(tmp_path, "messy.ttc", UNFORMATTED)
    status, out, _ = run(capsys, "fmt", "--diff", messy)
    assert status == 0
    assert out == (
        f"--- {messy} (original)\n"
        f"+++ {messy} (formatted)\n"
        "@@ -1 +1,4 @@\n"
        "-strategy s(q:text){return sample 2 from q|vote}  # answer\n"
        "+strategy s(q: text) {\n"
        "+    return sample 2 from q\n"
        "+         | vote\n"
        "+}  # answer\n"
    )
    assert messy.read_text() == UNFORMATTED


def test_fmt_refuses_a_file_with_a_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.ttc", "strategy s( {\n")
    status, out, err = run(capsys, "fmt", bad)
    assert (status, out) == (1, "")
    assert err == (
        f"{bad}:1:13: error: unexpected '{{'; expected ')' or a name "
        "(the '(' opened at line 1 is still open: close it with ')')\n"
        "    strategy s( {\n"
        "                ^\n"
        "1 file with errors\n"
    )
    assert bad.read_text() == "strategy s( {\n"


def test_fmt_reads_stdin_and_writes_stdout(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(UNFORMATTED))
    assert run(capsys, "fmt", "-") == (0, FORMATTED, "")


class _Endless(io.RawIOBase):
    """An input that never ends, like ``yes``."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer[:] = b"y\n" * (len(buffer) // 2) + b"y" * (len(buffer) % 2)
        return len(buffer)


def test_fmt_stops_reading_an_endless_stdin_at_the_source_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_Endless())))
    assert run(capsys, "fmt", "-") == (1, "", (
        f"ttc: error: -: standard input holds more than {MAX_SOURCE_BYTES} bytes, too large for "
        "a .ttc file\n1 file with errors\n"))


def test_yes_piped_into_fmt_ends_in_one_error_line() -> None:
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        proc = subprocess.run([*TTC, "fmt", "-"], stdin=yes.stdout, capture_output=True, text=True,
                              timeout=60)
    finally:
        yes.kill()
        yes.wait()
        assert yes.stdout is not None
        yes.stdout.close()
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == (
        f"ttc: error: -: standard input holds more than {MAX_SOURCE_BYTES} bytes, too large for "
        "a .ttc file")


def test_fmt_refuses_a_file_past_the_source_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.ttc"
    with big.open("wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)  # sparse: no disk space used
    assert run(capsys, "fmt", str(big))[2].splitlines()[0] == (
        f"ttc: error: {big}: too large for a .ttc file ({MAX_SOURCE_BYTES + 1} bytes)")


def test_fmt_normalises_windows_line_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "crlf.ttc"
    path.write_bytes(FORMATTED.replace("\n", "\r\n").encode())
    assert run(capsys, "fmt", "--check", path)[0] == 1
    assert run(capsys, "fmt", path)[0] == 0
    assert path.read_bytes() == FORMATTED.encode()


# ---- a real process ----


def test_a_syntax_error_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.ttc", textwrap.dedent(SYNTAX))
    done = subprocess.run(
        [sys.executable, "-m", "ttcdsl.cli", "check", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"{path}:2:31: error: unexpected end of file")
    assert "Traceback" not in done.stderr
