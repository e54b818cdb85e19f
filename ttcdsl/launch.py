"""Server processes: start one, wait until it answers, stop it, always reap it.

    with ServerProcess([*TTC, "sim", "serve", "--port", str(port)], f"http://127.0.0.1:{port}",
                       name="sim", log=tmp / "sim.log") as sim:
        sim.wait_ready()
        ...  # sim.url, sim.kill(), sim.log_tail()

This is the one launcher of the project: `ttc serve` starts SGLang with it, the tests start
simulators, routers and SGLang with it, and so do the scripts in ``bench/``.

Promises:

* A `ServerProcess` runs its command in a session (process group) of its own, so stopping it also
  ends whatever it forked (SGLang forks a scheduler and a detokenizer).  `stop` sends SIGTERM to
  the group, waits a grace period, sends SIGKILL to whatever is left and reaps the leader; it is
  idempotent, and leaving the ``with`` block calls it whatever happened inside.
* Output is captured to ``log`` when one is given (`log_tail` reads its end), else it streams to
  this process's stdout and stderr.
* Readiness is an HTTP ``GET`` of the server's health path answering 200, polled until a
  deadline.  A process that exits first, is not ready in time or cannot be started raises
  `ServerFailed`, a `BackendUnavailable` whose message names the server, its URL and its log
  (with the log's last lines).
* `ServerGroup` stops every server it started when its block ends: all are asked to stop at
  once, then each is waited for.

Also here: the command lines of the servers this project starts (`sglang_launch` with the CPU
recipe for stock SGLang, `sim_argv`, `router_argv`), a free-port finder and a small JSON GET.
Nothing in this module installs SGLang: ``scripts/sglang_tier.sh setup`` builds the venv
`default_python` looks for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import msgspec

from ttcdsl.errors import BackendUnavailable

__all__ = [
    "CPU_MAX_TOTAL_TOKENS",
    "TTC",
    "LaunchSpec",
    "ServerFailed",
    "ServerGroup",
    "ServerProcess",
    "default_python",
    "ensure_cpu_stub",
    "free_port",
    "get_json",
    "router_argv",
    "router_env",
    "sglang_home",
    "sglang_launch",
    "sim_argv",
    "stop_all",
]

# The `ttc` command line run by the python running this code.
TTC = (sys.executable, "-m", "ttcdsl.cli")

# KV pool cap on CPU: without it SGLang sizes the pool from RAM (~15 GB here).
CPU_MAX_TOTAL_TOKENS = 16384
CPU_MEM_FRACTION = 0.3


class ServerFailed(BackendUnavailable):
    """A server process could not be started, died, or never became ready."""


class ServerProcess:
    """One server command in its own process group.  See the module docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        url: str,
        *,
        name: str = "server",
        env: dict[str, str] | None = None,
        log: Path | None = None,
        health: str = "/health",
        ready_timeout: float = 60.0,
        stop_grace: float = 5.0,
    ) -> None:
        self.argv = tuple(argv)
        self.url = url.rstrip("/")
        self.name = name
        self.env = env
        self.log = log
        self.health = health
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"ServerProcess({self.name!r}, {self.url!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Start the command (once); raise `ServerFailed` if it cannot be run at all."""
        if self._proc is not None:
            return self
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.log.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._out,
                stderr=subprocess.STDOUT if self._out else None, start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServerFailed(f"{self.name}: cannot run {self.argv[0]} ({exc})") from None
        return self

    def poll(self) -> int | None:
        """The exit status, or None while it runs (or before it started)."""
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int:
        """Block until the process exits on its own; its exit status."""
        assert self._proc is not None, "start() first"
        return self._proc.wait()

    def terminate(self) -> None:
        """Ask the process group to exit (SIGTERM) without waiting; `stop` then waits."""
        if self.alive():
            assert self._proc is not None
            _signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds (default:
        ``stop_grace``), reap.  Children can outlive the leader, so the group is always killed."""
        try:
            if self._proc is not None:
                self.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=self.stop_grace if grace is None else grace)
                _signal_group(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL the whole process group now (a crash, as far as clients can tell), reap."""
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    # --- readiness ---------------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> ServerProcess:
        """Block until ``GET url + health`` answers 200 (see `await_ready`).  Not for use inside
        an event loop: it runs one of its own."""
        anyio.run(self.await_ready, timeout)
        return self

    async def await_ready(self, timeout: float | None = None) -> None:
        """Poll the health path until it answers 200; raise `ServerFailed` if the process exits
        first or ``timeout`` seconds (default ``ready_timeout``) pass."""
        assert self._proc is not None, "start() first"
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.05
        async with aiohttp.ClientSession() as session:
            while True:
                status = self.poll()
                if status is not None:
                    raise ServerFailed(self._failure(f"exited with status {status} before it was ready"))
                probe = aiohttp.ClientTimeout(total=max(0.5, min(10.0, deadline - time.monotonic())))
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.url + self.health, timeout=probe) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise ServerFailed(self._failure(
                        f"was not ready after {limit:g} s (GET {self.health} did not answer 200)"))
                await anyio.sleep(pause)
                pause = min(0.5, pause * 2)  # fast servers are seen at once, slow ones polled gently

    # --- the log -----------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log file ('' without one)."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _failure(self, what: str) -> str:
        where = f"; log: {self.log}" if self.log else " (see its output above)"
        message = f"{self.name} at {self.url} {what}{where}"
        tail = self.log_tail()
        return f"{message}\n--- last lines of the log ---\n{tail}" if tail else message


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_all(servers: Iterable[ServerProcess]) -> None:
    """Stop several servers: all are sent SIGTERM at once (they shut down in parallel), then
    each, in the order given, is waited for and killed after its grace period."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


class ServerGroup:
    """Starts servers and stops all of them when the ``with`` block ends (newest first)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[ServerProcess] = []

    def launch(self, name: str, argv: Sequence[str], url: str, *, health: str = "/health",
               env: dict[str, str] | None = None) -> ServerProcess:
        """Start a server without waiting for it (start several, then `wait_ready` each)."""
        server = ServerProcess(argv, url, name=name, env=env, log=self.log_dir / f"{name}.log",
                               health=health)
        self.servers.append(server)  # registered before starting: stopped even if start fails
        return server.start()

    def start(self, name: str, argv: Sequence[str], url: str, *, ready: str = "/health",
              timeout: float = 30.0, env: dict[str, str] | None = None) -> ServerProcess:
        """Start a server and wait until ``GET ready`` answers 200."""
        return self.launch(name, argv, url, health=ready, env=env).wait_ready(timeout)

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_all(reversed(self.servers))


# --- ports and HTTP ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str, timeout: float = 10.0) -> Any:
    """``GET url`` and decode its JSON body, synchronously (fixtures, scripts)."""

    async def fetch() -> Any:
        limit = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=limit) as session, session.get(url) as resp:
            resp.raise_for_status()
            return msgspec.json.decode(await resp.read())

    return anyio.run(fetch)


# --- command lines -----------------------------------------------------------------------------


def sim_argv(port: int, task: str | Path | None = None, *, latency: str | None = None,
             seed: int | None = None) -> list[str]:
    """``ttc sim serve`` on 127.0.0.1:port."""
    argv = [*TTC, "sim", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if task is not None:
        argv += ["--task", str(task)]
    if latency:
        argv += ["--latency", latency]
    if seed is not None:
        argv += ["--seed", str(seed)]
    return argv


def router_argv(port: int, workers: Sequence[str], *, policy: str = "cache_aware",
                log_level: str = "info", extra: Sequence[str] = ()) -> list[str]:
    """sglang-router (``python -m sglang_router.launch_router``) on 127.0.0.1:port, its
    Prometheus exporter on another free port of 127.0.0.1 (it defaults to 0.0.0.0:29000).
    Its readiness path is ``/readiness``."""
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
    from Hugging Face; point that at a closed local port so it never leaves the machine."""
    return {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}


# --- SGLang ------------------------------------------------------------------------------------


class LaunchSpec(msgspec.Struct, frozen=True):
    """Everything needed to start one SGLang server process."""

    argv: tuple[str, ...]
    env: dict[str, str]
    url: str

    def process(self, log: Path | None = None, *, ready_timeout: float = 600.0) -> ServerProcess:
        """A `ServerProcess` for this launch (not started); SGLang gets 20 s to shut down."""
        return ServerProcess(self.argv, self.url, name="SGLang", env=self.env, log=log,
                             ready_timeout=ready_timeout, stop_grace=20.0)


def sglang_home() -> Path:
    """Where the test tier keeps its SGLang venv, model and CPU stub."""
    configured = os.environ.get("TTC_SGLANG_HOME")
    return Path(configured) if configured else Path.home() / ".cache" / "ttcdsl" / "sglang"


def default_python() -> str:
    """The tier venv's python when it exists, else the python running ttc."""
    tier = sglang_home() / "venv" / "bin" / "python"
    return str(tier) if tier.exists() else sys.executable


def ensure_cpu_stub(home: Path | None = None) -> Path:
    """A folder holding an empty ``common_ops.py``.  ``sgl_kernel`` ends its import with a plain
    ``import common_ops`` of a CUDA-linked extension; on CPU nothing calls into it, so an empty
    module of that name lets SGLang import."""
    folder = (home or sglang_home()) / "stub"
    stub = folder / "common_ops.py"
    if not stub.exists():
        folder.mkdir(parents=True, exist_ok=True)
        stub.write_text("# Empty stand-in for sgl_kernel.common_ops on machines without CUDA.\n")
    return folder


def sglang_launch(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    cpu: bool = False,
    python: str | None = None,
    max_total_tokens: int | None = None,
    extra: Sequence[str] = (),
) -> LaunchSpec:
    """The command line and environment of ``python -m sglang.launch_server`` for ``model``.

    ``cpu=True`` applies the recipe that runs stock ``sglang==0.5.23`` without a GPU
    (tests/sglang_tier/README.md): ``SGLANG_USE_CPU_ENGINE=1``, an empty ``common_ops`` module
    on ``PYTHONPATH`` in place of the CUDA-only ``sgl_kernel`` extension, ``torch_native``
    attention, no CUDA graphs, no overlap schedule, a capped KV pool, and a scheduler that
    sleeps when idle.  ``extra`` comes last, so the caller's flags win."""
    python = python or default_python()
    argv = [python, "-m", "sglang.launch_server", "--model-path", model, "--host", host,
            "--port", str(port)]
    # `python -m` puts the working directory first on sys.path, where a folder named `sglang`
    # (an unpacked wheel, a source checkout) would shadow the installed package.
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if cpu:
        stub = ensure_cpu_stub()
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stub), env.get("PYTHONPATH")) if p)
        argv += [
            "--device", "cpu",
            "--attention-backend", "torch_native",
            "--cuda-graph-backend-decode", "disabled",
            "--cuda-graph-backend-prefill", "disabled",
            "--disable-overlap-schedule",
            "--mem-fraction-static", str(CPU_MEM_FRACTION),
            # The idle scheduler otherwise busy-polls a whole core.
            "--sleep-on-idle",
        ]
        max_total_tokens = max_total_tokens or CPU_MAX_TOTAL_TOKENS
    if max_total_tokens:
        argv += ["--max-total-tokens", str(max_total_tokens)]
    argv += list(extra)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return LaunchSpec(argv=tuple(argv), env=env, url=f"http://{shown_host}:{port}")
