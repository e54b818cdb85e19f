"""Extraction, voting, pruning, aggregation: the documented orders and invariants."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttcdsl.runtime.aggregate import (
    aggregate,
    best,
    extract,
    leader_confidence,
    normalize_number,
    prune,
    resample,
    settled,
    vote,
    weights,
)
from ttcdsl.runtime.values import Branch


def br(text: str = "", score: float | None = None, root: str = "r", parent: str | None = None,
       ids: int = 0, logprob: float | None = None, bid: str = "b", reason: str | None = "stop") -> Branch:
    """A branch that finished with `reason` (None: still open)."""
    b = Branch(id=bid, root=root, parent=parent, prompt="", prompt_ids=(), steps=[text], score=score,
               ids=list(range(ids)), logprob=logprob, n_tokens=ids, finished=reason is not None,
               finish_reason=reason)  # type: ignore[arg-type]
    return b


def test_number_takes_the_last_number_normalised() -> None:
    assert extract("first 3, then 1,234.0 apples", "number") == "1234"
    assert extract("The answer is 42.", "number") == "42"
    assert extract("x = -0.50", "number") == "-0.5"
    assert extract("no digits here", "number") is None


def test_normalize_number_drops_separators_and_trailing_zero() -> None:
    assert normalize_number("1,000") == "1000"
    assert normalize_number("7.0") == "7"
    assert normalize_number("-0") == "0"
    assert normalize_number("abc") is None


def test_boxed_takes_the_last_balanced_box() -> None:
    assert extract(r"\boxed{1} and then \boxed{\frac{1}{2}}", "boxed") == r"\frac{1}{2}"
    assert extract(r"\boxed{unclosed", "boxed") is None


def test_line_takes_last_nonempty_line_trimmed() -> None:
    assert extract("a\n  final answer  \n\n", "line") == "final answer"
    assert extract("\n \n", "line") is None


def test_regex_takes_group_one_of_last_match() -> None:
    assert extract("ans: 3 ... ans: 5", "regex", r"ans: (\d+)") == "5"
    assert extract("nothing", "regex", r"ans: (\d+)") is None


def test_vote_counts_and_reports_agreement_and_supporters() -> None:
    bs = [br("is 4"), br("is 5"), br("is 4"), br("none")]
    a = vote(bs, "number")
    assert a.value == "4" and a.support == 2 and abs(a.agreement - 2 / 3) < 1e-9
    assert a.votes == {"4": 2.0, "5": 1.0}
    assert a.branches == [bs[0], bs[2]]


def test_vote_tie_goes_to_the_earliest_supporter() -> None:
    assert vote([br("5"), br("4"), br("4"), br("5")], "number").value == "5"


def test_vote_weighted_sums_scores() -> None:
    a = vote([br("1", 0.9), br("2", 0.3), br("2", 0.3)], "number", weighted=True)
    assert a.value == "1" and abs(a.agreement - 0.9 / 1.5) < 1e-9


def test_vote_with_everyone_abstaining() -> None:
    a = vote([br("x"), br("y")], "number")
    assert a.value is None and a.agreement == 0.0 and a.branches == []


@given(st.lists(st.sampled_from(["1", "2", "3", "none"]), max_size=20))
def test_vote_value_was_produced_and_agreement_is_its_share(answers: list[str]) -> None:
    bs = [br(f"answer {x}" if x != "none" else "no answer") for x in answers]
    a = vote(bs, "number")
    voting = [x for x in answers if x != "none"]
    if not voting:
        assert a.value is None
        return
    assert a.value in voting
    assert abs(a.agreement - voting.count(a.value) / len(voting)) < 1e-9
    assert voting.count(a.value) == max(voting.count(x) for x in voting)


def test_prune_by_score_orders_best_first_with_unscored_last() -> None:
    bs = [br("a", 0.2, bid="a"), br("b", None, bid="b"), br("c", 0.9, bid="c"), br("d", 0.2, bid="d")]
    assert [b.id for b in prune(bs, 3)] == ["c", "a", "d"]


def test_prune_by_length_prefers_fewer_tokens() -> None:
    bs = [br(ids=5, bid="x"), br(ids=2, bid="y"), br(ids=9, bid="z")]
    assert [b.id for b in prune(bs, 2, by="length")] == ["y", "x"]


def test_prune_by_logprob_uses_mean_token_logprob() -> None:
    bs = [br(ids=2, logprob=-4.0, bid="x"), br(ids=4, logprob=-4.0, bid="y"), br(bid="z")]
    assert [b.id for b in prune(bs, 3, by="logprob")] == ["y", "x", "z"]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 1) | st.none()), max_size=15), st.integers(0, 6))
def test_prune_keeps_min_k_size_and_per_root_keeps_k_per_root(spec: list[tuple[str, float | None]], k: int) -> None:
    bs = [br(score=s, root=r, bid=f"{i}") for i, (r, s) in enumerate(spec)]
    kept = prune(bs, k)
    assert len(kept) == min(k, len(bs))
    assert all(any(b is x for x in bs) for b in kept)
    per = prune(bs, k, per="root")
    for root in set(r for r, _ in spec):
        in_root = [b for b in bs if b.root == root]
        assert sum(1 for b in per if b.root == root) == min(k, len(in_root))
    scores = [(-(b.score) if b.score is not None else float("inf")) for b in per]
    assert scores == sorted(scores)


def test_aggregate_kinds() -> None:
    s = [0.5, 0.2, 0.8]
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "min") == 0.2
    assert abs(aggregate(s, "mean") - 0.5) < 1e-9  # type: ignore[operator]
    assert abs(aggregate(s, "prod") - 0.08) < 1e-9  # type: ignore[operator]
    assert aggregate([], "mean") is None


def test_best_is_highest_score_else_first() -> None:
    a, b = br(score=0.1, bid="a"), br(score=0.7, bid="b")
    assert best([a, b]) is b
    assert best([br(bid="x"), br(bid="y")]).id == "x"  # type: ignore[union-attr]
    assert best([]) is None


# --- anytime voting: the stopping rules ------------------------------------------------------------


def _beta_tail_numeric(a: int, b: int, steps: int = 20000) -> float:
    """P(X > 1/2) for X ~ Beta(a, b), by the midpoint rule (an independent check)."""
    norm = math.gamma(a) * math.gamma(b) / math.gamma(a + b)
    h = 0.5 / steps
    return sum(((0.5 + (i + 0.5) * h) ** (a - 1)) * ((0.5 - (i + 0.5) * h) ** (b - 1))
               for i in range(steps)) * h / norm


@given(st.integers(0, 30), st.integers(0, 30))
def test_leader_confidence_is_the_beta_posterior_tail(leader: int, runner_up: int) -> None:
    exact = leader_confidence(leader, runner_up)
    assert exact == pytest.approx(_beta_tail_numeric(leader + 1, runner_up + 1), abs=1e-6)
    assert exact + leader_confidence(runner_up, leader) == pytest.approx(1.0)
    assert leader_confidence(leader + 1, runner_up) > exact


def test_leader_confidence_known_values() -> None:
    assert leader_confidence(0, 0) == 0.5
    assert leader_confidence(3, 0) == 1 - 0.5**4  # Beta(4, 1): P(X > 1/2) = 1 - (1/2)^4
    assert leader_confidence(10, 10) == 0.5


def test_settled_waits_for_min_votes_and_ignores_abstentions() -> None:
    votes = vote([br("The answer is 4"), br("no number"), br("so 4")], "number")
    assert not settled(votes, "agreement", 0.9, min_votes=3)
    assert settled(votes, "agreement", 0.9, min_votes=2)
    split = vote([br("4"), br("5"), br("4")], "number")
    assert not settled(split, "agreement", 0.7, min_votes=1)
    assert settled(split, "agreement", 0.6, min_votes=1)
    assert settled(vote([br("4")] * 5, "number"), "confidence", 0.95, min_votes=1)
    assert not settled(vote([br("4")] * 3, "number"), "confidence", 0.95, min_votes=1)
    assert not settled(vote([br("none")], "number"), "agreement", 0.0, min_votes=0)


# --- resampling ----------------------------------------------------------------------------------

probabilities = st.lists(st.floats(0, 10), min_size=1, max_size=12).filter(lambda w: sum(w) > 0).map(
    lambda w: [x / sum(w) for x in w])


@given(probabilities, st.integers(0, 64), st.integers(0, 2**32))
def test_systematic_resampling_draws_each_index_floor_or_ceil_of_its_share(
    probs: list[float], n: int, seed: int
) -> None:
    drawn = resample(probs, n, "systematic", random.Random(seed))
    assert len(drawn) == n and drawn == sorted(drawn)
    for i, p in enumerate(probs):
        # floor(n p) or ceil(n p) copies: never a whole copy away from its share.
        assert abs(drawn.count(i) - n * p) < 1 + 1e-6


@given(probabilities, st.integers(0, 64), st.integers(0, 2**32))
def test_multinomial_resampling_never_draws_an_impossible_index(
    probs: list[float], n: int, seed: int
) -> None:
    drawn = resample(probs, n, "multinomial", random.Random(seed))
    assert len(drawn) == n and drawn == sorted(drawn)
    assert all(probs[i] > 0 for i in drawn)


def test_multinomial_resampling_follows_the_probabilities() -> None:
    drawn = resample([0.2, 0.8], 20000, "multinomial", random.Random(7))
    assert drawn.count(1) / 20000 == pytest.approx(0.8, abs=0.02)


def test_weights_from_scores() -> None:
    branches = [br(score=1.0), br(score=3.0), br(score=None), br(score=-1.0)]
    assert weights(branches, None) == [0.25, 0.75, 0.0, 0.0]
    soft = weights(branches, 1.0)
    assert soft[2] == 0.0 and sum(soft) == pytest.approx(1.0)
    assert soft[1] / soft[0] == pytest.approx(math.e**2)
    assert weights([br(), br()], None) == [0.5, 0.5]
    with pytest.raises(ValueError, match="temperature"):
        weights(branches, 0.0)


def test_vote_counts_only_branches_that_finished_on_their_own() -> None:
    bs = [br("Step 1: we have 42", reason="length"), br("is 7", reason="eos"),
          br("so far 42", reason="budget"), br("then 42", reason=None), br("is 7", reason="stop"),
          br("42", reason="abort")]
    a = vote(bs, "number")
    assert (a.value, a.support, a.agreement, a.excluded, a.unfinished_only) == ("7", 2, 1.0, 4, False)
    assert all(b.finish_reason in ("stop", "eos") for b in a.branches)


def test_vote_of_cut_off_branches_only_abstains_by_default_and_is_flagged_when_counted() -> None:
    bs = [br("we now have 42", reason="length"), br("we now have 42", reason="budget"), br("9", reason="length")]
    default = vote(bs, "number")
    assert default.value is None and default.excluded == 3 and default.votes == {}
    counted = vote(bs, "number", unfinished=True)
    assert (counted.value, counted.excluded, counted.unfinished_only) == ("42", 0, True)


def test_a_winner_with_one_finished_backer_is_not_flagged() -> None:
    bs = [br("42", reason="length"), br("42", reason="stop"), br("9", reason="length")]
    a = vote(bs, "number", unfinished=True)
    assert a.value == "42" and a.unfinished_only is False


def test_a_weighted_vote_gives_negative_scores_no_weight() -> None:
    # Reward models may score below 0 (logits); as weights those would make support negative and
    # push agreement outside [0, 1].  Found by the kit's property over adversarial models.
    items = [br("the answer is 7", score=0.3), br("the answer is 8", score=-0.22), br("the answer is 8", score=-0.5)]
    answer = vote(items, "number", weighted=True)
    assert answer.value == "7" and answer.support == pytest.approx(0.3)
    assert answer.agreement == 1.0 and answer.votes == {"7": 0.3, "8": 0.0}
