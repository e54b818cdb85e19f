"""The benchmark's server: ``ttc sim serve`` with a log of every request the engine ran.

    python -m bench.simserver --task data/tasks/math.json --latency 0.0002,0.002,32 --seed 1

It is the simulator exactly as ``ttc sim serve`` runs it (the same `SimEngine`, `SimConfig`,
``--latency`` syntax and aiohttp application from `ttcdsl.runtime.sim.server.build_app`), on a
free port of 127.0.0.1 unless ``--port`` says otherwise, plus two routes the suite needs to
compute the latency model's ideal for the requests a client actually sent:

* ``GET /bench/log``: one JSON object per engine request since the last reset, in arrival
  order: ``t0``/``ta``/``t1`` (monotonic seconds at arrival, at admission past the batch limit
  and at finish; ``ta`` is ``t0`` if the engine's internals change), ``input_ids``,
  ``output_ids``, ``cached`` (the prefix-cache hit), ``warm`` (``max_new_tokens`` was 0);
* ``POST /bench/log/reset``: forget the log.

Recording costs one list append per request.  The one other difference: the listen backlog is
2048 (uvicorn's default, which SGLang's own server runs on) instead of aiohttp's 128, so a
thousand forks connecting at once are not turned away into TCP retries.  Once it
listens it prints ``bench sim: serving at URL`` on stderr; it stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
from aiohttp import web

from ttcdsl.commands.sim import parse_latency
from ttcdsl.errors import TTCError
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest, SimConfig, SimEngine
from ttcdsl.runtime.sim.errors import SimError
from ttcdsl.runtime.sim.server import build_app
from ttcdsl.runtime.sim.task import SimTask, load_task

__all__ = ["LoggedRequest", "logging_engine", "main"]

BANNER = "bench sim: serving at "


class LoggedRequest(msgspec.Struct, kw_only=True):
    """What the engine did with one request (see the module doc)."""

    t0: float
    ta: float
    t1: float
    input_ids: list[int]
    output_ids: list[int]
    cached: int
    warm: bool


def logging_engine(task: SimTask, config: SimConfig) -> tuple[SimEngine, list[LoggedRequest]]:
    """A `SimEngine` whose every `execute` appends a `LoggedRequest` to the returned list."""
    engine = SimEngine(task, config)
    log: list[LoggedRequest] = []
    admitted: dict[str, float] = {}
    execute = engine.execute
    prefill = getattr(engine, "_prefill", None)

    async def logged(req: EngineRequest, on_progress: Any = None) -> EngineOutput:
        t0 = time.monotonic()
        out = await execute(req, on_progress)
        log.append(LoggedRequest(t0=t0, ta=admitted.pop(req.rid, t0), t1=time.monotonic(),
                                 input_ids=list(req.input_ids), output_ids=list(out.output_ids),
                                 cached=out.cached_tokens, warm=req.max_new_tokens == 0))
        return out

    async def admit(req: EngineRequest, *args: Any) -> Any:
        admitted[req.rid] = time.monotonic()
        return await prefill(req, *args)  # type: ignore[misc]

    engine.execute = logged  # type: ignore[method-assign]
    if prefill is not None:  # the engine's first step once a batch slot is free
        engine._prefill = admit  # type: ignore[method-assign, assignment]
    return engine, log


def app_with_log(engine: SimEngine, log: list[LoggedRequest]) -> web.Application:
    app = build_app(engine)
    encode = msgspec.json.Encoder().encode

    async def get_log(request: web.Request) -> web.Response:
        return web.Response(body=encode(log), content_type="application/json")

    async def reset_log(request: web.Request) -> web.Response:
        log.clear()
        return web.Response(status=200)

    app.router.add_get("/bench/log", get_log)
    app.router.add_post("/bench/log/reset", reset_log)
    return app


async def serve(task: SimTask, config: SimConfig, port: int) -> None:
    engine, log = logging_engine(task, config)
    runner = web.AppRunner(app_with_log(engine, log), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            # uvicorn's backlog (SGLang's server): a thousand forks may connect at once.
            site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
            await site.start()
            host, bound = runner.addresses[0][:2]
            print(f"{BANNER}http://{host}:{bound}", file=sys.stderr, flush=True)
            async for _ in signals:
                break
    finally:
        engine.shutdown()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--task", help="simulator task file (default: no problems)")
    parser.add_argument("--latency", help="PREFILL_S,DECODE_S[,BATCH] as for `ttc sim serve`")
    parser.add_argument("--seed", type=int, help="seeds the seeds of unseeded requests")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    args = parser.parse_args(argv)
    try:
        task = load_task(args.task) if args.task else SimTask.empty()
        options: dict[str, Any] = {"seed": args.seed}
        if args.latency:
            options["latency"] = parse_latency(args.latency)
        anyio.run(serve, task, SimConfig(**options), args.port)
    except (TTCError, SimError) as exc:
        print(f"bench sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bench sim: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
