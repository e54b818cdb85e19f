"""What one strategy run on one graded item measured, and the compute axes of `ttc bench`.

`outcome` reduces a `RunResult` and the item's expected answer to an `ItemOutcome` (a handful of
numbers; the run itself is dropped).  Definitions (the README's bench section repeats them):

* ``correct``: the run's answer is right (`dataset.is_correct`).  ``abstained``: the run gave no
  answer (a vote nobody finished or everybody abstained in, or no number in the returned text).
* The *samples* of a run are the branches its samples and expansions finished
  (`RunResult.leaves`); a sample is right when it finished on its own (stop or EOS) and its last
  number is the answer.  ``single``: the share of right samples (single-sample accuracy);
  ``any_right``: some sample is right (pass@k, oracle coverage); ``majority``: a plain majority
  vote of the samples that finished on their own is right (majority@k from the same samples).
* ``tie``: the deciding vote had two or more answers sharing the top support (the result's own
  vote when it returned an answer, else the majority vote of the samples).
* ``cut``: samples truncated by ``length``, ``budget`` or ``abort`` (the "budget cut" column
  counts these, not reduced reservations).
* Compute per run: ``completion`` tokens; ``scoring`` tokens (what reward models and judges
  read); ``uncached`` prompt tokens (prefill not served from the prefix cache); wall seconds.
  `X_AXES` names the x axes built from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttcdsl.harness.dataset import is_correct, no_answer
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.values import Answer, Branch, Branches, RunResult

__all__ = ["X_AXES", "ItemOutcome", "outcome"]

# name -> axis label (`ItemOutcome.cost` gives the per-run value)
X_AXES: dict[str, str] = {
    "completion": "completion tokens per question",
    "scored": "completion + reward/judge tokens per question",
    "prefill": "uncached prefill + decode tokens per question",
    "wall": "wall seconds per question",
}


@dataclass(frozen=True)
class ItemOutcome:
    correct: bool
    abstained: bool
    tie: bool
    samples: int
    single: float | None  # None: the run finished no sample
    any_right: bool
    majority: bool
    cut: int
    completion: int
    scoring: int
    uncached: int
    wall_s: float
    exhausted: bool

    def cost(self, axis: str) -> float:
        """This run's compute on x axis ``axis`` (a key of `X_AXES`)."""
        if axis == "completion":
            return float(self.completion)
        if axis == "scored":
            return float(self.completion + self.scoring)
        if axis == "prefill":
            return float(self.uncached + self.completion)
        if axis == "wall":
            return self.wall_s
        raise ValueError(f"unknown x axis {axis!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _right(b: Branch, expected: Any) -> bool:
    return agg.completed(b) and is_correct(Branches([b]), expected)


def _has_tie(answer: Answer) -> bool:
    counts = list(answer.votes.values())
    return len(counts) > 1 and counts[0] == counts[1]


def outcome(result: RunResult, expected: Any) -> ItemOutcome:
    """The numbers `ttc bench` keeps of one run on an item whose answer is ``expected``."""
    leaves = result.leaves
    majority_vote = agg.vote(leaves, "number")
    decisive = result.value if isinstance(result.value, Answer) else majority_vote
    right = [_right(b, expected) for b in leaves]
    u = result.usage
    return ItemOutcome(
        correct=is_correct(result.value, expected),
        abstained=no_answer(result.value),
        tie=_has_tie(decisive),
        samples=len(leaves),
        single=sum(right) / len(right) if right else None,
        any_right=any(right),
        majority=is_correct(majority_vote, expected),
        cut=sum(b.finish_reason in ("length", "budget", "abort") for b in leaves),
        completion=u.completion_tokens,
        scoring=u.scoring_tokens,
        uncached=u.prompt_tokens - u.cached_tokens,
        wall_s=result.wall_s,
        exhausted=result.budget_exhausted,
    )
