"""docs/testing.md's worked example runs as written.

Blocks after a `<!-- test: ... -->` marker are executed in order in one directory:
`write FILE` writes the block to FILE; `pytest FILE passes|fails` runs the test functions of that
file (each must pass, or each must fail with an AssertionError); `exit N` runs the block's `ttc`
command and wants exit status N; `edit FILE OLD => NEW` changes FILE.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ttcdsl.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
STEP = re.compile(r"<!-- test: (?P<marker>.*?) -->\n(?:(?=<!--)|```\w*\n(?P<body>.*?)```)", re.S)


def _steps() -> list[tuple[str, str]]:
    return [(m["marker"], m["body"] or "") for m in STEP.finditer(DOC.read_text())]


def _pytest_file(path: Path, outcome: str) -> None:
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests, f"{path} defines no test"
    for test in tests:
        if outcome == "passes":
            test()
        else:
            with pytest.raises(AssertionError):
                test()


def test_the_worked_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    steps = _steps()
    assert [m.split()[0] for m, _ in steps] == ["write", "write", "pytest", "write", "pytest", "write", "exit",
                                             "exit", "edit", "exit"]
    for marker, body in steps:
        kind, _, rest = marker.partition(" ")
        if kind == "write":
            Path(rest).write_text(body)
        elif kind == "edit":
            name, _, change = rest.partition(" ")
            old, _, new = change.partition(" => ")
            text = Path(name).read_text()
            assert old in text
            Path(name).write_text(text.replace(old, new))
        elif kind == "pytest":
            name, outcome = rest.split()
            _pytest_file(tmp_path / name, outcome)
        else:
            argv = shlex.split(body.strip())
            assert argv[0] == "ttc"
            assert main(argv[1:]) == int(rest), capsys.readouterr().out
            capsys.readouterr()


def test_the_shown_ttc_test_output_is_what_ttc_test_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    text = DOC.read_text()
    search = next(body for marker, body in _steps() if marker == "write search.ttc")
    Path("search.ttc").write_text(search)
    main(["test", "search.ttc"])
    printed = capsys.readouterr().out
    shown = re.search(r"```text\n(FAILED: my_beam: .*?)```", text, re.S)
    # How many cases the search tried first moves with any change to the generators or the
    # runtime; everything else shown must be what the command prints.
    def cases(out: str) -> str:
        return re.sub(r"after \d+ cases", "after N cases", out)

    assert shown is not None and cases(shown.group(1)) == cases(printed)
    assert re.search(r"after \d+ cases", printed)
    Path("search.ttc").write_text(search.replace("prune active(beams)", "prune beams"))
    main(["test", "search.ttc"])
    assert f"```text\n{capsys.readouterr().out}```" in text
