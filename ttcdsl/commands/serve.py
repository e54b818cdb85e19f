"""`ttc serve`: launch a real SGLang server for a model and print its URL once it is ready.

    ttc serve --model PATH [--port N] [--host 127.0.0.1] [--cpu] [--python PY] [-- EXTRA...]

The command line is SGLang's own (``python -m sglang.launch_server``); arguments after ``--`` go
to it unchanged.  ``--cpu`` applies the recipe that runs stock ``sglang==0.5.23`` on a machine
without a GPU (tests/sglang_tier/README.md): ``SGLANG_USE_CPU_ENGINE=1``, an empty
``common_ops`` module on ``PYTHONPATH`` in place of the CUDA-only ``sgl_kernel`` extension,
``torch_native`` attention, no CUDA graphs, no overlap schedule, a capped KV pool, and a
scheduler that sleeps when idle instead of spinning on a core.

The launcher pieces (`build_launch`, `SGLangProcess`) are reused by the real-SGLang test tier.
Start-up failures (no sglang in the chosen python, a missing model, a server that dies or never
becomes ready) end as one line saying what to fix.  This module does not install SGLang:
``scripts/sglang_tier.sh setup`` builds the venv it looks for by default.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import msgspec

from ttcdsl.errors import BackendUnavailable, UsageError

__all__ = [
    "LaunchSpec",
    "SGLangProcess",
    "build_launch",
    "check_model",
    "check_sglang",
    "default_python",
    "ensure_cpu_stub",
    "free_port",
    "register",
    "sglang_home",
]

# KV pool cap on CPU: without it SGLang sizes the pool from RAM (~15 GB here).
CPU_MAX_TOTAL_TOKENS = 16384
CPU_MEM_FRACTION = 0.3


class LaunchSpec(msgspec.Struct, frozen=True):
    """Everything needed to start one SGLang server process."""

    argv: tuple[str, ...]
    env: dict[str, str]
    url: str


def sglang_home() -> Path:
    """Where the test tier keeps its SGLang venv, model and CPU stub."""
    configured = os.environ.get("TTC_SGLANG_HOME")
    return Path(configured) if configured else Path.home() / ".cache" / "ttcdsl" / "sglang"


def default_python() -> str:
    """The tier venv's python when it exists, else the python running ttc."""
    tier = sglang_home() / "venv" / "bin" / "python"
    return str(tier) if tier.exists() else sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


def check_sglang(python: str) -> None:
    """Raise unless ``python`` exists and can import sglang."""
    if not Path(python).exists():
        raise UsageError(f"--python {python} does not exist; pass the python of a venv with sglang")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('sglang') is None)"
    try:
        found = subprocess.run(
            [python, "-c", probe], capture_output=True, timeout=60,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        ).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run --python {python}: {exc}") from None
    if found != 0:
        raise BackendUnavailable(
            f"sglang is not installed for {python}; install it there "
            f"(`{python} -m pip install sglang==0.5.23`), pass --python of a venv that has it, "
            f"or run scripts/sglang_tier.sh setup (creates {sglang_home() / 'venv'})"
        )


def check_model(model: str, *, cpu: bool) -> None:
    """Raise unless ``model`` is a local model SGLang can load."""
    path = Path(model)
    if not path.exists():
        raise UsageError(
            f"model path {model} does not exist; pass --model a local model folder "
            "(config.json + weights)"
        )
    if cpu and path.suffix == ".gguf":
        raise UsageError(
            f"SGLang cannot load GGUF on CPU ({model}); convert it to a Hugging Face folder "
            "first (tests/sglang_tier/convert_gguf.py does this)"
        )


def build_launch(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    cpu: bool = False,
    python: str | None = None,
    max_total_tokens: int | None = None,
    extra: Sequence[str] = (),
) -> LaunchSpec:
    """The command line and environment of ``python -m sglang.launch_server`` for ``model``."""
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
    argv += list(extra)  # last, so the user's flags win
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return LaunchSpec(argv=tuple(argv), env=env, url=f"http://{shown_host}:{port}")


class SGLangProcess:
    """One SGLang server process in its own process group (SGLang forks a scheduler and a
    detokenizer; stopping kills the whole group).  Use as a context manager, or call `start` and
    `stop` yourself; `stop` is idempotent."""

    def __init__(self, spec: LaunchSpec, log_path: Path | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.spec.argv,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 600.0) -> None:
        """Poll ``GET /health`` until it answers 200.  Raises `BackendUnavailable` if the
        process exits first or ``timeout`` passes; the message ends with the log's last lines
        when there is a log file."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while True:
                status = self.poll()
                if status is not None:
                    raise BackendUnavailable(self._failure(f"exited with status {status}"))
                try:
                    async with session.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise BackendUnavailable(self._failure(f"was not ready after {timeout:g} s"))
                await anyio.sleep(0.5)

    def _failure(self, what: str) -> str:
        where = f"; log: {self.log_path}" if self.log_path else " (see its output above)"
        message = f"SGLang at {self.url} {what} before it was ready{where}"
        tail = self.log_tail()
        return f"{message}\n--- last lines of the log ---\n{tail}" if tail else message

    def wait(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.wait()

    def terminate(self) -> None:
        """Ask the process group to exit (SIGTERM) without waiting; `stop` then waits."""
        if self._proc is not None and self._proc.poll() is None:
            signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds."""
        try:
            if self._proc is not None:
                stop_process_group(self._proc, grace)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> SGLangProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Terminated(Exception):
    """Raised in the main thread when ttc serve receives SIGTERM."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group of `proc`, wait up to `grace` seconds, then SIGKILL whatever
    is left (children such as SGLang's scheduler can outlive the leader).  Idempotent."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


# --- the sub-command --------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="launch a real SGLang server for a model",
        description="Launch `python -m sglang.launch_server` for a model and print its URL when "
        "it is ready.  Arguments after `--` are passed to SGLang unchanged.",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="local model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=30000, help="port (default 30000; 0 picks a free one)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="run on CPU with the recipe for stock sglang==0.5.23"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="python with sglang installed (default: the test-tier venv if present, else this "
        "python)",
    )
    parser.add_argument(
        "--max-total-tokens",
        type=int,
        metavar="N",
        help=f"KV cache size in tokens (default with --cpu: {CPU_MAX_TOTAL_TOKENS})",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600.0, metavar="S",
        help="seconds to wait for the server to become ready (default 600)",
    )
    parser.add_argument("--log", type=Path, metavar="FILE", help="write the server's output here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for SGLang")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    extra = list(args.extra)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        raise UsageError(f"put SGLang's own arguments after `--` (got {' '.join(extra)})")
    if args.port < 0 or args.port > 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    python = args.python or default_python()
    check_model(args.model, cpu=args.cpu)
    check_sglang(python)
    port = args.port or free_port(args.host)
    spec = build_launch(
        args.model, host=args.host, port=port, cpu=args.cpu, python=python,
        max_total_tokens=args.max_total_tokens, extra=extra,
    )
    server = SGLangProcess(spec, log_path=args.log)
    print(f"ttc serve: starting {' '.join(spec.argv)}", file=sys.stderr, flush=True)
    # SIGTERM (a supervisor, `kill`) stops the server like Ctrl-C does, never orphaning it.
    previous = signal.signal(signal.SIGTERM, _terminate)
    server.start()
    try:
        anyio.run(server.wait_ready, args.ready_timeout)
        print(spec.url, flush=True)
        print(f"ttc serve: SGLang is ready at {spec.url}; Ctrl-C stops it", file=sys.stderr,
              flush=True)
        status = server.wait()
    except (KeyboardInterrupt, _Terminated):
        print("ttc serve: stopping SGLang", file=sys.stderr, flush=True)
        return 130
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    if status != 0:
        raise BackendUnavailable(f"SGLang at {spec.url} exited with status {status}")
    return 0
