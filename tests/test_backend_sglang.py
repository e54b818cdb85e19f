"""SGLangBackend against a real loopback HTTP server that replays recorded SGLang responses.

The recordings in tests/fixtures/sglang/ come from a real sglang==0.5.23 server (the `cum_*`
files from the default cumulative streaming, `inc_*` from `--incremental-streaming-output`, the
numbered ones from the shared transcripts).  The server here is aiohttp on 127.0.0.1, so the
backend's real HTTP stack, streaming, cancellation and error handling all run.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.errors import (
    BackendError,
    BackendUnavailable,
    ProtocolViolation,
    TransientBackendError,
    UsageError,
)
from ttcdsl.runtime.backend import Backend, GenRequest, Sampling
from ttcdsl.runtime.backends._http import error_message, iter_sse_data
from ttcdsl.runtime.backends._sglang_wire import Chunk, Stream
from ttcdsl.runtime.backends.sglang import SGLangBackend
from ttcdsl.runtime.sim import Latency, SimConfig, SimEngine, load_task
from ttcdsl.runtime.sim.server import running_server

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures" / "sglang"
COUNT_IDS = (33, 28, 216, 34, 28, 216, 35, 28)  # "1, 2, 3,"
CHAT_IDS = (1, 4093, 198, 36218, 15876, 2, 198, 1, 520, 9531, 198)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- recorded responses ---------------------------------------------------------------------------


class Recorded(msgspec.Struct):
    status: int
    content_type: str
    body: bytes


def recorded(name: str) -> Recorded:
    raw = (FIXTURES / f"{name}.resp").read_bytes()
    blank = re.search(rb"\r?\n\r?\n", raw)
    assert blank is not None, name
    head, body = raw[: blank.start()], raw[blank.end() :]
    lines = head.decode().splitlines()
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    content_type = headers.get("content-type", "application/json").split(";")[0]
    return Recorded(status=status, content_type=content_type, body=body)


def events(name: str) -> list[bytes]:
    """The data payloads of a recorded stream, ``[DONE]`` included."""
    return [block[len(b"data: "):] for block in recorded(name).body.split(b"\n\n") if block]


def as_deltas(payloads: list[bytes]) -> list[bytes]:
    """Rewrite cumulative chunks the way ``--incremental-streaming-output`` sends them."""
    out: list[bytes] = []
    seen_ids = 0
    seen_text = 0
    for payload in payloads:
        if payload == b"[DONE]":
            out.append(payload)
            continue
        chunk = msgspec.json.decode(payload)
        ids, text = chunk["output_ids"], chunk["text"]
        chunk["output_ids"], chunk["text"] = ids[seen_ids:], text[seen_text:]
        meta = chunk["meta_info"]
        for key in ("output_token_logprobs", "output_top_logprobs"):
            if key in meta:
                meta[key] = meta[key][seen_ids:]
        seen_ids, seen_text = len(ids), len(text)
        out.append(msgspec.json.encode(chunk))
    return out


# --- the loopback server --------------------------------------------------------------------------


def reply(rec: Recorded) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=rec.status, body=rec.body, content_type=rec.content_type)

    return handler


def json_reply(obj: Any, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(obj, status=status)

    return handler


class FakeSGLang:
    """An SGLang look-alike on 127.0.0.1; ``routes`` maps a path to its handler."""

    def __init__(self, *, router: bool = False) -> None:
        self.routes: dict[str, Handler] = {
            "/health": json_reply(None),
            "/model_info": reply(recorded("02_model_info")),
            "/get_model_info": reply(recorded("01_get_model_info")),
            "/abort_request": self._abort,
            "/tokenize": reply(recorded("cum_tokenize_count")),
            "/detokenize": reply(recorded("74_run2_detokenize")),
            "/generate": self.stream(events("cum_stream_stop_str")),
        }
        if router:
            self.routes["/workers"] = json_reply({"workers": [], "total": 0})
            del self.routes["/model_info"], self.routes["/abort_request"]
        self.requests: list[tuple[str, Any]] = []
        self.aborted: list[str] = []
        self.abort_seen = anyio.Event()
        self.first_chunk_sent = anyio.Event()
        self.stream_closed = anyio.Event()
        self.url = ""

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append((request.path, msgspec.json.decode(raw) if raw else None))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.json_response({"detail": "Not Found"}, status=404)
        return await handler(request)

    async def _abort(self, request: web.Request) -> web.StreamResponse:
        self.aborted.append(self.requests[-1][1]["rid"])
        self.abort_seen.set()
        return web.Response(status=200)

    def stream(
        self, payloads: list[bytes], *, piece: int = 0, hang: bool = False, reset: bool = False
    ) -> Handler:
        """Send ``payloads`` as SSE events (in ``piece``-byte writes if given); then hang until
        the client leaves, or drop the connection, or end normally."""

        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            body = b"".join(b"data: " + p + b"\n\n" for p in payloads)
            step = piece or len(body) or 1
            for start in range(0, len(body), step):
                await resp.write(body[start : start + step])
            self.first_chunk_sent.set()
            if reset:
                assert request.transport is not None
                request.transport.close()
                return resp
            if hang:
                try:
                    await anyio.sleep_forever()
                finally:
                    self.stream_closed.set()
            await resp.write_eof()
            return resp

        return handler

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeSGLang]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.requests if p == path]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSGLang]:
    async with FakeSGLang().running() as server:
        yield server


@pytest.fixture
async def fake_router() -> AsyncIterator[FakeSGLang]:
    async with FakeSGLang(router=True).running() as server:
        yield server


def request(max_new_tokens: int = 30, **kwargs: Any) -> GenRequest:
    sampling = kwargs.pop("sampling", None) or Sampling(max_new_tokens=max_new_tokens,
                                                        temperature=0.0)
    return GenRequest(rid="r1", input_ids=COUNT_IDS, sampling=sampling, **kwargs)


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- start-up -------------------------------------------------------------------------------------


async def test_start_up_reads_the_model_and_detects_a_plain_server(fake: FakeSGLang) -> None:
    async with SGLangBackend(fake.url) as backend:
        assert isinstance(backend, Backend)
        assert backend.info.model == "smollm2-135m"
        assert backend.info.url == fake.url
        assert not backend.router
    assert [p for p, _ in fake.requests] == ["/health", "/model_info", "/workers"]


async def test_asked_for_it_start_up_reads_the_engine_version_from_server_info(fake: FakeSGLang) -> None:
    fake.routes["/server_info"] = json_reply({"version": "0.5.23", "model_path": "smollm2-135m"})
    async with SGLangBackend(fake.url, engine_version=True) as backend:
        assert backend.info.engine == "sglang 0.5.23"
    assert "/server_info" in [p for p, _ in fake.requests]
    async with SGLangBackend(fake.url) as backend:  # not asked: the start-up requests stay as they were
        assert backend.info.engine == "sglang"


async def test_start_up_falls_back_to_get_model_info_on_older_servers(fake: FakeSGLang) -> None:
    del fake.routes["/model_info"]
    async with SGLangBackend(fake.url, router=False) as backend:
        assert backend.info.model == "smollm2-135m"
    assert [p for p, _ in fake.requests] == ["/health", "/model_info", "/get_model_info"]


async def test_a_router_is_detected_by_its_workers_route(fake_router: FakeSGLang) -> None:
    async with SGLangBackend(fake_router.url) as backend:
        assert backend.router


async def test_a_dead_url_is_one_line_naming_the_url_and_how_to_start_a_server() -> None:
    url = dead_url()
    with pytest.raises(BackendUnavailable) as caught:
        async with SGLangBackend(url):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert url in message and "GET /health" in message
    assert "ttc serve --model" in message and "ttc sim serve" in message


async def test_a_starting_server_is_reported_as_not_ready(fake: FakeSGLang) -> None:
    fake.routes["/health"] = json_reply(None, status=503)
    with pytest.raises(BackendUnavailable, match=r"HTTP 503 \(it is still starting"):
        async with SGLangBackend(fake.url):
            pass


async def test_a_server_that_is_not_sglang_is_refused(fake: FakeSGLang) -> None:
    del fake.routes["/model_info"], fake.routes["/get_model_info"]
    with pytest.raises(BackendUnavailable, match="does not look like SGLang"):
        async with SGLangBackend(fake.url):
            pass


async def test_an_embedding_server_as_url_is_refused(fake: FakeSGLang) -> None:
    fake.routes["/model_info"] = json_reply({"model_path": "rm", "is_generation": False})
    with pytest.raises(BackendUnavailable, match=r"not a generative model.*--reward-url"):
        async with SGLangBackend(fake.url):
            pass


def test_bad_urls_and_timeouts_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="--url"):
        SGLangBackend("ftp://host")
    with pytest.raises(UsageError, match="timeout"):
        SGLangBackend("http://127.0.0.1:1", timeout=0)
    assert SGLangBackend("127.0.0.1:30000/").info.url == "http://127.0.0.1:30000"


# --- generate: the request ------------------------------------------------------------------------


async def test_generate_sends_exact_ids_sampling_and_a_fresh_rid(fake: FakeSGLang) -> None:
    sampling = Sampling(max_new_tokens=30, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05,
                        seed=7, stop=(" 6",))
    async with SGLangBackend(fake.url) as backend:
        await backend.generate(request(sampling=sampling))
        await backend.generate(request(sampling=sampling))
    first, second = fake.bodies("/generate")
    assert first["input_ids"] == list(COUNT_IDS)
    assert first["stream"] is False and "text" not in first  # streamed only when asked
    assert first["sampling_params"] == {
        "max_new_tokens": 30, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
        "no_stop_trim": True, "stop": [" 6"], "sampling_seed": 7,
    }
    assert "return_logprob" not in first
    assert first["rid"].startswith("r1-") and first["rid"] != second["rid"]


async def test_logprob_requests_keep_prefix_reuse(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_logprobs"))
    async with SGLangBackend(fake.url) as backend:
        await backend.generate(request(5, logprobs=True, top_logprobs=2))
    (body,) = fake.bodies("/generate")
    assert body["return_logprob"] is True and body["logprob_start_len"] == -1
    assert body["top_logprobs_num"] == 2 and body["return_text_in_logprobs"] is True


# --- generate: reading streams --------------------------------------------------------------------


async def test_a_stop_string_finishes_stop_and_keeps_the_matched_text(fake: FakeSGLang) -> None:
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request())
    assert result.text == " 4, 5, 6"
    assert result.output_ids == [216, 36, 28, 216, 37, 28, 216, 38]
    assert (result.finish, result.matched) == ("stop", " 6")
    assert (result.completion_tokens, result.prompt_tokens, result.cached_tokens) == (8, 8, 0)


async def test_an_end_of_sequence_token_finishes_eos_with_its_id(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_eos"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(40))
    assert (result.finish, result.matched) == ("eos", 2)
    assert result.output_ids[-1] == 2 and result.completion_tokens == 26
    assert result.text.endswith("What brings you here today?")


async def test_running_out_of_tokens_finishes_length(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("11_generate_stream"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(8))
    assert (result.finish, result.matched) == ("length", None)
    assert result.text == " Paris.\n\nThe answer is:" and result.cached_tokens == 4


async def test_an_abort_by_the_server_finishes_abort_with_the_partial_output(
    fake: FakeSGLang,
) -> None:
    fake.routes["/generate"] = fake.stream(events("50_abort_target_stream"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(400))
    assert result.finish == "abort" and result.completion_tokens == 75


async def test_logprobs_and_top_alternatives_per_output_token(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_logprobs"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(5, logprobs=True, top_logprobs=2))
    assert result.logprobs is not None and result.top_logprobs is not None
    assert len(result.logprobs) == len(result.top_logprobs) == len(result.output_ids) == 5
    assert result.logprobs[1] == pytest.approx(-0.10907698422670364)
    assert result.top_logprobs[1] == {"4": pytest.approx(-0.10907698422670364),
                                      "1": pytest.approx(-3.734076976776123)}


@pytest.mark.parametrize(
    "name", ["cum_stream_stop_str", "cum_stream_eos", "cum_stream_logprobs", "11_generate_stream"]
)
async def test_incremental_streams_read_the_same_as_cumulative_ones(
    fake: FakeSGLang, name: str
) -> None:
    lp = "logprob" in name
    async with SGLangBackend(fake.url) as backend:
        fake.routes["/generate"] = fake.stream(events(name))
        whole = await backend.generate(request(40, logprobs=lp, top_logprobs=2 * lp))
        fake.routes["/generate"] = fake.stream(as_deltas(events(name)), piece=7)
        deltas = await backend.generate(request(40, logprobs=lp, top_logprobs=2 * lp))
    assert deltas == whole


@pytest.mark.parametrize("name", ["inc_stream_stop_str", "inc_stream_eos", "inc_stream_logprobs"])
async def test_recorded_incremental_streams_match_the_cumulative_recordings(
    fake: FakeSGLang, name: str
) -> None:
    lp = "logprob" in name
    async with SGLangBackend(fake.url) as backend:
        fake.routes["/generate"] = fake.stream(events(name))
        incremental = await backend.generate(request(40, logprobs=lp, top_logprobs=2 * lp))
        fake.routes["/generate"] = fake.stream(events(name.replace("inc_", "cum_")))
        cumulative = await backend.generate(request(40, logprobs=lp, top_logprobs=2 * lp))
    assert incremental.text == cumulative.text
    assert incremental.output_ids == cumulative.output_ids
    assert (incremental.finish, incremental.matched) == (cumulative.finish, cumulative.matched)
    assert incremental.logprobs == cumulative.logprobs
    assert incremental.top_logprobs == cumulative.top_logprobs


async def test_an_incremental_abort_keeps_the_streamed_partial_output(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("inc_stream_aborted"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(400))
    assert result.finish == "abort"
    assert len(result.output_ids) == result.completion_tokens > 1


async def test_an_incremental_abort_repeating_the_whole_text_is_tolerated(
    fake: FakeSGLang,
) -> None:
    # An abort handled by SGLang's tokenizer manager ends an incremental stream with the whole
    # text and only the last id (tokenizer_manager.py `_handle_abort_req`).
    payloads = events("inc_stream_aborted")[:-2]  # up to " 4, 5, " (7 ids)
    last = msgspec.json.decode(payloads[-1])
    last["text"], last["output_ids"] = " 4, 5, ", [216]
    last["meta_info"]["finish_reason"] = {"type": "abort", "message": "Abort in waiting queue"}
    fake.routes["/generate"] = fake.stream([*payloads, msgspec.json.encode(last), b"[DONE]"])
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request(400))
    assert result.finish == "abort"
    assert result.output_ids == [216, 36, 28, 216, 37, 28, 216]
    assert result.text == " 4, 5, "


async def test_a_server_ignoring_stream_is_read_as_one_final_chunk(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = reply(recorded("21_generate_stop_str"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request())
    assert (result.finish, result.matched, result.completion_tokens) == ("stop", " 6", 8)


# --- generate: contract violations and errors -----------------------------------------------------


async def test_more_tokens_than_allowed_is_a_protocol_violation(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_stop_str"))
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(ProtocolViolation, match="returned 5 completion tokens but "
                                                    "max_new_tokens was 4"):
            await backend.generate(request(4))
    # The violating request is aborted on the server, not left running.
    assert fake.aborted == [fake.bodies("/generate")[0]["rid"]]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("29_err_bad_max_new_tokens", "(HTTP 400): max_new_tokens must be at least 0, got -1."),
        ("31_err_unknown_sampling_param", "(HTTP 400): unknown field `bogus`, expected one of"),
        ("32_err_bad_json", "(HTTP 400): 1 validation error:"),
        ("33_err_too_long", "(HTTP 400): The input (9000 tokens) is longer than the model's"),
        ("35_err_unknown_path", "(HTTP 404): Not Found"),
    ],
)
async def test_error_bodies_of_every_shape_carry_the_servers_message(
    fake: FakeSGLang, name: str, message: str
) -> None:
    fake.routes["/generate"] = reply(recorded(name))
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(BackendError) as caught:
            await backend.generate(request())
    assert not isinstance(caught.value, TransientBackendError)
    assert f"SGLang server at {fake.url} rejected POST /generate {message}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert fake.aborted == []  # a rejected request never ran


async def test_an_error_event_inside_a_stream_is_a_backend_error(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("34_err_stream_bad_param"))
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(BackendError, match="max_new_tokens must be at least 0") as caught:
            await backend.generate(request())
    assert not isinstance(caught.value, TransientBackendError)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_overload_and_gateway_statuses_are_transient(fake: FakeSGLang, status: int) -> None:
    fake.routes["/generate"] = json_reply({"error": {"message": "busy"}}, status=status)
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(TransientBackendError, match=f"HTTP {status}: busy"):
            await backend.generate(request())


async def test_a_connection_reset_mid_stream_is_transient(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_stop_str")[:2], reset=True)
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(TransientBackendError, match="during POST /generate"):
            await backend.generate(request())


async def test_a_stream_that_ends_before_finishing_is_transient(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_stop_str")[:2])
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(TransientBackendError, match="before the request finished"):
            await backend.generate(request())


async def test_a_silent_server_is_transient_after_the_timeout(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream([], hang=True)
    async with SGLangBackend(fake.url, timeout=0.2) as backend:
        with pytest.raises(TransientBackendError, match="did not answer POST /generate in time"):
            await backend.generate(request())


async def test_an_abort_with_an_error_status_is_an_error(fake: FakeSGLang) -> None:
    chunk = {"text": "", "output_ids": [], "meta_info": {"finish_reason": {
        "type": "abort", "message": "queue full", "status_code": 503}, "completion_tokens": 0}}
    fake.routes["/generate"] = fake.stream([msgspec.json.encode(chunk), b"[DONE]"])
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(TransientBackendError, match=r"aborted the request \(HTTP 503\): "
                                                        "queue full"):
            await backend.generate(request())


# --- cancellation ---------------------------------------------------------------------------------


async def test_cancelling_closes_the_stream_and_aborts_the_rid(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_stream_stop_str")[:1], hang=True)
    async with SGLangBackend(fake.url) as backend, anyio.create_task_group() as tg:
        tg.start_soon(backend.generate, request())
        await fake.first_chunk_sent.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        await fake.stream_closed.wait()
        await fake.abort_seen.wait()
    assert fake.aborted == [fake.bodies("/generate")[0]["rid"]]


async def test_cancelling_through_a_router_only_closes_the_stream(
    fake_router: FakeSGLang,
) -> None:
    fake_router.routes["/generate"] = fake_router.stream(events("cum_stream_stop_str")[:1],
                                                         hang=True)
    async with SGLangBackend(fake_router.url) as backend, anyio.create_task_group() as tg:
        tg.start_soon(backend.generate, request())
        await fake_router.first_chunk_sent.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        await fake_router.stream_closed.wait()
    assert fake_router.bodies("/abort_request") == []


# --- tokens, warm-up, reward ----------------------------------------------------------------------


async def test_tokenize_asks_once_per_text(fake: FakeSGLang) -> None:
    async with SGLangBackend(fake.url) as backend:
        assert await backend.tokenize("1, 2, 3,") == list(COUNT_IDS)
        assert await backend.tokenize("1, 2, 3,") == list(COUNT_IDS)
        assert await backend.detokenize([504, 3575, 282, 4649, 314]) == "The capital of France is"
    assert fake.bodies("/tokenize") == [{"prompt": "1, 2, 3,", "add_special_tokens": True}]
    assert fake.bodies("/detokenize") == [
        {"tokens": [504, 3575, 282, 4649, 314], "skip_special_tokens": False}
    ]


async def test_a_router_tokenizes_on_v1_tokenize(fake_router: FakeSGLang) -> None:
    fake_router.routes["/v1/tokenize"] = reply(recorded("cum_tokenize_count"))
    async with SGLangBackend(fake_router.url) as backend:
        assert await backend.tokenize("1, 2, 3,") == list(COUNT_IDS)
    assert fake_router.bodies("/tokenize") == []


async def test_without_tokenizer_routes_prompt_logprobs_stand_in(
    fake_router: FakeSGLang,
) -> None:
    # sglang-router without a tokenizer answers this on /v1/tokenize.
    fake_router.routes["/v1/tokenize"] = json_reply({"error": {
        "message": "No tokenizers available.", "type": "tokenizer_not_found"}}, status=400)
    fake_router.routes["/generate"] = reply(recorded("70_run2_generate_max_new_tokens_0"))
    async with SGLangBackend(fake_router.url) as backend:
        assert await backend.tokenize("Hello") == [19556]
        assert await backend.tokenize("Hello again") == [19556]  # fallback used directly
    bodies = fake_router.bodies("/generate")
    assert len(fake_router.bodies("/v1/tokenize")) == 1 and len(bodies) == 2
    assert bodies[0]["text"] == "Hello" and bodies[0]["sampling_params"] == {"max_new_tokens": 0}
    assert bodies[0]["return_logprob"] is True and bodies[0]["logprob_start_len"] == 0


async def test_warm_prefills_without_generating(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = fake.stream(events("cum_warm"))
    async with SGLangBackend(fake.url) as backend:
        warm = await backend.warm(CHAT_IDS)
    assert (warm.prompt_tokens, warm.cached_tokens) == (11, 10)
    (body,) = fake.bodies("/generate")
    assert body["input_ids"] == list(CHAT_IDS)
    assert body["sampling_params"] == {"max_new_tokens": 0}


async def test_reward_scores_come_from_classify(fake: FakeSGLang) -> None:
    fake.routes["/classify"] = json_reply([{"embedding": [0.25]}, {"embedding": [-1.5]}])
    async with SGLangBackend(fake.url) as backend:
        assert await backend.reward(["good", "bad"]) == [0.25, -1.5]
        assert await backend.reward([]) == []
    assert fake.bodies("/classify") == [{"text": ["good", "bad"]}]


async def test_a_separate_reward_server_is_checked_at_start_up(fake: FakeSGLang) -> None:
    async with FakeSGLang().running() as rm:
        rm.routes["/model_info"] = json_reply({"model_path": "rm", "is_generation": False})
        rm.routes["/classify"] = json_reply([{"embedding": [0.5]}])
        async with SGLangBackend(fake.url, reward_url=rm.url) as backend:
            assert backend.info.has_reward
            assert await backend.reward(["x"]) == [0.5]
    assert fake.bodies("/classify") == []


async def test_reward_through_a_router_uses_embeddings(fake_router: FakeSGLang) -> None:
    fake_router.routes["/v1/embeddings"] = json_reply(
        {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    )
    async with SGLangBackend(fake_router.url) as backend:
        assert await backend.reward(["a", "b"]) == [1.0, 2.0]


async def test_reward_without_a_reward_model_says_which_flag_to_pass(fake: FakeSGLang) -> None:
    async with SGLangBackend(fake.url) as backend:
        assert not backend.info.has_reward
        with pytest.raises(BackendError, match=r"no reward model.*--reward-url"):
            await backend.reward(["x"])
        fake.routes["/classify"] = json_reply({"error": {
            "message": "This model does not appear to be an embedding model"}}, status=400)
        with pytest.raises(BackendError, match=r"embedding model.*--reward-url"):
            await backend.reward(["x"])


async def test_using_the_backend_outside_async_with_is_an_error() -> None:
    with pytest.raises(BackendError, match="async with"):
        await SGLangBackend("http://127.0.0.1:1").tokenize("x")


# --- the stream reader and SSE parser on their own ------------------------------------------------


class Pieces:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b
                                                                and b"\r" not in b),
                      min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    crlf=st.booleans(),
)
def test_sse_events_survive_any_split_of_the_byte_stream(
    payloads: list[bytes], cuts: list[int], crlf: bool
) -> None:
    newline = b"\r\n" if crlf else b"\n"
    body = b"".join(b"data: " + p + newline + newline for p in payloads)

    async def collect() -> list[bytes]:
        return [data async for data in iter_sse_data(Pieces(split(body, cuts)))]

    assert asyncio.run(collect()) == payloads


tokens = st.lists(st.tuples(st.integers(3, 49151), st.text(max_size=3)), min_size=1, max_size=30)


@settings(max_examples=80, deadline=None)
@given(tokens=tokens, cuts=st.lists(st.integers(1, 30), max_size=8), eos=st.booleans())
def test_cumulative_and_delta_streams_fold_to_the_same_result(
    tokens: list[tuple[int, str]], cuts: list[int], eos: bool
) -> None:
    ends = sorted({c for c in cuts if c < len(tokens)} | {len(tokens)})
    finish = {"type": "stop", "matched": 2} if eos else {"type": "length", "length": len(tokens)}
    cumulative = []
    for end in ends:
        ids = [t for t, _ in tokens[:end]]
        meta = {"prompt_tokens": 4, "completion_tokens": end, "cached_tokens": 3,
                "finish_reason": finish if end == len(tokens) else None,
                "output_token_logprobs": [[-0.5, t, None] for t in ids]}
        text = "".join(s for _, s in tokens[:end])
        cumulative.append(msgspec.json.encode({"text": text, "output_ids": ids,
                                               "meta_info": meta}))
    results = []
    for payloads in (cumulative, as_deltas(cumulative)):
        stream = Stream("http://x", len(tokens), logprobs=True, top_logprobs=0)
        for payload in payloads:
            stream.feed(msgspec.json.decode(payload, type=Chunk))
        results.append(stream.result())
    assert results[0] == results[1]
    assert results[0].output_ids == [t for t, _ in tokens]
    assert results[0].finish == ("eos" if eos else "length")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad"}}', "bad"),
        (b'{"error": "unknown field"}', "unknown field"),
        (b'{"object": "error", "message": "line one\\n  line two"}', "line one line two"),
        (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', "field required"),
        (b"plain text\n", "plain text"),
        (b"", "empty response body"),
    ],
)
def test_error_message_reads_every_known_shape(body: bytes, message: str) -> None:
    assert error_message(body) == message


# --- against the simulator (`ttc sim serve`) ------------------------------------------------------

DEMO_TASK = Path(__file__).parents[1] / "data" / "tasks" / "demo.json"
QUESTION = "Question: What is 17 + 25?\nSolve it step by step.\n"


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition of the in-process simulator (it runs on this event loop)."""
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.005)


async def test_every_method_works_against_the_simulator() -> None:
    engine = SimEngine(load_task(DEMO_TASK))
    async with running_server(engine=engine) as url, SGLangBackend(url) as backend:
        assert not backend.router and backend.info.model == "ttc-sim"
        ids = await backend.tokenize(QUESTION)
        assert await backend.detokenize(ids) == QUESTION
        warm = await backend.warm(ids)
        assert warm.prompt_tokens == len(ids)
        results = []

        async def fork(seed: int) -> None:
            sampling = Sampling(max_new_tokens=300, temperature=0.7, seed=seed, stop=("\n\n",))
            request = GenRequest(rid=f"f{seed}", input_ids=tuple(ids), sampling=sampling,
                                 logprobs=True)
            results.append(await backend.generate(request))

        async with anyio.create_task_group() as tg:
            for seed in range(4):
                tg.start_soon(fork, seed)
        for result in results:
            assert result.cached_tokens == len(ids) - 1
            assert result.logprobs is not None and len(result.logprobs) == len(result.output_ids)
            assert result.completion_tokens == len(result.output_ids) <= 300
            if result.finish == "stop":
                assert result.matched == "\n\n" and result.text.endswith("\n\n")
        scores = await backend.reward([QUESTION + r.text for r in results])
        assert len(scores) == 4
    assert engine.stats.in_flight == 0


async def test_cancelling_aborts_the_request_in_the_simulator() -> None:
    engine = SimEngine(load_task(DEMO_TASK), SimConfig(latency=Latency(decode_s=0.5)))
    async with running_server(engine=engine) as url, SGLangBackend(url) as backend:
        ids = await backend.tokenize(QUESTION)
        sampling = Sampling(max_new_tokens=10_000, temperature=0.7, seed=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.generate, GenRequest(rid="c", input_ids=tuple(ids),
                                                       sampling=sampling))
            await until(lambda: engine.stats.in_flight == 1)
            tg.cancel_scope.cancel()
        await until(lambda: engine.stats.in_flight == 0)
    assert engine.stats.aborted == 1


# --- the lean path: plain answers, batches, the stop-inside-a-token repair ------------------------


def plain(text: str, ids: list[int], matched: str | int | None = " 6", *, kind: str = "stop",
          prompt: int = 8, cached: int = 7) -> dict[str, Any]:
    """A non-streamed /generate answer shaped like SGLang's (21_generate_stop_str)."""
    finish: dict[str, Any] = {"type": kind, "matched": matched}
    return {"text": text, "output_ids": ids, "meta_info": {
        "finish_reason": finish, "prompt_tokens": prompt, "completion_tokens": len(ids),
        "cached_tokens": cached}}


async def test_a_plain_answer_reads_like_the_recorded_one(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = reply(recorded("21_generate_stop_str"))
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request())
    assert (result.text, result.output_ids, result.finish, result.matched) == (
        " 4, 5,", [216, 36, 28, 216, 37, 28, 216, 38], "stop", " 6")
    assert (result.prompt_tokens, result.cached_tokens, result.completion_tokens) == (8, 7, 8)


async def test_a_streaming_request_asks_for_a_stream(fake: FakeSGLang) -> None:
    async with SGLangBackend(fake.url) as backend:
        streamed = await backend.generate(request(stream=True))
        fake.routes["/generate"] = json_reply(
            plain(streamed.text, streamed.output_ids, streamed.matched))
        whole = await backend.generate(request())
    first, second = fake.bodies("/generate")
    assert first["stream"] is True and second["stream"] is False
    assert (streamed.text, streamed.output_ids) == (whole.text, whole.output_ids)


async def test_a_batch_is_one_request_with_per_fork_parameters(fake: FakeSGLang) -> None:
    answers = [plain(" 4,", [216, 36, 28]), plain(" 4, 5,", [216, 36, 28, 216, 37, 28])]
    fake.routes["/generate"] = json_reply(answers)
    forks = [request(sampling=Sampling(max_new_tokens=10 + i, temperature=0.5, seed=100 + i,
                                       stop=(" 6",)))
             for i in range(2)]
    async with SGLangBackend(fake.url) as backend:
        assert backend.batches
        results = await backend.generate_batch(forks)
    (body,) = fake.bodies("/generate")
    assert body["input_ids"] == [list(COUNT_IDS)] * 2 and body["stream"] is False
    assert [p["sampling_seed"] for p in body["sampling_params"]] == [100, 101]
    assert [p["max_new_tokens"] for p in body["sampling_params"]] == [10, 11]
    assert len(set(body["rid"])) == 2 and "return_logprob" not in body
    assert [r.text for r in results] == [" 4,", " 4, 5,"]


async def test_a_batch_asks_for_logprobs_per_element(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = json_reply([plain(" 4,", [216, 36, 28])] * 2)
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(BackendError, match="logprobs"):
            await backend.generate_batch([request(logprobs=True), request(top_logprobs=3)])
    (body,) = fake.bodies("/generate")
    assert body["return_logprob"] == [True, True]
    assert body["logprob_start_len"] == [-1, -1]
    assert body["top_logprobs_num"] == [0, 3]
    # One flag for the whole batch: SGLang 0.5.23 rejects a list here (the real-engine tier).
    assert body["return_text_in_logprobs"] is True


async def test_a_batch_answer_of_the_wrong_length_breaks_the_protocol(fake: FakeSGLang) -> None:
    fake.routes["/generate"] = json_reply([plain(" 4,", [216, 36, 28])])
    async with SGLangBackend(fake.url) as backend:
        with pytest.raises(ProtocolViolation, match="batch of 2 with 1 results"):
            await backend.generate_batch([request(), request()])


async def test_a_streamed_batch_is_read_by_index(fake: FakeSGLang) -> None:
    chunks = [dict(plain(" 4, 5,", [216, 36, 28, 216, 37, 28]), index=1),
              dict(plain(" 4,", [216, 36, 28]), index=0)]
    fake.routes["/generate"] = fake.stream([msgspec.json.encode(c) for c in chunks] + [b"[DONE]"])
    async with SGLangBackend(fake.url) as backend:
        results = await backend.generate_batch([request(), request()])
    assert [r.text for r in results] == [" 4,", " 4, 5,"]


async def test_cancelling_a_batch_aborts_every_rid(fake: FakeSGLang) -> None:
    started = anyio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    fake.routes["/generate"] = hang
    async with SGLangBackend(fake.url) as backend, anyio.create_task_group() as tg:
        tg.start_soon(backend.generate_batch, [request(), request(), request()])
        await started.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        while len(fake.aborted) < 3:
            await anyio.sleep(0.01)
    assert sorted(fake.aborted) == sorted(fake.bodies("/generate")[0]["rid"])


async def test_through_a_router_a_batch_goes_one_request_per_fork(
    fake_router: FakeSGLang,
) -> None:
    fake_router.routes["/generate"] = json_reply(plain(" 4,", [216, 36, 28]))
    async with SGLangBackend(fake_router.url) as backend:
        assert not backend.batches
        results = await backend.generate_batch([request(), request()])
    bodies = fake_router.bodies("/generate")
    assert len(bodies) == 2 and all(isinstance(b["input_ids"][0], int) for b in bodies)
    assert [r.text for r in results] == [" 4,", " 4,"]


def detokenizer(texts: dict[tuple[int, ...], str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        return web.json_response({"text": texts[tuple(body["tokens"])]})

    return handler


async def test_a_step_string_inside_a_token_gets_the_rest_of_the_token(fake: FakeSGLang) -> None:
    # SGLang cut "The answer" after the stop string "nsw"; the ids keep the whole " answer".
    fake.routes["/generate"] = json_reply(plain("The answ", [504, 3575], "nsw"))
    fake.routes["/detokenize"] = detokenizer({(3575,): " answer", (504, 3575): "The answer"})
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate(request())
    assert result.text == "The answer"


async def test_a_step_ending_on_its_token_costs_no_round_trip_once_the_token_is_known(
    fake: FakeSGLang,
) -> None:
    fake.routes["/generate"] = json_reply(plain("Step one.\n\n", [9, 10, 11], "\n\n"))
    fake.routes["/detokenize"] = detokenizer({(11,): "\n\n"})
    async with SGLangBackend(fake.url) as backend:
        for _ in range(3):
            assert (await backend.generate(request())).text == "Step one.\n\n"
    assert fake.bodies("/detokenize") == [{"tokens": [11], "skip_special_tokens": False}]


async def test_a_streamed_generation_reports_its_progress(fake: FakeSGLang) -> None:
    seen: list[int] = []
    async with SGLangBackend(fake.url) as backend:
        result = await backend.generate_stream(request(), seen.append)
    (body,) = fake.bodies("/generate")
    assert body["stream"] is True
    assert seen == sorted(seen) and seen[-1] == result.completion_tokens and len(seen) > 1
