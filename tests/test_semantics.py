"""Run-time meaning of values: interpolation, operators, finishing branches, judge verdicts."""

from __future__ import annotations

import math

import pytest

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime.backend import GenResult
from ttcdsl.runtime.semantics import apply, arith, interpolate, p_yes
from ttcdsl.runtime.values import Answer, Branch, Branches
from ttcdsl.span import Span

SPAN = Span("t.ttc", 3, 5, 3, 9)


def branch(*steps: str, score: float | None = None) -> Branch:
    return Branch(id="b", root="b", parent=None, prompt="p", prompt_ids=(1,), steps=list(steps), score=score)


def gen(text: str, finish: str, matched: str | int | None = None, logprobs: list[float] | None = None) -> GenResult:
    return GenResult(text=text, output_ids=list(range(len(text))), finish=finish,  # type: ignore[arg-type]
                     completion_tokens=len(text), prompt_tokens=1, matched=matched, logprobs=logprobs)


def test_a_matched_step_string_keeps_the_branch_open_with_the_delimiter() -> None:
    b = branch()
    apply(b, gen("Step 1.\n\n", "stop", "\n\n"), False, [], "\n\n")
    assert (b.steps, b.finished, b.finish_reason) == (["Step 1.\n\n"], False, None)


def test_a_stop_string_finishes_the_branch_and_is_trimmed_from_the_text() -> None:
    b = branch()
    apply(b, gen("The answer is 4.###", "stop", "###"), False, ["###"], "\n\n")
    assert (b.text, b.finished, b.finish_reason) == ("The answer is 4.", True, "stop")
    assert len(b.ids) == len("The answer is 4.###")  # the ids keep the stop tokens


def test_eos_length_and_budget_cut_finish_with_their_reasons() -> None:
    for result, cut, reason in [(gen("x", "eos", 2), False, "eos"), (gen("x", "length"), False, "length"),
                                (gen("x", "length"), True, "budget"), (gen("x", "abort"), False, "abort")]:
        b = branch()
        apply(b, result, cut, [], None)
        assert (b.finished, b.finish_reason) == (True, reason)


def test_logprobs_accumulate_over_steps() -> None:
    b = branch()
    apply(b, gen("ab\n", "stop", "\n", [-1.0, -0.5, -0.5]), False, [], "\n")
    apply(b, gen("c", "eos", 2, [-1.0]), False, [], "\n")
    assert b.logprob == -3.0 and b.n_tokens == 4 and b.mean_logprob == -0.75


def test_interpolation_of_each_kind_of_value() -> None:
    assert interpolate(Branches([branch("low", score=0.1), branch("high", score=0.9)])) == "high"
    assert interpolate(Branches([])) == ""
    assert interpolate(Answer(value="42", support=1, agreement=1, votes={}, branches=[])) == "42"
    assert interpolate(True) == "true" and interpolate(3) == "3" and interpolate(0.5) == "0.5"


def test_integer_division_floors_and_division_by_zero_names_the_line() -> None:
    node = P.Arith(id=1, span=SPAN, operator="/", left=P.Ref(2), right=P.Ref(3))
    assert arith(node, 7, 2) == 3 and arith(node, 7.0, 2) == 3.5
    with pytest.raises(NodeFailed, match=r"t\.ttc:3:5: division by zero"):
        arith(node, 1, 0)


def test_p_yes_normalises_yes_against_no_case_and_space_insensitively() -> None:
    r = GenResult(text=" Yes", output_ids=[1], finish="length", completion_tokens=1, prompt_tokens=5,
                  top_logprobs=[{" Yes": math.log(0.6), "yes": math.log(0.1), " No": math.log(0.1), "maybe": -1.0}])
    assert abs(p_yes(r) - 0.7 / 0.8) < 1e-12
    plain = GenResult(text="No", output_ids=[1], finish="length", completion_tokens=1, prompt_tokens=5)
    assert p_yes(plain) == 0.0
