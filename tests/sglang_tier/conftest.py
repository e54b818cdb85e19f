"""Fixtures of the real-SGLang tier: real ``sglang==0.5.23`` servers on this CPU.

The tier runs only when ``TTC_SGLANG_TIER=1`` (scripts/sglang_tier.sh sets it after setting up
the venv and the model); otherwise every test here is skipped with a message saying how to run
it, so the default test command never needs SGLang.  Servers are started with the project's
launcher (`ttcdsl.launch`, as `ttc serve --cpu` starts them) with the CPU recipe, on 127.0.0.1 and
a free port, warmed up, and always stopped (the whole process group).

Start-up is most of the tier's time, so the session servers the selected tests need are started
together as soon as collection ends, and modules that need no server run first while they boot.
``TTC_SGLANG_URLS="main=URL,incremental=URL,reward=URL"`` uses servers already running instead
(any subset; the others are started): reruns take seconds while writing tests.

Fixtures:
  ``sglang_url``              session: the URL of the main server (default streaming)
  ``incremental_url``         session: a server with ``--incremental-streaming-output``
  ``reward_url``              session: SmolLM2 with ``--is-embedding`` (a /classify server)
  ``sglang_servers``          session: every session server's URL by name
  ``start_sglang``            a factory: ``with start_sglang(name, *extra_args) as url: ...``
                              for any other server, started and stopped around a block
  ``start_router``            a factory: ``with start_router(worker_url) as url: ...``
  ``router_url``              module: a real sglang-router in front of the main server
  ``model_dir``               the converted SmolLM2-135M-Instruct folder
  ``load``                    `ServerLoad`: wait until a server is generating / idle
Server logs go to a temporary folder, kept (and named in failures) when the session fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import aiohttp
import anyio
import msgspec
import pytest

from ttcdsl.errors import BackendUnavailable
from ttcdsl.launch import (
    ServerFailed,
    ServerProcess,
    free_port,
    router_argv,
    router_env,
    sglang_home,
    sglang_launch,
    stop_all,
)

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
    if reason is None:
        # Modules that need no server first: they run while the servers boot.
        needy = {item.nodeid.split("::")[0] for item in items if _needs_server(item)}
        items.sort(key=lambda item: item.nodeid.split("::")[0] in needy)


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
    "main": (("--enable-metrics",), True),  # /metrics: the abort counter (test_anytime_real)
    "incremental": (("--incremental-streaming-output",), True),
    "reward": (("--is-embedding",), False),  # never send /generate to it: 0.5.23 crashes
}
# Which URL fixture needs which server.
URL_FIXTURES = {"sglang_url": "main", "incremental_url": "incremental", "reward_url": "reward"}
# Fixtures that start servers of their own (and need the main one).
SERVER_FIXTURES = {*URL_FIXTURES, "start_sglang", "start_router", "router_url"}


def _process(log_dir: Path, name: str, *extra: str) -> ServerProcess:
    spec = sglang_launch(str(MODEL), port=free_port(), cpu=True, python=str(PYTHON), extra=extra)
    # One torch thread per server.  With several servers (and other work) on two cores, two
    # threads per server spin at each op's barrier while the other is descheduled: decoding
    # measured 1-2 tokens/s with two threads against 10 with one, on the same loaded machine.
    env = {**spec.env, "OMP_NUM_THREADS": os.environ.get("TTC_SGLANG_THREADS", "1")}
    return msgspec.structs.replace(spec, env=env).process(log=log_dir / f"{name}.log")


async def _all_ready(servers: dict[str, ServerProcess], started: float) -> None:
    """Wait for every server at once (``started``: when they were launched, for the log), then
    warm up the generating ones."""

    async def ready(name: str, server: ServerProcess) -> None:
        try:
            await server.await_ready(READY_TIMEOUT)
        except BackendUnavailable as exc:
            pytest.fail(f"{name}: {exc}", pytrace=False)
        print(f"\n[sglang-tier] {name} ready in {time.monotonic() - started:.0f} s at {server.url}")
        if SERVERS.get(name, ((), True))[1]:
            await _warm_up(server.url)

    async with anyio.create_task_group() as tg:
        for name, server in servers.items():
            tg.start_soon(ready, name, server)


def _stop_all(servers: dict[str, ServerProcess]) -> None:
    stop_all(servers.values())  # all shut down together, then each is waited for


@contextmanager
def _running(servers: dict[str, ServerProcess]) -> Iterator[dict[str, ServerProcess]]:
    try:
        started = time.monotonic()
        for server in servers.values():
            server.start()
        anyio.run(_all_ready, servers, started)
        yield servers
    finally:
        _stop_all(servers)


def _given_urls() -> dict[str, str]:
    """``TTC_SGLANG_URLS="main=URL,reward=URL"``: servers already running (e.g. `ttc serve
    --cpu`, the reward one with ``-- --is-embedding``) that the session uses instead of starting
    its own; for quick reruns while writing tests."""
    given = {}
    for part in filter(None, os.environ.get("TTC_SGLANG_URLS", "").split(",")):
        name, _, url = part.partition("=")
        if name.strip() not in SERVERS or not url.strip():
            raise pytest.UsageError(
                f"TTC_SGLANG_URLS: expected NAME=URL with NAME in {', '.join(SERVERS)}, got {part!r}"
            )
        given[name.strip()] = url.strip().rstrip("/")
    return given


class _Pool:
    """The session's servers: started as soon as collection knows which ones the selected tests
    need (so they boot while server-free tests run), waited for on first use, stopped when the
    session ends."""

    def __init__(self, wanted: set[str]) -> None:
        self.urls = _given_urls()
        self.log_dir = Path(tempfile.mkdtemp(prefix="ttc-sglang-tier-"))
        self.processes = {name: _process(self.log_dir, name, *SERVERS[name][0])
                          for name in sorted(wanted - set(self.urls))}
        self.urls.update({name: server.url for name, server in self.processes.items()})
        self.ready = False
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()
        for server in self.processes.values():
            server.start()

    def wait(self) -> dict[str, str]:
        if not self.ready:
            self.ready = True  # once: a failed start fails the first test that needs it
            anyio.run(_all_ready, self.processes, self.started)
        return self.urls

    def stop(self, *, keep_logs: bool) -> str | None:
        """Stop the servers; return the log folder if it is kept (a failed session)."""
        _stop_all(self.processes)
        if keep_logs and any(self.log_dir.iterdir()):
            return str(self.log_dir)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        return None


_POOL = pytest.StashKey[_Pool]()


def _needs_server(item: pytest.Item) -> bool:
    return bool(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_finish(session: pytest.Session) -> None:
    if _skip_reason() is not None or session.config.option.collectonly:
        return
    names = {f for item in session.items for f in getattr(item, "fixturenames", ())}
    if not names & SERVER_FIXTURES:
        return
    wanted = {URL_FIXTURES[f] for f in names & set(URL_FIXTURES)} | {"main"}
    pool = session.stash[_POOL] = _Pool(wanted)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # A terminated session (CI timeout, `kill`) ends like Ctrl-C: pytest_sessionfinish
        # still runs and stops the servers, which live in sessions of their own.
        signal.signal(signal.SIGTERM, _interrupt)
    pool.start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    pool = session.stash.get(_POOL, None)
    kept = pool.stop(keep_logs=exitstatus != 0) if pool is not None else None
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if kept and reporter is not None:
        reporter.write_line(f"[sglang-tier] server logs kept in {kept}")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return MODEL


@pytest.fixture(scope="session")
def sglang_servers(request: pytest.FixtureRequest) -> dict[str, str]:
    """The URL of every server the selected tests need, by name, once they are ready."""
    pool = request.session.stash.get(_POOL, None)
    if pool is None:  # requested without being foreseen at collection (getfixturevalue)
        pool = request.session.stash[_POOL] = _Pool(set(SERVERS))
        pool.start()
    return pool.wait()


def _server_url(servers: dict[str, str], name: str) -> str:
    if name not in servers:
        pytest.fail(f"the {name} SGLang server was not started for this session", pytrace=False)
    return servers[name]


@pytest.fixture(scope="session")
def sglang_url(sglang_servers: dict[str, str]) -> str:
    return _server_url(sglang_servers, "main")


@pytest.fixture(scope="session")
def incremental_url(sglang_servers: dict[str, str]) -> str:
    """A server started with ``--incremental-streaming-output`` (delta chunks)."""
    return _server_url(sglang_servers, "incremental")


@pytest.fixture(scope="session")
def reward_url(sglang_servers: dict[str, str]) -> str:
    """SmolLM2 served with ``--is-embedding``: answers /classify like a reward model."""
    return _server_url(sglang_servers, "reward")


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
        port = free_port()
        # Everything on loopback: the metrics endpoint too, and the tokenizer download the router
        # attempts for its workers' model goes to a closed local port instead of a model hub.
        router = ServerProcess(router_argv(port, [worker_url]), f"http://127.0.0.1:{port}",
                               name="sglang-router", env=router_env(), health="/readiness",
                               log=tmp_path_factory.mktemp("router") / "router.log")
        with router:
            try:
                router.wait_ready(120)
            except ServerFailed as exc:
                pytest.fail(str(exc), pytrace=False)
            yield router.url

    return start


@pytest.fixture(scope="module")
def router_url(sglang_url: str, start_router: StartRouter) -> Iterator[str]:
    """A real sglang-router in front of the main server."""
    with start_router(sglang_url) as url:
        yield url


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
