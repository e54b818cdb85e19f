"""``ttc sim serve`` and ``ttc sim check``: a real process, graceful shutdown, one-line errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttcdsl.commands.sim import parse_faults, parse_latency
from ttcdsl.errors import UsageError
from ttcdsl.runtime.sim import Faults, Latency

DEMO = Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json"
TTC = [sys.executable, "-m", "ttcdsl.cli"]


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [
            *TTC,
            "sim",
            "serve",
            "--port",
            "0",
            "--task",
            str(DEMO),
            "--latency",
            "0,0,4",
            "--seed",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
        assert m, line
        yield proc, m.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_gracefully(
    served: tuple[subprocess.Popen[str], str], sig: int
) -> None:
    proc, url = served
    assert _get(url + "/health") == (200, b"")
    status, body = _get(url + "/server_info")
    info = json.loads(body)
    assert status == 200
    assert info["sim"]["problems"] == 8 and info["max_running_requests"] == 4
    request = urllib.request.Request(
        url + "/generate",
        data=json.dumps(
            {"text": "What is 17 + 25?\n", "sampling_params": {"max_new_tokens": 5}}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read())["text"] == "Step 1 of 5:"  # --seed fixes unseeded requests
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and "ttc sim: stopped" in proc.stderr.read()


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(
            [*TTC, "sim", "serve", "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert out.returncode == 2
    assert (
        out.stderr
        == f"ttc: error: port {port} on 127.0.0.1 is already in use; choose another with --port\n"
    )


def test_a_bad_task_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"problems": [{"question": "Q", "answer": "1", "answers": {"1": 0.5}}]}')
    for args in (["serve", "--task", str(bad)], ["check", str(bad)]):
        out = subprocess.run([*TTC, "sim", *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert out.stderr == (
            f'ttc: error: {bad}: problems[0] ("p1"): answers probabilities sum to 0.5, expected 1 (within 1e-6)\n'
        )


def test_check_summarises_good_files() -> None:
    out = subprocess.run(
        [*TTC, "sim", "check", str(DEMO)], capture_output=True, text=True, timeout=30
    )
    assert (out.returncode, out.stdout) == (0, f"{DEMO}: 8 problems OK\n")


def test_latency_and_fault_specs() -> None:
    assert parse_latency("0.001,0.02,8") == Latency(prefill_s=0.001, decode_s=0.02, max_batch=8)
    assert parse_latency("decode=0.5") == Latency(decode_s=0.5)
    assert parse_faults("error=0.1,status=500,seed=2") == Faults(
        error_rate=0.1, error_status=500, seed=2
    )
    assert parse_faults("reset=0.2, stall=0.1, stall_s=3") == Faults(
        reset_rate=0.2, stall_rate=0.1, stall_s=3.0
    )
    for spec, message in [
        ("1", r"--latency expects PREFILL_S,DECODE_S\[,BATCH\], got '1'"),
        ("a,b", r"--latency: not a number in 'a,b'"),
        ("speed=1", r"--latency: unknown key 'speed'"),
        ("-1,0", r"latency prefill_s must be a finite number >= 0, got -1.0"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_latency(spec)
    for spec, message in [
        (
            "boom=1",
            r"--faults: expected KEY=VALUE with KEY in error, reset, stall, stall_s, status, seed, got 'boom=1'",
        ),
        ("error=x", r"--faults: error='x' is not a number"),
        ("error=1.5", r"faults error_rate must be a probability in \[0, 1\], got 1.5"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_faults(spec)
