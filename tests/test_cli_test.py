"""`ttc test FILE`: a summary line and exit 0, or a shrunk counterexample that reruns as printed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from ttcdsl.cli import main
from ttcdsl.runtime.sim.task import SimTask

REPO = Path(__file__).resolve().parents[1]

BROKEN = """\
strategy my_beam(question: text, width: int = 2) {
    budget 4000 tokens
    p = "{question}\\nSolve step by step; separate steps with a blank line.\\n"
    beams = sample width from p with step = "\\n\\n", max_tokens = 64
    repeat 6 until finished(beams) {
        beams = expand beams by 2 with step = "\\n\\n", max_tokens = 64 | score with prm
        beams = prune active(beams) keep width by score
        expect size(beams) >= 1
    }
    return vote beams
}
"""


def _ttc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_sound_strategy_passes_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _ttc(capsys, "test", str(REPO / "programs" / "self_consistency.ttc"), "--examples", "6")
    assert status == 0
    assert out == "ok: self_consistency: 6 cases (4 simulated, 2 adversarial), every invariant and 0 expect(s) held\n"


def _commands(out: str) -> tuple[str, str]:
    run = next(line for line in out.splitlines() if line.startswith("  run it:"))
    check = next(line for line in out.splitlines() if line.startswith("  check it:"))
    return run.split(":", 1)[1].strip(), check.split(":", 1)[1].strip()


@pytest.mark.parametrize("backends", ["sim", "scripted"])
def test_a_broken_strategy_fails_with_a_reproduction_that_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str], backends: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("my_beam.ttc").write_text(BROKEN)
    status, out, _ = _ttc(capsys, "test", "my_beam.ttc", "--examples", "10", "--backends", backends)
    assert status == 1
    assert out.startswith("FAILED: my_beam: a counterexample after ")
    assert re.search(r"\n  - expect: my_beam.ttc:8: `size\(beams\) >= 1` does not hold in strategy my_beam \(@\d\)\n", out)
    run, check = _commands(out)
    if backends == "sim":
        task = SimTask.from_dict(json.loads(Path("ttc-test-failure/task.json").read_text()))
        assert len(task.problems) == 1  # shrunk
        assert "--backend sim --sim-task ttc-test-failure/task.json" in run
    else:
        assert "--backend replay --replay ttc-test-failure/replay.jsonl" in run
    argv = shlex.split(run)
    assert argv[:2] == ["ttc", "run"]
    status, shown, _ = _ttc(capsys, *argv[1:])
    assert status == 0 and "answer:" in shown
    status, checked, _ = _ttc(capsys, *shlex.split(check)[1:])
    assert status == 1 and "`size(beams) >= 1` does not hold" in checked


def test_the_fixed_strategy_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = tmp_path / "my_beam.ttc"
    fixed.write_text(BROKEN.replace("prune active(beams)", "prune beams"))
    status, out, _ = _ttc(capsys, "test", str(fixed), "--examples", "6", "--seed", "3")
    assert status == 0 and out.endswith("every invariant and 1 expect(s) held\n")


def test_usage_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = str(REPO / "programs" / "self_consistency.ttc")
    status, _, err = _ttc(capsys, "test", sc, "--backends", "gpu")
    assert status == 2 and err == "ttc: error: --backends 'gpu': expected sim, scripted or sim,scripted\n"
    no_text = tmp_path / "n.ttc"
    no_text.write_text("strategy s(n: int = 2) { return sample n from \"hi\" }\n")
    status, _, err = _ttc(capsys, "test", str(no_text))
    assert status == 2 and "has no required text parameter" in err
    status, _, err = _ttc(capsys, "test", sc, "--arg", "nn=3")
    assert status == 2 and "has no parameter 'nn'" in err


def test_ttc_check_validates_expect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ttc"
    bad.write_text("strategy s(question: text) {\n    b = sample 2 from question\n    expect best(b)\n    return b\n}\n")
    status, _, err = _ttc(capsys, "check", str(bad))
    assert status == 1
    assert err.startswith(f"{bad}:3:12: error: an `expect` condition must be a bool, got branches")
