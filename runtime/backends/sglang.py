"""The SGLang backend: an aiohttp client for SGLang's native HTTP API (and sglang-router).

`SGLangBackend` implements the `Backend` contract of `ttcdsl.runtime.backend`:

* start-up (``async with``): ``GET /health``, then ``/model_info`` (``/get_model_info`` on older
  servers and on sglang-router); anything unreachable or not SGLang raises `BackendUnavailable`
  with one line naming the URL, what was tried and how to start a server.
* `generate` sends ``POST /generate`` with the exact ``input_ids``, a fresh ``rid`` per call and
  ``no_stop_trim`` (the text keeps a matched stop string, so text and ``output_ids`` stay in
  step).  It streams only when the request asks for it (`GenRequest.stream`); otherwise the answer
  is one JSON object decoded by msgspec, with no per-token work.  It reads whatever the server
  sends: one object, or a stream in either flavour (cumulative chunks, SGLang's default, or deltas
  with ``--incremental-streaming-output``).  More tokens than ``max_new_tokens`` is a
  `ProtocolViolation`.
* `generate_batch` sends the forks of a step as one batch request (lists of ``input_ids``,
  per-fork sampling parameters and seeds, and rids; a JSON list back in order) when talking to a
  server directly; through a router, which rejects batches, one request per fork.
* cancelling the awaiting task drops the connection (SGLang then aborts the request: at once for a
  stream, within its disconnect poll for a plain request) and, talking to a server directly, also
  posts ``/abort_request`` for every rid, shielded and with a short timeout.
* errors: HTTP 429/502/503/504, connection resets and stalls raise `TransientBackendError` (the
  caller retries); every other failure raises `BackendError` carrying the server's own message.
* router mode (``router=True``, or detected because ``GET /workers`` answers, which a SGLang
  worker does not): single-prompt requests only, ``/v1/tokenize`` and ``/v1/embeddings``, no
  ``/abort_request`` (the router has none; closing the stream is the abort).

It never sends ``n`` (every fork has its own seed): the runtime forks, and warms a shared prefix
first with `warm`.
It does not retry: retries belong to the caller.  What real servers send is pinned by the
recordings in tests/fixtures/sglang/ and checked against the engine by tests/sglang_tier/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import aiohttp
import anyio
import msgspec

from ttcdsl.errors import (
    BackendError,
    BackendUnavailable,
    ProtocolViolation,
    TransientBackendError,
    UsageError,
)
from ttcdsl.runtime.backend import (
    BackendInfo,
    FinishKind,
    GenRequest,
    GenResult,
    WarmResult,
    first_failure,
)
from ttcdsl.runtime.backends._http import (
    ANSWER_TYPES,
    LRU,
    TRANSIENT_STATUSES,
    connection_error,
    error_message,
    iter_sse_data,
    new_rid,
    normalise_url,
    one_line,
    reason_of,
    stall_error,
    unexpected_content,
    whole_stop_text,
)
from ttcdsl.runtime.backends._think import parser_of_info, tags_of_parser

__all__ = ["SGLangBackend"]

_HOW_TO_START = (
    "start one with `ttc serve --model PATH` (a real SGLang) or `ttc sim serve --task FILE` "
    "(the simulator), or pass the right --url"
)
_REWARD_HINT = (
    "pass --reward-url of a SGLang server launched with a reward model "
    "(e.g. `ttc serve --model RM_PATH -- --is-embedding`)"
)
_JSON = {"Content-Type": "application/json"}
_CACHE_SIZE = 4096


# --- wire types (unknown fields are ignored, so newer servers decode fine) ------------------------

# One logprob entry: [logprob, token id, token text or null].
_LogprobEntry = tuple[float | None, int, str | None]


class _Finish(msgspec.Struct):
    type: str
    matched: str | int | None = None
    length: int | None = None
    message: str | None = None
    status_code: int | None = None


class _Meta(msgspec.Struct):
    finish_reason: _Finish | None = None
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    input_token_logprobs: list[_LogprobEntry] | None = None
    output_token_logprobs: list[_LogprobEntry] | None = None
    output_top_logprobs: list[list[_LogprobEntry] | None] | None = None


class _Chunk(msgspec.Struct):
    text: str = ""
    output_ids: list[int] | None = None
    meta_info: _Meta | None = None
    error: Any = None
    # The batch element a streamed chunk belongs to (absent for a single request).
    index: int | None = None


class _ModelInfo(msgspec.Struct):
    model_path: str | None = None
    served_model_name: str | None = None
    is_generation: bool = True
    # `--reasoning-parser` (also in /get_server_info, which older servers' model info lacks).
    reasoning_parser: str | None = None


class _Tokens(msgspec.Struct):
    tokens: list[int]


class _Text(msgspec.Struct):
    text: str


class _Embedding(msgspec.Struct):
    embedding: list[float]


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_EmbeddingItem]


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_batch_decoder = msgspec.json.Decoder(list[_Chunk])
# What SGLang assumes for a batch element that does not ask for logprobs.
_LOGPROB_DEFAULTS: dict[str, Any] = {
    "return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0,
}
_info_decoder = msgspec.json.Decoder(_ModelInfo)


class _ServerInfo(msgspec.Struct):
    version: str | int | float | None = None


class _Server(msgspec.Struct, frozen=True):
    """What start-up learnt about one URL."""

    url: str
    model: str
    is_generation: bool
    router: bool
    reasoning_parser: str | None = None
    version: str | None = None  # /server_info's "version", when it answers


# --- the stream accumulator -----------------------------------------------------------------------


class _Stream:
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
        self.logprobs: list[_LogprobEntry] = []
        self.top: list[list[_LogprobEntry] | None] = []
        self.meta: _Meta | None = None
        # Told the completion tokens so far after every chunk, if set.
        self.progress: Callable[[int], None] | None = None

    def feed(self, chunk: _Chunk) -> None:
        if chunk.error is not None:
            raise _stream_error(self.url, chunk.error)
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


def _top_map(entry: list[_LogprobEntry] | None) -> dict[str, float]:
    alternatives: dict[str, float] = {}
    for lp, token, text in entry or ():
        key = text if text is not None else str(token)
        if lp is not None and key not in alternatives:
            alternatives[key] = lp
    return alternatives


def _finish_of(url: str, reason: _Finish) -> tuple[FinishKind, str | int | None]:
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


def _stream_error(url: str, error: Any) -> BackendError:
    """The exception for a ``data: {"error": ...}`` event inside a 200 stream."""
    message = error_message(error)
    code = error.get("code") if isinstance(error, dict) else None
    retryable = isinstance(error, dict) and error.get("retryable") is True
    if retryable or code in TRANSIENT_STATUSES:
        return TransientBackendError(f"SGLang server at {url} failed the request: {message}")
    return BackendError(f"SGLang server at {url} rejected POST /generate: {message}")


def _http_error(url: str, what: str, status: int, body: bytes, router: bool = False) -> BackendError:
    message = error_message(body)
    # A router answers 500 when it could not reach the worker it picked (e.g. the worker just
    # died); another attempt lets it route around the dead worker, so that is worth retrying.
    upstream = router and status == 500 and b"upstream" in body.lower()
    if status in TRANSIENT_STATUSES or upstream:
        return TransientBackendError(
            f"SGLang server at {url} answered {what} with HTTP {status}: {message}"
        )
    return BackendError(f"SGLang server at {url} rejected {what} (HTTP {status}): {message}")


# --- the backend ----------------------------------------------------------------------------------


class SGLangBackend:
    """A `Backend` talking to one SGLang server or sglang-router.  Use as ``async with``.

    ``timeout`` is the longest silence tolerated from the server (seconds until the next bytes of
    a response); a long generation is fine while tokens keep coming.  ``router`` forces router
    mode on or off; ``None`` detects it.  ``reward_url`` is the server with the reward model used
    by `reward` (default: ``url``).
    """

    def __init__(
        self,
        url: str,
        *,
        reward_url: str | None = None,
        router: bool | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        abort_timeout: float = 2.0,
        engine_version: bool = False,
    ) -> None:
        for name, value in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("abort_timeout", abort_timeout),
        ):
            if not value > 0:
                raise UsageError(f"SGLangBackend {name} must be a positive number of seconds")
        self._url = normalise_url(url, "--url")
        self._reward_url = normalise_url(reward_url, "--reward-url") if reward_url else None
        self._router_choice = router
        # Ask /server_info for the engine version at start-up (for `BackendInfo.engine`).
        self._ask_version = engine_version
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self._abort_timeout = abort_timeout
        self._session: aiohttp.ClientSession | None = None
        self._server: _Server | None = None
        self._reward_server: _Server | None = None
        self._tokens: LRU[str, tuple[int, ...]] = LRU(_CACHE_SIZE)
        self._texts: LRU[tuple[int, ...], str] = LRU(_CACHE_SIZE)
        # Set once an endpoint turned out to be missing, so the fallback is used directly.
        self._no_tokenize_route = False
        self._no_detokenize_route = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> SGLangBackend:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(limit=0)
        )
        try:
            self._server = await self._describe(self._url, self._router_choice, "")
            if not self._server.is_generation:
                raise BackendUnavailable(
                    f"the SGLang server at {self._url} serves {self._server.model}, which is not "
                    "a generative model; pass it as --reward-url and give --url of a server with "
                    "a generative model"
                )
            if self._reward_url and self._reward_url != self._url:
                self._reward_server = await self._describe(self._reward_url, None, "reward ")
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def info(self) -> BackendInfo:
        server = self._server
        reward = self._reward_server
        return BackendInfo(
            name="sglang",
            model=server.model if server else "unknown",
            url=self._url,
            has_reward=reward is not None and not reward.is_generation,
            engine=f"sglang {server.version}" if server and server.version else ("sglang" if server else None),
        )

    @property
    def router(self) -> bool:
        """Whether requests go through sglang-router (known after start-up)."""
        return self._active().router

    async def _describe(self, url: str, router: bool | None, role: str) -> _Server:
        """Start-up checks of one URL: alive, an SGLang server, which model, router or not."""
        status, _ = await self._probe(url, "/health", role)
        if status != 200:
            detail = " (it is still starting; wait until it is ready)" if status == 503 else ""
            raise BackendUnavailable(
                f"the {role}server at {url} answered GET /health with HTTP {status}{detail}; "
                f"{_HOW_TO_START}"
            )
        tried = []
        failed: str | None = None  # a 5xx answer: the server is alive but failing
        for path in ("/model_info", "/get_model_info"):
            status, body = await self._probe(url, path, role)
            tried.append(f"GET {path}: HTTP {status}")
            if status == 200:
                break
            if status >= 500:
                failed = f"GET {path}: HTTP {status}: {error_message(body)}"
        else:
            if failed is not None:
                raise BackendUnavailable(
                    f"the {role}server at {url} failed to describe its model ({failed}); if it "
                    f"is an sglang-router, the worker behind it may be down: see GET {url}/workers"
                )
            raise BackendUnavailable(
                f"the {role}server at {url} does not look like SGLang ({', '.join(tried)}); "
                f"{_HOW_TO_START}"
            )
        try:
            info = _info_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise BackendUnavailable(
                f"the {role}server at {url} sent a model info SGLang would not send ({exc}); "
                f"{_HOW_TO_START}"
            ) from None
        if router is None:
            status, body = await self._probe(url, "/workers", role)
            router = status == 200 and body.lstrip().startswith(b"{") and b'"workers"' in body
        model = info.served_model_name or info.model_path or "unknown"
        version = await self._version(url, role) if self._ask_version and not role else None
        return _Server(url=url, model=model, is_generation=info.is_generation, router=router,
                       reasoning_parser=info.reasoning_parser, version=version)

    async def _version(self, url: str, role: str) -> str | None:
        """The engine version from ``/server_info`` (``/get_server_info`` on older servers)."""
        for path in ("/server_info", "/get_server_info"):
            status, body = await self._probe(url, path, role)
            if status == 200:
                try:
                    version = msgspec.json.decode(body, type=_ServerInfo).version
                except msgspec.DecodeError:
                    return None
                return str(version) if version is not None else None
        return None

    async def _probe(self, url: str, path: str, role: str) -> tuple[int, bytes]:
        session = self._active_session()
        try:
            async with session.get(url + path) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = reason_of(exc, 160)
            raise BackendUnavailable(
                f"cannot reach a {role}SGLang server at {url} (tried GET {path}: {reason}); "
                f"{_HOW_TO_START}"
            ) from None

    def _active_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendError("SGLangBackend is used outside `async with`; enter it first")
        return self._session

    def _active(self) -> _Server:
        if self._server is None:
            raise BackendError("SGLangBackend is used outside `async with`; enter it first")
        return self._server

    # -- generation --------------------------------------------------------------------------------

    @property
    def batches(self) -> bool:
        """Forks go out as one batch request on a direct server; a router rejects batches."""
        return not self._active().router

    async def generate(self, request: GenRequest) -> GenResult:
        return await self._generate(request, request.stream, None)

    async def generate_stream(self, request: GenRequest, progress: Callable[[int], None]) -> GenResult:
        """`generate`, always streamed, calling ``progress`` with the tokens so far after each
        chunk (what an aborted request cost the server)."""
        return await self._generate(request, True, progress)

    async def _generate(self, request: GenRequest, stream: bool,
                        progress: Callable[[int], None] | None) -> GenResult:
        server = self._active()
        rid, payload = _payload(request)
        payload["stream"] = stream
        reader = _reader(server.url, request)
        reader.progress = progress
        (result,) = await self._run(server, payload, [rid], [reader])
        return await self._whole_text(result)

    async def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """The requests as one ``POST /generate`` with lists of ``input_ids``, sampling
        parameters and rids (one round trip; SGLang answers a JSON list in request order).
        Through a router, which rejects batches, the requests go one by one concurrently."""
        if not requests:
            return []
        server = self._active()
        if server.router or len(requests) == 1:
            results: list[GenResult | None] = [None] * len(requests)

            async def one(i: int) -> None:
                results[i] = await self.generate(requests[i])

            try:
                async with anyio.create_task_group() as tg:
                    for i in range(len(requests)):
                        tg.start_soon(one, i)
            except BaseExceptionGroup as group:
                raise first_failure(group) from None
            return [r for r in results if r is not None]
        parts = [_payload(r) for r in requests]
        rids = [rid for rid, _ in parts]
        payload: dict[str, Any] = {
            "input_ids": [p["input_ids"] for _, p in parts],
            "sampling_params": [p["sampling_params"] for _, p in parts],
            "rid": rids,
            "stream": False,
        }
        for key in ("return_logprob", "logprob_start_len", "top_logprobs_num"):
            if any(key in p for _, p in parts):
                payload[key] = [p.get(key, _LOGPROB_DEFAULTS[key]) for _, p in parts]
        # A single flag for the whole batch (SGLang 0.5.23 rejects a list here).
        if any(p.get("return_text_in_logprobs") for _, p in parts):
            payload["return_text_in_logprobs"] = True
        readers = [_reader(server.url, r) for r in requests]
        return [await self._whole_text(r) for r in await self._run(server, payload, rids, readers)]

    async def _whole_text(self, result: GenResult) -> GenResult:
        """The text repaired after a stop string cut inside a token (`whole_stop_text`).  Only a
        real detokenize route is used (the generate-based fallback would cost a request a
        step)."""
        return await whole_stop_text(result, self._detokenize_route)

    async def _run(
        self, server: _Server, payload: dict[str, Any], rids: list[str], readers: list[_Stream]
    ) -> list[GenResult]:
        """POST /generate and read the answer, whatever its shape: one JSON object, a JSON list
        (a batch), or a stream of chunks (with an ``index`` per batch element)."""
        session = self._active_session()
        what = "POST /generate"
        # Until the server has answered, or after it started generating, an interruption leaves
        # requests to abort; a rejected request (an HTTP error status) leaves none.
        pending = True
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await session.post(
                server.url + "/generate", data=msgspec.json.encode(payload), headers=_JSON
            )
            if resp.status != 200:
                pending = False
                raise _http_error(server.url, what, resp.status, await resp.read(), server.router)
            if resp.content_type not in ANSWER_TYPES:
                pending = False
                raise unexpected_content("SGLang server", server.url, what, resp.content_type,
                                         await resp.content.read(4096))
            if resp.content_type == "application/json":
                body = await resp.read()
                if len(readers) == 1:
                    readers[0].feed(_decode(server.url, body, _chunk_decoder))
                else:
                    chunks = _decode(server.url, body, _batch_decoder)
                    if len(chunks) != len(readers):
                        raise ProtocolViolation(
                            f"SGLang server at {server.url} answered a batch of {len(readers)} "
                            f"with {len(chunks)} results"
                        )
                    for reader, chunk in zip(readers, chunks):
                        reader.feed(chunk)
            else:
                async for data in iter_sse_data(resp.content):
                    if data.strip() == b"[DONE]":
                        break
                    chunk = _decode(server.url, data, _chunk_decoder)
                    index = chunk.index or 0
                    if not 0 <= index < len(readers):
                        raise ProtocolViolation(
                            f"SGLang server at {server.url} streamed a chunk for batch element "
                            f"{index} of {len(readers)}"
                        )
                    readers[index].feed(chunk)
            results = [reader.result() for reader in readers]
            pending = False
            return results
        except TimeoutError:  # first: aiohttp's timeouts are ClientErrors too
            raise _stall_error(server.url, what, self._timeout) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(server.url, what, exc) from None
        finally:
            if resp is not None:
                if pending:
                    resp.close()  # drop the connection: SGLang aborts a request whose client left
                else:
                    resp.release()
            if pending:
                await self._abort(server, rids)

    async def _abort(self, server: _Server, rids: list[str]) -> None:
        """Best-effort ``/abort_request`` for every rid of an interrupted request, shielded from
        the cancellation that caused it.  Closing the connection already aborts on SGLang 0.5,
        so a failure here is not an error; routers have no such route."""
        if server.router or self._session is None or self._session.closed:
            return
        session = self._session

        async def one(rid: str) -> None:
            try:
                async with session.post(
                    server.url + "/abort_request", data=msgspec.json.encode({"rid": rid}), headers=_JSON
                ) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass

        with anyio.move_on_after(self._abort_timeout, shield=True):
            async with anyio.create_task_group() as tg:
                for rid in rids:
                    tg.start_soon(one, rid)

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        server = self._active()
        rid = new_rid("warm")
        payload = {
            "input_ids": list(input_ids),
            "sampling_params": {"max_new_tokens": 0},
            "rid": rid,
            "stream": False,
        }
        (result,) = await self._run(server, payload, [rid], [_Stream(server.url, 0, False, 0)])
        return WarmResult(prompt_tokens=result.prompt_tokens, cached_tokens=result.cached_tokens)

    async def think_tags(self) -> tuple[str, str] | None:
        """The tags of the server's reasoning parser: from its model info, else from
        ``/get_server_info`` (``/server_info`` on older servers); None without a parser."""
        server = self._active()
        parser = server.reasoning_parser
        for path in () if parser else ("/get_server_info", "/server_info"):
            status, body = await self._probe(server.url, path, "")
            if status == 200:
                parser = parser_of_info(body)
                break
        return tags_of_parser(parser)

    # -- tokens ------------------------------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        cached = self._tokens.get(text)
        if cached is not None:
            return list(cached)
        server = self._active()
        ids: list[int] | None = None
        if not self._no_tokenize_route:
            path = "/v1/tokenize" if server.router else "/tokenize"
            body = {"prompt": text, "add_special_tokens": True}
            answer = await self._post_json(server, path, body, _Tokens, missing_ok=True)
            if answer is None:
                self._no_tokenize_route = True
            else:
                ids = answer.tokens
        if ids is None:
            ids = [token for _, token, _ in await self._prompt_logprobs(server, {"text": text})]
        self._tokens.put(text, tuple(ids))
        return ids

    async def detokenize(self, ids: Sequence[int]) -> str:
        key = tuple(ids)
        if not key:
            return ""
        text = await self._detokenize_route(key)
        if text is None:
            # Per-token texts joined: exact except for characters split across tokens.
            entries = await self._prompt_logprobs(
                self._active(), {"input_ids": list(key), "return_text_in_logprobs": True}
            )
            text = "".join(piece or "" for _, _, piece in entries)
            self._texts.put(key, text)
        return text

    async def _detokenize_route(self, key: tuple[int, ...]) -> str | None:
        """The text of `key` from the server's detokenize route (cached), or None when it has
        none; never falls back to a generate request."""
        cached = self._texts.get(key)
        if cached is not None:
            return cached
        if self._no_detokenize_route:
            return None
        server = self._active()
        path = "/v1/detokenize" if server.router else "/detokenize"
        # Special tokens kept: the text of exactly these ids (chat markers included).
        body = {"tokens": list(key), "skip_special_tokens": False}
        answer = await self._post_json(server, path, body, _Text, missing_ok=True)
        if answer is None:
            self._no_detokenize_route = True
            return None
        self._texts.put(key, answer.text)
        return answer.text

    async def _prompt_logprobs(self, server: _Server, prompt: dict[str, Any]) -> list[_LogprobEntry]:
        """The fallback when a server or router has no tokenizer route: a prefill-only generate
        that reports every prompt position as ``[logprob, id, text]``."""
        payload = {
            **prompt,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": 0,
            "rid": new_rid("tok"),
        }
        chunk = await self._post_json(server, "/generate", payload, _Chunk)
        assert chunk is not None
        if chunk.meta_info is None or chunk.meta_info.input_token_logprobs is None:
            raise BackendError(
                f"SGLang server at {server.url} offers no way to tokenize: no /tokenize route and "
                "no prompt logprobs from /generate"
            )
        return chunk.meta_info.input_token_logprobs

    # -- reward ------------------------------------------------------------------------------------

    async def reward(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        server = self._reward_server or self._active()
        if server.router:
            # The router has no /classify.  Its /v1/classify answers softmax probabilities
            # (always [1.0] for a one-output reward model), so ask /v1/embeddings, which carries
            # the same raw head output /classify returns.
            body: dict[str, Any] = {"model": server.model, "input": list(texts)}
            answer = await self._post_json(
                server, "/v1/embeddings", body, _EmbeddingList, missing_ok=True, reward=True
            )
            items = None if answer is None else sorted(answer.data, key=lambda item: item.index)
            scores = None if items is None else [_first(item.embedding) for item in items]
        else:
            listed = await self._post_json(
                server, "/classify", {"text": list(texts)}, list[_Embedding], missing_ok=True,
                reward=True,
            )
            scores = None if listed is None else [_first(item.embedding) for item in listed]
        if scores is None:
            raise BackendError(
                f"the server at {server.url} has no reward model (no classify route); "
                f"{_REWARD_HINT}"
            )
        if len(scores) != len(texts) or any(score is None for score in scores):
            raise ProtocolViolation(
                f"SGLang server at {server.url} returned {len(scores)} reward scores for "
                f"{len(texts)} texts"
            )
        return [float(score) for score in scores if score is not None]

    # -- plumbing ----------------------------------------------------------------------------------

    async def _post_json(
        self,
        server: _Server,
        path: str,
        body: dict[str, Any],
        kind: Any,
        *,
        missing_ok: bool = False,
        reward: bool = False,
    ) -> Any:
        """POST ``body`` and decode the answer as ``kind``.  With ``missing_ok``, a missing route
        (404/405, or a router without a tokenizer) returns None instead of raising."""
        session = self._active_session()
        what = f"POST {path}"
        try:
            async with session.post(
                server.url + path, data=msgspec.json.encode(body), headers=_JSON
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:  # first: aiohttp's timeouts are ClientErrors too
            raise _stall_error(server.url, what, self._timeout) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(server.url, what, exc) from None
        if missing_ok and (status in (404, 405) or b"tokenizer_not_found" in raw):
            return None
        if status != 200:
            error = _http_error(server.url, what, status, raw)
            if reward and not isinstance(error, TransientBackendError):
                raise BackendError(f"{error}; {_REWARD_HINT}")
            raise error
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolViolation(
                f"SGLang server at {server.url} answered {what} with an unexpected body: {exc}"
            ) from None


def _first(values: list[float] | None) -> float | None:
    return values[0] if values else None


def _decode(url: str, data: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(
            f"SGLang server at {url} sent a /generate answer that is not SGLang's: {exc}"
        ) from None


def _payload(request: GenRequest) -> tuple[str, dict[str, Any]]:
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


def _reader(url: str, request: GenRequest) -> _Stream:
    return _Stream(url, request.sampling.max_new_tokens, request.logprobs, request.top_logprobs)


def _connection_error(url: str, what: str, exc: BaseException) -> BackendError:
    return connection_error("SGLang", url, what, exc)


def _stall_error(url: str, what: str, timeout: aiohttp.ClientTimeout) -> TransientBackendError:
    return stall_error("SGLang", url, what, timeout)
