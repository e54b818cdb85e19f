r"""Reasoning mode: how the simulator thinks before it answers, and why its accuracy is exact.

A problem with ``thinking`` (`task.Thinking`) is answered like a reasoning model served with
SGLang's ``--reasoning-parser deepseek-r1``::

    <think>\n
    Now we add the units digits and carry the one. Here we ... (thinking text)\n
    </think>\n\n
    The answer is 42.<EOS>

Everything is decided from the text so far (prompt + output), so a continuation behaves the same
whatever a client injected in between.  Let ``content`` be the text after the last ``<think>``
that follows the question, and ``t`` the number of sim tokens of ``content`` (up to ``</think>``
if there is one) with surrounding whitespace stripped: the *thinking length*.

**The branch.**  A branch is identified by its problem and its first thinking sentence (``content`` up
to its first ``.``, or all of it before there is one); the sim writes that sentence from the request's
seed and everything after it from a hash of the sentence.  So a branch has one uniform draw
``u`` that every continuation of it shares, whatever seed it carries, and a wrong answer
``w(t)`` (a key of ``answers`` other than ``answer``, drawn in proportion to the weights) that
it redraws every 16 thinking tokens: a chain that has not found the answer yet wavers.

**The answer.**  Whenever the sim writes an answer after ``t`` thinking tokens, it is the
correct ``answer`` iff ``u < p(t)`` (``p``: the curve), else ``w(t)``.  Over branches (fresh
samples) the accuracy of answers written at length ``t`` is therefore exactly ``p(t)``; a
branch's answers at two lengths are right or wrong alike except where the curve crosses its
``u``.  So probes settle once the curve passes ``u`` (and agree from then on), wrong probes
rarely agree with each other (they do as often as two draws of the wrong answers coincide), and
extension past the peak turns right answers wrong.

**When it closes.**  A branch has natural close points ``c_1 = L_1``, ``c_j = c_{j-1} + L_j``
with each ``L_j`` uniform on ``natural`` (hashed from the branch).  With thinking open, the sim
thinks on until the first close point ``>= t``, then writes ``\n</think>\n\nThe answer is X.``.
If a client replaced the close with text of its own ("Wait," in s1's budget forcing), ``t`` is
past ``c_j``, so the branch thinks another natural segment, to ``c_{j+1}``, and closes again.

**Other texts.**  After ``</think>`` (written by the sim or injected by a client cap, possibly
after a wrap-up message) the sim writes the answer at the ``t`` between the tags, completing
``\n\nThe answer is X.`` if the text is a prefix of it, and nothing more if an answer line is
already there.  A text ending in ``\boxed{`` is a *probe*: the sim writes ``X}`` and ends the
sequence, ``X`` the answer at the current ``t`` (inside thinking, ``content`` before
``\boxed{``, the probe's own words included).  A text cut inside a tag gets the tag completed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from .rand import text_seed, uniform
from .task import THINK_TAGS, Problem
from .tokenizer import FILLER_WORDS, STARTERS, tokenizer

__all__ = ["PROBE", "answer_at", "branch_seed", "continuation", "current_answer", "thinking_length"]

OPEN, CLOSE = THINK_TAGS
PROBE = "\\boxed{"
_ANSWER_DONE_RE = re.compile(r"The answer is [^\n]+?\.")
_SENTENCE = 10  # thinking tokens per sentence after the first (the 10th is the ".")
_WANDER = 16  # a wrong branch redraws its wrong answer every this many thinking tokens


def thinking_length(content: str) -> int:
    """Sim tokens of a thinking text, surrounding whitespace stripped."""
    return len(tokenizer.encode(content.strip()))


def branch_seed(problem: Problem, content: str) -> int:
    """The hash that identifies a branch: of its problem and its first thinking sentence (the
    problem too, so that runs seeded alike draw independently on different problems)."""
    stripped = content.strip()
    end = stripped.find(".")
    return text_seed(problem.id + "\n" + (stripped[: end + 1] if end >= 0 else stripped), "think")


def answer_at(problem: Problem, content: str) -> str:
    """The answer a branch gives after the thinking text ``content`` (module doc)."""
    assert problem.thinking is not None
    seed = branch_seed(problem, content)
    t = thinking_length(content)
    if uniform(seed, "right") < problem.thinking.p_right(t):
        return problem.answer
    wrong = problem.wrong_answers
    total = sum(p for _, p in wrong)
    v = uniform(seed, "wrong", t // _WANDER) * total
    for value, p in wrong:
        v -= p
        if v < 0.0:
            return value
    return wrong[-1][0]


def current_answer(problem: Problem, tail: str) -> str:
    """The answer the text after the question stands for: its answer line after ``</think>``
    if there is one, else what the branch would answer at its current thinking length."""
    start = tail.rfind(OPEN)
    content = tail[start + len(OPEN) :] if start >= 0 else ""
    close = content.find(CLOSE)
    if close >= 0:
        lines = _ANSWER_DONE_RE.findall(content[close:])
        if lines:
            return lines[-1][len("The answer is ") : -1]
        content = content[:close]
    return answer_at(problem, content)


# ---------------------------------------------------------------- generation


def continuation(problem: Problem, tail: str, seed: int) -> Iterator[int]:
    """The token ids the sim writes after ``tail``, the text after the question, up to (not
    including) the end-of-sequence token."""
    start = tail.rfind(OPEN)
    if start < 0:
        if tail.endswith(PROBE):
            yield from _probe(problem, "")
            return
        yield from _open_tag(tail)
        yield from _think(problem, "\n", seed)
        return
    content = tail[start + len(OPEN) :]
    close = content.find(CLOSE)
    if tail.endswith(PROBE):
        yield from _probe(problem, content[:close] if close >= 0 else content[: -len(PROBE)])
    elif close >= 0:
        yield from _answer(problem, content[:close], content[close + len(CLOSE) :])
    else:
        cut = _partial_close(content)
        if cut:
            yield from _text(CLOSE[cut:])
            yield from _answer(problem, content[:-cut], "")
        else:
            yield from _think(problem, content, seed)


def _text(text: str) -> Iterator[int]:
    yield from tokenizer.encode(text)


def _open_tag(tail: str) -> Iterator[int]:
    for k in range(len(OPEN) - 1, 0, -1):
        if tail.endswith(OPEN[:k]):
            yield from _text(OPEN[k:] + "\n")
            return
    yield from _text(OPEN + "\n")


def _partial_close(content: str) -> int:
    """How many characters of a ``</think>`` cut short end ``content`` (0: none)."""
    for k in range(len(CLOSE) - 1, 1, -1):
        if content.endswith(CLOSE[:k]):
            return k
    return 0


def _probe(problem: Problem, content: str) -> Iterator[int]:
    yield from _text(answer_at(problem, content) + "}")


def _answer(problem: Problem, content: str, rest: str) -> Iterator[int]:
    if _ANSWER_DONE_RE.search(rest):
        return
    line = f"The answer is {answer_at(problem, content)}."
    target = "\n\n" + line
    if target.startswith(rest):
        yield from _text(target[len(rest) :])
    else:
        yield from _text(line if rest[-1].isspace() else "\n" + line)


def _think(problem: Problem, content: str, seed: int) -> Iterator[int]:
    """Think on from ``content`` to the branch's next natural close, then close and answer."""
    thinking = problem.thinking
    assert thinking is not None
    written: list[str] = []
    t = thinking_length(content)
    if not content.strip():
        if not content:
            written.append("\n")
        written.append(STARTERS[int(uniform(seed, "think-start") * len(STARTERS))])
        t = 1
    if "." not in content.strip():
        end = 5 + int(uniform(seed, "think-first") * 7)  # the first sentence: 6..12 tokens
        while t < end:
            written.append(" " + FILLER_WORDS[int(uniform(seed, "think-w", t) * len(FILLER_WORDS))])
            t += 1
        written.append(".")
        t += 1
    yield from map(tokenizer.piece_id, written)
    text = content + "".join(written)
    kseed = branch_seed(problem, text)
    t = thinking_length(text)
    close, j = 0, 0
    low, high = thinking.natural
    while close < t:
        j += 1
        close += low + int(uniform(kseed, "natural", j) * (high - low + 1))
    pieces: list[str] = []
    for pos in range(t, close):
        piece = _piece(kseed, pos)
        pieces.append(piece)
        yield tokenizer.piece_id(piece)
    text += "".join(pieces)
    yield from _text(CLOSE if text[-1:].isspace() else "\n" + CLOSE)
    yield from _answer(problem, text, "")


@lru_cache(maxsize=1 << 14)
def _piece(kseed: int, pos: int) -> str:
    """The branch's thinking token at position ``pos``: sentences of ``_SENTENCE`` tokens."""
    phase = pos % _SENTENCE
    if phase == _SENTENCE - 1:
        return "."
    if phase == 0:
        return " " + STARTERS[int(uniform(kseed, "think-s", pos) * len(STARTERS))]
    return " " + FILLER_WORDS[int(uniform(kseed, "think-w", pos) * len(FILLER_WORDS))]
