"""`ttcdsl.launch`: server processes (start, readiness, logs, stop, kill, groups) and the
command lines of the servers the project starts.

The server is a stdlib stand-in for SGLang (tests/fixtures/servers/fake_sglang.py) that forks a
child, as SGLang forks its scheduler, so a stop must clear the whole process group.  The real
SGLang launch is exercised by the real-SGLang tier (tests/sglang_tier).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from ttcdsl.errors import BackendUnavailable
from ttcdsl.launch import (
    CPU_MAX_TOTAL_TOKENS,
    TTC,
    LaunchSpec,
    ServerFailed,
    ServerGroup,
    ServerProcess,
    default_python,
    free_port,
    get_json,
    router_argv,
    sglang_launch,
    sim_argv,
    stop_all,
)

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fixtures" / "servers" / "fake_sglang.py"
TASK = REPO / "data" / "tasks" / "demo.json"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` ends within ``timeout`` s: a signalled process that is not our child
    dies a moment after the signal is sent, not at once."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling the process table
    return True


def fake(tmp_path: Path, name: str = "fake", **env: str) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [sys.executable, str(FAKE), "--port", str(port)], f"http://127.0.0.1:{port}", name=name,
        env={**os.environ, "FAKE_CHILD_PID": str(tmp_path / f"{name}.child"), **env},
        log=tmp_path / f"{name}.log",
    )


def child_of(tmp_path: Path, name: str = "fake") -> int:
    return int((tmp_path / f"{name}.child").read_text())


# --- one process --------------------------------------------------------------------------------


def test_a_server_is_waited_for_and_stopped_with_its_children(tmp_path: Path) -> None:
    with fake(tmp_path) as server:
        assert server.wait_ready(60) is server
        child = child_of(tmp_path)
        assert alive(child) and server.alive() and server.poll() is None
    assert server.poll() is not None and not server.alive()
    assert gone(child)
    assert "fake sglang: listening on" in server.log_tail()
    server.stop()  # idempotent


def test_a_server_that_dies_while_starting_shows_its_log(tmp_path: Path) -> None:
    with fake(tmp_path, FAKE_EXIT="3") as server, pytest.raises(
        BackendUnavailable, match="exited with status 3 before it was ready"
    ) as caught:
        server.wait_ready(60)
    message = str(caught.value)
    assert isinstance(caught.value, ServerFailed)
    assert message.startswith(f"fake at {server.url} exited with status 3")
    assert f"log: {tmp_path / 'fake.log'}" in message
    assert "fake sglang: model does not fit" in message


def test_a_server_that_never_becomes_ready_times_out(tmp_path: Path) -> None:
    with fake(tmp_path, FAKE_NEVER_READY="1") as server, pytest.raises(
        BackendUnavailable, match=r"was not ready after 0\.5 s \(GET /health did not answer 200\)"
    ):
        server.wait_ready(0.5)
    assert gone(child_of(tmp_path))


def test_readiness_can_be_awaited_inside_an_event_loop(tmp_path: Path) -> None:
    servers = [fake(tmp_path, "a"), fake(tmp_path, "b")]

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for s in servers:
                tg.start_soon(s.await_ready, 60.0)

    try:
        for s in servers:
            s.start()
        anyio.run(both)
        assert all(s.alive() for s in servers)
    finally:
        stop_all(servers)
    assert not any(s.alive() for s in servers)
    assert gone(child_of(tmp_path, "a")) and gone(child_of(tmp_path, "b"))


def test_kill_is_a_crash_of_the_whole_group(tmp_path: Path) -> None:
    with fake(tmp_path) as server:
        server.wait_ready(60)
        child = child_of(tmp_path)
        server.kill()
        assert server.poll() == -9 and gone(child)


def test_a_command_that_cannot_run_is_one_clear_error(tmp_path: Path) -> None:
    server = ServerProcess([str(tmp_path / "no-such-binary")], "http://127.0.0.1:1", name="ghost",
                           log=tmp_path / "ghost.log")
    with pytest.raises(ServerFailed, match=r"^ghost: cannot run .*no-such-binary"):
        server.start()
    server.stop()  # nothing started: still fine


def test_without_a_log_the_output_streams_to_ours(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    with ServerProcess([sys.executable, str(FAKE), "--port", str(port)],
                       f"http://127.0.0.1:{port}") as server:
        server.wait_ready(60)
        assert server.log_tail() == ""
    assert "fake sglang: listening on" in capfd.readouterr().err


# --- groups -------------------------------------------------------------------------------------


def test_a_group_stops_every_server_even_when_the_block_fails(tmp_path: Path) -> None:
    started: list[ServerProcess] = []
    with pytest.raises(RuntimeError, match="boom"), ServerGroup(tmp_path) as group:
        for name in ("one", "two"):
            port = free_port()
            started.append(group.start(name, [sys.executable, str(FAKE), "--port", str(port)],
                                       f"http://127.0.0.1:{port}",
                                       env={**os.environ, "FAKE_CHILD_PID": str(tmp_path / f"{name}.child")}))
        raise RuntimeError("boom")
    assert [s.name for s in started] == ["one", "two"]
    assert (tmp_path / "one.log").exists() and (tmp_path / "two.log").exists()
    assert not any(s.alive() for s in started)
    assert gone(child_of(tmp_path, "one")) and gone(child_of(tmp_path, "two"))


def test_a_group_serves_the_simulator(tmp_path: Path) -> None:
    port = free_port()
    with ServerGroup(tmp_path) as group:
        sim = group.start("sim", sim_argv(port, TASK, seed=3), f"http://127.0.0.1:{port}", timeout=60)
        info = get_json(sim.url + "/get_model_info")
        assert isinstance(info, dict) and info
    assert not sim.alive()


# --- command lines ------------------------------------------------------------------------------


def test_command_lines_of_the_simulator_and_the_router() -> None:
    assert sim_argv(5, TASK, latency="0.1,0.2", seed=4) == [
        *TTC, "sim", "serve", "--host", "127.0.0.1", "--port", "5", "--task", str(TASK),
        "--latency", "0.1,0.2", "--seed", "4"]
    argv = router_argv(7, ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert argv[:3] == [sys.executable, "-m", "sglang_router.launch_router"]
    line = " ".join(argv)
    assert "--host 127.0.0.1 --port 7" in line and "--prometheus-host 127.0.0.1" in line
    assert argv[-3:] == ["--worker-urls", "http://127.0.0.1:1", "http://127.0.0.1:2"]


def test_the_gpu_command_line_is_sglangs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    spec = sglang_launch("/models/m", port=1234, python="/py", extra=("--tp", "2"))
    assert spec.argv == ("/py", "-m", "sglang.launch_server", "--model-path", "/models/m",
                         "--host", "127.0.0.1", "--port", "1234", "--tp", "2")
    assert "SGLANG_USE_CPU_ENGINE" not in spec.env
    assert spec.url == "http://127.0.0.1:1234"


def test_the_cpu_command_line_applies_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    spec = sglang_launch("/m", host="0.0.0.0", port=5, cpu=True, python="/py",
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


def test_a_launch_spec_makes_an_sglang_process(tmp_path: Path) -> None:
    spec = LaunchSpec(argv=("/py", "-m", "sglang.launch_server"), env={"A": "1"}, url="http://h:1")
    server = spec.process(log=tmp_path / "s.log", ready_timeout=9.0)
    assert (server.argv, server.env, server.url, server.name) == (spec.argv, spec.env, spec.url, "SGLang")
    assert server.ready_timeout == 9.0 and server.stop_grace == 20.0 and server.pid is None


def test_the_default_python_is_the_tier_venv_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    assert default_python() == sys.executable
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.touch()
    assert default_python() == str(venv_python)
