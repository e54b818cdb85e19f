"""`ttc serve` and its launcher pieces, with a stand-in for SGLang.

The stand-in is a small stdlib HTTP server started the way SGLang would be (``PY -m
sglang.launch_server ... --port N``) through a fake ``python`` executable; it also forks a child,
as SGLang forks its scheduler, so stopping must clear the whole process group.  The real
launch is exercised by the real-SGLang tier (tests/sglang_tier).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import anyio
import pytest

from ttcdsl.cli import main
from ttcdsl.commands.serve import (
    CPU_MAX_TOTAL_TOKENS,
    LaunchSpec,
    SGLangProcess,
    build_launch,
    check_model,
    check_sglang,
    default_python,
    free_port,
)
from ttcdsl.errors import BackendUnavailable, UsageError

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, os, subprocess, sys
    argv = sys.argv[1:]
    port = int(argv[argv.index("--port") + 1])
    if os.environ.get("FAKE_EXIT"):
        print("fake sglang: model does not fit", flush=True)
        sys.exit(int(os.environ["FAKE_EXIT"]))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_CHILD_PID"], "w") as f:
        f.write(str(child.pid))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = self.path == "/health" and not os.environ.get("FAKE_NEVER_READY")
            self.send_response(200 if ready else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An executable standing in for a python with sglang: ``-c`` probes succeed, ``-m
    sglang.launch_server ARGS`` runs the fake server."""
    server = tmp_path / "fake_sglang.py"
    server.write_text(FAKE_SERVER)
    exe = tmp_path / "python"
    exe.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then exit 0; fi\n'
        f'shift 2\nexec "{sys.executable}" "{server}" "$@"\n'
    )
    exe.chmod(0o755)
    return exe


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_gpu_command_line_is_sglangs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    spec = build_launch("/models/m", port=1234, python="/py", extra=("--tp", "2"))
    assert spec.argv == ("/py", "-m", "sglang.launch_server", "--model-path", "/models/m",
                         "--host", "127.0.0.1", "--port", "1234", "--tp", "2")
    assert "SGLANG_USE_CPU_ENGINE" not in spec.env
    assert spec.url == "http://127.0.0.1:1234"


def test_the_cpu_command_line_applies_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    spec = build_launch("/m", host="0.0.0.0", port=5, cpu=True, python="/py",
                        extra=("--max-total-tokens", "4096"))
    stub = tmp_path / "stub"
    assert (stub / "common_ops.py").exists()
    assert spec.env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert spec.env["PYTHONPATH"] == f"{stub}{os.pathsep}/elsewhere"
    line = " ".join(spec.argv)
    for flags in ("--device cpu", "--attention-backend torch_native",
                  "--cuda-graph-backend-decode disabled", "--cuda-graph-backend-prefill disabled",
                  "--disable-overlap-schedule", "--mem-fraction-static 0.3",
                  f"--max-total-tokens {CPU_MAX_TOTAL_TOKENS}"):
        assert flags in line
    assert spec.argv[-2:] == ("--max-total-tokens", "4096")  # the user's flags come last and win
    assert spec.url == "http://127.0.0.1:5"


def test_the_default_python_is_the_tier_venv_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    assert default_python() == sys.executable
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.touch()
    assert default_python() == str(venv_python)


def test_missing_models_and_gguf_on_cpu_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"model path .*nope does not exist"):
        check_model(str(tmp_path / "nope"), cpu=False)
    gguf = tmp_path / "m.gguf"
    gguf.touch()
    with pytest.raises(UsageError, match="cannot load GGUF on CPU"):
        check_model(str(gguf), cpu=True)


def test_a_python_without_sglang_is_named_with_the_fix(tmp_path: Path) -> None:
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    with pytest.raises(BackendUnavailable, match=r"sglang is not installed for .*--python"):
        check_sglang(str(bare))
    with pytest.raises(UsageError, match="does not exist"):
        check_sglang(str(tmp_path / "missing"))


def test_serve_with_a_missing_model_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttc: error: model path ") and err.count("\n") == 1


def test_sglang_arguments_must_follow_a_double_dash(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(model), "--port", "0", "x"]) == 2
    assert "after `--`" in capsys.readouterr().err


def fake_spec(fake_python: Path, tmp_path: Path) -> LaunchSpec:
    port = free_port()
    spec = build_launch("/m", port=port, python=str(fake_python))
    return LaunchSpec(argv=spec.argv, env={**spec.env, "FAKE_CHILD_PID": str(tmp_path / "child")},
                      url=spec.url)


def test_a_server_is_waited_for_and_stopped_with_its_children(
    fake_python: Path, tmp_path: Path
) -> None:
    server = SGLangProcess(fake_spec(fake_python, tmp_path), log_path=tmp_path / "log")
    with server:
        anyio.run(server.wait_ready, 60.0)
        child = int((tmp_path / "child").read_text())
        assert alive(child) and server.poll() is None
    assert server.poll() is not None
    assert not alive(child)
    server.stop()  # idempotent


def test_a_server_that_dies_while_starting_shows_its_log(
    fake_python: Path, tmp_path: Path
) -> None:
    spec = fake_spec(fake_python, tmp_path)
    spec = LaunchSpec(argv=spec.argv, env={**spec.env, "FAKE_EXIT": "3"}, url=spec.url)
    with SGLangProcess(spec, log_path=tmp_path / "log") as server, pytest.raises(
        BackendUnavailable, match="exited with status 3 before it was ready"
    ) as caught:
        anyio.run(server.wait_ready, 60.0)
    assert "fake sglang: model does not fit" in str(caught.value)


def test_a_server_that_never_becomes_ready_times_out(fake_python: Path, tmp_path: Path) -> None:
    spec = fake_spec(fake_python, tmp_path)
    spec = LaunchSpec(argv=spec.argv, env={**spec.env, "FAKE_NEVER_READY": "1"}, url=spec.url)
    with SGLangProcess(spec) as server, pytest.raises(BackendUnavailable, match="was not ready"):
        anyio.run(server.wait_ready, 0.5)


def test_ttc_serve_prints_the_url_and_stops_the_server_on_sigterm(
    fake_python: Path, model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "FAKE_CHILD_PID": str(tmp_path / "child")}
    argv = [sys.executable, "-m", "ttcdsl.cli", "serve", "--model", str(model),
            "--port", "0", "--python", str(fake_python)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        async def health() -> int:
            async with aiohttp.ClientSession() as s, s.get(url + "/health") as resp:
                return resp.status

        assert anyio.run(health) == 200
        child = int((tmp_path / "child").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert not alive(child)
        assert "stopping SGLang" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
