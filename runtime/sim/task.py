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

``prm_bias`` makes the reward model fallible in a systematic way (a reward-hacked PRM)::

    "prm_bias": {"favoured": ["13.6"], "strength": 3.0}

``favoured``: wrong answers (keys of ``answers`` other than ``answer``) whose trajectories the
PRM finds convincing; ``strength`` (in (0, 10], default 3): how much it likes them, in units of
the gap between a right and a wrong step (2 = level with right steps, more = preferred).

A *reasoning* problem also has ``thinking`` (see `ttcdsl.runtime.sim.reasoning`)::

    "thinking": {"curve": [[0, 0.15], [300, 0.55], [900, 0.8], [2500, 0.6]],
                 "natural": [200, 1200]}

``curve``: points ``[tokens, p]`` with tokens strictly increasing from 0 (integers, at most
32768) and ``p`` in [0, 1]: the chance that the final answer is right after that many thinking
tokens, linear in between and flat after the last point (a falling tail is overthinking).
``natural``: inclusive range ``[low, high]`` (16 <= low <= high <= 32768) of the thinking
length at which a branch closes its thinking by itself.  Its wrong answers are the keys of
``answers`` other than ``answer``, drawn in proportion to their weights (so at least one must
have a positive weight); the weight of ``answer`` itself is unused.

`load_task` raises `TaskError` with one line naming the file, the problem and what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec

from .errors import TaskError

__all__ = ["GENERIC", "THINK_TAGS", "PrmBias", "Problem", "SimTask", "Thinking", "load_task"]

_MAX_STEPS = 200
_MAX_STEP_TOKENS = 4096
_MAX_THINK = 32768
_PROBLEM_KEYS = (
    "id",
    "question",
    "answer",
    "answers",
    "steps",
    "step_tokens",
    "prm_noise",
    "thinking",
    "prm_bias",
)
THINK_TAGS = ("<think>", "</think>")


class Thinking(msgspec.Struct, frozen=True):
    """A reasoning problem's thinking curve and natural thinking lengths (module doc)."""

    curve: tuple[tuple[int, float], ...]
    natural: tuple[int, int]

    def p_right(self, tokens: int) -> float:
        """The chance that the answer is right after ``tokens`` thinking tokens."""
        points = self.curve
        if tokens >= points[-1][0]:
            return points[-1][1]
        for (t0, p0), (t1, p1) in pairwise(points):
            if tokens < t1:
                return p0 + (p1 - p0) * (max(tokens, t0) - t0) / (t1 - t0)
        return points[-1][1]  # pragma: no cover - the loop always returns


class PrmBias(msgspec.Struct, frozen=True):
    """Wrong answers the reward model favours, and by how much (module doc)."""

    favoured: tuple[str, ...]
    strength: float = 3.0


class Problem(msgspec.Struct, frozen=True):
    """One problem of a task (see the module doc for the meaning of each field)."""

    id: str
    question: str
    answer: str
    answers: dict[str, float]
    steps: tuple[int, int] = (2, 5)
    step_tokens: tuple[int, int] = (16, 48)
    prm_noise: float = 0.1
    thinking: Thinking | None = None
    prm_bias: PrmBias | None = None

    @property
    def p_correct(self) -> float:
        return self.answers.get(self.answer, 0.0)

    @property
    def wrong_answers(self) -> tuple[tuple[str, float], ...]:
        """The wrong answers with a positive weight, in task order."""
        return tuple((a, p) for a, p in self.answers.items() if a != self.answer and p > 0.0)


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

    @property
    def think_tags(self) -> tuple[str, str] | None:
        """``("<think>", "</think>")`` when any problem reasons (its samples think first, as a
        model served with SGLang's ``--reasoning-parser deepseek-r1``), else None."""
        return THINK_TAGS if any(p.thinking is not None for p in self.problems) else None

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
        # A C-level scan first: a question not in the text at all needs no closer look.
        for problem in [p for p in self.problems if p.question in text]:
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
    thinking = None
    if "thinking" in item:
        thinking = _thinking(item["thinking"], f'{where}: "thinking"')
        if not any(a != answer and p > 0.0 for a, p in probs.items()):
            raise TaskError(f'{where}: a reasoning problem needs a wrong answer in "answers"')
    bias = None
    if "prm_bias" in item:
        bias = _prm_bias(item["prm_bias"], f'{where}: "prm_bias"', answer, probs)
    return Problem(
        id=str(pid),
        question=question,
        answer=answer,
        answers=probs,
        steps=steps,
        step_tokens=step_tokens,
        prm_noise=float(noise),
        thinking=thinking,
        prm_bias=bias,
    )


def _prm_bias(value: Any, what: str, answer: str, answers: dict[str, float]) -> PrmBias:
    if not isinstance(value, Mapping):
        raise TaskError(f'{what} must be an object {{"favoured": [...], "strength": X}}')
    extra = sorted(set(value) - {"favoured", "strength"})
    if extra:
        raise TaskError(f'{what}: unknown key "{extra[0]}" (expected favoured, strength)')
    favoured = value.get("favoured")
    if not isinstance(favoured, list) or not favoured:
        raise TaskError(f"{what}.favoured must be a non-empty list of wrong answers")
    names: list[str] = []
    for raw in favoured:
        name = _answer_text(raw, f"{what}.favoured entry")
        if name == answer or name not in answers:
            raise TaskError(f"{what}.favoured: {name!r} is not a wrong answer of this problem")
        names.append(name)
    strength = value.get("strength", 3.0)
    ok = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    if not ok or not 0.0 < strength <= 10.0:
        raise TaskError(f"{what}.strength must be a number in (0, 10], got {strength!r}")
    return PrmBias(favoured=tuple(names), strength=float(strength))


def _thinking(value: Any, what: str) -> Thinking:
    if not isinstance(value, Mapping):
        raise TaskError(f'{what} must be an object {{"curve": [...], "natural": [low, high]}}')
    extra = sorted(set(value) - {"curve", "natural"})
    if extra:
        raise TaskError(f'{what}: unknown key "{extra[0]}" (expected curve, natural)')
    for key in ("curve", "natural"):
        if key not in value:
            raise TaskError(f'{what}: missing "{key}"')
    curve = value["curve"]
    if not isinstance(curve, list) or not curve:
        raise TaskError(f"{what}.curve must be a non-empty list of [tokens, p] points")
    points: list[tuple[int, float]] = []
    for i, point in enumerate(curve):
        ok = (
            isinstance(point, list)
            and len(point) == 2
            and isinstance(point[0], int)
            and not isinstance(point[0], bool)
            and isinstance(point[1], (int, float))
            and not isinstance(point[1], bool)
        )
        if not ok:
            raise TaskError(f"{what}.curve[{i}] must be [tokens, p], got {point!r}")
        tokens, p = point
        if not 0.0 <= p <= 1.0:
            raise TaskError(f"{what}.curve[{i}]: p = {p} is not a probability in [0, 1]")
        if not 0 <= tokens <= _MAX_THINK:
            raise TaskError(f"{what}.curve[{i}]: tokens = {tokens} must be in 0..{_MAX_THINK}")
        if points and tokens <= points[-1][0]:
            raise TaskError(
                f"{what}.curve[{i}]: tokens must increase, got {tokens} after {points[-1][0]}"
            )
        points.append((tokens, float(p)))
    if points[0][0] != 0:
        raise TaskError(f"{what}.curve must start at 0 tokens, got {points[0][0]}")
    natural = _range(value["natural"], f"{what}.natural", _MAX_THINK)
    if natural[0] < 16:
        raise TaskError(f"{what}.natural = [{natural[0]}, {natural[1]}] must start at >= 16 tokens")
    return Thinking(curve=tuple(points), natural=natural)


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
