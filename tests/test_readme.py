"""The README's examples run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ttcdsl.compiler import compile_source

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_python_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block is not None
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert tests
    for test in tests:
        test()  # type: ignore[operator]


@pytest.mark.parametrize("index", range(len(re.findall(r"```ttc\n", README))))
def test_ttc_examples_compile(index: int) -> None:
    block = re.findall(r"```ttc\n(.*?)```", README, re.S)[index]
    compile_source(block, f"README.md#ttc{index}", base=REPO / "programs")


def test_the_two_fresh_machine_commands_are_there_and_ci_runs_the_second() -> None:
    commands = re.findall(r"```sh\n(python3 -m venv .*?)\n```", README)
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()
    assert "programs/arith_vote.ttc" in commands[0] and os.path.exists(REPO / "programs" / "arith_vote.ttc")
