"""Layering: which ttcdsl modules may load which, read from the import statements with `ast`.

A module *loads* what its import statements run when it is imported (module level and class
bodies; not function bodies, not `if TYPE_CHECKING:` blocks), every package `__init__` on the
way (`import ttcdsl.runtime.values` runs `ttcdsl/runtime/__init__.py` too), and, transitively,
everything those load.  `RULES` lists (module glob, forbidden prefixes): every module matching
the glob must load nothing that starts with one of the prefixes.  To add a rule, add a row.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import sys
from collections import deque
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ttcdsl"

# The front half: source -> plan, with no idea how a plan runs.
FRONT_HALF = (
    "parse", "ast", "check", "lower", "bounds", "plan", "program", "compiler", "fmt", "span",
    "errors", "render", "vocabulary", "budget_warnings", "args",
)
RUNTIME = ("ttcdsl.runtime", "anyio", "aiohttp")
# The runtime modules that give plans their meaning and run them.
INTERPRETER = ("executor", "interpreter", "reference", "steps", "client", "semantics", "aggregate")

RULES: list[tuple[str, tuple[str, ...]]] = [
    ("ttcdsl", RUNTIME),  # the package __init__ runs before every one of its modules
    *((f"ttcdsl.{name}", RUNTIME) for name in FRONT_HALF),
    # The plan is data: it knows neither the source language nor how it runs.
    ("ttcdsl.plan", ("ttcdsl.parse", "ttcdsl.ast", "ttcdsl.check", "ttcdsl.lower", "lark")),
    # Backends implement the contract in runtime/backend.py and know nothing of how plans run.
    ("ttcdsl.runtime.backends.*", tuple(f"ttcdsl.runtime.{m}" for m in INTERPRETER)),
    # The simulator is a package of its own: it imports nothing of ttcdsl outside itself.
    ("ttcdsl.runtime.sim*", ("ttcdsl.errors", "ttcdsl.plan", "ttcdsl.runtime.backend", "ttcdsl.runtime.backends",
                             *(f"ttcdsl.runtime.{m}" for m in INTERPRETER), "ttcdsl.compiler", "ttcdsl.args")),
    # The model client is below the interpreters and the steps.
    ("ttcdsl.runtime.client", tuple(f"ttcdsl.runtime.{m}" for m in ("interpreter", "reference", "steps", "executor"))),
]


def _modules() -> dict[str, Path]:
    """Every module of the ttcdsl package (through its symlinked folders) -> its file."""
    out: dict[str, Path] = {}
    for folder, _dirs, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if file.endswith(".py"):
                path = Path(folder) / file
                parts = path.relative_to(REPO).with_suffix("").parts
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _eager_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run at import time, nested blocks included, functions excluded."""
    out: list[ast.stmt] = []
    for st in body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(st, ast.If) and _is_type_checking(st.test):
            out += _eager_statements(st.orelse)
            continue
        out.append(st)
        for field in ("body", "orelse", "finalbody"):
            out += _eager_statements(getattr(st, field, []))
        for handler in getattr(st, "handlers", []):
            out += _eager_statements(handler.body)
    return out


def _with_packages(name: str) -> list[str]:
    """`a.b.c` -> a, a.b, a.b.c: importing a module runs each package on its way."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def imports_of(module: str) -> frozenset[str]:
    """What `module` loads directly: the names its import-time statements import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for st in _eager_statements(tree.body):
        if isinstance(st, ast.Import):
            for alias in st.names:
                found.update(_with_packages(alias.name))
        elif isinstance(st, ast.ImportFrom):
            base = st.module or ""
            if st.level:
                anchor = package.split(".")[: len(package.split(".")) - st.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(_with_packages(base))
            found.update(f"{base}.{a.name}" for a in st.names if f"{base}.{a.name}" in MODULES)
    return frozenset(found)


def load_chain(module: str, forbidden: tuple[str, ...]) -> list[str] | None:
    """The import chain from `module` to the first loaded name with a forbidden prefix."""
    start = _with_packages(module)
    parent: dict[str, str | None] = {m: None for m in start}
    queue = deque(start)
    while queue:
        current = queue.popleft()
        if any(current == p or current.startswith(p + ".") for p in forbidden):
            chain = [current]
            while (up := parent[chain[-1]]) is not None:
                chain.append(up)
            return chain[::-1]
        if current not in MODULES:
            continue  # outside ttcdsl: not followed
        for name in sorted(imports_of(current)):
            if name not in parent:
                parent[name] = current
                queue.append(name)
    return None


@pytest.mark.parametrize(("glob", "forbidden"), RULES, ids=[glob for glob, _ in RULES])
def test_modules_load_nothing_their_layer_forbids(glob: str, forbidden: tuple[str, ...]) -> None:
    matched = sorted(m for m in MODULES if fnmatch.fnmatchcase(m, glob))
    assert matched, f"no module matches {glob!r}"
    broken = {m: chain for m in matched if (chain := load_chain(m, forbidden)) is not None}
    assert broken == {}, "\n".join(" -> ".join(chain) for chain in broken.values())


def test_the_checker_sees_imports_inside_blocks_and_through_packages() -> None:
    # The runtime's own modules do load the runtime: the walk follows packages and chains.
    assert load_chain("ttcdsl.runtime.client", ("anyio",)) == ["ttcdsl.runtime.client", "anyio"]
    assert load_chain("ttcdsl.commands.run", ("ttcdsl.runtime",)) == ["ttcdsl.commands.run", "ttcdsl.runtime"]
    assert "ttcdsl.runtime.executor" not in imports_of("ttcdsl")  # only under TYPE_CHECKING or lazily


def test_importing_the_whole_front_half_loads_no_runtime() -> None:
    names = ", ".join(f"ttcdsl.{m}" for m in FRONT_HALF)
    code = (
        f"import sys, {names}\n"
        "import ttcdsl\n"
        "ttcdsl.compile_source\n"
        f"print(sorted(m for m in sys.modules if m.startswith({RUNTIME!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "[]", "")
