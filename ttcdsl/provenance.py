"""Where a result came from: the facts every `--json`, dataset line, bench JSON and trace records.

`provenance` returns one plain dict: the program (path, SHA-256 of the file, SHA-256 of the
compiled plan, which also covers imported files), the strategy, the arguments as given, the
backend, model, engine (name and version as the server reports them, e.g. SGLang's
``/server_info``), URL, the run seed, the ttcdsl version and the Python version.  Backend facts
come from one place, `Backend.info` (`BackendInfo`), so a backend that replays recorded runs
reports the recorded model and engine by returning them there.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ttcdsl import plan as P
from ttcdsl.runtime.backend import BackendInfo

__all__ = ["file_sha256", "provenance", "ttcdsl_version"]


def ttcdsl_version() -> str:
    from ttcdsl import __version__

    return __version__


def file_sha256(path: str | Path) -> str | None:
    """The SHA-256 of a file's bytes (None when it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def provenance(file: str | None, plan: P.Plan, args: Mapping[str, Any], info: BackendInfo | None,
               seed: int | None) -> dict[str, Any]:
    """The provenance record of one run (or of a dataset or bench pass: then ``seed`` is the run
    seed every item's seed derives from)."""
    return {
        "program": {
            "path": file,
            "sha256": file_sha256(file) if file else None,
            "plan_sha256": hashlib.sha256(P.encode(plan)).hexdigest(),
        },
        "strategy": plan.entry,
        "args": {k: v for k, v in sorted(args.items())},
        "backend": info.name if info else None,
        "model": info.model if info else None,
        "engine": info.engine if info else None,
        "url": info.url if info else None,
        "seed": seed,
        "ttcdsl": ttcdsl_version(),
        "python": platform.python_version(),
    }
