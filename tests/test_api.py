"""The public API: every name in `ttcdsl.__all__` is the object its home module defines."""

from __future__ import annotations

import importlib
from pathlib import Path

import anyio
import pytest

import ttcdsl
from ttcdsl import errors
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.sim import load_task

TASK = Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json"

HOMES = {
    "ttcdsl.compiler": ("Compiled", "compile_file", "compile_source"),
    "ttcdsl.runtime.executor": ("RunOptions", "run_plan"),
    "ttcdsl.runtime.values": ("Answer", "Branch", "Branches", "RunResult"),
    "ttcdsl.runtime.budget": ("Budget",),
    "ttcdsl.runtime.backends.sim": ("SimBackend",),
    "ttcdsl.runtime.backends.sglang": ("SGLangBackend",),
    "ttcdsl.runtime.backends.scripted": ("ScriptedBackend",),
    "ttcdsl.runtime.sim": ("load_task",),
    "ttcdsl.errors": tuple(errors.__all__),
}


def test_every_public_name_is_its_home_modules_object() -> None:
    public = {name: home for home, names in HOMES.items() for name in names}
    assert sorted(ttcdsl.__all__) == sorted(public)
    for name, home in public.items():
        assert getattr(ttcdsl, name) is getattr(importlib.import_module(home), name), name
    assert set(ttcdsl.__all__) <= set(dir(ttcdsl))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'ttcdsl' has no attribute 'compile'"):
        ttcdsl.compile  # noqa: B018


def test_compile_and_run_through_the_public_api() -> None:
    compiled = ttcdsl.compile_source(
        "strategy s(question: text) {\n    return vote (sample 3 from question with max_tokens = 40)\n}\n",
        "s.ttc",
    )
    task = load_task(TASK)

    async def main() -> ttcdsl.RunResult:
        async with SimBackend(task) as sim:
            return await ttcdsl.run_plan(compiled.plan, sim, {"question": task.problems[0].question},
                                         ttcdsl.RunOptions(seed=1))

    result = anyio.run(main)
    assert isinstance(result.value, ttcdsl.Answer) and result.usage.completion_tokens <= 120
