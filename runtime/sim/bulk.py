"""Writing a generation a run of tokens at a time: the engine's path for requests nobody streams.

`write` appends to an `EngineOutput` the very tokens, logprobs, top logprobs, running bytes and
finish reason that the engine's token-by-token writer produces for the same request (the
property test in tests/test_sim_bulk.py drives both with random requests), but it works on
whole `model.Run`s (a step, a sentence): the ids arrive as lists, the bytes of a run are joined
at once, stop strings are found with one ``find`` per string over the new bytes and mapped back
to the token that completes them through the running byte offsets, the end-of-sequence and stop
ids with ``list.index``, and logprobs are derived only when the request asks for them.  Stop
regexes are not handled here (the engine keeps the token-by-token writer for them).

Why a byte search finds what the token-by-token writer finds: that writer looks for each stop
string in the text of the last ``len(stop) + 32`` bytes after every token; the sim's output
bytes are always valid UTF-8 (they are encodings of whole strings) and no token is longer than
32 bytes, so a stop string shows up in that window exactly at the token that supplies its last
byte, and when several stop strings complete at the same token the first in the list wins.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from . import model
from .tokenizer import EOS_ID, tokenizer

if TYPE_CHECKING:
    from .engine import EngineOutput, EngineRequest

__all__ = ["write"]

# Each token's bytes in the running output text: special tokens contribute none.
_PLAIN = tuple(
    b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)
)
_SPECIAL_IDS = tuple(i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i))


def write(
    runs: Iterable[model.Run], req: EngineRequest, out: EngineOutput, cap: int
) -> dict[str, Any]:
    """Append the tokens of ``runs`` to ``out`` up to the request's finish (at most ``cap``
    tokens) and return that finish (SGLang's ``finish_reason`` shape)."""
    stops = [s for s in req.stop if s]
    needles = [(s, s.encode()) for s in stops]
    masked = frozenset(req.stop_token_ids) | {EOS_ID}
    enders = () if req.ignore_eos else tuple(masked)
    length = req.max_new_tokens if req.max_new_tokens is not None else cap
    output, plain = out.output_ids, out.plain_bytes
    for run in runs:
        ids, index = _unmasked(run.ids, masked, req.min_new_tokens - len(output))
        room = cap - len(output)
        if len(ids) >= room:
            ids = ids[:room]
        base = len(plain)
        plain += b"".join(map(_PLAIN.__getitem__, ids))
        at = len(ids)  # the finishing token's index in ids
        finish: dict[str, Any] | None = None
        ends: list[int] | None = None  # the running text's length after each token
        for s, needle in needles:
            found = plain.find(needle, max(0, base - len(needle) + 1))
            if found >= 0:
                if ends is None:
                    ends = list(accumulate(map(len, map(_PLAIN.__getitem__, ids)), initial=base))
                j = bisect_left(ends, found + len(needle)) - 1
                if j < at:
                    at, finish = j, {"type": "stop", "matched": s}
        for token_id in enders:
            if token_id in ids:
                j = ids.index(token_id)
                if j < at:
                    at, finish = j, {"type": "stop", "matched": token_id}
        if finish is None and len(ids) == room:
            at, finish = room - 1, {"type": "length", "length": length}
        if at + 1 < len(ids):
            ids = ids[: at + 1]
            del plain[base + sum(map(len, map(_PLAIN.__getitem__, ids))) :]
        _append(req, out, run, ids, index)
        out.specials += sum(map(ids.count, _SPECIAL_IDS))
        out.plain_upto = len(output)
        if finish is not None:
            return finish
    raise AssertionError("the sim's continuation is endless")  # pragma: no cover


def _unmasked(ids: list[int], masked: frozenset[int], need: int) -> tuple[list[int], list[int] | None]:
    """``ids`` without the end-of-sequence and stop tokens that come while fewer than ``need``
    tokens have been kept (SGLang's ``min_new_tokens``), and the index in ``ids`` of each kept
    token (None when nothing is dropped)."""
    if need <= 0 or masked.isdisjoint(ids):
        return ids, None
    keep: list[int] = []
    index: list[int] = []
    for i, token_id in enumerate(ids):
        if token_id in masked and len(keep) < need:
            continue
        keep.append(token_id)
        index.append(i)
    return keep, index


def _append(
    req: EngineRequest, out: EngineOutput, run: model.Run, ids: list[int], index: list[int] | None
) -> None:
    """Append ``ids`` (the ``index``-th tokens of ``run``) with their logprobs if asked for."""
    if not ids:
        return
    prev = out.output_ids[-1] if out.output_ids else req.input_ids[-1]
    out.output_ids += ids
    if not req.return_logprob:
        return
    lps = run.logprobs()
    where = index[: len(ids)] if index is not None else range(len(ids))
    out.output_logprobs += [lps[i] for i in where]
    top = req.top_logprobs_num
    if top <= 0:
        return
    alts = run.alts or {}
    for i, token_id in zip(where, ids):
        out.output_top.append(model.top_logprobs(prev, model.Tok(token_id, lps[i], alts.get(i)), top))
        prev = token_id
