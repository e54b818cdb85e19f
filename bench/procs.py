"""Processes of the suite: the simulator server and the client runs (a small helper of its own;
ttcdsl's launcher is being reworked elsewhere).

* `SimServer`: ``python -m bench.simserver`` in its own process group on a free port of
  127.0.0.1; `SimServer.start` waits for its banner, `SimServer.stop` sends SIGTERM to the group,
  then SIGKILL after a grace period, and always reaps it.  Its stderr is drained in a thread and
  kept (the last lines explain a failure).
* `run_json`: run one client process to completion (with a timeout), return the JSON object it
  printed last on stdout; any failure is a `BenchError` with one line saying what failed.
* `get_json` / `post`: plain HTTP to the server (standard library only).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["BenchError", "SimServer", "get_json", "post", "run_json"]


class BenchError(Exception):
    """A failure of the suite itself; the driver prints it as one line and exits 1."""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


class SimServer:
    """The benchmark's simulator server process (see the module doc)."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.argv = argv
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.tail: deque[str] = deque(maxlen=40)

    def start(self, timeout: float = 60.0) -> str:
        from bench.simserver import BANNER

        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.tail.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise BenchError(f"the simulator server did not start within {timeout:.0f} s") from None
            if line is None:
                self.stop()
                raise BenchError(f"the simulator server exited: {_last_line(''.join(self.tail))}")
            if line.startswith(BANNER):
                self.url = line[len(BANNER):].strip()
                return self.url

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def run_json(argv: list[str], *, cwd: Path, timeout: float, what: str) -> dict[str, Any]:
    """Run ``argv`` (its own process group, killed whole on timeout) and decode the JSON
    object on its last stdout line."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BenchError(f"{what} took longer than {timeout:.0f} s and was stopped") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}): {_last_line(err)}")
    try:
        report: dict[str, Any] = json.loads(_last_line(out))
    except json.JSONDecodeError:
        raise BenchError(f"{what} printed no JSON result: {_last_line(out + err)}") from None
    return report


def _open(request: urllib.request.Request, what: str) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{what}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}") from None
    except OSError as exc:
        raise BenchError(f"{what}: {exc}") from None


def get_json(url: str) -> Any:
    return json.loads(_open(urllib.request.Request(url), f"GET {url}"))


def post(url: str) -> None:
    _open(urllib.request.Request(url, data=b"", method="POST"), f"POST {url}")
