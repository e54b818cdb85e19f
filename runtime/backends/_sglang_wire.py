"""What SGLang's native API sends and takes, and how a `/generate` answer becomes a `GenResult`.

The wire types decode model info, server info, tokenizer, reward and ``/generate`` answers
(unknown fields are ignored and missing ones have defaults, so newer servers decode fine);
`payload_of` builds the ``/generate`` body of one request; `Stream` folds the chunks of one
answer, in either streaming flavour or as one object, into a `GenResult`, checking the token
counts; `http_error` and `stream_error` turn an error status or an error event into the right
`BackendError` (transient or not).  `Server` is what start-up learnt about one URL.

Nothing here sends a request: that is `ttcdsl.runtime.backends.sglang`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from ttcdsl.errors import BackendError, ProtocolViolation, TransientBackendError
from ttcdsl.runtime.backend import FinishKind, GenRequest, GenResult
from ttcdsl.runtime.backends._http import TRANSIENT_STATUSES, error_message, new_rid, one_line

__all__ = [
    "LOGPROB_DEFAULTS",
    "Chunk",
    "Embedding",
    "EmbeddingList",
    "LogprobEntry",
    "Server",
    "ServerInfo",
    "Stream",
    "Text",
    "Tokens",
    "batch_decoder",
    "chunk_decoder",
    "decode_answer",
    "first_score",
    "http_error",
    "info_decoder",
    "payload_of",
    "reader_of",
]


# --- wire types (unknown fields are ignored, so newer servers decode fine) ------------------------

# One logprob entry: [logprob, token id, token text or null].
LogprobEntry = tuple[float | None, int, str | None]


class Finish(msgspec.Struct):
    type: str
    matched: str | int | None = None
    length: int | None = None
    message: str | None = None
    status_code: int | None = None


class Meta(msgspec.Struct):
    finish_reason: Finish | None = None
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    input_token_logprobs: list[LogprobEntry] | None = None
    output_token_logprobs: list[LogprobEntry] | None = None
    output_top_logprobs: list[list[LogprobEntry] | None] | None = None


class Chunk(msgspec.Struct):
    text: str = ""
    output_ids: list[int] | None = None
    meta_info: Meta | None = None
    error: Any = None
    # The batch element a streamed chunk belongs to (absent for a single request).
    index: int | None = None


class ModelInfo(msgspec.Struct):
    model_path: str | None = None
    served_model_name: str | None = None
    is_generation: bool = True
    # `--reasoning-parser` (also in /get_server_info, which older servers' model info lacks).
    reasoning_parser: str | None = None


class Tokens(msgspec.Struct):
    tokens: list[int]


class Text(msgspec.Struct):
    text: str


class Embedding(msgspec.Struct):
    embedding: list[float]


class EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingList(msgspec.Struct):
    data: list[EmbeddingItem]


chunk_decoder = msgspec.json.Decoder(Chunk)
batch_decoder = msgspec.json.Decoder(list[Chunk])
# What SGLang assumes for a batch element that does not ask for logprobs.
LOGPROB_DEFAULTS: dict[str, Any] = {
    "return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0,
}
info_decoder = msgspec.json.Decoder(ModelInfo)


class ServerInfo(msgspec.Struct):
    version: str | int | float | None = None


class Server(msgspec.Struct, frozen=True):
    """What start-up learnt about one URL."""

    url: str
    model: str
    is_generation: bool
    router: bool
    reasoning_parser: str | None = None
    version: str | None = None  # /server_info's "version", when it answers


# --- the stream accumulator -----------------------------------------------------------------------


class Stream:
    """Folds the chunks of one /generate stream into a `GenResult`.

    SGLang streams either cumulative chunks (each one repeats all text, ids and logprobs so far)
    or deltas.  The flavour is read from the chunks themselves: ``meta_info.completion_tokens``
    counts every token so far, so a cumulative chunk carries exactly that many ids, a delta
    carries the difference.  The first chunk is the same either way.
    """

    def __init__(self, url: str, limit: int, logprobs: bool, top_logprobs: int) -> None:
        self.url = url
        self.limit = limit
        self.want_logprobs = logprobs
        self.want_top = top_logprobs > 0
        self.mode: Literal["cumulative", "delta"] | None = None
        self.text = ""
        self.ids: list[int] = []
        self.logprobs: list[LogprobEntry] = []
        self.top: list[list[LogprobEntry] | None] = []
        self.meta: Meta | None = None
        # Told the completion tokens so far after every chunk, if set.
        self.progress: Callable[[int], None] | None = None

    def feed(self, chunk: Chunk) -> None:
        if chunk.error is not None:
            raise stream_error(self.url, chunk.error)
        meta = chunk.meta_info
        if meta is None:
            raise ProtocolViolation(
                f"SGLang server at {self.url} sent a /generate chunk without meta_info"
            )
        ids = chunk.output_ids
        if ids is None:
            raise ProtocolViolation(
                f"SGLang server at {self.url} sent no output_ids (SGLang 0.4 or newer is needed)"
            )
        finishing_abort = meta.finish_reason is not None and meta.finish_reason.type == "abort"
        try:
            mode = self._mode_of(ids, meta.completion_tokens)
        except ProtocolViolation:
            if not finishing_abort:
                raise
            # With incremental output SGLang ends an aborted request with the whole text but
            # only the last id; what was streamed before is the partial output.
            self.meta = meta
            return
        out_lp = meta.output_token_logprobs or []
        out_top = meta.output_top_logprobs or []
        if mode == "cumulative":
            # Each decoded chunk is fresh: keep its lists rather than copying them.
            self.text, self.ids = chunk.text, ids
            self.logprobs, self.top = list(out_lp), list(out_top)
        else:
            self.text += chunk.text
            self.ids.extend(ids)
            self.logprobs.extend(out_lp)
            self.top.extend(out_top)
        self.meta = meta
        produced = max(len(self.ids), meta.completion_tokens or 0)
        if produced > self.limit:
            raise ProtocolViolation(
                f"SGLang server at {self.url} returned {produced} completion tokens "
                f"but max_new_tokens was {self.limit}"
            )
        if self.progress is not None:
            self.progress(produced)

    def _mode_of(self, ids: list[int], total: int | None) -> Literal["cumulative", "delta"]:
        if not self.ids:
            # Nothing accumulated yet: replacing and appending give the same state.
            return self.mode or "cumulative"
        if total is None:
            # An older server that does not count: SGLang's default is cumulative.
            return self.mode or "cumulative"
        # Compared by counts and by the last id seen (not the whole list: that would be
        # quadratic in the output length, chunk after chunk).
        seen_len = len(self.ids)
        cumulative = len(ids) == total and len(ids) >= seen_len and ids[seen_len - 1] == self.ids[-1]
        delta = seen_len + len(ids) == total
        seen: Literal["cumulative", "delta"] | None
        seen = "cumulative" if cumulative else "delta" if delta else None
        if seen is None or (self.mode is not None and seen != self.mode):
            raise ProtocolViolation(
                f"SGLang server at {self.url} sent an inconsistent /generate stream "
                f"(a chunk of {len(ids)} ids after {len(self.ids)}, with completion_tokens={total})"
            )
        self.mode = seen
        return seen

    def result(self) -> GenResult:
        meta = self.meta
        if meta is None or meta.finish_reason is None:
            raise TransientBackendError(
                f"SGLang server at {self.url} ended the /generate stream before the request "
                "finished"
            )
        finish, matched = _finish_of(self.url, meta.finish_reason)
        result = GenResult(
            text=self.text,
            output_ids=self.ids,
            finish=finish,
            completion_tokens=max(len(self.ids), meta.completion_tokens or 0),
            prompt_tokens=meta.prompt_tokens,
            cached_tokens=meta.cached_tokens or 0,
            matched=matched,
        )
        if self.want_logprobs:
            result.logprobs = self._token_logprobs()
        if self.want_top:
            result.top_logprobs = [_top_map(entry) for entry in self.top]
        return result

    def _token_logprobs(self) -> list[float]:
        if len(self.logprobs) != len(self.ids):
            raise ProtocolViolation(
                f"SGLang server at {self.url} returned {len(self.logprobs)} output logprobs "
                f"for {len(self.ids)} output tokens"
            )
        return [float("nan") if lp is None else lp for lp, _, _ in self.logprobs]


def _top_map(entry: list[LogprobEntry] | None) -> dict[str, float]:
    alternatives: dict[str, float] = {}
    for lp, token, text in entry or ():
        key = text if text is not None else str(token)
        if lp is not None and key not in alternatives:
            alternatives[key] = lp
    return alternatives


def _finish_of(url: str, reason: Finish) -> tuple[FinishKind, str | int | None]:
    kind = reason.type
    if kind == "stop":
        if isinstance(reason.matched, str):
            return "stop", reason.matched
        return "eos", reason.matched
    if kind == "length":
        return "length", None
    if kind == "abort":
        status = reason.status_code
        message = reason.message or "aborted"
        if status is not None and status in TRANSIENT_STATUSES:
            raise TransientBackendError(
                f"SGLang server at {url} aborted the request (HTTP {status}): {one_line(message)}"
            )
        if status is not None and status >= 400:
            raise BackendError(
                f"SGLang server at {url} aborted the request (HTTP {status}): {one_line(message)}"
            )
        return "abort", None
    raise ProtocolViolation(f"SGLang server at {url} sent an unknown finish_reason type {kind!r}")


def stream_error(url: str, error: Any) -> BackendError:
    """The exception for a ``data: {"error": ...}`` event inside a 200 stream."""
    message = error_message(error)
    code = error.get("code") if isinstance(error, dict) else None
    retryable = isinstance(error, dict) and error.get("retryable") is True
    if retryable or code in TRANSIENT_STATUSES:
        return TransientBackendError(f"SGLang server at {url} failed the request: {message}")
    return BackendError(f"SGLang server at {url} rejected POST /generate: {message}")


def http_error(url: str, what: str, status: int, body: bytes, router: bool = False) -> BackendError:
    message = error_message(body)
    # A router answers 500 when it could not reach the worker it picked (e.g. the worker just
    # died); another attempt lets it route around the dead worker, so that is worth retrying.
    upstream = router and status == 500 and b"upstream" in body.lower()
    if status in TRANSIENT_STATUSES or upstream:
        return TransientBackendError(
            f"SGLang server at {url} answered {what} with HTTP {status}: {message}"
        )
    return BackendError(f"SGLang server at {url} rejected {what} (HTTP {status}): {message}")


def first_score(values: list[float] | None) -> float | None:
    return values[0] if values else None


def decode_answer(url: str, data: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(
            f"SGLang server at {url} sent a /generate answer that is not SGLang's: {exc}"
        ) from None


def payload_of(request: GenRequest) -> tuple[str, dict[str, Any]]:
    """The rid and /generate body of one request (without ``stream``)."""
    sampling = request.sampling
    params: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        # Keep a matched stop string in the text, so text and output_ids stay in step.
        "no_stop_trim": True,
    }
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        params["sampling_seed"] = sampling.seed
    rid = new_rid(request.rid)
    payload: dict[str, Any] = {"input_ids": list(request.input_ids), "sampling_params": params, "rid": rid}
    if request.logprobs or request.top_logprobs:
        payload["return_logprob"] = True
        # -1: logprobs of the output only; a start inside the prompt would cap prefix reuse.
        payload["logprob_start_len"] = -1
    if request.top_logprobs:
        payload["top_logprobs_num"] = request.top_logprobs
        payload["return_text_in_logprobs"] = True
    return rid, payload


def reader_of(url: str, request: GenRequest) -> Stream:
    return Stream(url, request.sampling.max_new_tokens, request.logprobs, request.top_logprobs)
