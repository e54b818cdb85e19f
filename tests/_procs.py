"""Server subprocesses for tests: started on 127.0.0.1 and a free port, always stopped.

    with ServerGroup(tmp_path) as group:
        worker = group.start("w1", sim_argv(port), url, ready="/health")
        ...  # worker.url, worker.kill(), worker.log_tail()

Each process runs in its own session (process group), so stopping it (SIGTERM, then SIGKILL
after a grace period) also ends anything it forked.  `ServerGroup` stops every process it
started when its block ends, whatever happened inside, newest first.  Readiness is decided by
polling an HTTP path until it answers 200, with a deadline; a process that exits or is not ready
in time raises `ServerFailed` with the last lines of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import msgspec

from ttcdsl.commands.serve import free_port, signal_group, stop_process_group

__all__ = [
    "ServerFailed",
    "ServerGroup",
    "ServerProcess",
    "free_port",
    "get_json",
    "router_argv",
    "router_env",
    "sim_argv",
]

TTC = (sys.executable, "-m", "ttcdsl.cli")


class ServerFailed(RuntimeError):
    """A server process died or never became ready."""


class ServerProcess:
    """One server in its own process group, its output in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], url: str, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.url = url
        self.log = log
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.pid

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self._proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True,
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, path: str = "/health", timeout: float = 30.0) -> None:
        """Poll ``GET url+path`` until it answers 200; raise `ServerFailed` if the process
        exits first or ``timeout`` seconds pass."""
        anyio.run(self._wait_ready, path, timeout)

    async def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if not self.alive():
                    code = self._proc.returncode if self._proc else None
                    raise ServerFailed(self._failure(f"exited with status {code}"))
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise ServerFailed(self._failure(f"did not answer GET {path} in {timeout:g} s"))
                await anyio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group now (a crash, as far as clients can tell)."""
        if self._proc is not None:
            signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds.  Idempotent."""
        try:
            if self._proc is not None:
                stop_process_group(self._proc, grace)
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _failure(self, what: str) -> str:
        return f"{self.name} at {self.url} {what}; log {self.log}:\n{self.log_tail()}"


class ServerGroup:
    """Starts servers and stops them all when the ``with`` block ends (newest first)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[ServerProcess] = []

    def launch(self, name: str, argv: Sequence[str], url: str, *,
               env: dict[str, str] | None = None) -> ServerProcess:
        """Start a server without waiting for it (start several, then `wait_ready` each)."""
        server = ServerProcess(name, argv, url, self.log_dir / f"{name}.log", env)
        self.servers.append(server)  # registered before starting: stopped even if start fails
        server.start()
        return server

    def start(self, name: str, argv: Sequence[str], url: str, *, ready: str = "/health",
              timeout: float = 30.0, env: dict[str, str] | None = None) -> ServerProcess:
        """Start a server and wait until ``GET ready`` answers 200."""
        server = self.launch(name, argv, url, env=env)
        server.wait_ready(ready, timeout)
        return server

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for server in reversed(self.servers):
            server.stop()


def sim_argv(port: int, task: str | Path, *, latency: str | None = None) -> list[str]:
    """``ttc sim serve`` on 127.0.0.1:port."""
    argv = [*TTC, "sim", "serve", "--host", "127.0.0.1", "--port", str(port), "--task", str(task)]
    if latency:
        argv += ["--latency", latency]
    return argv


def router_argv(port: int, workers: Sequence[str], *, policy: str = "cache_aware",
                log_level: str = "info", extra: Sequence[str] = ()) -> list[str]:
    """sglang-router (``python -m sglang_router.launch_router``) on 127.0.0.1:port, its
    Prometheus exporter on another free port of 127.0.0.1 (it defaults to 0.0.0.0:29000)."""
    return [
        sys.executable, "-m", "sglang_router.launch_router",
        "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
        "--policy", policy, "--log-level", log_level,
        "--shutdown-grace-period-secs", "1",
        "--worker-urls", *workers, *extra,
    ]


def router_env() -> dict[str, str]:
    """The router's environment: it tries to download a tokenizer for the workers' model name
    from Hugging Face; point that at a closed local port so tests never leave the machine."""
    return {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}


def get_json(url: str, timeout: float = 10.0) -> Any:
    """``GET url`` and decode its JSON body (synchronously, for fixtures and tests)."""

    async def fetch() -> Any:
        limit = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=limit) as session, session.get(url) as resp:
            resp.raise_for_status()
            return msgspec.json.decode(await resp.read())

    return anyio.run(fetch)


