"""`ttc run` on the command line: the --json schema, the readable output, traces, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ttcdsl.cli import main

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "demo.json")
SC = str(REPO / "programs" / "self_consistency.ttc")
BEAM = str(REPO / "programs" / "beam_search.ttc")
Q = "question=What is 17 + 25?"


def test_json_output_follows_the_documented_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=4", "--seed", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["result"]) >= {"value", "agreement"}
    assert set(out["usage"]) == {"completion_tokens", "prompt_tokens", "cached_tokens", "requests"}
    node = out["nodes"][0]
    assert set(node) >= {"id", "op", "line", "budget", "completion_tokens", "prompt_tokens", "cached_tokens",
                         "requests", "wall_s"}
    assert node["op"] == "sample" and node["line"] == 8 and node["requests"] == 5
    assert isinstance(out["wall_s"], float) and out["seed"] == 2


def test_branches_result_lists_text_score_and_finish(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", BEAM, "--sim-task", TASK, "--arg", Q, "--arg", "depth=2", "--seed", "2", "--json"]) == 0
    branches = json.loads(capsys.readouterr().out)["result"]["branches"]
    assert len(branches) == 1
    assert set(branches[0]) >= {"text", "score", "finished", "finish_reason"}


def test_same_seed_same_json_result(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", BEAM, "--sim-task", TASK, "--arg", Q, "--arg", "depth=2", "--seed", "9", "--json"]
    main(args)
    first = json.loads(capsys.readouterr().out)
    main(args)
    second = json.loads(capsys.readouterr().out)
    assert first["result"] == second["result"] and first["usage"] == second["usage"]


def test_readable_output_shows_answer_table_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("answer: ")
    assert "sample" in out and "vote" in out
    assert "budget used: " in out and "/ 16384 tokens" in out


def test_summary_shows_the_budget_that_binds_and_cut_off_chains_do_not_vote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--seed", "1", "--budget", "300"]) == 0
    out = capsys.readouterr().out
    assert "/ 300 tokens (100%, --budget; the strategy's 16384)" in out and "/ 16384" not in out
    assert "answer: none (no branch finished; 16 cut off or open did not vote" in " ".join(out.split())
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--seed", "1", "--budget", "300", "--json"]) == 0
    out_json = json.loads(capsys.readouterr().out)
    assert (out_json["budget"], out_json["run_budget"], out_json["binding_budget"]) == (16384, 300, 300)
    assert out_json["result"]["value"] is None and out_json["result"]["excluded"] == 16


def test_trace_file_has_one_line_per_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=3", "--json", "--trace", str(trace)]) == 0
    usage = json.loads(capsys.readouterr().out)["usage"]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("generate") == 3 and kinds.count("warm") == 1
    assert sum(r.get("completion_tokens", 0) for r in records) == usage["completion_tokens"]


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (["--url", "http://127.0.0.1:1", "--arg", "question=x"], "cannot reach a SGLang server at http://127.0.0.1:1", 1),
        (["--sim-task", "nope.json", "--arg", "question=x"], "task file nope.json does not exist", 2),
        (["--sim-task", TASK], "needs question (text): pass --arg question=VALUE", 2),
        (["--sim-task", TASK, "--arg", "question=x", "--arg", "n=abc"], "--arg n='abc': expected an int", 2),
        (["--sim-task", TASK, "--arg", "question=x", "--arg", "m=3"], "has no parameter 'm'", 2),
        (["--backend", "sim", "--arg", "question=x"], "--backend sim needs --sim-task FILE", 2),
        (["--input", "x.jsonl"], "needs both --input IN.jsonl and --output OUT.jsonl", 2),
        (["--sim-task", TASK, "--arg", "question=x", "--strategy", "nope"], "no strategy named 'nope'", 2),
    ],
)
def test_user_mistakes_get_one_line_and_a_status(args: list[str], message: str, status: int,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SC, *args]) == status
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


VERIFY = 'strategy p(question: text) {\n    return sample 2 from question | score with verifier("os:nope")\n}\n'
VERIFY_FAILED = (
    "error: verifier('os:nope') runs your Python code: allow it with --allow-verifier\n"
    '        return sample 2 from question | score with verifier("os:nope")\n'
    "                                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)


def test_a_failing_node_shows_its_ttc_line_and_caret_without_a_traceback(tmp_path: Path) -> None:
    prog = tmp_path / "p.ttc"
    prog.write_text(VERIFY)
    r = subprocess.run([sys.executable, "-m", "ttcdsl.cli", "run", str(prog), "--sim-task", TASK, "--arg", "question=x"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"{prog}:2:37: {VERIFY_FAILED}")


def test_a_failure_inside_an_imported_strategy_shows_the_imported_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lib.ttc").write_text(VERIFY)
    main_file = tmp_path / "main.ttc"
    main_file.write_text('import "lib.ttc"\nstrategy m(question: text) {\n    return p(question)\n}\n')
    assert main(["run", str(main_file), "--sim-task", TASK, "--arg", "question=x"]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'lib.ttc'}:2:37: {VERIFY_FAILED}"


def test_dataset_mode_reports_each_failed_item_on_one_line_and_writes_none(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    prog, inp, out = tmp_path / "p.ttc", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prog.write_text(VERIFY)
    inp.write_text('{"id": "a", "question": "x"}\n{"id": "b", "question": "y"}\n')
    assert main(["run", str(prog), "--sim-task", TASK, "--input", str(inp), "--output", str(out)]) == 1
    errors = sorted(line for line in capsys.readouterr().err.splitlines() if line.startswith("error:"))
    message = "verifier('os:nope') runs your Python code: allow it with --allow-verifier"
    assert errors == [
        f"error: item a (line 1): {prog}:2:37: {message}",
        f"error: item b (line 2): {prog}:2:37: {message}",
    ]
    assert out.read_text() == ""  # failed items are not written, so --resume retries them


def test_json_and_trace_record_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    trace = tmp_path / "t.jsonl"
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=2", "--seed", "8", "--json",
                 "--trace", str(trace)]) == 0
    facts = json.loads(capsys.readouterr().out)["provenance"]
    assert facts["program"]["path"] == SC
    assert facts["program"]["sha256"] == hashlib.sha256(Path(SC).read_bytes()).hexdigest()
    assert len(facts["program"]["plan_sha256"]) == 64
    assert facts["strategy"] == "self_consistency" and facts["args"] == {"n": "2", "question": "What is 17 + 25?"}
    assert (facts["backend"], facts["model"], facts["seed"]) == ("sim", "ttc-sim", 8)
    assert facts["engine"].startswith("ttcdsl-sim") and facts["ttcdsl"] == "0.1.0"
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records[0]["provenance"] == facts and all("provenance" not in r for r in records[1:])


def test_without_a_seed_the_chosen_seed_is_the_one_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["provenance"]["seed"] == out["seed"]


def test_version_names_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("ttc (ttcdsl) 0.1.0, Python 3.")
