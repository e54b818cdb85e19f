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
It does not retry: retries belong to the caller.  What the wire carries, and how an answer is
folded into a `GenResult`, is `ttcdsl.runtime.backends._sglang_wire`; this module sends the
requests.  What real servers send is pinned by the recordings in tests/fixtures/sglang/ and
checked against the engine by tests/sglang_tier/.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    GenRequest,
    GenResult,
    WarmResult,
    first_failure,
)
from ttcdsl.runtime.backends._http import (
    ANSWER_TYPES,
    LRU,
    connection_error,
    error_message,
    iter_sse_data,
    new_rid,
    normalise_url,
    stall_error,
    start_up_request,
    unexpected_content,
    whole_stop_text,
)
from ttcdsl.runtime.backends._sglang_wire import (
    LOGPROB_DEFAULTS,
    Chunk,
    Embedding,
    EmbeddingList,
    LogprobEntry,
    Server,
    ServerInfo,
    Stream,
    Text,
    Tokens,
    batch_decoder,
    chunk_decoder,
    decode_answer,
    first_score,
    http_error,
    info_decoder,
    payload_of,
    reader_of,
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
        self._server: Server | None = None
        self._reward_server: Server | None = None
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

    async def _describe(self, url: str, router: bool | None, role: str) -> Server:
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
            info = info_decoder.decode(body)
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
        return Server(url=url, model=model, is_generation=info.is_generation, router=router,
                       reasoning_parser=info.reasoning_parser, version=version)

    async def _version(self, url: str, role: str) -> str | None:
        """The engine version from ``/server_info`` (``/get_server_info`` on older servers)."""
        for path in ("/server_info", "/get_server_info"):
            status, body = await self._probe(url, path, role)
            if status == 200:
                try:
                    version = msgspec.json.decode(body, type=ServerInfo).version
                except msgspec.DecodeError:
                    return None
                return str(version) if version is not None else None
        return None

    async def _probe(self, url: str, path: str, role: str) -> tuple[int, bytes]:
        status, body, _ = await start_up_request(
            self._active_session(), "GET", url, path, server=f"a {role}SGLang server", hint=_HOW_TO_START
        )
        return status, body

    def _active_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendError("SGLangBackend is used outside `async with`; enter it first")
        return self._session

    def _active(self) -> Server:
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
        rid, payload = payload_of(request)
        payload["stream"] = stream
        reader = reader_of(server.url, request)
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
        parts = [payload_of(r) for r in requests]
        rids = [rid for rid, _ in parts]
        payload: dict[str, Any] = {
            "input_ids": [p["input_ids"] for _, p in parts],
            "sampling_params": [p["sampling_params"] for _, p in parts],
            "rid": rids,
            "stream": False,
        }
        for key in ("return_logprob", "logprob_start_len", "top_logprobs_num"):
            if any(key in p for _, p in parts):
                payload[key] = [p.get(key, LOGPROB_DEFAULTS[key]) for _, p in parts]
        # A single flag for the whole batch (SGLang 0.5.23 rejects a list here).
        if any(p.get("return_text_in_logprobs") for _, p in parts):
            payload["return_text_in_logprobs"] = True
        readers = [reader_of(server.url, r) for r in requests]
        return [await self._whole_text(r) for r in await self._run(server, payload, rids, readers)]

    async def _whole_text(self, result: GenResult) -> GenResult:
        """The text repaired after a stop string cut inside a token (`whole_stop_text`).  Only a
        real detokenize route is used (the generate-based fallback would cost a request a
        step)."""
        return await whole_stop_text(result, self._detokenize_route)

    async def _run(
        self, server: Server, payload: dict[str, Any], rids: list[str], readers: list[Stream]
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
                raise http_error(server.url, what, resp.status, await resp.read(), server.router)
            if resp.content_type not in ANSWER_TYPES:
                pending = False
                raise unexpected_content("SGLang server", server.url, what, resp.content_type,
                                         await resp.content.read(4096))
            if resp.content_type == "application/json":
                body = await resp.read()
                if len(readers) == 1:
                    readers[0].feed(decode_answer(server.url, body, chunk_decoder))
                else:
                    chunks = decode_answer(server.url, body, batch_decoder)
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
                    chunk = decode_answer(server.url, data, chunk_decoder)
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

    async def _abort(self, server: Server, rids: list[str]) -> None:
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
        (result,) = await self._run(server, payload, [rid], [Stream(server.url, 0, False, 0)])
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
            answer = await self._post_json(server, path, body, Tokens, missing_ok=True)
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
        answer = await self._post_json(server, path, body, Text, missing_ok=True)
        if answer is None:
            self._no_detokenize_route = True
            return None
        self._texts.put(key, answer.text)
        return answer.text

    async def _prompt_logprobs(self, server: Server, prompt: dict[str, Any]) -> list[LogprobEntry]:
        """The fallback when a server or router has no tokenizer route: a prefill-only generate
        that reports every prompt position as ``[logprob, id, text]``."""
        payload = {
            **prompt,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": 0,
            "rid": new_rid("tok"),
        }
        chunk = await self._post_json(server, "/generate", payload, Chunk)
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
                server, "/v1/embeddings", body, EmbeddingList, missing_ok=True, reward=True
            )
            items = None if answer is None else sorted(answer.data, key=lambda item: item.index)
            scores = None if items is None else [first_score(item.embedding) for item in items]
        else:
            listed = await self._post_json(
                server, "/classify", {"text": list(texts)}, list[Embedding], missing_ok=True,
                reward=True,
            )
            scores = None if listed is None else [first_score(item.embedding) for item in listed]
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
        server: Server,
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
            error = http_error(server.url, what, status, raw)
            if reward and not isinstance(error, TransientBackendError):
                raise BackendError(f"{error}; {_REWARD_HINT}")
            raise error
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolViolation(
                f"SGLang server at {server.url} answered {what} with an unexpected body: {exc}"
            ) from None


def _connection_error(url: str, what: str, exc: BaseException) -> BackendError:
    return connection_error("SGLang", url, what, exc)


def _stall_error(url: str, what: str, timeout: aiohttp.ClientTimeout) -> TransientBackendError:
    return stall_error("SGLang", url, what, timeout)
