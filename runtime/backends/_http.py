"""HTTP helpers for the server backends: server-sent events and error bodies.

`iter_sse_data` turns a streamed response body into the payloads of its ``data:`` events, with no
limit on line length (SGLang's cumulative chunks grow with the generation, and with logprobs they
pass aiohttp's 64 KiB ``readline`` limit).  `error_message` digs the human message out of the
error shapes SGLang and its router produce, which are not uniform:

* ``{"error": {"message": "..."}}``            most SGLang errors (HTTP 400)
* ``{"error": "unknown field ..."}``           the 0.5.23 request contract (a plain string)
* ``{"object": "error", "message": "..."}``    OpenAI style (malformed JSON)
* ``{"detail": "Not Found"}``                   FastAPI (unknown path)
* plain text or an empty body                   routers, proxies

Nothing here knows SGLang's generate protocol; that is `ttcdsl.runtime.backends.sglang`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

__all__ = ["ByteChunks", "error_message", "iter_sse_data", "one_line"]

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
        except msgspec.DecodeError:
            return one_line(raw.decode("utf-8", errors="replace"))
    return one_line(_message_of(value))


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
