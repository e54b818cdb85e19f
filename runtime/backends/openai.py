"""The OpenAI-compatible backend: ``/v1/completions`` of vLLM, SGLang, sglang-router or
llama-cpp-python's server (raw prompts and exact continuations: never the chat API).

`OpenAIBackend` implements the `Backend` contract of `ttcdsl.runtime.backend`:

* start-up (``async with``): ``GET /v1/models`` (which model; who serves it, from ``owned_by``),
  the server's tokenize route (``/tokenize``, ``/v1/tokenize`` or ``/extras/tokenize``), and one
  or two one-token completions that show what the server can do: take a prompt as token ids,
  return the generated ids (``return_token_ids``), name the stop that matched, list token texts
  in logprobs (`Profile`).  An unreachable server, a refused API key, an unknown ``--model`` or
  a server that offers no way to know which tokens it generated give one line saying what was
  tried and how to fix it (`BackendUnavailable`).
* exact continuations: a request continues its exact ``input_ids``.  A server that takes
  token-id prompts gets them.  One that takes text only (llama-cpp-python's server,
  sglang-router) gets the text of the ids, checked to tokenize back to exactly those ids: with
  its tokenize route before sending, or, on a server without one that reports the prompt's ids
  in every answer (sglang-router), from that answer.  When it would not (a generation that
  merged with the prompt's last token, or ids a server generated that its tokenizer would spell
  differently) the request is refused with `BackendError` instead of silently re-tokenising.
  Generated ids come from ``token_ids``; on a server without them, they are the server's own
  tokenization of the generated text (so a continuation is what the server will see).
* forks of one prompt (`Profile.forks`): SGLang and unknown servers get a one-token warm-up of
  the prefix, then one request per fork with its own seed (SGLang gives every sample of an
  ``n`` request the same seed); vLLM gets one ``n`` request per prefix (`generate_batch`; it
  seeds sample i with seed + i, so the forks stay reproducible); llama-cpp-python's server, which
  runs one request at a time and keeps the last prompt's KV, gets one request per fork and no
  warm-up.  The OpenAI API has no prefill-only request (``max_tokens`` >= 1), so a warm-up
  generates one token; like tokenization it is not charged to any budget.
* stops: the matched stop string stays in the text (``no_stop_trim`` on SGLang,
  ``include_stop_str_in_output`` on vLLM) and is reported in ``matched``; on a server that cuts
  it and names neither (llama-cpp-python), requests with stop strings ask for logprobs, whose
  token texts give the whole text and the stop back (`recover_stop`); that makes the server
  several times slower per token, so it is only done for requests with stop strings.
* streaming only when a request asks and the server reports usage at the end of a stream
  (``stream_options.include_usage``); otherwise one plain response.  Cancelling the awaiting
  task closes the connection (vLLM and SGLang abort a request whose client left) and, on a
  SGLang server, posts ``/abort_request`` for its rid, shielded and with a short timeout.
  llama-cpp-python's server finishes a plain request it has started whatever the client does.
* thinking tags (`think_tags`): those of the reasoning parser a SGLang server or sglang-router
  names in ``/get_server_info``; vLLM and llama-cpp-python's server tell none (``--think-tags``).
* errors: HTTP 429/502/503/504, connection resets and stalls raise `TransientBackendError` (the
  caller retries); a successful answer that is neither JSON nor an event stream (a proxy's
  page) and every other failure raise `BackendError` with the server's own message.
  More tokens than ``max_new_tokens`` is a `ProtocolViolation`.
* rewards (`reward`): SGLang's ``/classify`` or ``/v1/embeddings``, vLLM's ``/pooling`` or
  ``/classify`` (a process reward model: the newest step's score is the last row's last
  class), on the server of ``reward_url`` (default ``url``); a server without one gives an
  error naming ``--reward-url``.

It does not retry: retries belong to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import anyio
import msgspec

from ttcdsl.errors import (
    BackendError,
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
from ttcdsl.runtime.backends import _openai_probe as probe
from ttcdsl.runtime.backends._http import (
    LRU,
    TRANSIENT_STATUSES,
    connection_error,
    error_message,
    foreign_body,
    iter_sse_data,
    new_rid,
    normalise_url,
    one_line,
    stall_error,
    unexpected_content,
    whole_stop_text,
)
from ttcdsl.runtime.backends._openai_wire import (
    STOP_FIELDS,
    ChoiceFold,
    Completion,
    Profile,
    Usage,
    completion_decoder,
)

__all__ = ["OpenAIBackend"]

_JSON = {"Content-Type": "application/json"}
_CACHE_SIZE = 4096
_SERVER = "the OpenAI-compatible server"
_REWARD_HINT = (
    "pass --reward-url of a server with a process reward model (vLLM serving it for pooling, "
    "or SGLang launched with --is-embedding)"
)


class _Tokens(msgspec.Struct):
    tokens: list[int]


class _Text(msgspec.Struct):
    text: str | None = None
    prompt: str | None = None  # vLLM's /detokenize names the text "prompt"


class OpenAIBackend:
    """A `Backend` talking to one OpenAI-compatible server.  Use as ``async with``.

    ``model`` is the name sent with every request (default: the server's only model).
    ``api_key`` goes out as ``Authorization: Bearer``.  ``timeout`` is the longest silence
    tolerated from the server; ``reward_url`` is the server with the reward model (default
    ``url``).  ``forks`` overrides the fork policy start-up picks (`Profile.forks`).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        reward_url: str | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        abort_timeout: float = 2.0,
        forks: str | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                            ("abort_timeout", abort_timeout)):
            if not value > 0:
                raise UsageError(f"OpenAIBackend {name} must be a positive number of seconds")
        if forks not in (None, "warm", "n", "serial"):
            raise UsageError(f"OpenAIBackend forks must be warm, n or serial, got {forks!r}")
        self._url = normalise_url(url, "--url")
        self._reward_url = normalise_url(reward_url, "--reward-url") if reward_url else None
        self._model_choice = model
        self._forks_choice = forks
        self._headers = {**_JSON, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self._abort_timeout = abort_timeout
        self._session: aiohttp.ClientSession | None = None
        self._server: Profile | None = None
        self._reward_server: Profile | None = None
        self._reward_route: str | None = None
        self._tokens: LRU[str, tuple[int, ...]] = LRU(_CACHE_SIZE)
        # A text for ids: from `tokenize` (exact by construction) or a generation (checked by
        # tokenizing it again before a text-only server is given it).
        self._texts: LRU[tuple[int, ...], str] = LRU(_CACHE_SIZE)
        self._specials: tuple[int, ...] | None = None  # what tokenize("") gives (BOS, if any)
        self._no_detokenize_route = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> OpenAIBackend:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(limit=0), headers=self._headers
        )
        try:
            self._server = await probe.describe(
                self._session, self._url, self._model_choice, self._forks_choice, "")
            if self._reward_url and self._reward_url != self._url:
                self._reward_server = await probe.describe_reward(
                    self._session, self._reward_url)
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
        return BackendInfo(
            name="openai",
            model=server.model if server else self._model_choice or "unknown",
            url=self._url,
            has_reward=self._reward_server is not None,
        )

    @property
    def profile(self) -> Profile:
        """What start-up learnt about the server (see `Profile`)."""
        return self._active()

    async def think_tags(self) -> tuple[str, str] | None:
        """The tags of the reasoning parser a SGLang server or router reports; None on servers
        that report none (vLLM, llama-cpp-python): then ``--think-tags`` gives them."""
        server = self._active()
        assert self._session is not None
        return await probe.think_tags(self._session, server)

    def _active(self) -> Profile:
        if self._server is None or self._session is None:
            raise BackendError("OpenAIBackend is used outside `async with`; enter it first")
        return self._server

    # -- tokens ------------------------------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        cached = self._tokens.get(text)
        if cached is None:
            server = self._active()
            if server.tokenize is not None:
                cached = tuple(await self._tokenize_route(server, text))
            else:
                cached = tuple(await self._tokenize_by_completion(server, text))
            self._tokens.put(text, cached)
            self._texts.put(cached, text)
        return list(cached)

    async def _tokenize_route(self, server: Profile, text: str) -> list[int]:
        assert server.tokenize is not None
        body = probe.tokenize_body(server.tokenize, server.model, text)
        answer = await self._post_json(server, server.tokenize, body, _Tokens)
        return list(answer.tokens)

    async def _tokenize_by_completion(self, server: Profile, text: str) -> list[int]:
        """A server without a tokenize route (sglang-router) that reports ``prompt_token_ids``:
        a one-token completion of the text (it also warms the text's prefix)."""
        body = {"model": server.model, "prompt": text, "max_tokens": 1, "temperature": 0,
                "return_token_ids": True}
        answer = await self._post_json(server, "/v1/completions", body, Completion)
        ids = answer.choices[0].prompt_token_ids if answer.choices else None
        if ids is None:
            raise ProtocolViolation(f"the server at {server.url} stopped reporting prompt_token_ids")
        return list(ids)

    async def detokenize(self, ids: Sequence[int]) -> str:
        key = tuple(ids)
        if not key:
            return ""
        text = self._texts.get(key)
        if text is None:
            text = await self._detokenize_route(key)
        if text is None:
            raise BackendError(
                f"the server at {self._active().url} has no detokenize route, so the text of "
                f"{len(key)} token ids it did not produce cannot be known"
            )
        return text

    async def _detokenize_route(self, key: tuple[int, ...]) -> str | None:
        server = self._active()
        if server.tokenize is None or self._no_detokenize_route:
            return None
        path = probe.detokenize_path(server.tokenize)
        body: dict[str, Any] = {"model": server.model, "tokens": list(key)}
        if server.kind in ("sglang", "sglang-router"):
            body["skip_special_tokens"] = False  # the text of exactly these ids
        answer = await self._post_json(server, path, body, _Text, missing_ok=True)
        if answer is None:
            self._no_detokenize_route = True
            return None
        text = answer.text if answer.text is not None else answer.prompt
        if text is None:
            raise ProtocolViolation(f"the server at {server.url} answered POST {path} without text")
        return text

    async def _ids_text(self, key: tuple[int, ...]) -> str | None:
        """A text the route-less `detokenize` fallback of `whole_stop_text` may use."""
        return self._texts.get(key) or await self._detokenize_route(key)

    async def _prompt(self, server: Profile, ids: Sequence[int]) -> list[int] | str:
        """What to send as the prompt for exactly ``ids``: the ids themselves, or on a text-only
        server a text it tokenizes back to exactly ``ids`` (else the request is refused).  A
        server without a tokenize route that reports ``prompt_token_ids`` (sglang-router) is
        checked when it answers (`_check_prompt`): asking it first would cost a completion."""
        key = tuple(ids)
        if server.prompt_ids:
            return list(key)
        text = self._texts.get(key)
        if text is None:
            text = await self._detokenize_route(key)
        if text is not None and (server.tokenize is None
                                 or tuple(await self.tokenize(text)) == key):
            return text
        raise _not_exact(server, len(key))

    def _check_prompt(self, server: Profile, input_ids: Sequence[int], fold: ChoiceFold) -> None:
        """A text prompt the server tokenized into other ids than the branch's: refused."""
        if fold.prompt_ids is not None and fold.prompt_ids != list(input_ids):
            raise _not_exact(server, len(input_ids))

    async def _generated_ids(self, server: Profile, prompt: list[int] | str, input_ids: Sequence[int],
                             text: str) -> list[int]:
        """Ids of a generation from a server that returns none: its tokenizer's ids of the
        text.  After a text prompt they are read off the tokens of prompt + text (so that
        continuing them sends exactly what the server will see); a generation that merged
        with the prompt's last token cannot be: then the ids of the text alone."""
        if not text:
            return []
        if isinstance(prompt, str):
            full = await self.tokenize(prompt + text)
            if full[: len(input_ids)] == list(input_ids):
                return full[len(input_ids):]
        if self._specials is None:
            self._specials = tuple(await self.tokenize(""))
        alone = await self.tokenize(text)
        specials = list(self._specials)
        return alone[len(specials):] if specials and alone[: len(specials)] == specials else alone

    # -- generation --------------------------------------------------------------------------------

    @property
    def batches(self) -> bool:
        """Forks go out as ``n`` requests on a server whose fork policy is ``n`` (vLLM)."""
        return self._active().forks == "n"

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        server = self._active()
        if server.forks != "warm" or not input_ids:
            return WarmResult(prompt_tokens=0, cached_tokens=0)
        body = {"model": server.model, "prompt": await self._prompt(server, input_ids),
                "max_tokens": 1, "temperature": 0}
        answer = await self._post_json(server, "/v1/completions", body, Completion)
        usage = answer.usage or Usage()
        return WarmResult(prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached)

    async def generate(self, request: GenRequest) -> GenResult:
        (result,) = await self._generate(self._active(), request, 1)
        return result

    async def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Forks that share their prefix and sampling parameters go out as one request with
        ``n`` (the first fork's seed; the server seeds sample i with seed + i); the groups run
        concurrently.  Results in request order."""
        server = self._active()
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(requests):
            sampling = msgspec.structs.replace(request.sampling, seed=None)
            key = (request.input_ids, sampling, request.logprobs, request.top_logprobs)
            groups.setdefault(key if server.forks == "n" else i, []).append(i)
        results: list[GenResult | None] = [None] * len(requests)

        async def one(members: list[int]) -> None:
            out = await self._generate(server, requests[members[0]], len(members))
            for i, result in zip(members, out):
                results[i] = result

        try:
            async with anyio.create_task_group() as tg:
                for members in groups.values():
                    tg.start_soon(one, members)
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        return [r for r in results if r is not None]

    async def _generate(self, server: Profile, request: GenRequest, n: int) -> list[GenResult]:
        prompt = await self._prompt(server, request.input_ids)
        rid = new_rid(request.rid)
        stream = request.stream and server.streams and n == 1
        body = self._body(server, request, prompt, n, rid, stream)
        folds, usage = await self._run(server, body, rid, n, stream)
        return [await self._result(server, request, prompt, fold, usage, n, i == 0)
                for i, fold in enumerate(folds)]

    def _body(self, server: Profile, request: GenRequest, prompt: list[int] | str, n: int,
              rid: str, stream: bool) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": server.model, "prompt": prompt, "max_tokens": s.max_new_tokens,
            "temperature": s.temperature, "top_p": s.top_p,
        }
        if server.kind == "llama-cpp-python":
            # Its defaults differ from the OpenAI API's: top_k 40, min_p 0.05, repeat 1.1.
            body.update(top_k=max(s.top_k, 0), min_p=s.min_p, repeat_penalty=1.0)
        else:
            if s.top_k != -1:
                body["top_k"] = s.top_k
            if s.min_p:
                body["min_p"] = s.min_p
        if s.seed is not None:
            body["seed"] = s.seed
        if n > 1:
            body["n"] = n
        if s.stop:
            if server.stop_field is None and not server.logprob_texts:
                raise BackendError(
                    f"the server at {server.url} cuts stop strings off without saying which one "
                    "matched, and lists no token texts in its logprobs to tell; stop and step "
                    "strings cannot be used there"
                )
            body["stop"] = list(s.stop)
            if server.stop_field is not None:
                body[STOP_FIELDS[server.stop_field]] = True
        logprobs = request.logprobs or request.top_logprobs > 0
        if logprobs or (s.stop and server.stop_field is None):
            body["logprobs"] = request.top_logprobs
        if server.token_ids:
            body["return_token_ids"] = True
        if server.abort_by_rid:
            body["rid"] = rid
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def _run(self, server: Profile, body: dict[str, Any], rid: str, n: int, stream: bool
                   ) -> tuple[list[ChoiceFold], Usage | None]:
        """POST /v1/completions and fold the answer (one object, or a stream of deltas)."""
        session = self._session
        assert session is not None
        what = "POST /v1/completions"
        folds = [ChoiceFold() for _ in range(n)]
        usage: Usage | None = None
        pending = True  # an interruption leaves a request to abort until the answer is read
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await session.post(server.url + "/v1/completions",
                                      data=msgspec.json.encode(body))
            if resp.status != 200:
                pending = False
                raise _http_error(server.url, what, resp.status, await resp.read())
            if stream and resp.content_type == "text/event-stream":
                async for data in iter_sse_data(resp.content):
                    if data.strip() == b"[DONE]":
                        break
                    usage = self._fold(server, _decode(server.url, data), folds) or usage
            else:
                raw = await resp.read()
                if foreign_body(resp.content_type, raw):
                    pending = False
                    raise unexpected_content(_SERVER, server.url, what, resp.content_type, raw)
                usage = self._fold(server, _decode(server.url, raw), folds)
            pending = False
            return folds, usage
        except TimeoutError:  # first: aiohttp's timeouts are ClientErrors too
            raise stall_error(_SERVER, server.url, what, self._timeout) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_error(_SERVER, server.url, what, exc) from None
        finally:
            if resp is not None:
                if pending:
                    resp.close()  # drop the connection: vLLM and SGLang abort the request
                else:
                    resp.release()
            if pending and server.abort_by_rid:
                await self._abort(server, rid)

    def _fold(self, server: Profile, chunk: Completion, folds: list[ChoiceFold]) -> Usage | None:
        if chunk.error is not None:
            raise _stream_error(server.url, chunk.error)
        for choice in chunk.choices:
            if not 0 <= choice.index < len(folds):
                raise ProtocolViolation(
                    f"the server at {server.url} sent choice {choice.index} of {len(folds)}")
            folds[choice.index].feed(choice, server.stop_field)
        return chunk.usage

    async def _abort(self, server: Profile, rid: str) -> None:
        """Best-effort ``/abort_request`` (SGLang), shielded from the cancellation that caused
        it; closing the connection already aborts, so a failure here is not an error."""
        session = self._session
        if session is None or session.closed:
            return
        with anyio.move_on_after(self._abort_timeout, shield=True):
            try:
                async with session.post(server.url + "/abort_request",
                                        data=msgspec.json.encode({"rid": rid})) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass

    async def _result(self, server: Profile, request: GenRequest, prompt: list[int] | str,
                      fold: ChoiceFold, usage: Usage | None, n: int, first: bool) -> GenResult:
        if isinstance(prompt, str):
            self._check_prompt(server, request.input_ids, fold)
        limit = request.sampling.max_new_tokens
        finish, matched, text = fold.finish_kind(server.url, request.sampling.stop, server.stop_field)
        if server.token_ids:
            if fold.ids is None:
                raise ProtocolViolation(f"the server at {server.url} stopped returning token_ids")
            ids = fold.ids
        else:
            ids = await self._generated_ids(server, prompt, request.input_ids, text)
        if n == 1 and usage is not None and usage.completion_tokens is not None:
            completion = usage.completion_tokens
        elif server.token_ids:
            completion = len(ids)
        else:
            raise ProtocolViolation(f"the server at {server.url} reported no completion tokens")
        if max(completion, len(ids) if server.token_ids else 0) > limit:
            raise ProtocolViolation(
                f"the server at {server.url} returned {max(completion, len(ids))} completion "
                f"tokens but max_tokens was {limit}"
            )
        result = GenResult(
            text=text, output_ids=ids, finish=finish, completion_tokens=completion,
            prompt_tokens=usage.prompt_tokens if usage is not None and first else 0,
            cached_tokens=usage.cached if usage is not None and first else 0, matched=matched,
        )
        if request.logprobs:
            if len(fold.logprobs) != completion:
                raise ProtocolViolation(
                    f"the server at {server.url} returned {len(fold.logprobs)} token logprobs "
                    f"for {completion} completion tokens"
                )
            result.logprobs = fold.logprobs
        if request.top_logprobs:
            result.top_logprobs = fold.top
        if server.token_ids and server.stop_field is not None:
            result = await whole_stop_text(result, self._ids_text)
        if not server.prompt_ids and isinstance(prompt, str):
            self._texts.put((*request.input_ids, *ids), prompt + result.text)
        return result

    # -- reward ------------------------------------------------------------------------------------

    async def reward(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        server = self._reward_server or self._active()
        routes = probe.reward_routes(server.kind)
        if self._reward_route is not None:
            routes = (self._reward_route,)
        for path in routes:
            body = probe.reward_body(path, server.kind, server.model, list(texts))
            raw = await self._post_json(server, path, body, Any, missing_ok=True, reward=True)
            if raw is None:
                continue
            self._reward_route = path
            scores = probe.reward_scores(path, server.kind, raw, len(texts))
            if scores is None:
                raise ProtocolViolation(
                    f"the server at {server.url} answered POST {path} with something that is not "
                    f"{len(texts)} reward scores"
                )
            return scores
        tried = ", ".join(f"POST {p}" for p in routes) or "none: it is not a reward server"
        raise BackendError(
            f"the server at {server.url} has no reward model (tried {tried}); {_REWARD_HINT}"
        )

    # -- plumbing ----------------------------------------------------------------------------------

    async def _post_json(self, server: Profile, path: str, body: dict[str, Any], kind: Any, *,
                         missing_ok: bool = False, reward: bool = False) -> Any:
        """POST ``body`` and decode the answer as ``kind``.  With ``missing_ok``, a missing route
        (404/405, or a router without a tokenizer) returns None instead of raising."""
        session = self._session
        if session is None:
            raise BackendError("OpenAIBackend is used outside `async with`; enter it first")
        what = f"POST {path}"
        try:
            async with session.post(server.url + path, data=msgspec.json.encode(body)) as resp:
                raw = await resp.read()
                status, content_type = resp.status, resp.content_type
        except TimeoutError:
            raise stall_error(_SERVER, server.url, what, self._timeout) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_error(_SERVER, server.url, what, exc) from None
        if missing_ok and probe.is_missing(status, raw):
            return None
        if status != 200:
            error = _http_error(server.url, what, status, raw)
            if reward and not isinstance(error, TransientBackendError):
                raise BackendError(f"{error}; {_REWARD_HINT}")
            raise error
        if foreign_body(content_type, raw):
            raise unexpected_content(_SERVER, server.url, what, content_type, raw)
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolViolation(
                f"the server at {server.url} answered {what} with an unexpected body: {exc}"
            ) from None


def _not_exact(server: Profile, n: int) -> BackendError:
    return BackendError(
        f"the server at {server.url} ({server.kind}) takes prompts as text only, and no text it "
        f"would tokenize back to these {n} tokens is known (a generation that merged with the "
        "prompt's last token, or tokens it would spell differently), so this branch cannot be "
        "continued from its exact tokens there; use a server that takes token-id prompts "
        "(vLLM, SGLang) or --backend sglang / local"
    )


def _decode(url: str, data: bytes) -> Completion:
    try:
        return completion_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(
            f"the server at {url} sent a /v1/completions answer that is not OpenAI's: {exc}"
        ) from None


def _http_error(url: str, what: str, status: int, body: bytes) -> BackendError:
    message = error_message(body)
    if status in TRANSIENT_STATUSES:
        return TransientBackendError(f"the server at {url} answered {what} with HTTP {status}: {message}")
    if status in (401, 403):
        return BackendError(
            f"the server at {url} refused {what} (HTTP {status}: {message}); pass its API key "
            "with --api-key-env VAR (the name of an environment variable holding it)"
        )
    return BackendError(f"the server at {url} rejected {what} (HTTP {status}): {message}")


def _stream_error(url: str, error: Any) -> BackendError:
    """The exception for a ``data: {"error": ...}`` event inside a 200 stream."""
    message = error_message(error)
    code = error.get("code") if isinstance(error, dict) else None
    if code in TRANSIENT_STATUSES:
        return TransientBackendError(f"the server at {url} failed the request: {message}")
    return BackendError(f"the server at {url} failed POST /v1/completions: {one_line(message)}")
