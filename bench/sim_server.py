"""Server CPU of ``ttc sim serve`` per generated token, under load (not a test).

    python bench/sim_server.py                          # this checkout
    python bench/sim_server.py --server base=/tmp/base  # and another checkout, side by side

The bench suite measures ttcdsl's client CPU against SGLang's frontend with ``ttc sim serve`` as
the server on the same two cores, so every CPU second the server spends is taken from the
clients being measured.  This script starts each ``--server`` (a checkout of this repository:
``python -m ttcdsl.cli sim serve`` run from it, with it first on ``PYTHONPATH``) on a free port
of 127.0.0.1 with ``--latency 0.0002,0.002,32`` and the demo task, and drives it with phases of
seeded requests whose outputs end on their own (the demo problems write about 100-300 tokens):

* ``plain``: ``--requests`` concurrent non-streaming ``/generate`` requests, one prompt each;
* ``batch``: the same prompts as batch requests of ``--batch`` prompts (``input_ids`` lists);
* ``stream``: ``--streams`` concurrent streaming requests (SGLang's cumulative chunks).

``--logprobs`` makes every request ask for its output logprobs (as ttc's SGLang backend does).

For each phase it reads the server process's CPU time (user + system, ``/proc/PID/stat``) before
and after, and the tokens it generated (``/sim/stats``), and prints CPU milliseconds per 1000
generated tokens.  Servers take turns phase by phase for ``--rounds`` rounds (the median is
shown), so machine load hits them alike.  Every server must answer the same requests with the
same texts, ids, finish reasons and token counts, chunk for chunk (the model is deterministic);
the script exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "data" / "tasks" / "demo.json"
LATENCY = "0.0002,0.002,32"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    cpu: dict[str, list[float]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def start(self, latency: str) -> None:
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        argv = [sys.executable, "-m", "ttcdsl.cli", "sim", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--task", str(TASK), "--latency", latency]
        self.proc = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prompts(count: int) -> list[str]:
    questions = [p["question"] for p in msgspec.json.decode(TASK.read_bytes())["problems"]]
    return [f"Solve step by step.\n{questions[i % len(questions)]}\n" for i in range(count)]


def _sampling(i: int) -> dict[str, Any]:
    return {"max_new_tokens": 400, "temperature": 0.7, "sampling_seed": 1000 + i}


def _extra(args: argparse.Namespace) -> dict[str, Any]:
    """Top-level request fields every phase adds (``--logprobs``: what ttc's backend asks)."""
    return {"return_logprob": True} if args.logprobs else {}


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url + "/generate", data=msgspec.json.encode(body),
                         headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {raw[:200]!r}")
        return msgspec.json.decode(raw)


def _essence(obj: dict[str, Any]) -> list[Any]:
    """What must not differ between servers: text, ids, finish reason, token counts and output
    logprobs (not request ids, timestamps, or cache hits, which depend on how concurrent
    requests with the same prompt happen to overlap)."""
    meta = obj["meta_info"]
    return [obj["text"], obj["output_ids"], meta["finish_reason"], meta["prompt_tokens"],
            meta["completion_tokens"], meta.get("output_token_logprobs")]


async def _stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    chunks: list[Any] = []
    async with http.post(url + "/generate", json={**body, "stream": True}) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                chunks.append(_essence(msgspec.json.decode(line[6:])))
    return chunks


async def _gather(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    out: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        out[i] = await calls[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return out


async def _phase(server: Server, name: str, args: argparse.Namespace,
                 http: aiohttp.ClientSession, ids: list[list[int]]) -> list[Any]:
    url, extra = server.url, _extra(args)
    if name == "plain":
        calls = [lambda i=i: _post(http, url, {"input_ids": ids[i], "sampling_params": _sampling(i),
                                               **extra})
                 for i in range(args.requests)]
        return [_essence(o) for o in await _gather(calls)]
    if name == "batch":
        size = args.batch
        groups = [list(range(k, min(k + size, args.requests))) for k in range(0, args.requests, size)]
        calls = [lambda g=g: _post(http, url, {"input_ids": [ids[i] for i in g],
                                               "sampling_params": [_sampling(i) for i in g],
                                               **extra})
                 for g in groups]
        return [_essence(o) for batch in await _gather(calls) for o in batch]
    calls = [lambda i=i: _stream(http, url, {"input_ids": ids[i], "sampling_params": _sampling(i),
                                             **extra})
             for i in range(args.streams)]
    return await _gather(calls)


async def _measure(server: Server, phase: str, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        prompts = _prompts(max(args.requests, args.streams))
        async with http.post(server.url + "/tokenize", json={"prompt": prompts}) as resp:
            ids = (await resp.json())["tokens"]
        async with http.post(server.url + "/sim/stats/reset") as resp:
            resp.raise_for_status()
        before = server.cpu_seconds()
        outputs = await _phase(server, phase, args, http, ids)
        used = server.cpu_seconds() - before
        async with http.get(server.url + "/sim/stats") as resp:
            tokens = (await resp.json())["completion_tokens"]
    server.cpu.setdefault(phase, []).append(1000.0 * used / tokens * 1000.0)
    digest = hashlib.sha256(msgspec.json.encode(outputs)).hexdigest()[:12]
    server.digests.setdefault(phase, digest)
    server.digests[f"{phase}-tokens"] = str(tokens)


async def _ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(server.url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start")
            await anyio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", action="append", default=[], metavar="NAME=DIR",
                        help="a checkout to serve from (repeatable; default: this one)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", default=LATENCY)
    parser.add_argument("--phases", nargs="+", default=["plain", "batch", "stream"])
    parser.add_argument("--logprobs", action="store_true",
                        help="every request asks for its output logprobs")
    args = parser.parse_args(argv)
    specs = args.server or [f"this={REPO}"]
    servers = [Server(name, Path(root).resolve()) for name, _, root in
               (s.partition("=") for s in specs)]
    try:
        for server in servers:
            server.start(args.latency)
        for server in servers:
            anyio.run(_ready, server)
        for _ in range(args.rounds):
            for phase in args.phases:
                for server in servers:
                    anyio.run(_measure, server, phase, args)
    finally:
        for server in servers:
            server.stop()
    print(f"server CPU ms per 1000 generated tokens (median of {args.rounds} rounds; "
          f"latency {args.latency}; {args.requests} requests, batches of {args.batch}, "
          f"{args.streams} streams{'; with logprobs' if args.logprobs else ''})")
    print(f"{'phase':8} " + " ".join(f"{s.name:>12}" for s in servers) + "   tokens")
    for phase in args.phases:
        cells = " ".join(f"{statistics.median(s.cpu[phase]):12.1f}" for s in servers)
        print(f"{phase:8} {cells}   {servers[0].digests[f'{phase}-tokens']}")
    same = all(s.digests[p] == servers[0].digests[p] for s in servers for p in args.phases)
    print("outputs identical across servers" if same else "OUTPUTS DIFFER between servers")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
