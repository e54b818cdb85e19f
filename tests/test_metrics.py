"""What `ttc bench` keeps of one run (`ttcdsl.harness.metrics.outcome`)."""

from __future__ import annotations

from ttcdsl.harness.metrics import X_AXES, outcome
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.values import Branch, Branches, RunResult, Usage


def _b(text: str, reason: str) -> Branch:
    return Branch(id=text, root=text, parent=None, prompt="", prompt_ids=(), steps=[text], finished=True,
                  finish_reason=reason)  # type: ignore[arg-type]


def _result(value: object, leaves: list[Branch]) -> RunResult:
    usage = Usage(completion_tokens=100, prompt_tokens=50, cached_tokens=30, requests=5, scoring_tokens=40)
    return RunResult(strategy="s", value=value, usage=usage, nodes=[], wall_s=0.5, seed=1, budget=None,
                     leaves=leaves)


def test_the_metrics_of_a_vote_come_from_the_same_samples() -> None:
    leaves = [_b("is 7", "stop"), _b("is 9", "eos"), _b("is 9", "stop"), _b("we have 7", "length")]
    o = outcome(_result(agg.vote(leaves, "number"), leaves), "7")
    assert (o.correct, o.abstained, o.tie) == (False, False, False)  # 9 wins 2:1 among the finished
    assert o.samples == 4 and o.single == 0.25 and o.any_right and not o.majority
    assert o.cut == 1  # the truncated sample: its 7 is neither right nor a vote


def test_a_tie_and_an_abstention_are_recognised() -> None:
    leaves = [_b("is 7", "stop"), _b("is 9", "stop")]
    tied = outcome(_result(agg.vote(leaves, "number"), leaves), "7")
    assert tied.tie and tied.correct  # the first supporter breaks the tie
    cut = [_b("so far 7", "budget")]
    none = outcome(_result(agg.vote(cut, "number"), cut), "7")
    assert none.abstained and not none.correct and not none.any_right and none.single == 0.0


def test_a_branches_result_is_graded_on_its_first_branch_and_the_axes_add_up() -> None:
    leaves = [_b("is 7", "stop"), _b("is 8", "stop")]
    o = outcome(_result(Branches([leaves[1]]), leaves), "7")
    assert not o.correct and o.any_right and o.single == 0.5
    assert {axis: o.cost(axis) for axis in X_AXES} == {
        "completion": 100.0, "scored": 140.0, "prefill": 120.0, "wall": 0.5}
