"""What OpenAI-compatible servers send on ``/v1/completions``, and what it means.

The shapes here are the union of what vLLM, SGLang (and sglang-router, and the simulator) and
llama-cpp-python's server answer; unknown fields are ignored, missing ones have defaults, so one
decoder reads all of them.  Three things differ between servers and are read per server:

* **generated token ids**: ``choices[].token_ids`` when the request asked ``return_token_ids``
  (vLLM >= 0.10.2, SGLang), with the prompt's ids in ``prompt_token_ids``; absent elsewhere.
* **which stop ended a generation**: SGLang names it in ``matched_stop`` (the string, or the
  token id of an end-of-sequence token) and keeps it in the text with ``no_stop_trim``; vLLM
  names it in ``stop_reason`` (None for end-of-sequence) and keeps it with
  ``include_stop_str_in_output``.  llama-cpp-python does neither: it answers ``"stop"`` for a
  stop string and for end-of-sequence alike and cuts the stop string off.  Its logprobs list
  the text of *every* generated token, the cut ones included, so `recover_stop` rebuilds the
  whole text and tells the two apart (`STOP_FIELDS`).
* **streams**: OpenAI streams are deltas (text, ids and logprobs since the previous chunk),
  folded per choice by `ChoiceFold`; the usage arrives in a last chunk without choices when
  ``stream_options.include_usage`` is asked (not by llama-cpp-python, which reports no usage
  when streaming).

`Profile` is what the backend learnt about one server at start-up.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from ttcdsl.errors import ProtocolViolation, TransientBackendError
from ttcdsl.runtime.backend import FinishKind

__all__ = [
    "STOP_FIELDS",
    "ChoiceFold",
    "Completion",
    "ForkPolicy",
    "Profile",
    "completion_decoder",
    "recover_stop",
]

# The field a server names the matched stop in, and the request flag that keeps it in the text.
STOP_FIELDS: dict[str, str] = {
    "matched_stop": "no_stop_trim",  # SGLang (and sglang-router, the simulator)
    "stop_reason": "include_stop_str_in_output",  # vLLM
}

# How forks of one prompt reach the server (see `Profile.forks`).
ForkPolicy = Literal["warm", "n", "serial"]


class Logprobs(msgspec.Struct):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: Logprobs | None = None
    matched_stop: str | int | None = None
    stop_reason: str | int | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None

    @property
    def cached(self) -> int:
        details = self.prompt_tokens_details
        return details.cached_tokens or 0 if details is not None else 0


class Completion(msgspec.Struct):
    """One ``/v1/completions`` answer, or one chunk of a stream (``error``: an error event)."""

    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Any = None


completion_decoder = msgspec.json.Decoder(Completion)


class Profile(msgspec.Struct, frozen=True):
    """What start-up learnt about one server.

    ``kind``: who it is, from ``/v1/models``' ``owned_by`` ("vllm", "sglang", "sglang-router",
    "llama-cpp-python", or "openai" for anything else).  ``prompt_ids``: it takes prompts as
    token-id lists.  ``token_ids``: it returns generated ids (``return_token_ids``).
    ``stop_field``: where it names the matched stop (a key of `STOP_FIELDS`, or None).
    ``logprob_texts``: its logprobs list each generated token's text.  ``tokenize``: its
    tokenize route, or None.  ``forks``: how forks of one prompt go out (``warm``: a one-token
    warm-up of the prefix, then one request per fork with its own seed; ``n``: one request with
    ``n``, the server seeding sample i with seed + i; ``serial``: one request per fork and no
    warm-up, for a server that runs one request at a time and keeps the last prompt's KV).
    ``stream_usage``: a stream can end with its usage.  ``abort_by_rid``: it has
    ``/abort_request`` for the ``rid`` a request carries."""

    url: str
    model: str
    kind: str
    prompt_ids: bool
    token_ids: bool
    stop_field: str | None
    logprob_texts: bool
    tokenize: str | None
    forks: ForkPolicy
    stream_usage: bool
    abort_by_rid: bool

    @property
    def streams(self) -> bool:
        """Whether a streamed request can be counted and its stop read (else it goes plain)."""
        return self.stream_usage and self.stop_field is not None


class ChoiceFold:
    """Folds one choice's chunks (or its one answer) into text, ids, logprobs and a finish."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ids: list[int] | None = None
        self.prompt_ids: list[int] | None = None
        self.pieces: list[str] = []
        self.logprobs: list[float] = []
        self.top: list[dict[str, float]] = []
        self.has_logprobs = False
        self.finish: str | None = None
        self.matched: str | int | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, choice: Choice, stop_field: str | None) -> None:
        self.parts.append(choice.text)
        if choice.token_ids is not None:
            self.ids = (self.ids or []) + choice.token_ids
        if choice.prompt_token_ids is not None:
            self.prompt_ids = choice.prompt_token_ids
        lp = choice.logprobs
        if lp is not None:
            self.has_logprobs = True
            self.pieces.extend(lp.tokens or ())
            self.logprobs.extend(math.nan if v is None else v for v in lp.token_logprobs or ())
            self.top.extend(dict(row or {}) for row in lp.top_logprobs or ())
        if choice.finish_reason is not None:
            self.finish = choice.finish_reason
            if stop_field is not None:
                self.matched = getattr(choice, stop_field)

    def finish_kind(self, url: str, stops: tuple[str, ...], stop_field: str | None
                    ) -> tuple[FinishKind, str | int | None, str]:
        """(finish, matched, whole text) once the choice has finished."""
        reason, text = self.finish, self.text
        if reason is None:
            raise TransientBackendError(
                f"the server at {url} ended /v1/completions before the generation finished"
            )
        if reason == "length":
            return "length", None, text
        if reason == "abort":
            return "abort", None, text
        if reason != "stop":
            raise ProtocolViolation(f"the server at {url} sent finish_reason {reason!r}")
        if stop_field is not None:
            if isinstance(self.matched, str):
                return "stop", self.matched, text
            eos = self.matched if isinstance(self.matched, int) else None
            if eos is None and self.ids:
                eos = self.ids[-1]
            return "eos", eos, text
        if not stops:
            return "eos", None, text
        whole, matched = recover_stop(url, text, self.pieces, stops)
        return ("eos", None, whole) if matched is None else ("stop", matched, whole)


def recover_stop(url: str, text: str, pieces: list[str], stops: tuple[str, ...]
                 ) -> tuple[str, str | None]:
    """The whole generated text and the stop string that ended it (None: end-of-sequence), for a
    server that cuts the stop string off and names neither (llama-cpp-python).  ``pieces`` are
    the texts of every generated token (its logprobs' ``tokens``); the server stops at the first
    stop string *in list order* found in the text, and cuts the text where that string starts.
    Each piece is decoded on its own, so a character split across tokens is missing from them
    (llama-cpp-python drops its bytes): the pieces are aligned with the text by skipping such
    characters, and what follows the text in them is what was cut off."""
    joined = "".join(pieces)
    k = 0
    for char in text:
        if k < len(joined) and joined[k] == char:
            k += 1
        elif ord(char) < 128:  # only a multi-byte character can be missing from the pieces
            raise ProtocolViolation(
                f"the server at {url} sent token texts that do not add up to its text, so the "
                "stop string that ended the generation cannot be told"
            )
    whole = text + joined[k:]
    if len(whole) == len(text):
        return whole, None
    present = [s for s in stops if s in whole]
    if present and whole.index(present[0]) == len(text):
        return whole, present[0]
    raise ProtocolViolation(
        f"the server at {url} cut its text at {whole[len(text):][:20]!r}, which starts none of "
        "the stop strings it was given"
    )
