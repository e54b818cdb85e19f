"""Reasoning mode: thinking curves in task files, `<think>` samples, caps, extensions, probes,
and the accuracy a thinking budget must give (exactly the curve, within binomial error)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import pytest

from ttcdsl.runtime.sim import SimEngine, SimTask, TaskError, load_task
from ttcdsl.runtime.sim.engine import EngineRequest
from ttcdsl.runtime.sim.model import continuation, prm_score
from ttcdsl.runtime.sim.reasoning import thinking_length
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

Q = "What is 17 + 25?"
PROMPT = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
CURVE = [[0, 0.15], [300, 0.55], [900, 0.8], [2500, 0.3]]
ROOT = Path(__file__).resolve().parent.parent


def _task(natural: list[int], curve: list[list[float]] = CURVE) -> SimTask:
    problem = {
        "question": Q,
        "answer": "42",
        "answers": {"42": 0.5, "32": 0.3, "41": 0.2},
        "thinking": {"curve": curve, "natural": natural},
    }
    return SimTask.from_dict({"problems": [problem]})


def _gen(task: SimTask, text: str, seed: int | None, limit: int = 20_000) -> tuple[str, bool]:
    """What the sim writes after ``text`` (text, ended by EOS?) within ``limit`` tokens."""
    ids: list[int] = []
    for tok in continuation(task, text, seed):
        if tok.id == EOS_ID:
            return tokenizer.decode(ids), True
        ids.append(tok.id)
        if len(ids) >= limit:
            break
    return tokenizer.decode(ids), False


def _answer(text: str) -> str:
    return text.rsplit("The answer is ", 1)[1].rstrip(".")


def _within(hits: int, n: int, p: float) -> bool:
    """``hits`` of ``n`` is within 4 binomial standard errors of ``p``."""
    return abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


# ---------------------------------------------------------------- the task format


def test_a_thinking_curve_loads_and_is_piecewise_linear() -> None:
    task = _task([200, 1200])
    thinking = task.problems[0].thinking
    assert thinking is not None and thinking.natural == (200, 1200)
    assert thinking.p_right(0) == 0.15 and thinking.p_right(300) == 0.55
    assert thinking.p_right(150) == pytest.approx(0.35)
    assert thinking.p_right(1700) == pytest.approx(0.55)
    assert thinking.p_right(99_999) == 0.3  # flat after the last point
    assert task.think_tags == ("<think>", "</think>")


def test_old_task_files_stay_valid_and_do_not_reason() -> None:
    for name in ("demo.json", "math.json", "math_noisy.json"):
        task = load_task(ROOT / "data" / "tasks" / name)
        assert task.think_tags is None
        assert all(p.thinking is None for p in task.problems)


def test_the_shipped_reasoning_task_reasons() -> None:
    task = load_task(ROOT / "data" / "tasks" / "math_reasoning.json")
    assert task.think_tags == ("<think>", "</think>")
    assert all(p.thinking is not None for p in task.problems)


@pytest.mark.parametrize(
    ("thinking", "message"),
    [
        ({"curve": [[0, 0.5]], "natural": [20, 30], "peak": 3}, 'unknown key "peak"'),
        ({"natural": [20, 30]}, 'missing "curve"'),
        ({"curve": [], "natural": [20, 30]}, "non-empty list of"),
        ({"curve": [[0, 0.5], [0, 0.6]], "natural": [20, 30]}, "tokens must increase"),
        ({"curve": [[10, 0.5]], "natural": [20, 30]}, "must start at 0 tokens"),
        ({"curve": [[0, 1.5]], "natural": [20, 30]}, "not a probability"),
        ({"curve": [[0, "x"]], "natural": [20, 30]}, "must be .tokens, p., got"),
        ({"curve": [[0, 0.5]], "natural": [5, 30]}, "must start at >= 16 tokens"),
        ({"curve": [[0, 0.5]], "natural": [30, 20]}, "low <= high"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_thinking_is_a_one_line_task_error(thinking: object, message: str) -> None:
    problem = {"question": Q, "answer": "42", "answers": {"42": 0.5, "3": 0.5}}
    with pytest.raises(TaskError, match=message) as info:
        SimTask.from_dict({"problems": [{**problem, "thinking": thinking}]}, "t.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("t.json: problems[0]")


def test_a_reasoning_problem_needs_a_wrong_answer() -> None:
    problem = {"question": Q, "answer": "42", "answers": {"42": 1.0},
               "thinking": {"curve": [[0, 0.5]], "natural": [20, 30]}}
    with pytest.raises(TaskError, match="needs a wrong answer"):
        SimTask.from_dict({"problems": [problem]})


# ---------------------------------------------------------------- what a sample looks like


def test_a_fresh_sample_thinks_then_answers_in_the_usual_wording() -> None:
    task = _task([200, 400])
    for seed in range(20):
        text, ended = _gen(task, PROMPT, seed)
        assert ended and text.startswith("<think>\n")
        thinking, answer = text[len("<think>") :].split("</think>")
        assert 200 <= thinking_length(thinking) <= 400
        assert answer.startswith("\n\nThe answer is ") and _answer(answer) in {"42", "32", "41"}


def test_cut_anywhere_and_continued_with_any_seed_a_branch_gives_the_same_answer() -> None:
    task = _task([60, 120])
    for seed in range(10):
        whole, _ = _gen(task, PROMPT, seed)
        ids = tokenizer.encode(whole)
        for cut in (3, 7, 30, 90, len(ids) - 3):
            head = tokenizer.decode(ids[:cut])
            same, _ = _gen(task, PROMPT + head, seed)
            assert head + same == whole  # the same seed reproduces the rest exactly
            if cut > 20:  # past the first sentence: the branch is fixed, the seed irrelevant
                other, _ = _gen(task, PROMPT + head, seed + 1000)
                assert head + other == whole


def test_a_prompt_that_opens_the_thinking_itself_is_continued() -> None:
    task = _task([60, 120])
    text, ended = _gen(task, PROMPT + "<think>\n", 3)
    assert ended and "<think>" not in text and "\n</think>\n\nThe answer is " in text
    text, _ = _gen(task, PROMPT + "<thi", 3)
    assert text.startswith("nk>\n")


def test_temperature_zero_is_one_branch() -> None:
    task = _task([60, 120])
    assert _gen(task, PROMPT, None) == _gen(task, PROMPT, None)


# ---------------------------------------------------------------- caps, extensions, probes


def _thoughts(task: SimTask, n: int, tokens: int) -> list[str]:
    """``n`` branches' thinking (after ``<think>``), each cut at ``tokens`` thinking tokens."""
    out = []
    for seed in range(n):
        text, _ = _gen(task, PROMPT, seed, limit=tokens + 4)  # "<think>\n" is 4 tokens
        assert "</think>" not in text
        out.append(text[len("<think>") :])
    return out


@pytest.mark.parametrize("cap", [100, 300, 900])
def test_a_cap_at_t_gives_accuracy_p_of_t(cap: int) -> None:
    task = _task([2000, 3000])  # nobody closes on their own before the cap
    p = task.problems[0].thinking.p_right(cap)  # type: ignore[union-attr]
    n = 200
    hits = 0
    for thought in _thoughts(task, n, cap):
        assert thinking_length(thought) == cap
        rest, ended = _gen(task, PROMPT + "<think>" + thought + "\n</think>", 1)
        assert ended and rest.startswith("\n\nThe answer is ")
        hits += _answer(rest) == "42"
    assert _within(hits, n, p), (hits / n, p)


def test_a_cap_after_a_wrap_up_message_counts_the_message_as_thinking() -> None:
    task = _task([2000, 3000])
    for thought in _thoughts(task, 30, 200):
        wrapped = thought + "\nTime is up, I should answer now.\n"
        rest, _ = _gen(task, PROMPT + "<think>" + wrapped + "</think>", 7)
        probe, _ = _gen(task, PROMPT + "<think>" + wrapped + "</think>\n\\boxed{", 7)
        assert _answer(rest) == probe.rstrip("}")


def test_probes_agree_with_the_final_answer_at_the_same_length() -> None:
    task = _task([2000, 3000])
    for thought in _thoughts(task, 60, 250):
        probe, ended = _gen(task, PROMPT + "<think>" + thought + " the final answer is \\boxed{", 2)
        assert ended and probe.endswith("}")
        capped, _ = _gen(task, PROMPT + "<think>" + thought + " the final answer is\n</think>", 2)
        assert probe[:-1] == _answer(capped)


def test_successive_probes_converge_while_the_curve_rises() -> None:
    # Right iff u < p(t): with p rising, a branch's probes go wrong -> right at most once.
    task = _task([2000, 3000])
    for thought in _thoughts(task, 40, 900):
        ids = tokenizer.encode(thought)
        flags = []
        for t in range(100, 901, 100):
            head = tokenizer.decode(ids[: t + 1])  # the leading "\n" plus t thinking tokens
            probe, _ = _gen(task, PROMPT + "<think>" + head + "... Final Answer: \\boxed{", 5)
            flags.append(probe == "42}")
        assert flags == sorted(flags), flags


def test_wait_extends_the_thinking_by_another_natural_segment() -> None:
    task = _task([200, 300])
    for seed in range(10):
        text, _ = _gen(task, PROMPT, seed)
        first = text.split("</think>")[0]
        more, ended = _gen(task, PROMPT + first + "Wait,", seed)
        assert ended and "</think>" in more
        extra = thinking_length(first + "Wait," + more.split("</think>")[0])
        assert 200 + 200 <= extra <= 300 + 300 + 5


def test_extension_past_the_peak_lowers_accuracy() -> None:
    task = _task([400, 500], curve=[[0, 0.1], [450, 0.85], [1300, 0.2]])
    n, natural, extended = 150, 0, 0
    for seed in range(n):
        text, _ = _gen(task, PROMPT, seed)
        natural += _answer(text) == "42"
        for _ in range(2):  # s1 budget forcing: replace the close with "Wait," twice
            text = text.split("</think>")[0] + "Wait,"
            text += _gen(task, PROMPT + text, seed)[0]
        extended += _answer(text) == "42"
    assert natural / n > 0.7 and extended / n < 0.4


def test_the_prm_follows_the_answer_the_branch_stands_for() -> None:
    task = _task([60, 120], curve=[[0, 0.5]])
    right, wrong = [], []
    for seed in range(40):
        text, _ = _gen(task, PROMPT, seed)
        (right if _answer(text) == "42" else wrong).append(prm_score(task, PROMPT + text))
    assert right and wrong and min(right) > max(wrong)


# ---------------------------------------------------------------- the server says it reasons


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_server_reports_the_deepseek_r1_reasoning_parser() -> None:
    import aiohttp

    for task, want in ((_task([60, 120]), "deepseek-r1"), (SimTask.empty(), None)):
        async with running_server(task) as url, aiohttp.ClientSession() as http:
            for path in ("/get_server_info", "/get_model_info"):
                async with http.get(url + path) as resp:
                    assert (await resp.json())["reasoning_parser"] == want


@pytest.mark.anyio
async def test_through_the_engine_a_client_can_stop_at_the_close_and_force_more() -> None:
    engine = SimEngine(_task([100, 150]))
    prompt = tokenizer.encode(PROMPT)
    out = await engine.execute(EngineRequest(rid="a", input_ids=prompt, max_new_tokens=4000,
                                             stop=("</think>",), seed=4))
    first = tokenizer.decode(out.output_ids)
    assert out.finish == {"type": "stop", "matched": "</think>"}
    forced = tokenizer.encode(first[: -len("</think>")] + "Wait,")
    out = await engine.execute(EngineRequest(rid="b", input_ids=prompt + forced,
                                             max_new_tokens=4000, seed=9))
    rest = tokenizer.decode(out.output_ids)
    assert out.finish["type"] == "stop" and "</think>\n\nThe answer is " in rest
    await anyio.lowlevel.checkpoint()


def test_the_task_file_round_trips_through_json() -> None:
    data = {"problems": [{"question": Q, "answer": 42, "answers": {"42": 0.6, "41": 0.4},
                          "thinking": {"curve": CURVE, "natural": [200, 1200]}}]}
    task = SimTask.from_dict(json.loads(json.dumps(data)))
    assert task.problems[0].thinking.curve[-1] == (2500, 0.3)  # type: ignore[union-attr]
