"""Task files for the simulator (DESIGN §6): loading, validation, and recognising a problem.

A task file is JSON::

    {"problems": [
       {"id": "q1", "question": "What is 17 + 25?", "answer": "42",
        "answers": {"42": 0.45, "32": 0.35, "41": 0.20},
        "steps": [3, 6], "step_tokens": [20, 60],
        "prm_noise": 0.15}
     ]}

Per problem: ``question`` (required, non-empty, unique), ``answer`` (required: the correct
answer, a single line; it need not appear in ``answers`` — then no sample is ever right),
``answers`` (required: answer -> probability of a complete sample ending with it; each in [0, 1],
summing to 1 within 1e-6), ``id`` (default ``p1``, ``p2``...), ``steps`` (inclusive range of the
number of reasoning steps, default ``[2, 5]``, within 1..200), ``step_tokens`` (inclusive range
of tokens per step, default ``[16, 48]``, within 1..4096; a step is never shorter than its fixed
wording, about 13 tokens), ``prm_noise`` (verifier noise in [0, 1], default 0.1; see
`ttcdsl.runtime.sim.model`).  Numbers given as answers are read as their JSON text.  Unknown keys
are errors, so a typo cannot silently fall back to a default.

`load_task` raises `TaskError` with one line naming the file, the problem and what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .errors import TaskError

__all__ = ["GENERIC", "Problem", "SimTask", "load_task"]

_MAX_STEPS = 200
_MAX_STEP_TOKENS = 4096
_PROBLEM_KEYS = ("id", "question", "answer", "answers", "steps", "step_tokens", "prm_noise")


class Problem(msgspec.Struct, frozen=True):
    """One problem of a task (see the module doc for the meaning of each field)."""

    id: str
    question: str
    answer: str
    answers: dict[str, float]
    steps: tuple[int, int] = (2, 5)
    step_tokens: tuple[int, int] = (16, 48)
    prm_noise: float = 0.1

    @property
    def p_correct(self) -> float:
        return self.answers.get(self.answer, 0.0)


# What the simulator does for a prompt that contains no known question.
GENERIC = Problem(
    id="generic",
    question="",
    answer="unknown",
    answers={"unknown": 1.0},
    steps=(2, 4),
    step_tokens=(16, 32),
    prm_noise=0.5,
)


class SimTask(msgspec.Struct, frozen=True):
    """The problems a simulator knows; `find` recognises one in a prompt."""

    problems: tuple[Problem, ...] = ()
    source: str = "<memory>"

    @classmethod
    def empty(cls) -> SimTask:
        """A task with no problems: every prompt gets generic text and answer ``unknown``."""
        return cls()

    @classmethod
    def from_dict(cls, data: Any, source: str = "<memory>") -> SimTask:
        """Validate parsed JSON (``{"problems": [...]}``); errors name ``source``."""
        return _parse_task(data, source)

    def find(self, text: str) -> tuple[Problem, int] | None:
        """The problem whose question occurs last in ``text`` (longest wins on a tie), and the
        index just past that occurrence.  An occurrence only counts where it does not run into
        letters or digits on either side, so ``23 + 58`` is not found inside ``123 + 58``."""
        best: tuple[int, int, Problem] | None = None
        for problem in self.problems:
            start = _last_bounded(text, problem.question)
            if start < 0:
                continue
            key = (start, len(problem.question))
            if best is None or key > best[:2]:
                best = (start, len(problem.question), problem)
        if best is None:
            return None
        return best[2], best[0] + best[1]


def _last_bounded(text: str, needle: str) -> int:
    end = len(text)
    while True:
        start = text.rfind(needle, 0, end)
        if start < 0:
            return -1
        before = text[start - 1] if start > 0 else ""
        after_i = start + len(needle)
        after = text[after_i] if after_i < len(text) else ""
        clash_before = before.isalnum() and needle[0].isalnum()
        clash_after = after.isalnum() and needle[-1].isalnum()
        if not clash_before and not clash_after:
            return start
        end = start + len(needle) - 1


def load_task(path: str | Path) -> SimTask:
    """Read and validate a task file; raises `TaskError` naming the file and the problem."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise TaskError(f"task file {p} is not a regular file; expected a JSON file")
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"task file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read task file {p}: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskError(
            f"{p}:{exc.lineno}:{exc.colno}: task file is not valid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise TaskError(f"{p}: task file is not valid JSON: nested too deeply") from None
    except ValueError:  # Python's int-string limit
        raise TaskError(f"{p}: task file is not valid JSON: a number is too long") from None
    return _parse_task(data, str(p))


def _parse_task(data: Any, source: str) -> SimTask:
    if not isinstance(data, Mapping):
        raise TaskError(f'{source}: a task file must be a JSON object {{"problems": [...]}}')
    extra = sorted(set(data) - {"problems"})
    if extra:
        raise TaskError(f'{source}: unknown top-level key "{extra[0]}" (expected "problems")')
    problems = data.get("problems")
    if not isinstance(problems, list) or not problems:
        raise TaskError(f'{source}: "problems" must be a non-empty list of problem objects')
    parsed: list[Problem] = []
    ids: set[str] = set()
    questions: set[str] = set()
    for index, item in enumerate(problems):
        problem = _parse_problem(item, index, source)
        where = f'{source}: problems[{index}] ("{problem.id}")'
        if problem.id in ids:
            raise TaskError(f'{where}: duplicate id "{problem.id}"')
        if problem.question in questions:
            raise TaskError(f"{where}: duplicate question {problem.question!r}")
        ids.add(problem.id)
        questions.add(problem.question)
        parsed.append(problem)
    return SimTask(problems=tuple(parsed), source=source)


def _parse_problem(item: Any, index: int, source: str) -> Problem:
    where = f"{source}: problems[{index}]"
    if not isinstance(item, Mapping):
        raise TaskError(f"{where}: expected an object, got {_kind(item)}")
    pid = item.get("id", f"p{index + 1}")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
        raise TaskError(f'{where}: "id" must be a non-empty string')
    where = f'{where} ("{pid}")'
    extra = [k for k in item if k not in _PROBLEM_KEYS]
    if extra:
        raise TaskError(
            f'{where}: unknown key "{extra[0]}" (expected one of {", ".join(_PROBLEM_KEYS)})'
        )
    for key in ("question", "answer", "answers"):
        if key not in item:
            raise TaskError(f'{where}: missing "{key}"')
    question = item["question"]
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f'{where}: "question" must be a non-empty string')
    answer = _answer_text(item["answer"], f'{where}: "answer"')
    answers = item["answers"]
    if not isinstance(answers, Mapping) or not answers:
        raise TaskError(f'{where}: "answers" must be a non-empty object of answer -> probability')
    probs: dict[str, float] = {}
    for key, value in answers.items():
        text = _answer_text(key, f"{where}: answers key {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TaskError(f"{where}: answers[{key!r}] must be a number, got {_kind(value)}")
        if not 0.0 <= value <= 1.0:
            raise TaskError(f"{where}: answers[{key!r}] = {value} is not a probability in [0, 1]")
        probs[text] = float(value)
    total = math.fsum(probs.values())
    if abs(total - 1.0) > 1e-6:
        raise TaskError(
            f"{where}: answers probabilities sum to {total:.6g}, expected 1 (within 1e-6)"
        )
    steps = _range(item.get("steps", [2, 5]), f'{where}: "steps"', _MAX_STEPS)
    step_tokens = _range(
        item.get("step_tokens", [16, 48]), f'{where}: "step_tokens"', _MAX_STEP_TOKENS
    )
    noise = item.get("prm_noise", 0.1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise TaskError(f'{where}: "prm_noise" must be a number in [0, 1], got {noise!r}')
    return Problem(
        id=str(pid),
        question=question,
        answer=answer,
        answers=probs,
        steps=steps,
        step_tokens=step_tokens,
        prm_noise=float(noise),
    )


_BAD_ANSWER = re.compile(r"[\r\n]")


def _answer_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TaskError(f"{what} must be a string, got {_kind(value)}")
    text = value if isinstance(value, str) else json.dumps(value)
    if not text or text != text.strip() or _BAD_ANSWER.search(text):
        raise TaskError(
            f"{what} must be one non-empty line without surrounding spaces, got {text!r}"
        )
    return text


def _range(value: Any, what: str, upper: int) -> tuple[int, int]:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        raise TaskError(f"{what} must be a list of two integers [low, high], got {value!r}")
    low, high = value
    if not 1 <= low <= high <= upper:
        raise TaskError(f"{what} = [{low}, {high}] must satisfy 1 <= low <= high <= {upper}")
    return (low, high)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
