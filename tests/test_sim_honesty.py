"""The simulator tells you when it is not playing along: single-line answers for few-shot and
``stop = "\\n"`` requests, and a count (and a run warning) of prompts it did not recognise."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from ttcdsl.cli import main
from ttcdsl.runtime.sim import SimEngine, SimTask, load_task
from ttcdsl.runtime.sim.engine import EngineRequest
from ttcdsl.runtime.sim.model import continuation
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

REPO = Path(__file__).resolve().parents[1]
ANSWERS = {"81": 0.5, "71": 0.3, "82": 0.2}
TASK = SimTask.from_dict({"problems": [{"question": "23 + 58", "answer": "81", "answers": ANSWERS}]})
FEW_SHOT = "3 + 4 = 7\n12 + 5 = 17\n23 + 58 ="


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _gen(text: str, seed: int | None, *, one_line: bool = False, task: SimTask = TASK) -> str:
    ids = []
    for tok in continuation(task, text, seed, one_line=one_line):
        if tok.id == EOS_ID:
            break
        ids.append(tok.id)
    return tokenizer.decode(ids)


# ---------------------------------------------------------------- single-line answers


@pytest.mark.parametrize("prompt", [FEW_SHOT, "Q: 23 + 58\nA:", "Q: 23 + 58\nAnswer: "])
def test_a_few_shot_prompt_is_answered_on_its_own_line(prompt: str) -> None:
    counts = Counter()
    n = 2000
    for seed in range(n):
        text = _gen(prompt, seed)
        assert text.endswith("\n") and "\n" not in text[:-1]
        counts[text.strip()] += 1
    for answer, p in ANSWERS.items():  # the answers follow the task, within 4 standard errors
        assert abs(counts[answer] / n - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_temperature_zero_gives_the_modal_answer_on_one_line() -> None:
    assert _gen(FEW_SHOT, None) == " 81\n"


def test_a_request_that_stops_on_newline_gets_an_answer_line_not_an_empty_sample() -> None:
    assert _gen("Problem: 23 + 58", 3, one_line=True).startswith(" The answer is ")
    assert _gen("Problem: 23 + 58\n", 3, one_line=True).startswith("The answer is ")


def test_other_prompts_still_get_steps() -> None:
    assert _gen("Problem: 23 + 58", 3).startswith("\nStep 1 of ")
    assert _gen("Solve step by step:\nProblem: 23 + 58\n", 3).startswith("Step 1 of ")
    # a continuation of a started sample stays a continuation, even with stop = "\n"
    head = "Problem: 23 + 58\nStep 1 of 2: we now have 81."
    assert not _gen(head, 3, one_line=True).startswith(" The answer")


@pytest.mark.anyio
async def test_through_the_engine_stop_newline_keeps_the_answer() -> None:
    engine = SimEngine(TASK)
    req = EngineRequest(rid="a", input_ids=tokenizer.encode("Problem: 23 + 58"), stop=("\n",), seed=5)
    out = await engine.execute(req)
    text = tokenizer.decode(out.output_ids)
    assert out.finish == {"type": "stop", "matched": "\n"}
    assert text.startswith(" The answer is ") and text.endswith(".\n")


def test_arith_vote_runs_on_the_shipped_arith_task(capsys: pytest.CaptureFixture[str]) -> None:
    task = load_task(REPO / "data" / "tasks" / "arith.json")
    question = task.problems[1].question
    argv = ["run", str(REPO / "programs" / "arith_vote.ttc"), "--sim-task",
            str(REPO / "data" / "tasks" / "arith.json"), "--arg", f"question={question}",
            "--arg", "n=16", "--seed", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    right = int(task.problems[1].answer)
    votes = out["result"]["votes"]
    assert sum(votes.values()) == 16  # every sample answered on its line, none abstained
    assert set(votes) <= {str(right + d) for d in (0, 10, -10, 1, -1)} and str(right) in votes
    assert "warnings" not in out


# ---------------------------------------------------------------- unrecognised prompts


@pytest.mark.anyio
async def test_the_engine_counts_generations_whose_prompt_has_no_known_question() -> None:
    engine = SimEngine(TASK)
    for i, prompt in enumerate(["Problem: 23 + 58\n", "Problem: 1 + 1\n", "hello\n"]):
        req = EngineRequest(rid=f"r{i}", input_ids=tokenizer.encode(prompt), max_new_tokens=4)
        await engine.execute(req)
    await engine.execute(EngineRequest(rid="w", input_ids=tokenizer.encode("x"), max_new_tokens=0))
    assert engine.stats.unrecognised == 2  # the warm-up does not count
    async with running_server(engine=engine) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/get_server_info") as resp:
            assert (await resp.json())["sim"]["unrecognised_prompts"] == 2
        async with http.get(url + "/sim/stats") as resp:
            assert (await resp.json())["unrecognised"] == 2


def test_ttc_run_warns_once_when_prompts_were_not_recognised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sc = str(REPO / "programs" / "self_consistency.ttc")
    demo = str(REPO / "data" / "tasks" / "demo.json")
    assert main(["run", sc, "--sim-task", demo, "--arg", "question=What is 2 + 2?",
                 "--arg", "n=3", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["warnings"]) == 1 and "3 of 3 generation requests" in out["warnings"][0]
    assert main(["run", sc, "--sim-task", demo, "--arg", "question=What is 2 + 2?",
                 "--arg", "n=3", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: sim: 3 of 3 generation requests contained no question") == 1
    assert main(["run", sc, "--sim-task", demo, "--arg", "question=What is 17 + 25?",
                 "--arg", "n=3", "--seed", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
