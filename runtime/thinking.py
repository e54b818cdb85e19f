"""Thinking budgets: one fork of `sample`/`expand` that thinks within a cap, client-side.

A fork whose step sets `think_max` runs as a few requests, each continuing the exact ids of the
one before (so each is a prefix-cache hit on the last), with the model's thinking tags (`tags`):

1. *think*: generate with the closing tag as the only stop, at most the thinking tokens left.
   - The model closes before `think_min` tokens and extensions are left (`think_extend`, 1 when
     omitted): the closing tag is cut from the branch (text and ids), `think_extend_text`
     ("Wait" when omitted) is injected and thinking goes on (s1's budget forcing).
   - It closes otherwise: the tag stays; go to 2.
   - It reaches the cap: `think_wrapup` (when given) and the closing tag are injected; go to 2.
   - It ends some other way inside its thinking (EOS, a short budget): the branch finishes as the
     model left it.
2. *answer*: generate with the step's own `stop`/`step` and at most `max_tokens` tokens.

A branch whose text already holds the closing tag is past its thinking and only answers.  The
cap counts the thinking tokens this step generates.  Injected text costs no completion tokens:
the next request reports it among its prompt tokens and its `RequestNote` counts it as injected.

Budget: the caller reserves the fork's fair share (at most ``think_max + max_tokens``) before the
fork starts and passes that `Reservation` as ``hold``; every request takes its own reservation out
of it (`Reservation.take`), so every request still reserves before it is sent, no other fork can
spend the share meanwhile, and the hard guarantee of `budget.py` holds unchanged.  The caller
refunds what is left.  A share short of ``think_max + max_tokens`` (a tight budget) shrinks the
cap first, to the share less ``max_tokens`` (at least 1), so the chain still gets to answer: the
documented clamp of a cap that does not fit.

What this module does not do: decide the thinking tags (`ModelClient.think_tags`), split budgets
(`budget.split`), or close the branch (`semantics.apply`, given the combined result).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime.backend import GenResult
from ttcdsl.runtime.budget import Reservation
from ttcdsl.runtime.client import RequestNote
from ttcdsl.vocabulary import DEFAULT_THINK_EXTEND, DEFAULT_THINK_EXTEND_TEXT

__all__ = ["Send", "Thinking", "think_fork"]

# ``send(ids_after_the_branch, max_new_tokens, stops, reservation, note)``: one request that
# continues the branch's ids followed by ``ids_after_the_branch``.
Send = Callable[[tuple[int, ...], int, tuple[str, ...], Reservation, RequestNote], Awaitable[GenResult]]
Piece = Callable[[str], Awaitable[tuple[int, ...]]]
Detokenize = Callable[[Sequence[int]], Awaitable[str]]


@dataclass(frozen=True)
class Thinking:
    """The thinking budget of one `sample`/`expand` invocation, checked."""

    cap: int
    least: int = 0
    extend: int = DEFAULT_THINK_EXTEND
    wrapup: str | None = None
    extend_text: str = DEFAULT_THINK_EXTEND_TEXT

    @classmethod
    def of(cls, n: P.Sample | P.Expand, settings: dict[str, Any]) -> Thinking | None:
        """The budget a step's settings ask for, or None without `think_max`."""
        cap = settings.get("think_max")
        if cap is None:
            return None

        def count(key: str, value: Any, least: int) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise NodeFailed(f"`{key}` must be an int of at least {least}, got {value!r}", n.span)
            return value

        def text(key: str, value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise NodeFailed(f"`{key}` must be a non-empty text, got {value!r}", n.span)
            return value

        think = cls(
            cap=count("think_max", cap, 1),
            least=count("think_min", settings.get("think_min", 0), 0),
            extend=count("think_extend", settings.get("think_extend", DEFAULT_THINK_EXTEND), 0),
            wrapup=text("think_wrapup", settings["think_wrapup"]) if "think_wrapup" in settings else None,
            extend_text=text("think_extend_text", settings.get("think_extend_text", DEFAULT_THINK_EXTEND_TEXT)),
        )
        if think.least > think.cap:
            raise NodeFailed(f"`think_min` ({think.least}) is more than `think_max` ({think.cap})", n.span)
        return think


@dataclass
class _Pieces:
    """What one fork has added to its branch so far: generated and injected text and ids."""

    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    completion: int = 0
    prompt: int = 0
    cached: int = 0
    pending: int = 0  # injected tokens the next request has not reported yet
    last: int = 0  # ids of the newest generation

    def add(self, r: GenResult) -> None:
        self.last = len(r.output_ids)
        self.text.append(r.text)
        self.ids += r.output_ids
        self.completion += r.completion_tokens
        self.prompt += r.prompt_tokens
        self.cached += r.cached_tokens
        if r.logprobs is not None:
            self.logprobs = (self.logprobs or []) + r.logprobs

    def inject(self, text: str, ids: tuple[int, ...]) -> None:
        self.text.append(text)
        self.ids += ids
        self.pending += len(ids)

    def note(self, phase: str) -> RequestNote:
        injected, self.pending = self.pending, 0
        return RequestNote(phase, injected)

    def result(self, last: GenResult) -> GenResult:
        """Everything the fork generated and injected, as one result ending like ``last``."""
        return GenResult(
            text="".join(self.text), output_ids=list(self.ids), finish=last.finish,
            completion_tokens=self.completion, prompt_tokens=self.prompt, cached_tokens=self.cached,
            matched=last.matched, logprobs=self.logprobs,
        )

    async def cut(self, tag: str, tag_ids: tuple[int, ...], detokenize: Detokenize) -> None:
        """Remove the closing tag the newest generation ended with, from its text and its ids."""
        text, start = self.text[-1], len(self.ids) - self.last
        ids = self.ids[start:]
        if tag_ids and len(ids) >= len(tag_ids) and tuple(ids[-len(tag_ids):]) == tag_ids:
            self.ids[len(self.ids) - len(tag_ids):] = []
            self.text[-1] = text[: len(text) - len(tag)] if text.endswith(tag) else text
            return
        # The model wrote the tag in other tokens than the tag alone tokenizes to: drop tokens
        # from the end until the tag is gone, and keep the text those ids decode to.
        for k in range(1, len(ids) + 1):
            head = await detokenize(ids[: len(ids) - k])
            if tag not in head:
                self.ids[start:] = ids[: len(ids) - k]
                self.text[-1] = head
                return


_EMPTY = GenResult(text="", output_ids=[], finish="length", completion_tokens=0, prompt_tokens=0)


async def think_fork(send: Send, hold: Reservation, think: Thinking, tags: tuple[str, str], answer_tokens: int,
                     answer_stops: tuple[str, ...], past_thinking: bool, piece: Piece,
                     detokenize: Detokenize, injected: int = 0) -> tuple[GenResult, bool]:
    """Run one fork (see the module doc).  ``injected``: tokens already injected at the end of
    the branch that the first request will report.  Returns the combined result and whether the
    budget cut it short (for `semantics.apply`)."""
    close = tags[1]
    p = _Pieces(pending=injected)

    async def generate(max_new: int, stops: tuple[str, ...], phase: str) -> GenResult:
        r = await send(tuple(p.ids), max_new, stops, hold.take(max_new), p.note(phase))
        p.add(r)
        return r

    # A share short of cap + answer shrinks the cap (never below 1), so the answer keeps its room.
    cap = min(think.cap, max(1, hold.tokens - answer_tokens))
    thought = extended = 0
    while not past_thinking:
        want = cap - thought
        tokens = min(want, hold.tokens)
        if tokens <= 0:
            return p.result(_EMPTY), True
        r = await generate(tokens, (close,), "think")
        thought += r.completion_tokens
        if r.finish == "stop" and r.matched == close:
            if thought < min(think.least, cap) and extended < think.extend:
                await p.cut(close, await piece(close), detokenize)
                p.inject(think.extend_text, await piece(think.extend_text))
                extended += 1
                continue
            break
        if r.finish == "length" and tokens == want:
            if think.wrapup is not None:
                p.inject(think.wrapup, await piece(think.wrapup))
            p.inject(close, await piece(close))
            break
        return p.result(r), r.finish == "length"
    tokens = min(answer_tokens, hold.tokens)
    if tokens <= 0:
        return p.result(_EMPTY), True
    r = await generate(tokens, answer_stops, "answer")
    return p.result(r), tokens < answer_tokens
