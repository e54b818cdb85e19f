"""The simulator behind SGLang's HTTP API (aiohttp): ``ttc sim serve`` and `running_server`.

    async with running_server(load_task("data/tasks/demo.json")) as url:
        ...  # url is "http://127.0.0.1:<free port>"; talk SGLang to it

Routes (SGLang 0.5.23 shapes, see `ttcdsl.runtime.sim.protocol` and the recorded exchanges in
``tests/fixtures/sim/``): ``/generate`` (POST, PUT; single or batch, ``n``, streaming, logprobs,
stops), ``/abort_request``, ``/flush_cache`` (GET, POST), ``/health``, ``/health_generate``,
``/model_info``, ``/get_model_info``, ``/server_info``, ``/get_server_info``, ``/classify``
(the PRM: ``{"embedding": [score], ...}`` per text), ``/tokenize``, ``/detokenize``,
``/v1/models``, ``/v1/completions``, ``/v1/embeddings`` (the same PRM scores, OpenAI-shaped:
the reward route sglang-router forwards); plus ``GET /sim/stats`` (the engine's counters as
JSON) and ``POST /sim/stats/reset``.  Unknown paths answer 404 ``{"detail": "Not Found"}``.

Closing a stream, or disconnecting while waiting for a response, aborts the request.  Faults
(`Faults`) apply to ``/generate`` and ``/v1/completions``: an error answers
``{"error": {"message": ...}}`` with the configured status, a reset drops the connection (a
stream after its first chunk), a stall waits before starting.  `serve` runs until SIGINT or
SIGTERM and then shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from aiohttp import web

from . import openai
from .engine import EngineOutput, SimConfig, SimEngine
from .errors import ServeError, SimRequestError
from .protocol import (
    GenerateCall,
    Item,
    ProtocolError,
    StreamChunks,
    error_body,
    is_stream,
    output_json,
    parse_generate,
    stream_error,
)
from .task import SimTask

__all__ = ["VERSION", "build_app", "running_server", "serve"]

VERSION = "0.5.23"  # the SGLang version whose protocol this server speaks
_FLUSHED = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)\n"
)
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
_ENGINE_KEY = web.AppKey("engine", SimEngine)
_ADDRESS_KEY = web.AppKey("address", list)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def _sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


class _BadJSON(Exception):
    """A body that is not JSON; answered like SGLang's FastAPI validation error."""


async def _read_json(request: web.Request) -> Any:
    """The body as JSON (None if empty), or raise `_BadJSON`.  msgspec decodes it; what msgspec
    refuses goes to the standard library, which also takes NaN and huge integers and words the
    error as before."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        pass
    try:
        return json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadJSON(str(exc)) from None


def _bad_json_response(error: str) -> web.Response:
    message = (
        "1 validation error:\n  {'type': 'json_invalid', 'loc': ('body',), "
        f"'msg': 'JSON decode error', 'ctx': {{'error': {error!r}}}}}"
    )
    body = {
        "object": "error",
        "message": message,
        "type": "Bad Request",
        "param": None,
        "code": 400,
    }
    return _json(body, 400)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadJSON as exc:
        return _bad_json_response(str(exc))
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)


def _reset(request: web.Request) -> None:
    """Drop the connection without a response (a simulated connection reset)."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


# ---------------------------------------------------------------- /generate


async def generate(request: web.Request) -> web.StreamResponse:
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    streaming = is_stream(body)
    try:
        call = parse_generate(body, engine)
    except ProtocolError as exc:
        if streaming and exc.stage == "value":
            return await _stream_failure(request, exc.message)
        return _json(exc.body(), exc.status)
    fault = engine.draw_fault()
    if fault == "error":
        return _json(
            error_body("simulated server fault (ttc sim --faults)"),
            engine.config.faults.error_status,
        )
    if fault == "reset" and not call.stream:
        _reset(request)
    if fault == "stall":
        await engine.stall()
    if call.stream:
        chunks = [
            StreamChunks(item, None if call.single else i) for i, item in enumerate(call.items)
        ]

        def render(i: int, out: EngineOutput, final: bool) -> bytes:
            return chunks[i].event(out, final)

        return await _stream(request, engine, call, render, reset_after_first=fault == "reset")
    try:
        outs = await _run_all(engine, call)
    except ProtocolError as exc:
        return _json(exc.body(), exc.status)
    objs = [output_json(item, out, final=True) for item, out in zip(call.items, outs)]
    return _json(objs[0] if call.single else objs)


async def _stream_failure(request: web.Request, message: str) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(_sse(stream_error(message)))
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _run_all(engine: SimEngine, call: GenerateCall) -> list[EngineOutput]:
    """Warm-ups in order, then every item concurrently; raises `ProtocolError` if the engine
    refuses one (e.g. its rid became busy while the request waited)."""
    if len(call.items) == 1 and not call.warmups:  # the common case needs no task group
        try:
            return [await engine.execute(call.items[0].req)]
        except SimRequestError as exc:
            raise ProtocolError(exc.message, status=exc.status) from None
    outs: list[EngineOutput | None] = [None] * len(call.items)
    refused: list[SimRequestError] = []

    async def run(i: int) -> None:
        try:
            outs[i] = await engine.execute(call.items[i].req)
        except SimRequestError as exc:
            refused.append(exc)

    try:
        for warm in call.warmups:
            await engine.execute(warm)
    except SimRequestError as exc:
        refused.append(exc)
    if not refused:
        async with anyio.create_task_group() as tg:
            for i in range(len(call.items)):
                tg.start_soon(run, i)
    if refused:
        raise ProtocolError(refused[0].message, status=refused[0].status)
    return [o for o in outs if o is not None]


Render = Callable[[int, EngineOutput, bool], bytes]


async def _stream(
    request: web.Request,
    engine: SimEngine,
    call: GenerateCall,
    render: Render,
    *,
    reset_after_first: bool = False,
    epilogue: Callable[[list[EngineOutput]], list[Any]] | None = None,
) -> web.StreamResponse:
    """Server-sent events: ``render(index, out, final)`` (one encoded event) per token of every
    item (interleaved, each written as soon as it is made), then the ``epilogue`` chunks, then
    ``[DONE]``.  A client that goes away cancels (and so aborts) the requests."""
    resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await resp.prepare(request)
    finals: list[EngineOutput | None] = [None] * len(call.items)
    reset = False

    with anyio.CancelScope() as scope:

        async def emit(data: bytes) -> None:
            nonlocal reset
            if scope.cancel_called:
                return  # nothing more goes out once the stream is being torn down
            try:
                await resp.write(data)
            except ConnectionResetError:
                scope.cancel()  # the client went away: the cancellation aborts its requests
                return
            if reset_after_first:
                reset = True
                scope.cancel()

        async def run(i: int, item: Item) -> None:
            async def progress(out: EngineOutput) -> None:
                await emit(render(i, out, False))

            try:
                out = await engine.execute(item.req, progress)
            except SimRequestError as exc:
                await emit(_sse(stream_error(exc.message)))
                return
            finals[i] = out
            await emit(render(i, out, True))

        try:
            for warm in call.warmups:
                await engine.execute(warm)
        except SimRequestError as exc:
            await emit(_sse(stream_error(exc.message)))
        else:
            if len(call.items) == 1:
                await run(0, call.items[0])
            else:
                async with anyio.create_task_group() as tg:
                    for i, item in enumerate(call.items):
                        tg.start_soon(run, i, item)
            if epilogue is not None:
                for chunk in epilogue([o for o in finals if o is not None]):
                    await emit(_sse(chunk))
        await emit(b"data: [DONE]\n\n")
    if reset:
        _reset(request)
    return resp


# ---------------------------------------------------------------- other native routes


async def abort_request(request: web.Request) -> web.Response:
    body = await _read_json(request)
    if not isinstance(body, dict):
        return _json(
            {"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required"}]}, 422
        )
    rid = body.get("rid") or ""
    engine = request.app[_ENGINE_KEY]
    engine.abort(rid if isinstance(rid, str) else "", abort_all=body.get("abort_all") is True)
    return web.Response(status=200)


async def flush_cache(request: web.Request) -> web.Response:
    if request.app[_ENGINE_KEY].flush_cache():
        return web.Response(text=_FLUSHED)
    return web.Response(text="Flush cache failed: requests are running.\n", status=400)


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


def model_info_json(engine: SimEngine) -> dict[str, Any]:
    name = engine.config.model
    return {
        "model_path": name,
        "served_model_name": name,
        "tokenizer_path": name,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "load_format": "auto",
        "reasoning_parser": _reasoning_parser(engine),
        "tool_call_parser": None,
        "disaggregation_mode": "null",
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "ttc-sim",
        "architectures": ["TTCSimForCausalLM"],
    }


def _reasoning_parser(engine: SimEngine) -> str | None:
    """SGLang's ``--reasoning-parser`` name for the tags the task's samples think in."""
    return "deepseek-r1" if engine.task.think_tags is not None else None


async def model_info(request: web.Request) -> web.Response:
    return _json(model_info_json(request.app[_ENGINE_KEY]))


async def server_info(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE_KEY]
    cfg = engine.config
    host, port = request.app[_ADDRESS_KEY]
    return _json(
        {
            "model_path": cfg.model,
            "tokenizer_path": cfg.model,
            "served_model_name": cfg.model,
            "context_length": cfg.context_length,
            "max_total_tokens": cfg.radix_capacity,
            "page_size": 1,
            "schedule_policy": "fcfs",
            "disable_radix_cache": False,
            "radix_eviction_policy": "lru",
            "random_seed": cfg.seed,
            "host": host,
            "port": port,
            "device": "cpu",
            "stream_interval": 1,
            "incremental_streaming_output": False,
            "max_running_requests": cfg.latency.max_batch or None,
            "status": "ready",
            "max_total_num_tokens": cfg.radix_capacity,
            "max_req_input_len": cfg.context_length - 1,
            "internal_states": [
                {"last_gen_throughput": 0.0, "memory_usage": {"token_capacity": cfg.radix_capacity}}
            ],
            "version": VERSION,
            "reasoning_parser": _reasoning_parser(engine),
            "sim": {
                "task": engine.task.source,
                "problems": len(engine.task.problems),
                "unrecognised_prompts": engine.stats.unrecognised,
                "latency": msgspec.to_builtins(cfg.latency),
                "faults": msgspec.to_builtins(cfg.faults),
                "vocab_size": engine.tokenizer.vocab_size,
                "eos_token_id": engine.tokenizer.eos_id,
            },
        }
    )


async def classify(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    if not isinstance(body, dict):
        return _json(error_body("the request body must be a JSON object"), 400)
    text, ids = body.get("text"), body.get("input_ids")
    started = time.monotonic()
    if isinstance(text, str):
        texts, single = [text], True
    elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        texts, single = list(text), False
    elif isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids):
        texts, single = [engine.detokenize(ids)], True
    elif isinstance(ids, list) and ids and all(isinstance(r, list) for r in ids):
        texts, single = [engine.detokenize(r) for r in ids], False
    else:
        return _json(error_body("Either text, input_ids or input_embeds should be provided."), 400)
    scores = engine.reward(texts)
    out = [
        {
            "embedding": [score],
            "meta_info": {
                "id": uuid.uuid4().hex,
                "finish_reason": {"type": "length", "length": 0},
                "prompt_tokens": len(engine.tokenize(t)),
                "weight_version": "default",
                "num_retractions": 0,
                "cached_tokens": 0,
                "e2e_latency": time.monotonic() - started,
            },
        }
        for t, score in zip(texts, scores)
    ]
    return _json(out[0] if single else out)


async def v1_embeddings(request: web.Request) -> web.Response:
    """OpenAI-style embeddings: the reward score of each input (what sglang-router offers for
    reward models, since it has no ``/classify``)."""
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    try:
        inputs = openai.embedding_inputs(body, engine)
    except ProtocolError as exc:
        return _json(openai.openai_error(exc.message, exc.status), exc.status)
    return _json(openai.embeddings_json(engine, inputs, engine.reward(inputs.texts)))


async def tokenize(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    prompt = body.get("prompt") if isinstance(body, dict) else None
    ctx = engine.config.context_length
    if isinstance(prompt, str):
        ids = engine.tokenize(prompt)
        return _json({"tokens": ids, "count": len(ids), "max_model_len": ctx})
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        lists = [engine.tokenize(p) for p in prompt]
        return _json({"tokens": lists, "count": [len(x) for x in lists], "max_model_len": ctx})
    return _json(error_body("prompt must be a string or a list of strings"), 400)


async def detokenize(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    tokens = body.get("tokens") if isinstance(body, dict) else None
    skip = not (isinstance(body, dict) and body.get("skip_special_tokens") is False)
    try:
        if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
            return _json({"text": engine.detokenize(tokens, skip_special_tokens=skip)})
        if isinstance(tokens, list) and all(isinstance(r, list) for r in tokens):
            return _json({"text": [engine.detokenize(r, skip_special_tokens=skip) for r in tokens]})
    except ValueError as exc:
        return _json(error_body(str(exc)), 400)
    return _json(error_body("Invalid input: 'tokens' must be a list of integers."), 400)


async def v1_models(request: web.Request) -> web.Response:
    cfg = request.app[_ENGINE_KEY].config
    model = {
        "id": cfg.model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "sglang",
        "root": cfg.model,
        "parent": None,
        "max_model_len": cfg.context_length,
    }
    return _json({"object": "list", "data": [model]})


async def v1_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[_ENGINE_KEY]
    body = await _read_json(request)
    try:
        call = openai.parse_completion(body, engine)
    except ProtocolError as exc:
        return _json(exc.body(), exc.status)
    fault = engine.draw_fault()
    if fault == "error":
        return _json(
            error_body("simulated server fault (ttc sim --faults)"),
            engine.config.faults.error_status,
        )
    if fault == "reset":
        _reset(request)
    if fault == "stall":
        await engine.stall()
    if not call.stream:
        try:
            outs = await _run_all(engine, call.generate)
        except ProtocolError as exc:
            return _json(exc.body(), exc.status)
        return _json(openai.completion_json(call, outs))
    streamer = openai.CompletionStream(call)
    items = call.generate.items

    def render(i: int, out: EngineOutput, final: bool) -> bytes:
        return _sse(streamer.chunk(i, items[i], out, final))

    def epilogue(outs: list[EngineOutput]) -> list[Any]:
        return [streamer.usage_chunk(outs)] if call.include_usage else []

    return await _stream(request, engine, call.generate, render, epilogue=epilogue)


async def sim_stats(request: web.Request) -> web.Response:
    return _json(msgspec.to_builtins(request.app[_ENGINE_KEY].stats))


async def sim_stats_reset(request: web.Request) -> web.Response:
    request.app[_ENGINE_KEY].reset_stats()
    return web.Response(status=200)


def build_app(engine: SimEngine) -> web.Application:
    """The aiohttp application serving ``engine``."""
    app = web.Application(middlewares=[_json_errors], client_max_size=64 * 1024 * 1024)
    app[_ENGINE_KEY] = engine
    app[_ADDRESS_KEY] = ["127.0.0.1", 0]  # filled in once the server is bound
    r = app.router
    r.add_route("POST", "/generate", generate)
    r.add_route("PUT", "/generate", generate)
    r.add_post("/abort_request", abort_request)
    r.add_route("GET", "/flush_cache", flush_cache)
    r.add_route("POST", "/flush_cache", flush_cache)
    r.add_get("/health", health)
    r.add_get("/health_generate", health)
    for path in ("/model_info", "/get_model_info"):
        r.add_get(path, model_info)
    for path in ("/server_info", "/get_server_info"):
        r.add_get(path, server_info)
    r.add_route("POST", "/classify", classify)
    r.add_route("PUT", "/classify", classify)
    r.add_post("/tokenize", tokenize)
    r.add_post("/detokenize", detokenize)
    r.add_get("/v1/models", v1_models)
    r.add_post("/v1/completions", v1_completions)
    r.add_post("/v1/embeddings", v1_embeddings)
    r.add_get("/sim/stats", sim_stats)
    r.add_post("/sim/stats/reset", sim_stats_reset)
    return app


@asynccontextmanager
async def running_server(
    task: SimTask | None = None,
    config: SimConfig | None = None,
    *,
    engine: SimEngine | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[str]:
    """Serve the simulator on ``host:port`` (0 = a free port) for the duration of the block;
    yields the base URL.  Pass ``engine`` to share one engine with a `SimBackend` or a test."""
    if engine is not None and (task is not None or config is not None):
        raise ValueError("pass either an engine or a task and config, not both")
    engine = engine if engine is not None else SimEngine(task, config)
    app = build_app(engine)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use; choose another with --port"
                ) from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0]
        app[_ADDRESS_KEY][:] = [bound[0], bound[1]]
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        engine.shutdown()  # in-flight requests end now (aborted), so shutdown does not wait
        await runner.cleanup()


def serve(
    task: SimTask,
    config: SimConfig,
    *,
    host: str,
    port: int,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the server until SIGINT/SIGTERM (``ttc sim serve``); raises `ServeError` if the
    address cannot be bound."""

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with running_server(task, config, host=host, port=port) as url:
                if announce is not None:
                    announce(url)
                async for _ in signals:
                    break

    try:
        anyio.run(main)
    except KeyboardInterrupt:  # pragma: no cover - a signal before the receiver is installed
        print("ttc sim: interrupted", file=sys.stderr)
