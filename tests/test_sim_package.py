"""The simulator is a package of its own: nothing under runtime/sim imports ttcdsl, its errors
form one tree, and the callers turn them into ttcdsl's one-line usage errors."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ttcdsl.runtime.sim as sim
from ttcdsl.errors import UsageError
from ttcdsl.runtime.backends.sim import load_task, usage_errors

SIM = Path(__file__).resolve().parents[1] / "runtime" / "sim"


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at any depth (functions included)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_module_under_runtime_sim_imports_ttcdsl() -> None:
    files = sorted(SIM.glob("*.py"))
    assert len(files) >= 8  # the package is where this test thinks it is
    offending = [
        f"{path.name}:{line}: import {module}"
        for path in files
        for line, module in _absolute_imports(path)
        if module.split(".")[0] == "ttcdsl"
    ]
    assert offending == []


def test_the_import_check_sees_function_level_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from . import x\n\ndef f():\n    from ttcdsl.errors import UsageError\n")
    assert _absolute_imports(probe) == [(4, "ttcdsl.errors")]


def test_a_copy_of_the_package_runs_where_ttcdsl_cannot_be_imported(tmp_path: Path) -> None:
    shutil.copytree(SIM, tmp_path / "simcopy", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import sys; sys.modules['ttcdsl'] = None\n"  # any `import ttcdsl...` now fails
        "import anyio, simcopy\n"
        "from simcopy.engine import EngineRequest\n"
        "import simcopy.server, simcopy.openai\n"
        "engine = simcopy.SimEngine()\n"
        "ids = engine.tokenize('What is 2 + 2?')\n"
        "out = anyio.run(engine.execute, EngineRequest(rid='r', input_ids=ids, max_new_tokens=5))\n"
        "print(out.completion_tokens)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr


def test_every_sim_error_is_a_sim_error() -> None:
    for kind in (sim.TaskError, sim.ConfigError, sim.ServeError, sim.SimRequestError):
        assert issubclass(kind, sim.SimError)
    assert not issubclass(sim.SimError, UsageError)
    assert "SimBackend" not in sim.__all__ and not hasattr(sim, "SimBackend")


def test_callers_see_the_same_text_as_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(sim.ConfigError) as raw:
        sim.Latency(decode_s=-1)
    with pytest.raises(UsageError) as mapped, usage_errors():
        sim.Latency(decode_s=-1)
    assert str(mapped.value) == str(raw.value) == (
        "latency decode_s must be a finite number >= 0, got -1"
    )
    missing = tmp_path / "none.json"
    with pytest.raises(UsageError, match=f"^task file {missing} does not exist$"):
        load_task(missing)


def test_usage_errors_lets_other_exceptions_through() -> None:
    with pytest.raises(ValueError, match="unrelated"), usage_errors():
        raise ValueError("unrelated")
