"""ttcdsl: a declarative language for test-time compute strategies and an async runtime.

The public API, importable from here:

* compile: `compile_file`, `compile_source` -> `Compiled` (the plan, its warnings, the sources);
* run: `run_plan(plan, backend, args, RunOptions(...), root)` with a `Budget` root if the caller
  wants to inspect the budget tree afterwards;
* backends: `SimBackend` (the in-process simulator; `load_task` reads its task file),
  `SGLangBackend`, `ScriptedBackend` (a scriptable, misbehaving model for tests);
* results: `RunResult` (value, usage, per-node usage, trace), `Answer`, `Branches`, `Branch`;
* errors: `TTCError` and its tree (see `ttcdsl.errors`).

Names are imported on first use (module `__getattr__`), so `import ttcdsl` or any front-half
module costs nothing extra, and the runtime (anyio, aiohttp) is loaded only by code that runs
plans.  Other backends live in `ttcdsl.runtime.backends`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttcdsl.compiler import Compiled, compile_file, compile_source
    from ttcdsl.errors import (
        BackendError,
        BackendUnavailable,
        CheckError,
        CheckErrors,
        CheckWarning,
        NodeFailed,
        ProtocolViolation,
        RunError,
        SourceError,
        TransientBackendError,
        TTCError,
        TTCSyntaxError,
        UsageError,
    )
    from ttcdsl.runtime.backends.scripted import ScriptedBackend
    from ttcdsl.runtime.backends.sglang import SGLangBackend
    from ttcdsl.runtime.backends.sim import SimBackend
    from ttcdsl.runtime.budget import Budget
    from ttcdsl.runtime.executor import RunOptions, run_plan
    from ttcdsl.runtime.sim import load_task
    from ttcdsl.runtime.values import Answer, Branch, Branches, RunResult

__version__ = "0.1.0"

_ERRORS = (
    "BackendError", "BackendUnavailable", "CheckError", "CheckErrors", "CheckWarning", "NodeFailed",
    "ProtocolViolation", "RunError", "SourceError", "TTCError", "TTCSyntaxError",
    "TransientBackendError", "UsageError",
)
# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "Compiled": "ttcdsl.compiler",
    "compile_file": "ttcdsl.compiler",
    "compile_source": "ttcdsl.compiler",
    "RunOptions": "ttcdsl.runtime.executor",
    "run_plan": "ttcdsl.runtime.executor",
    "Answer": "ttcdsl.runtime.values",
    "Branch": "ttcdsl.runtime.values",
    "Branches": "ttcdsl.runtime.values",
    "RunResult": "ttcdsl.runtime.values",
    "Budget": "ttcdsl.runtime.budget",
    "SimBackend": "ttcdsl.runtime.backends.sim",
    "SGLangBackend": "ttcdsl.runtime.backends.sglang",
    "ScriptedBackend": "ttcdsl.runtime.backends.scripted",
    "load_task": "ttcdsl.runtime.sim",
    **{name: "ttcdsl.errors" for name in _ERRORS},
}

__all__ = [
    "Answer",
    "BackendError",
    "BackendUnavailable",
    "Branch",
    "Branches",
    "Budget",
    "CheckError",
    "CheckErrors",
    "CheckWarning",
    "Compiled",
    "NodeFailed",
    "ProtocolViolation",
    "RunError",
    "RunOptions",
    "RunResult",
    "SGLangBackend",
    "ScriptedBackend",
    "SimBackend",
    "SourceError",
    "TTCError",
    "TTCSyntaxError",
    "TransientBackendError",
    "UsageError",
    "compile_file",
    "compile_source",
    "load_task",
    "run_plan",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ttcdsl' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
