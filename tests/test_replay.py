"""`--record FILE` and `--backend replay --replay FILE`: a run replayed without the model is the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest

from ttcdsl.compiler import compile_source
from ttcdsl.errors import BackendError, NodeFailed, UsageError
from ttcdsl.runtime.backend import BackendInfo, GenRequest, Sampling
from ttcdsl.runtime.backends.factory import BackendOptions, make_backend
from ttcdsl.runtime.backends.replay import ReplayBackend, record_to
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.backends.sim import SimBackend, load_task
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import RunResult, result_to_json
from ttcdsl.testing import check_invariants, run_strategy

REPO = Path(__file__).resolve().parents[1]
TASK = load_task(REPO / "data" / "tasks" / "demo.json")
QUESTION = TASK.problems[0].question


def _run(program: str, backend: object, seed: int, **args: object) -> RunResult:
    plan = compile_source(program, "p.ttc").plan

    async def main() -> RunResult:
        async with backend:  # type: ignore[attr-defined]
            return await run_plan(plan, backend, {"question": QUESTION, **args}, RunOptions(seed=seed))  # type: ignore[arg-type]

    return anyio.run(main)


def _same(a: RunResult, b: RunResult) -> bool:
    def strip(r: RunResult) -> dict[str, object]:
        out = result_to_json(r)
        out.pop("wall_s")
        for n in out["nodes"]:  # type: ignore[attr-defined]
            n.pop("wall_s")
        return out

    return strip(a) == strip(b)


BEAM = (REPO / "programs" / "beam_search.ttc").read_text()
ANYTIME = (REPO / "programs" / "early_stop_vote.ttc").read_text()


@pytest.mark.parametrize("program", [BEAM, ANYTIME], ids=["beam_search", "early_stop_vote"])
def test_a_replayed_run_is_the_recorded_run(tmp_path: Path, program: str) -> None:
    path = tmp_path / "rec.jsonl"
    recorded = _run(program, record_to(SimBackend(TASK), str(path)), seed=7)
    replay = ReplayBackend(path)
    engine = SimBackend(TASK).info.engine  # the recorded backend's facts, under the replay's name
    assert replay.info == BackendInfo(name="replay:sim", model="ttc-sim", has_reward=True, engine=engine)
    assert _same(_run(program, replay, seed=7), recorded)


def test_a_request_that_was_not_recorded_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    _run(BEAM, record_to(SimBackend(TASK), str(path)), seed=7)
    with pytest.raises(NodeFailed, match=r"replay .*rec.jsonl: request not recorded: generate of \d+ input "
                                         r"tokens .* seed=\d+ \(was the recording made with the same program"):
        _run(BEAM, ReplayBackend(path), seed=8)


def test_identical_requests_replay_in_order_and_failures_replay_too(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    request = GenRequest(rid="a", input_ids=(104, 105), sampling=Sampling(max_new_tokens=5, seed=3))

    async def record() -> list[object]:
        async with record_to(ScriptedBackend(Script(transient_every=2)), str(path)) as b:
            out: list[object] = []
            for rid in ("a", "a", "b"):
                try:
                    out.append(await b.generate(msgspec.structs.replace(request, rid=rid)))
                except BackendError as exc:
                    out.append(type(exc).__name__)
            return out

    async def replay() -> list[object]:
        b = ReplayBackend(path)
        out: list[object] = []
        for rid in ("x", "y", "z"):
            try:
                out.append(await b.generate(msgspec.structs.replace(request, rid=rid)))
            except BackendError as exc:
                out.append(type(exc).__name__)
        with pytest.raises(BackendError, match="asked more often than recorded"):
            await b.generate(request)
        return out

    recorded = anyio.run(record)
    assert recorded[0] == recorded[2] == "TransientBackendError" and recorded[1] != recorded[0]
    assert anyio.run(replay) == recorded


def test_the_kit_checks_a_replayed_run(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    _run(BEAM, record_to(SimBackend(TASK), str(path)), seed=3)
    result = run_strategy(BEAM, args={"question": QUESTION}, backend=ReplayBackend(path), seed=3)
    check_invariants(result)


def test_bad_replay_options_and_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--backend replay and --replay FILE go together"):
        make_backend(BackendOptions(backend="replay"))
    with pytest.raises(UsageError, match="no such file"):
        make_backend(BackendOptions(replay=str(tmp_path / "none.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"not": "a header"}\n')
    with pytest.raises(UsageError, match="not a recording made by `ttc run --record`"):
        ReplayBackend(bad)


def test_ttc_run_records_and_replays_byte_for_byte(tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    common = [sys.executable, "-m", "ttcdsl.cli", "run", str(REPO / "programs" / "self_consistency.ttc"),
              "--arg", f"question={QUESTION}", "--arg", "n=4", "--seed", "11", "--json"]
    first = subprocess.run([*common, "--sim-task", str(REPO / "data/tasks/demo.json"), "--record", str(rec)],
                           capture_output=True, text=True, check=True)
    again = subprocess.run([*common, "--backend", "replay", "--replay", str(rec)],
                           capture_output=True, text=True, check=True)
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    facts = a.pop("provenance"), b.pop("provenance")
    for r in (a, b):
        r.pop("wall_s")
        for n in r["nodes"]:
            n.pop("wall_s")
    assert a == b
    # Provenance names the replay as the backend and keeps the recorded model and engine.
    assert (facts[0]["backend"], facts[1]["backend"]) == ("sim", "replay:sim")
    assert facts[0]["model"] == facts[1]["model"] and facts[0]["engine"] == facts[1]["engine"]
    assert {k: v for k, v in facts[0].items() if k != "backend"} == {k: v for k, v in facts[1].items() if k != "backend"}
    header = json.loads(rec.read_text().splitlines()[0])
    assert header["format"] == "ttc-record/1" and header["info"]["model"] == "ttc-sim"


def test_ttc_bench_records_and_replays(tmp_path: Path) -> None:
    items = tmp_path / "in.jsonl"
    items.write_text("".join((REPO / "data" / "sim_math.jsonl").read_text().splitlines(keepends=True)[:3]))
    rec = tmp_path / "bench.jsonl"
    common = [sys.executable, "-m", "ttcdsl.cli", "bench", str(REPO / "programs" / "self_consistency.ttc"),
              "--input", str(items), "--sweep", "n=2,4", "--seed", "1"]

    def rows(out: str) -> list[list[str]]:  # the table without its time column
        return [[c.strip() for c in line.split("│")][:-1] for line in out.splitlines() if line.count("│") >= 6]

    first = subprocess.run([*common, "--sim-task", str(REPO / "data/tasks/math.json"), "--record", str(rec)],
                           capture_output=True, text=True, check=True)
    again = subprocess.run([*common, "--backend", "replay", "--replay", str(rec)],
                           capture_output=True, text=True, check=True)
    assert rows(first.stdout) and rows(first.stdout) == rows(again.stdout)


def test_thinking_tags_are_recorded_and_replayed(tmp_path: Path) -> None:
    # A thinking budget asks the backend for its tags; the replay answers as the recording did,
    # so the replayed run needs no --think-tags either.
    task = load_task(REPO / "data" / "tasks" / "math_reasoning.json")
    question = task.problems[0].question
    program = (REPO / "programs" / "budget_forcing.ttc").read_text()
    path = tmp_path / "rec.jsonl"
    plan = compile_source(program, "p.ttc").plan

    def run(backend: object) -> RunResult:
        async def main() -> RunResult:
            async with backend:  # type: ignore[attr-defined]
                return await run_plan(plan, backend, {"question": question, "think": 256}, RunOptions(seed=3))  # type: ignore[arg-type]

        return anyio.run(main)

    recorded = run(record_to(SimBackend(task), str(path)))
    assert recorded.usage.thinking_tokens > 0
    assert any(json.loads(line).get("op") == "think_tags" for line in path.read_text().splitlines())
    assert _same(run(ReplayBackend(path)), recorded)
