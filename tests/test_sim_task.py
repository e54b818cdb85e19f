"""Task files: validation with one-line errors naming the file and problem; recognising problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ttcdsl.runtime.sim import SimTask, TaskError, load_task

DEMO = Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json"


def _problem(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "q1",
        "question": "What is 17 + 25?",
        "answer": "42",
        "answers": {"42": 0.45, "32": 0.35, "41": 0.20},
        "steps": [3, 6],
        "step_tokens": [20, 60],
        "prm_noise": 0.15,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _load(tmp_path: Path, data: Any) -> SimTask:
    path = tmp_path / "task.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return load_task(path)


def test_demo_task_loads() -> None:
    task = load_task(DEMO)
    assert len(task.problems) >= 5
    assert task.source == str(DEMO)
    for problem in task.problems:
        assert abs(sum(problem.answers.values()) - 1.0) <= 1e-6


def test_the_design_example_loads_with_every_field(tmp_path: Path) -> None:
    task = _load(tmp_path, {"problems": [_problem()]})
    (p,) = task.problems
    assert (p.id, p.answer, p.steps, p.step_tokens, p.prm_noise) == (
        "q1",
        "42",
        (3, 6),
        (20, 60),
        0.15,
    )
    assert p.p_correct == 0.45


def test_optional_fields_default(tmp_path: Path) -> None:
    task = _load(tmp_path, {"problems": [{"question": "Q?", "answer": 7, "answers": {"7": 1}}]})
    (p,) = task.problems
    assert (p.id, p.answer, p.steps, p.step_tokens, p.prm_noise) == (
        "p1",
        "7",
        (2, 5),
        (16, 48),
        0.1,
    )


def test_answer_outside_answers_is_allowed(tmp_path: Path) -> None:
    task = _load(tmp_path, {"problems": [_problem(answer="99")]})
    assert task.problems[0].p_correct == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{nope", "task.json:1:2: task file is not valid JSON"),
        ([], 'a task file must be a JSON object {"problems": [...]}'),
        ({"problems": []}, '"problems" must be a non-empty list'),
        ({"problems": [], "extra": 1}, 'unknown top-level key "extra"'),
        (
            {"problems": [_problem(answers={"42": 0.5, "32": 0.4})]},
            'problems[0] ("q1"): answers probabilities sum to 0.9, expected 1 (within 1e-6)',
        ),
        (
            {"problems": [_problem(answers={"42": 1.5, "32": -0.5})]},
            "answers['42'] = 1.5 is not a probability in [0, 1]",
        ),
        ({"problems": [_problem(answers={})]}, '"answers" must be a non-empty object'),
        (
            {"problems": [_problem(answers={"42": "x"})]},
            "answers['42'] must be a number, got a string",
        ),
        (
            {"problems": [_problem(steps=[5, 2])]},
            '"steps" = [5, 2] must satisfy 1 <= low <= high <= 200',
        ),
        ({"problems": [_problem(steps=[0, 2])]}, '"steps" = [0, 2] must satisfy'),
        (
            {"problems": [_problem(step_tokens=[10])]},
            '"step_tokens" must be a list of two integers [low, high], got [10]',
        ),
        ({"problems": [_problem(prm_noise=2)]}, '"prm_noise" must be a number in [0, 1], got 2'),
        ({"problems": [_problem(prm_nosie=0.1)]}, 'unknown key "prm_nosie"'),
        ({"problems": [_problem(question=None)]}, 'missing "question"'),
        ({"problems": [_problem(question="  ")]}, '"question" must be a non-empty string'),
        ({"problems": [_problem(answer="4\n2")]}, '"answer" must be one non-empty line'),
        (
            {"problems": [_problem(answers={" 42": 1.0})]},
            "must be one non-empty line without surrounding spaces",
        ),
        (
            {"problems": [_problem(), _problem(question="Other?")]},
            'problems[1] ("q1"): duplicate id "q1"',
        ),
        (
            {"problems": [_problem(), _problem(id="q2")]},
            "problems[1] (\"q2\"): duplicate question 'What is 17 + 25?'",
        ),
        ({"problems": ["x"]}, "problems[0]: expected an object, got a string"),
    ],
)
def test_bad_task_files_give_one_line_errors(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(TaskError) as info:
        _load(tmp_path, data)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path / "task.json")), text
    assert message in text, text


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"task file .*missing\.json does not exist"):
        load_task(tmp_path / "missing.json")


def _task(*questions: str) -> SimTask:
    return SimTask.from_dict(
        {"problems": [{"question": q, "answer": "1", "answers": {"1": 1.0}} for q in questions]}
    )


def test_find_picks_the_last_question_in_the_prompt() -> None:
    task = _task("What is 1 + 1?", "What is 2 + 2?")
    prompt = "Example: What is 1 + 1?\nStep 1 of 1: ...\n\nNow: What is 2 + 2?\n"
    found = task.find(prompt)
    assert found is not None
    problem, end = found
    assert problem.question == "What is 2 + 2?"
    assert prompt[:end].endswith("What is 2 + 2?")


def test_find_respects_word_boundaries() -> None:
    task = _task("23 + 58", "123 + 58")
    found = task.find("Compute 123 + 58 please")
    assert found is not None and found[0].question == "123 + 58"
    assert _task("23 + 58").find("Compute 123 + 581") is None


def test_find_prefers_the_longest_question_at_the_same_place() -> None:
    task = _task("What is 2+2?", "What is 2+2? Then add 3.")
    found = task.find("Q: What is 2+2? Then add 3.\n")
    assert found is not None and found[0].question == "What is 2+2? Then add 3."


def test_unknown_prompt_finds_nothing() -> None:
    assert _task("What is 2 + 2?").find("Tell me a story.") is None
    assert SimTask.empty().find("anything") is None
