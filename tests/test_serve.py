"""`ttc serve`, the command: its start-up checks, its one-line errors, and a whole run against a
stand-in for SGLang.

The stand-in (tests/fixtures/servers/fake_sglang.py) is started the way SGLang would be (``PY -m
sglang.launch_server ... --port N``) through a fake ``python`` executable; it forks a child, as
SGLang forks its scheduler, so stopping must clear the whole process group.  The launcher itself
is tested in tests/test_launch.py; the real launch by the real-SGLang tier (tests/sglang_tier).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import anyio
import pytest

from ttcdsl.cli import main
from ttcdsl.commands.serve import check_model, check_sglang
from ttcdsl.errors import BackendUnavailable, UsageError

FAKE_SERVER = Path(__file__).resolve().parent / "fixtures" / "servers" / "fake_sglang.py"


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An executable standing in for a python with sglang: ``-c`` probes succeed, ``-m
    sglang.launch_server ARGS`` runs the fake server."""
    exe = tmp_path / "python"
    exe.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then exit 0; fi\n'
        f'shift 2\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n'
    )
    exe.chmod(0o755)
    return exe


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def alive(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` still runs ``within`` seconds from now (a SIGKILLed process takes a moment
    to die, longer on a loaded machine; a zombie counts as dead)."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.02)  # polling the kernel's view of the process


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


@pytest.mark.parametrize(("port", "message"), [("70000", "must be between 0 and 65535, got 70000"),
                                               ("x", "expected a port number, got 'x'")])
def test_a_bad_port_is_refused_while_parsing(port: str, message: str, model: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--model", str(model), "--port", port])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert f"argument --port: {message}" in err


def test_sglang_arguments_must_follow_a_double_dash(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(model), "--port", "0", "x"]) == 2
    assert "after `--`" in capsys.readouterr().err


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
            # SIGTERM first: ttc serve then stops its server, which lives in a session of its
            # own and would outlive a SIGKILLed ttc serve.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_server_that_never_becomes_ready_is_one_error_and_is_stopped(
    fake_python: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_NEVER_READY", "1")
    monkeypatch.setenv("FAKE_CHILD_PID", str(tmp_path / "child"))
    log = tmp_path / "sglang.log"
    assert main(["serve", "--model", str(model), "--port", "0", "--python", str(fake_python),
                 "--ready-timeout", "1", "--log", str(log)]) == 1
    err = capsys.readouterr().err
    assert "ttc: error: SGLang at http://127.0.0.1:" in err
    assert f"was not ready after 1 s (GET /health did not answer 200); log: {log}" in err
    assert "fake sglang: listening on" in err  # the log's last lines
    assert not alive(int((tmp_path / "child").read_text()))
