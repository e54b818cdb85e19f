"""The pure parts of the steps: answer extraction, voting, pruning, score aggregation, `best`.

Documented orders (tests pin them):

* `prune` returns branches best-first: by score (highest first; unscored branches last), by
  logprob (highest mean token logprob first; unknown last) or by length (fewest generated tokens
  first).  Ties keep input order.  ``per root`` / ``per parent`` keep the best ``k`` of every
  group and then order all kept branches the same way.
* `vote` counts only finished branches (finish reason ``stop`` or ``eos``) unless asked to count
  unfinished ones too (``counting unfinished``): a branch cut off by ``length``, ``budget`` or
  ``abort``, or one still open after a ``step``, stops mid-thought, and its last number is not an
  answer.  The answer says how many branches were left out (``excluded``) and flags a winner that
  only unfinished branches back (``unfinished_only``, possible only when they are counted).
  It extracts an answer from every counted branch (those with nothing to extract abstain), counts
  (or, ``weighted``, sums scores of, a score below 0 adding nothing) each value; the winner is the value with the most support,
  ties going to the value whose first supporter came first.  ``agreement`` is the winner's share
  of all non-abstaining support (0 when everyone abstains), ``support`` its count or weight.
* `best` is the highest-scored branch (ties: first); with no scores, the first branch.
* `settled` is the stopping rule of an anytime vote (`vote ... until ...`), asked each time a
  branch finishes; `leader_confidence` is its posterior rule.
* `resample` draws branch indices with replacement in proportion to weights (`weights` turns
  scores into them), systematically or independently (multinomial).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from ttcdsl.runtime.values import Answer, Branch

__all__ = [
    "FINISHED_REASONS",
    "aggregate",
    "best",
    "completed",
    "extract",
    "leader_confidence",
    "normalize_number",
    "prune",
    "resample",
    "settled",
    "vote",
    "weights",
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = "\\boxed{"


def normalize_number(text: str) -> str | None:
    """`1,234.0` -> `1234`; `-0.50` -> `-0.5`; None if `text` is not a number."""
    raw = text.strip().replace(",", "")
    if raw.endswith("."):
        raw = raw[:-1]
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if "." in raw:
        raw = raw.rstrip("0").rstrip(".")
    if raw in ("-0", ""):
        raw = "0"
    if raw.startswith("-") and float(raw) == 0:
        raw = "0"
    return raw


def _last_boxed(text: str) -> str | None:
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract(text: str, on: str, pattern: str | None = None) -> str | None:
    """The answer a branch gives, or None (the branch abstains)."""
    if on == "number":
        matches = _NUMBER.findall(text)
        for m in reversed(matches):
            norm = normalize_number(m)
            if norm is not None:
                return norm
        return None
    if on == "boxed":
        return _last_boxed(text)
    if on == "line":
        for line in reversed(text.splitlines()):
            if line.strip():
                return line.strip()
        return None
    if on == "regex":
        assert pattern is not None
        last = None
        for m in re.finditer(pattern, text):
            last = m
        if last is None or last.group(1) is None:
            return None
        return last.group(1)
    raise ValueError(f"unknown extractor {on!r}")


FINISHED_REASONS = ("stop", "eos")


def completed(b: Branch) -> bool:
    """Whether a branch ended on its own (a stop string or end of sequence), so it may vote."""
    return b.finished and b.finish_reason in FINISHED_REASONS


def vote(branches: Sequence[Branch], on: str, pattern: str | None = None, weighted: bool = False,
         unfinished: bool = False) -> Answer:
    support: dict[str, float] = {}
    first: dict[str, int] = {}
    backers: dict[str, list[Branch]] = {}
    excluded = 0
    for i, b in enumerate(branches):
        if not unfinished and not completed(b):
            excluded += 1
            continue
        value = extract(b.text, on, pattern)
        if value is None:
            continue
        weight = max(b.score or 0.0, 0.0) if weighted else 1.0  # a score below 0 adds no weight
        support[value] = support.get(value, 0.0) + weight
        first.setdefault(value, i)
        backers.setdefault(value, []).append(b)
    if not support:
        return Answer(value=None, support=0.0, agreement=0.0, votes={}, branches=[], excluded=excluded,
                      ballots=list(branches))
    winner = min(support, key=lambda v: (-support[v], first[v]))
    total = sum(support.values())
    agreement = support[winner] / total if total > 0 else 1.0 / len(support)
    return Answer(
        value=winner,
        support=support[winner],
        agreement=agreement,
        votes=dict(sorted(support.items(), key=lambda kv: (-kv[1], first[kv[0]]))),
        branches=backers[winner],
        excluded=excluded,
        ballots=list(branches),
        unfinished_only=not any(completed(b) for b in backers[winner]),
    )


def _key(b: Branch, by: str) -> tuple[int, float]:
    """Sort key: smaller is better; unknown values last."""
    if by == "score":
        return (0, -b.score) if b.score is not None else (1, 0.0)
    if by == "logprob":
        lp = b.mean_logprob
        return (0, -lp) if lp is not None else (1, 0.0)
    if by == "length":
        return (0, float(len(b.ids)))
    raise ValueError(f"unknown prune key {by!r}")


def _ordered(branches: Sequence[Branch], by: str) -> list[Branch]:
    indexed = sorted(enumerate(branches), key=lambda ib: (_key(ib[1], by), ib[0]))
    return [b for _, b in indexed]


def prune(branches: Sequence[Branch], keep: int, by: str = "score", per: str = "all") -> list[Branch]:
    if keep < 0:
        raise ValueError("keep must be >= 0")
    if per == "all":
        return _ordered(branches, by)[:keep]
    groups: dict[str, list[Branch]] = {}
    for b in branches:
        group = b.root if per == "root" else (b.parent or b.root)
        groups.setdefault(group, []).append(b)
    kept_ids = {id(b) for g in groups.values() for b in _ordered(g, by)[:keep]}
    return _ordered([b for b in branches if id(b) in kept_ids], by)


def aggregate(step_scores: Sequence[float], agg: str) -> float | None:
    if not step_scores:
        return None
    if agg == "last":
        return step_scores[-1]
    if agg == "min":
        return min(step_scores)
    if agg == "mean":
        return sum(step_scores) / len(step_scores)
    if agg == "prod":
        return math.prod(step_scores)
    raise ValueError(f"unknown aggregation {agg!r}")


def best(branches: Sequence[Branch]) -> Branch | None:
    if not branches:
        return None
    return _ordered(branches, "score")[0]


# ---- anytime voting ----


def leader_confidence(leader: int, runner_up: int) -> float:
    """The posterior probability that the leading answer is more likely than the runner-up,
    given ``leader`` and ``runner_up`` votes: with a uniform prior, the two answers' relative
    frequency p has posterior Beta(leader + 1, runner_up + 1), and this is P(p > 1/2).  This is
    the Beta stopping criterion of Adaptive-Consistency (Aggarwal et al., 2023,
    arXiv:2305.11860), the one its authors recommend; other answers do not enter it.

    For integer a, b: P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a), so with
    n = leader + runner_up + 1 the value is P(Binomial(n, 1/2) <= leader), an exact finite sum.
    """
    if leader < 0 or runner_up < 0:
        raise ValueError("vote counts must be >= 0")
    n = leader + runner_up + 1
    # sum_{k <= leader} C(n, k) / 2^n, computed in integers (exact for any count).
    return sum(math.comb(n, k) for k in range(leader + 1)) / 2**n


def settled(answer: Answer, rule: str, threshold: float, min_votes: int) -> bool:
    """Whether an anytime vote may stop with ``answer`` (the vote over the branches finished so
    far).  Nothing is settled before ``min_votes`` branches voted (abstentions do not count).
    ``agreement``: the leader's share of the votes is at least ``threshold``.  ``confidence``:
    `leader_confidence` of the two leading counts is at least ``threshold``."""
    counts = sorted(answer.votes.values(), reverse=True)
    if answer.value is None or sum(counts) < min_votes:
        return False
    if rule == "agreement":
        return answer.agreement >= threshold
    if rule == "confidence":
        runner_up = counts[1] if len(counts) > 1 else 0.0
        return leader_confidence(round(counts[0]), round(runner_up)) >= threshold
    raise ValueError(f"unknown stopping rule {rule!r}")


# ---- resampling ----


def weights(branches: Sequence[Branch], temperature: float | None) -> list[float]:
    """Resampling weights from scores.  With a ``temperature``: softmax(score / temperature).
    Without: the scores themselves (negative ones count as 0).  Unscored branches weigh 0; when
    no branch has a positive weight, all weigh the same."""
    scores = [b.score for b in branches]
    known = [s for s in scores if s is not None]
    if temperature is not None:
        if temperature <= 0:
            raise ValueError("the softmax temperature must be > 0")
        top = max(known, default=0.0)
        raw = [0.0 if s is None else math.exp((s - top) / temperature) for s in scores]
    else:
        raw = [0.0 if s is None else max(0.0, s) for s in scores]
    total = sum(raw)
    if total <= 0 or not math.isfinite(total):
        return [1.0 / len(branches)] * len(branches) if branches else []
    return [w / total for w in raw]


def resample(probabilities: Sequence[float], n: int, method: str, rng: random.Random) -> list[int]:
    """``n`` indices drawn with replacement with the given probabilities (which sum to 1), in
    ascending order.  ``systematic``: one uniform offset u in [0, 1/n) and the points
    u + i/n, each taking the index whose cumulative-probability interval contains it (every
    index is drawn floor(n p) or ceil(n p) times: low variance).  ``multinomial``: n independent
    draws."""
    if n < 0:
        raise ValueError("the number of draws must be >= 0")
    if n == 0 or not probabilities:
        return []
    cumulative: list[float] = []
    running = 0.0
    for p in probabilities:
        running += p
        cumulative.append(running)
    # Rounding can leave the sum just under 1: the last index with any probability takes the rest.
    last = max(i for i, p in enumerate(probabilities) if p > 0) if running > 0 else len(cumulative) - 1
    cumulative[last] = float("inf")
    if method == "systematic":
        offset = rng.random() / n
        points = [offset + i / n for i in range(n)]
    elif method == "multinomial":
        points = sorted(rng.random() for _ in range(n))
    else:
        raise ValueError(f"unknown resampling method {method!r}")
    out: list[int] = []
    j = 0
    for point in points:
        while cumulative[j] <= point:
            j += 1
        out.append(j)
    return out
