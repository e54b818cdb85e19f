"""Fixtures of the real-SGLang tier: real ``sglang==0.5.23`` servers on this CPU.

The tier runs only when ``TTC_SGLANG_TIER=1`` (scripts/sglang_tier.sh sets it after setting up
the venv and the model); otherwise every test here is skipped with a message saying how to run
it, so the default test command never needs SGLang.  Servers are started with `ttc serve`'s own
launcher (`ttcdsl.commands.serve`) with the CPU recipe, on 127.0.0.1 and a free port, warmed up,
and always stopped (the whole process group).

Fixtures:
  ``sglang_url``              session: the URL of the main server (default streaming)
  ``sglang_server``           session: its `SGLangProcess` (for ``log_tail``)
  ``incremental_url``         session: a server with ``--incremental-streaming-output``
  ``reward_url``              session: SmolLM2 with ``--is-embedding`` (a /classify server)
  ``start_sglang``            a factory: ``with start_sglang(name, *extra_args) as url: ...``
                              for any other server, started and stopped around a block
The session servers the selected tests need are started together, once.
  ``start_router``            a factory: ``with start_router(worker_url) as url: ...``
  ``router_url``              module: a real sglang-router in front of the main server
  ``model_dir``               the converted SmolLM2-135M-Instruct folder
  ``load``                    `ServerLoad`: wait until a server is generating / idle
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest

from ttcdsl.commands.serve import SGLangProcess, build_launch, free_port, sglang_home
from ttcdsl.errors import BackendUnavailable

HERE = Path(__file__).parent
HOME = sglang_home()
PYTHON = HOME / "venv" / "bin" / "python"
MODEL = HOME / "models" / "SmolLM2-135M-Instruct"
READY_TIMEOUT = float(os.environ.get("TTC_SGLANG_READY_TIMEOUT", "420"))

StartServer = Callable[..., AbstractContextManager[str]]
StartRouter = Callable[[str], AbstractContextManager[str]]


def _skip_reason() -> str | None:
    if os.environ.get("TTC_SGLANG_TIER") != "1":
        return "real-SGLang tier: run scripts/sglang_tier.sh (it sets up sglang and sets TTC_SGLANG_TIER=1)"
    if not (PYTHON.exists() and (HOME / "venv" / ".ttc-installed").exists()):
        return f"real-SGLang tier: no sglang venv at {HOME / 'venv'}; run scripts/sglang_tier.sh setup"
    if not (MODEL / ".ttc-converted").exists():
        return f"real-SGLang tier: no converted model at {MODEL}; run scripts/sglang_tier.sh setup"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.sglang)
            item.add_marker(pytest.mark.slow)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


async def _warm_up(url: str) -> None:
    """The first requests after start are slow (shape warm-up); pay that here, not in tests."""
    body = {"text": "1, 2, 3,", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url + "/generate", json=body) as resp:
                resp.raise_for_status()
                await resp.read()

        async def one() -> None:
            async with session.post(url + "/generate", json={**body, "stream": True}) as resp:
                await resp.read()

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)


# The servers the tier knows, by name: extra SGLang arguments and whether it generates.
SERVERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "main": ((), True),
    "incremental": (("--incremental-streaming-output",), True),
    "reward": (("--is-embedding",), False),  # never send /generate to it: 0.5.23 crashes
}
# Which URL fixture needs which server.
URL_FIXTURES = {"sglang_url": "main", "incremental_url": "incremental", "reward_url": "reward"}


def _process(log_dir: Path, name: str, *extra: str) -> SGLangProcess:
    spec = build_launch(str(MODEL), port=free_port(), cpu=True, python=str(PYTHON), extra=extra)
    return SGLangProcess(spec, log_path=log_dir / f"{name}.log")


async def _all_ready(servers: dict[str, SGLangProcess]) -> None:
    """Wait for every server at once, then warm up the generating ones."""
    started = time.monotonic()

    async def ready(name: str, server: SGLangProcess) -> None:
        try:
            await server.wait_ready(READY_TIMEOUT)
        except BackendUnavailable as exc:
            pytest.fail(f"{name}: {exc}", pytrace=False)
        print(f"\n[sglang-tier] {name} ready in {time.monotonic() - started:.0f} s at {server.url}")
        if SERVERS.get(name, ((), True))[1]:
            await _warm_up(server.url)

    async with anyio.create_task_group() as tg:
        for name, server in servers.items():
            tg.start_soon(ready, name, server)


@contextmanager
def _running(servers: dict[str, SGLangProcess]) -> Iterator[dict[str, SGLangProcess]]:
    try:
        for server in servers.values():
            server.start()
        anyio.run(_all_ready, servers)
        yield servers
    finally:
        for server in servers.values():
            server.terminate()  # all shut down together, then each is waited for
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return MODEL


@pytest.fixture(scope="session")
def sglang_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SGLangProcess]]:
    """Every server the selected tests need, started together (a start is mostly single-core
    imports, so two cores start two servers in the time of one) and stopped at the end."""
    wanted = {URL_FIXTURES[f] for item in request.session.items
              for f in getattr(item, "fixturenames", ())
              if f in URL_FIXTURES} | {"main"}
    log_dir = tmp_path_factory.mktemp("sglang")
    servers = {name: _process(log_dir, name, *SERVERS[name][0]) for name in sorted(wanted)}
    with _running(servers):
        yield servers


@pytest.fixture(scope="session")
def sglang_server(sglang_servers: dict[str, SGLangProcess]) -> SGLangProcess:
    return sglang_servers["main"]


@pytest.fixture(scope="session")
def sglang_url(sglang_server: SGLangProcess) -> str:
    return sglang_server.url


@pytest.fixture(scope="session")
def incremental_url(sglang_servers: dict[str, SGLangProcess]) -> str:
    """A server started with ``--incremental-streaming-output`` (delta chunks)."""
    return sglang_servers["incremental"].url


@pytest.fixture(scope="session")
def reward_url(sglang_servers: dict[str, SGLangProcess]) -> str:
    """SmolLM2 served with ``--is-embedding``: answers /classify like a reward model."""
    return sglang_servers["reward"].url


@pytest.fixture(scope="session")
def start_sglang(tmp_path_factory: pytest.TempPathFactory) -> StartServer:
    """Start another server for one block: ``with start_sglang("name", *args) as url``."""

    @contextmanager
    def start(name: str, *extra: str, warm: bool = True) -> Iterator[str]:
        server = _process(tmp_path_factory.mktemp(name), name, *extra)
        SERVERS.setdefault(name, (extra, warm))
        with _running({name: server}):
            yield server.url

    return start


@pytest.fixture(scope="session")
def start_router(tmp_path_factory: pytest.TempPathFactory) -> StartRouter:
    """Start sglang-router 0.3.2 (from the python running the tests) in front of one worker:
    ``with start_router(worker_url) as url``."""

    @contextmanager
    def start(worker_url: str) -> Iterator[str]:
        port, metrics = free_port(), free_port()
        log = tmp_path_factory.mktemp("router") / "router.log"
        argv = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
                "--port", str(port), "--prometheus-port", str(metrics),
                "--shutdown-grace-period-secs", "1", "--worker-urls", worker_url]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            anyio.run(_router_ready, url, proc, log)
            yield url
        finally:
            _stop_group(proc)

    return start


@pytest.fixture(scope="module")
def router_url(sglang_url: str, start_router: StartRouter) -> Iterator[str]:
    """A real sglang-router in front of the main server."""
    with start_router(sglang_url) as url:
        yield url


async def _router_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sglang-router exited ({proc.returncode}):\n{log.read_text()[-3000:]}",
                            pytrace=False)
            try:
                async with session.get(url + "/readiness") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"sglang-router at {url} not ready after 120 s", pytrace=False)
            await anyio.sleep(0.5)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class ServerLoad:
    """Whether a real server has requests running, read from ``/flush_cache``: SGLang refuses
    to flush (HTTP 400) while any request is running or waiting, and flushes (200) when idle.
    (Its load snapshot, ``/v1/loads``, lags by many decode steps.)  Flushing empties the radix
    cache, so tests that count cached tokens warm up their own prefix."""

    async def busy(self, url: str) -> bool:
        async with aiohttp.ClientSession() as session, session.post(url + "/flush_cache") as resp:
            await resp.read()
            return resp.status == 400

    async def wait(self, url: str, *, busy: bool, timeout: float) -> None:
        """Poll until the server is busy (or idle); fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while await self.busy(url) != busy:
            if time.monotonic() > deadline:
                state = "generating" if busy else "idle"
                pytest.fail(f"SGLang at {url} was not {state} within {timeout:g} s", pytrace=False)
            await anyio.sleep(0.2)


@pytest.fixture(scope="session")
def load() -> ServerLoad:
    return ServerLoad()
