"""A scripted, misbehaving SGLang-shaped server on 127.0.0.1 for the robustness tests.

It is the simulator's own HTTP app (so a route nobody scripted answers as SGLang would) with a
middleware that plays a script: for a path, one of

* ``"stall"``: never answer (until the server stops);
* ``"html"``: ``200 text/html``, a proxy's page;
* ``"redirect"``: ``302`` back to the same path, for ever;
* a function of the decoded JSON answer returning the JSON to send instead (tampering with
  token counts, say).

`serving(script)` runs it on a thread of its own and stops it when the block ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from ttcdsl.runtime.sim import SimEngine, load_task
from ttcdsl.runtime.sim.server import build_app

Action = str | Callable[[Any], Any]

HTML = b"<!doctype html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def _middleware(script: Mapping[str, Action], stop: asyncio.Event) -> Any:
    @web.middleware
    async def play(request: web.Request, handler: Any) -> web.StreamResponse:
        action = script.get(request.path)
        if action is None:
            return await handler(request)
        if action == "stall":
            await stop.wait()
            raise web.HTTPServiceUnavailable()
        if action == "html":
            return web.Response(body=HTML, content_type="text/html")
        if action == "redirect":
            raise web.HTTPFound(request.path)
        assert callable(action), action
        answer = await handler(request)
        assert isinstance(answer, web.Response) and answer.body is not None, "JSON answers only"
        tampered = action(json.loads(bytes(answer.body)))  # type: ignore[arg-type]
        return web.json_response(tampered)

    return play


@contextmanager
def serving(script: Mapping[str, Action], task: str) -> Iterator[str]:
    """The server's base URL for the block; every stalled request is released at its end."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        app = build_app(SimEngine(load_task(task)))
        app.middlewares.append(_middleware(script, stop))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state.update(url=f"http://127.0.0.1:{port}", stop=stop, loop=asyncio.get_running_loop())
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the misbehaving server did not start"
    try:
        yield state["url"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        assert not thread.is_alive(), "the misbehaving server did not stop"
