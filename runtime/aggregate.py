"""The pure parts of the steps: answer extraction, voting, pruning, score aggregation, `best`.

Documented orders (tests pin them):

* `prune` returns branches best-first: by score (highest first; unscored branches last), by
  logprob (highest mean token logprob first; unknown last) or by length (fewest generated tokens
  first).  Ties keep input order.  ``per root`` / ``per parent`` keep the best ``k`` of every
  group and then order all kept branches the same way.
* `vote` extracts an answer from every branch (branches with nothing to extract abstain), counts
  (or, ``weighted``, sums scores of) each value; the winner is the value with the most support,
  ties going to the value whose first supporter came first.  ``agreement`` is the winner's share
  of all non-abstaining support (0 when everyone abstains), ``support`` its count or weight.
* `best` is the highest-scored branch (ties: first); with no scores, the first branch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ttcdsl.runtime.values import Answer, Branch

__all__ = ["aggregate", "best", "extract", "normalize_number", "prune", "vote"]

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


def vote(branches: Sequence[Branch], on: str, pattern: str | None = None, weighted: bool = False) -> Answer:
    support: dict[str, float] = {}
    first: dict[str, int] = {}
    backers: dict[str, list[Branch]] = {}
    for i, b in enumerate(branches):
        value = extract(b.text, on, pattern)
        if value is None:
            continue
        weight = (b.score or 0.0) if weighted else 1.0
        support[value] = support.get(value, 0.0) + weight
        first.setdefault(value, i)
        backers.setdefault(value, []).append(b)
    if not support:
        return Answer(value=None, support=0.0, agreement=0.0, votes={}, branches=[])
    winner = min(support, key=lambda v: (-support[v], first[v]))
    total = sum(support.values())
    agreement = support[winner] / total if total > 0 else 1.0 / len(support)
    return Answer(
        value=winner,
        support=support[winner],
        agreement=agreement,
        votes=dict(sorted(support.items(), key=lambda kv: (-kv[1], first[kv[0]]))),
        branches=backers[winner],
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
