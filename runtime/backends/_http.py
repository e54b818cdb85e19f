"""HTTP helpers for the server backends (SGLang's native API and OpenAI-compatible servers).

`iter_sse_data` turns a streamed response body into the payloads of its ``data:`` events, with no
limit on line length (SGLang's cumulative chunks grow with the generation, and with logprobs they
pass aiohttp's 64 KiB ``readline`` limit).  `error_message` digs the human message out of the
error shapes SGLang and its router produce, which are not uniform:

* ``{"error": {"message": "..."}}``            most SGLang errors (HTTP 400)
* ``{"error": "unknown field ..."}``           the 0.5.23 request contract (a plain string)
* ``{"object": "error", "message": "..."}``    OpenAI style (malformed JSON)
* ``{"detail": "Not Found"}``                   FastAPI (unknown path)
* plain text or an empty body                   routers, proxies

Also shared by both backends: which HTTP statuses are worth retrying (`TRANSIENT_STATUSES`),
URL normalisation (`normalise_url`), request ids that never prefix one another (`new_rid`), a
small LRU map for tokenizer answers (`LRU`), the requests of start-up checks
(`start_up_request`), the wording of lost connections, stalls and answers that are neither
JSON nor an event stream (`connection_error`, `stall_error`, `unexpected_content`, with
`ANSWER_TYPES` and `foreign_body`), and the repair of a text cut inside a stop token
(`whole_stop_text`).

Nothing here knows a generate protocol; that is `ttcdsl.runtime.backends.sglang` and
`ttcdsl.runtime.backends.openai`.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import msgspec

from ttcdsl.errors import BackendError, BackendUnavailable, TransientBackendError, UsageError
from ttcdsl.runtime.backend import GenResult

__all__ = [
    "ANSWER_TYPES",
    "LRU",
    "TRANSIENT_STATUSES",
    "ByteChunks",
    "connection_error",
    "error_message",
    "foreign_body",
    "iter_sse_data",
    "new_rid",
    "normalise_url",
    "one_line",
    "stall_error",
    "start_up_request",
    "unexpected_content",
    "whole_stop_text",
]

# HTTP statuses worth retrying: rate limited, bad gateway, unavailable (starting, overloaded),
# gateway timeout.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

# The content types a server answers a successful request with.  SGLang's /generate keeps to
# them; sglang-router labels some JSON answers text/plain, so elsewhere `foreign_body` also looks
# at the body before a proxy's HTML page is refused with `unexpected_content`.
ANSWER_TYPES = frozenset({"application/json", "text/event-stream"})

# Longest message we put into an exception: enough for any real error, short enough for one line.
_MAX_MESSAGE = 400


class ByteChunks(Protocol):
    """What `iter_sse_data` reads: aiohttp's ``StreamReader`` has this method."""

    def iter_any(self) -> AsyncIterator[bytes]: ...


async def iter_sse_data(body: ByteChunks) -> AsyncIterator[bytes]:
    """Yield the data of each server-sent event of ``body``, in order.

    An event ends at a blank line; several ``data:`` lines of one event are joined with ``\\n``
    (the SSE rule); other fields (``event:``, ``id:``, ``: comments``) are ignored.  A final event
    not followed by a blank line is still delivered when the body ends.
    """
    buffer = b""
    data: list[bytes] = []
    async for piece in body.iter_any():
        buffer += piece
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        buffer = buffer[start:]
    if buffer.startswith(b"data:"):
        value = buffer[5:].rstrip(b"\r")
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """``text`` with its lines joined by spaces, runs of blanks collapsed, cut at ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_message(body: bytes | str | Any) -> str:
    """The human message inside an error body (bytes, text or already-decoded JSON)."""
    value: Any = body
    if isinstance(body, (bytes, str)):
        raw = body.encode() if isinstance(body, str) else body
        if not raw.strip():
            return "empty response body"
        try:
            value = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return one_line(raw[:4096].decode("utf-8", errors="replace"))
    try:
        return one_line(_message_of(value))
    except RecursionError:  # an error object nested thousands deep
        return "an error body nested too deeply to read"


def _message_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("error", "message", "detail"):
            if key in value and value[key] is not None:
                return _message_of(value[key])
    if isinstance(value, list) and value:
        # FastAPI validation errors: a list of {"loc", "msg", ...}.
        return "; ".join(_message_of(item.get("msg", item)) if isinstance(item, dict)
                         else _message_of(item) for item in value)
    return msgspec.json.encode(value).decode()


_K = TypeVar("_K")
_V = TypeVar("_V")


class LRU(Generic[_K, _V]):
    """A small least-recently-used map (tokenize/detokenize results)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)


def normalise_url(url: str, flag: str) -> str:
    """``url`` without trailing slashes, ``http://`` added when no scheme is given; a
    `UsageError` naming ``flag`` when it is not an http(s) URL."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")) or url in ("http://", "https://"):
        raise UsageError(f"{flag} must be an http:// or https:// URL, got {url!r}")
    return url


def new_rid(prefix: str) -> str:
    """A request id unique per attempt (a retried request must not collide with a leftover of
    its first attempt), of fixed-length suffix so no rid is a prefix of another (SGLang aborts
    every rid that *starts with* the aborted one)."""
    suffix = uuid.uuid4().hex
    return f"{prefix}-{suffix}" if prefix else suffix


def connection_error(server: str, url: str, what: str, exc: BaseException) -> BackendError:
    """A lost connection to ``server`` (its name, e.g. "SGLang") at ``url`` during ``what``; a
    redirect loop is no lost connection and not worth retrying."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return BackendError(f"{server} at {url} answered {what} with {reason_of(exc)}")
    return TransientBackendError(f"lost the connection to {server} at {url} during {what}: {reason_of(exc)}")


def reason_of(exc: BaseException, limit: int = 200) -> str:
    """What went wrong in a client error, in words (aiohttp's own text can be "0, message=''")."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        hops = [str(r.url) for r in exc.history]
        where = f" ({' -> '.join(dict.fromkeys(hops))} -> ...)" if hops else ""
        return one_line(f"redirects that never end{where}; give the final URL", limit)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.InvalidURL):
        return one_line(f"not a valid URL: {exc}", limit)
    return one_line(str(exc) or type(exc).__name__, limit)


def unexpected_content(server: str, url: str, what: str, content_type: str, body: bytes,
                       error: type[BackendError] = BackendError) -> BackendError:
    """An answer that is neither JSON nor an event stream (a proxy's HTML page, say), as
    ``error`` (`BackendUnavailable` at start-up)."""
    return error(
        f"{server} at {url} answered {what} with {content_type or 'no content type'}, not JSON "
        f"or an event stream (is a proxy in the way?): {error_message(body[:2000])}"
    )


def foreign_body(content_type: str, body: bytes) -> bool:
    """Whether a successful answer is no server's: neither of `ANSWER_TYPES` nor JSON at all."""
    if content_type in ANSWER_TYPES:
        return False
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return True
    return False


async def start_up_request(session: aiohttp.ClientSession, method: str, url: str, path: str, *,
                           server: str, hint: str, body: Any = None) -> tuple[int, bytes, str]:
    """One request of a backend's start-up checks: (status, body, content type).  A server that
    cannot be reached is `BackendUnavailable` naming ``server`` (e.g. "a SGLang server"), the
    URL, what was tried and why, then ``hint`` (how to start one)."""
    try:
        data = None if body is None else msgspec.json.encode(body)
        async with session.request(method, url + path, data=data) as resp:
            return resp.status, await resp.read(), resp.content_type
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise BackendUnavailable(
            f"cannot reach {server} at {url} (tried {method} {path}: {reason_of(exc, 160)}); {hint}"
        ) from None


def stall_error(server: str, url: str, what: str, timeout: aiohttp.ClientTimeout) -> TransientBackendError:
    """``server`` at ``url`` fell silent for longer than ``timeout`` allows during ``what``."""
    return TransientBackendError(
        f"{server} at {url} did not answer {what} in time (connect {timeout.connect:g} s, "
        f"silence {timeout.sock_read:g} s)"
    )


async def whole_stop_text(
    result: GenResult, detokenize: Callable[[tuple[int, ...]], Awaitable[str | None]]
) -> GenResult:
    """Servers that keep a matched stop string in the text (SGLang's ``no_stop_trim``, vLLM's
    ``include_stop_str_in_output``) cut the text right after it, even inside a token, while the
    output ids keep the whole token.  Repair the text so a branch's text and ids stay in step:
    when the text ends with the last token's own text nothing was cut (the usual case, and a
    cached ``detokenize`` makes it free); otherwise the text is that of all the ids.
    ``detokenize`` is the server's detokenize route (None when it has none: then nothing
    changes)."""
    if result.finish != "stop" or not isinstance(result.matched, str) or not result.output_ids:
        return result
    piece = await detokenize((result.output_ids[-1],))
    if piece is None or (piece and "\ufffd" not in piece and result.text.endswith(piece)):
        return result
    whole = await detokenize(tuple(result.output_ids))
    if whole is not None and whole.startswith(result.text) and len(whole) > len(result.text):
        result.text = whole
    return result
