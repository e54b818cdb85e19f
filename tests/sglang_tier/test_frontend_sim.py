"""SGLang's own frontend (``sglang.lang`` from the tier venv, unchanged) against ``ttc sim serve``.

DESIGN §5: the frontend's ``RuntimeEndpoint`` must work against the simulator as against SGLang.
``ttc sim serve`` runs as its own process on a free port; ``programs/frontend_sim.py`` runs once in
the tier venv's python (importing sglang takes most of the time) and reports what the frontend
got as JSON; each test checks one behaviour, against the task file and against the simulator's
own answers over plain HTTP.  No real SGLang server is started.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.launch import ServerProcess, free_port, sglang_home, sim_argv

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TASK = ROOT / "data" / "tasks" / "demo.json"
SCRIPT = HERE / "programs" / "frontend_sim.py"
TIER_PYTHON = sglang_home() / "venv" / "bin" / "python"
PROMPT = 'Problem: {question}\nSolve it step by step and end with "The answer is X."\n'
CHOICES = [" 42.", " 32.", " 7."]


def modal_answers() -> dict[str, str]:
    """Each demo question's most likely answer: what the sim writes at temperature 0."""
    problems = json.loads(TASK.read_text())["problems"]
    return {p["question"]: max(p["answers"], key=p["answers"].get) for p in problems}


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ttc sim serve`` on a free port, in its own process group, stopped with the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with ServerProcess(sim_argv(port, TASK, seed=1), f"http://127.0.0.1:{port}", name="ttc sim serve",
                       log=log) as sim:
        yield sim.wait_ready(60).url


@pytest.fixture(scope="module")
def frontend(sim_url: str) -> dict[str, Any]:
    """Everything the frontend script saw, run once for the module."""
    proc = subprocess.run([str(TIER_PYTHON), str(SCRIPT), sim_url], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"the frontend script failed ({proc.returncode}):\n{proc.stderr[-4000:]}",
                    pytrace=False)
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def sim_generate(url: str, text: str, **sampling: Any) -> dict[str, Any]:
    """One plain ``/generate`` to the simulator, as any client would send it."""

    async def post() -> dict[str, Any]:
        body = {"text": text, "sampling_params": sampling}
        async with aiohttp.ClientSession() as session, session.post(url + "/generate",
                                                                     json=body) as resp:
            resp.raise_for_status()
            answer: dict[str, Any] = await resp.json()
            return answer

    return anyio.run(post)


def test_a_greedy_gen_is_the_simulators_own_text_for_the_same_prompt(
    frontend: dict[str, Any], sim_url: str
) -> None:
    solve = frontend["solve"]
    prompt = PROMPT.format(question="What is 17 + 25?")
    direct = sim_generate(sim_url, prompt, max_new_tokens=400, temperature=0,
                          stop="The answer is")
    assert solve["work"] == direct["text"]
    assert solve["work_meta"]["completion_tokens"] == direct["meta_info"]["completion_tokens"]
    steps = re.findall(r"Step (\d) of (\d): we now have (\w+)\.", solve["work"])
    total = int(steps[0][1])
    assert [int(k) for k, _, _ in steps] == list(range(1, total + 1))
    assert {value for _, _, value in steps} == {"42"}  # the modal path, straight away


def test_a_stop_string_ends_the_gen_and_is_trimmed_like_sglang(frontend: dict[str, Any]) -> None:
    solve = frontend["solve"]
    assert solve["work_meta"]["finish_reason"] == {"type": "stop", "matched": "The answer is"}
    assert "The answer is" not in solve["work"]
    assert solve["answer"] == " 42"
    assert solve["answer_meta"]["finish_reason"] == {"type": "stop", "matched": "."}
    assert solve["text"] == (PROMPT.format(question="What is 17 + 25?") + solve["work"]
                             + "The answer is 42")


def test_the_second_gen_continues_from_the_cached_first(frontend: dict[str, Any]) -> None:
    meta = frontend["solve"]["answer_meta"]
    assert meta["cached_tokens"] == meta["prompt_tokens"] - 1


def test_max_tokens_caps_a_gen(frontend: dict[str, Any]) -> None:
    forks = frontend["forks"]
    assert forks["capped_meta"]["completion_tokens"] == 5
    assert forks["capped_meta"]["finish_reason"]["type"] == "length"
    assert forks["capped"].startswith("Step 1 of ")


def test_forks_sample_different_first_steps_from_one_cached_prefix(
    frontend: dict[str, Any],
) -> None:
    forks = frontend["forks"]
    steps, metas = forks["steps"], forks["step_meta"]
    assert len(steps) == 3 and len(set(steps)) == 3
    for step, meta in zip(steps, metas, strict=True):
        assert re.match(r"Step 1 of [3-6]: we now have (42|32|41)\.", step), step
        assert meta["finish_reason"] == {"type": "stop", "matched": "\n\n"}
        # fork() committed the shared prompt first, so every fork finds it cached.
        assert meta["cached_tokens"] == meta["prompt_tokens"] - 1


def test_select_picks_the_choice_with_the_best_normalised_logprob(
    frontend: dict[str, Any],
) -> None:
    select = frontend["select"]
    meta = select["meta"]
    scores = meta["normalized_prompt_logprobs"]
    assert len(scores) == len(CHOICES) and all(math.isfinite(x) and x < 0 for x in scores)
    assert select["answer"] == CHOICES[scores.index(max(scores))]
    assert select["text"].endswith("The answer is" + select["answer"])
    for choice, logprobs in zip(CHOICES, meta["input_token_logprobs"], strict=True):
        assert "".join(piece for _, _, piece in logprobs).endswith(choice)


def test_run_batch_answers_every_question_with_its_modal_answer(
    frontend: dict[str, Any],
) -> None:
    modal = modal_answers()
    batch = frontend["batch"]
    assert [row["answer"] for row in batch] == [" " + modal[row["question"]] for row in batch]
    assert len({row["work"] for row in batch}) == len(batch)


def test_a_streamed_run_yields_pieces_that_add_up_to_the_plain_run(
    frontend: dict[str, Any],
) -> None:
    stream = frontend["stream"]
    # How many pieces depends on how fast the script reads; the prompt comes first on its own.
    assert stream["pieces"][0] == "Count on: 1, 2, 3," and len(stream["pieces"]) >= 2
    assert "".join(stream["pieces"]) == stream["text"] == stream["plain"]
