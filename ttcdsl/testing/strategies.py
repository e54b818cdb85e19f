"""Hypothesis strategies for property tests of `.ttc` strategies (`ttcdsl.testing.strategies`).

    sim_tasks(...)           valid simulator tasks (`SimTask`): how hard each problem is, how
                             many answers it spreads over, its step counts and lengths, PRM noise
    backend_behaviours(...)  adversarial scripted models (`Script` for `ScriptedBackend`): text
                             cut anywhere, any finish reason, any token count up to what the
                             request allowed, latencies, transient errors
    programs(...)            source text of valid `.ttc` programs (every draw passes `ttc check`)
    seeds()                  run seeds

Every task drawn validates (`SimTask.from_dict(task_dict(t))` gives it back) and every behaviour
keeps the backend protocol's one hard rule (never more completion tokens than allowed), so a
failure found with them is the strategy's or the runtime's, not the generator's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from ttcdsl.runtime.backend import GenRequest
from ttcdsl.runtime.backends.scripted import Script
from ttcdsl.runtime.sim.task import Problem, SimTask
from ttcdsl.testing.generators import programs

__all__ = ["backend_behaviours", "programs", "scripts", "seeds", "sim_tasks", "task_dict"]

Range = tuple[float, float]


def _range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    ok = isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not low <= value[0] <= value[1] <= high:
        raise InvalidArgument(f"{name} must be a (low, high) pair within [{low:g}, {high:g}], got {value!r}")
    return float(value[0]), float(value[1])


@st.composite
def _problem(draw: st.DrawFn, index: int, difficulty: Range, spread: tuple[int, int],
             steps: tuple[int, int], prm_noise: Range) -> Problem:
    k = draw(st.integers(*spread))
    values = [str(v) for v in draw(st.lists(st.integers(0, 999), min_size=k, max_size=k, unique=True))]
    correct = values[0]
    if k == 1:  # one answer: right, unless every sample must be wrong
        answers = {correct if difficulty[0] < 1 else str((int(correct) + 1) % 1000): 1.0}
    else:  # `difficulty` is the chance a sample ends with a wrong answer
        wrong = draw(st.floats(*difficulty))
        weights = draw(st.lists(st.integers(1, 20), min_size=k - 1, max_size=k - 1))
        shares = {correct: 1.0 - wrong} | {v: wrong * w / sum(weights) for v, w in zip(values[1:], weights)}
        answers = {a: p for a, p in shares.items() if p > 0}
    low = draw(st.integers(*steps))
    tok = draw(st.integers(14, 40))
    a, b = draw(st.integers(1, 50)), draw(st.integers(1, 50))
    return Problem(
        id=f"p{index}",
        question=f"What is {a} + {b} (case {index})?",
        answer=correct,
        answers=answers,
        steps=(low, draw(st.integers(low, steps[1]))),
        step_tokens=(tok, tok + draw(st.integers(0, 30))),
        prm_noise=draw(st.floats(*prm_noise)),
    )


def sim_tasks(max_problems: int = 3, *, difficulty: Range = (0.0, 1.0), spread: tuple[int, int] = (1, 4),
              steps: tuple[int, int] = (1, 6), prm_noise: Range = (0.0, 1.0)) -> st.SearchStrategy[SimTask]:
    """Valid simulator tasks of 1..`max_problems` problems with distinct questions.

    Per problem: `difficulty` bounds the probability that a sample ends with a wrong answer,
    `spread` the number of distinct answers samples end with, `steps` the reasoning steps of a
    sample (each problem draws a range inside it), `prm_noise` the reward model's noise."""
    if not isinstance(max_problems, int) or max_problems < 1:
        raise InvalidArgument(f"max_problems must be a positive int, got {max_problems!r}")
    d = _range("difficulty", difficulty, 0, 1)
    s = tuple(int(v) for v in _range("spread", spread, 1, 50))
    n = tuple(int(v) for v in _range("steps", steps, 1, 50))
    noise = _range("prm_noise", prm_noise, 0, 1)

    @st.composite
    def tasks(draw: st.DrawFn) -> SimTask:
        count = draw(st.integers(1, max_problems))
        return SimTask(tuple(draw(_problem(i, d, s, n, noise)) for i in range(count)))  # type: ignore[arg-type]

    return tasks()


def task_dict(task: SimTask) -> dict[str, Any]:
    """A task in the task-file format (what `--sim-task FILE` reads)."""
    return {"problems": [
        {"id": p.id, "question": p.question, "answer": p.answer, "answers": dict(p.answers),
         "steps": list(p.steps), "step_tokens": list(p.step_tokens), "prm_noise": p.prm_noise}
        for p in task.problems
    ]}


# ---- adversarial models ----

_STEP_WORDS = ("First", "we", "add", "the", "numbers", "so", "it", "is", "7", "12", "then")


def _stepwise(request: GenRequest, seed: int) -> str:
    """Text in steps separated by blank lines, ending with an answer line: what the `step`
    settings of real strategies cut on."""
    words = [_STEP_WORDS[(seed >> (i % 24)) % len(_STEP_WORDS)] for i in range(3 + seed % 5)]
    steps = [" ".join(words[: 2 + (seed + j) % len(words)]) + "." for j in range(1 + seed % 4)]
    return "\n\n".join([*steps, f"The answer is {seed % 3 * 5 + 7}."])


def _long(request: GenRequest, seed: int) -> str:
    """More text than any drawn `max_tokens` allows: every request runs into its limit."""
    return ("step " * 40) + "The answer is 42."


def _empty(request: GenRequest, seed: int) -> str:
    return ""


_TEXTS = {"words": None, "steps": _stepwise, "long": _long, "empty": _empty}


def backend_behaviours(*, failures: bool = True, latencies: bool = True,
                       max_latency_s: float = 0.002) -> st.SearchStrategy[Script]:
    """Adversarial models for `ScriptedBackend`: what text they write (random words, blank-line
    steps, more than any limit, nothing), and with `chaos` per request a random cut, finish
    reason and reported token count (never above `max_new_tokens`); with `failures`, transient
    errors every few requests; with `latencies`, a sleep of up to `max_latency_s` per request so
    concurrent requests finish out of order; a reward model biased up or down."""
    if not isinstance(max_latency_s, (int, float)) or not 0 <= max_latency_s <= 1:
        raise InvalidArgument(f"max_latency_s must be in [0, 1] seconds, got {max_latency_s!r}")
    return st.builds(
        Script,
        text=st.sampled_from(list(_TEXTS.values())),
        chaos=st.integers(0, 2**32) | st.none(),
        transient_every=st.sampled_from([0, 2, 3, 7]) if failures else st.just(0),
        latency_s=st.sampled_from([0.0, max_latency_s / 2, max_latency_s]) if latencies else st.just(0.0),
        reward_bias=st.floats(-0.5, 0.5),
    )


def scripts(*, failures: bool = True) -> st.SearchStrategy[Script]:
    """Misbehaving models for `ScriptedBackend`: random cuts, finish reasons and token counts
    (never above what was allowed), and, with `failures`, transient errors every few requests.
    (The first kit's generator; `backend_behaviours` draws more kinds of misbehaviour.)"""
    return st.builds(
        Script,
        chaos=st.integers(0, 2**32) | st.none(),
        transient_every=st.sampled_from([0, 2, 3, 7]) if failures else st.just(0),
        reward_bias=st.floats(-0.5, 0.5),
    )


def seeds() -> st.SearchStrategy[int]:
    """Run seeds (what `--seed` takes)."""
    return st.integers(0, 2**31 - 1)


def describe_text(script: Script) -> str:
    """The name of a behaviour's text style, for reports."""
    return next((name for name, fn in _TEXTS.items() if fn is script.text), "custom")
