"""The simulated logprobs and the records of generated tokens that carry them.

`input_logprob` is the logprob of a token that involves no choice (a pure function of it and
the token before it, so a generated text scored as a prompt gets the same values back);
`top_logprobs` derives the top alternatives at a position.  A `Tok` is one generated token; a
`Run` is a stretch of them built at once, whose logprobs are derived only when asked for.  What
the values mean is described in `ttcdsl.runtime.sim.model`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

from .rand import uniform
from .tokenizer import EOS_ID, FILLER_WORDS, STARTERS, tokenizer

__all__ = ["Run", "Tok", "input_logprob", "safe_log", "top_logprobs"]


class Tok(NamedTuple):
    """One generated token.  ``alts`` are the top alternatives (id, logprob) including this
    token, for tokens where the sim made a real choice; None means "derive them".  (A named
    tuple: one is made per generated token, and tuples are the cheapest immutable record.)"""

    id: int
    logprob: float
    alts: tuple[tuple[int, float], ...] | None = None


class Run(NamedTuple):
    """A stretch of tokens the sim writes in one go: ``ids``; ``prev``, the token before the
    first (a plain logprob depends on the token before it); ``alts``, by index in ``ids``, the
    top alternatives (best first) of the tokens where the sim made a real choice.  Logprobs are
    derived on demand (`Run.logprobs`), so a request that asks for none costs none."""

    ids: list[int]
    prev: int
    alts: dict[int, tuple[tuple[int, float], ...]] | None = None

    def logprobs(self) -> list[float]:
        ids = self.ids
        lps = list(map(input_logprob, [self.prev, *ids[:-1]], ids))
        for i, alts in (self.alts or {}).items():
            lps[i] = dict(alts).get(ids[i], lps[i])
        return lps

    def toks(self) -> Iterator[Tok]:
        alts = self.alts or {}
        for i, (token_id, lp) in enumerate(zip(self.ids, self.logprobs())):
            yield Tok(token_id, lp, alts.get(i))


def safe_log(p: float) -> float:
    return min(math.log(p), -1e-4) if p > 0 else -30.0

_FIXED_WORDING = frozenset(
    [tokenizer.piece_id(p) for p in ("Step", " of", ":", " we", " now", " have", ".", "The")]
    + [tokenizer.piece_id(p) for p in (" answer", " is", "\n", "\n\n")]
    + [tokenizer.piece_id(" " + s) for s in STARTERS]
    + [EOS_ID]
)
_ALT_POOL = tuple(sorted({tokenizer.piece_id(" " + w) for w in FILLER_WORDS}))


@lru_cache(maxsize=1 << 16)
def input_logprob(prev_id: int, token_id: int) -> float:
    """The logprob of ``token_id`` after ``prev_id`` for tokens that involve no choice: near 0
    for the sim's fixed wording, in [-3, -0.2] otherwise."""
    u = uniform(0, "lp", prev_id, token_id)
    if token_id in _FIXED_WORDING:
        return -(0.001 + 0.049 * u)
    return -(0.2 + 2.8 * u)


@lru_cache(maxsize=1 << 14)
def _derived_top(
    prev_id: int, token_id: int, logprob: float, k: int
) -> tuple[tuple[int, float], ...]:
    rest = max(0.0, 1.0 - math.exp(logprob))
    out = [(token_id, logprob)]
    used = {token_id}
    j = 0
    while len(out) < k:
        alt = _ALT_POOL[int(uniform(0, "alt", prev_id, token_id, j) * len(_ALT_POOL))]
        j += 1
        if alt in used and j < 64:
            continue
        if alt in used:
            alt = next(a for a in range(3 + 256, 3 + 256 + 4096) if a not in used)
        used.add(alt)
        out.append((alt, safe_log(rest * 0.5 ** len(out))))
    return tuple(sorted(out, key=lambda a: -a[1]))


def top_logprobs(prev_id: int, tok: Tok, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely tokens at this position (id, logprob), best first."""
    if k <= 0:
        return []
    if tok.alts is not None and len(tok.alts) >= k:
        return list(tok.alts[:k])
    if tok.alts is not None:
        rest = max(0.0, 1.0 - sum(math.exp(lp) for _, lp in tok.alts))
        out = list(tok.alts)
        used = {a for a, _ in out}
        for alt in _ALT_POOL:
            if len(out) >= k:
                break
            if alt not in used:
                used.add(alt)
                out.append((alt, safe_log(rest * 0.5 ** len(out))))
        return sorted(out, key=lambda a: -a[1])
    return list(_derived_top(prev_id, tok.id, tok.logprob, k))
