"""Stage 1, loading a program: a `.ttc` source and everything it imports.

`loads(text, file, base)` parses the source and, transitively, every `import "other.ttc"`
(resolved relative to the importing file, the first one relative to `base`; each file is read
once, so import cycles are harmless).  The `Program` keeps every source text, so that any later
error (at check time or at run time) can show its line.  `load(path)` does the same for a file,
which `read_source(path)` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ttcdsl import ast
from ttcdsl.errors import CheckError, CheckErrors, UsageError
from ttcdsl.parse import parse

__all__ = ["Program", "load", "loads", "read_source"]


@dataclass
class Program:
    """All modules of one program; `strategies` in definition order (entry file first)."""

    main: str
    modules: dict[str, ast.Module] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def strategies(self) -> dict[str, ast.Strategy]:
        out: dict[str, ast.Strategy] = {}
        for module in self.modules.values():
            for s in module.strategies:
                out.setdefault(s.name, s)
        return out

    @property
    def main_strategies(self) -> list[ast.Strategy]:
        return list(self.modules[self.main].strategies)

    def source_of(self, file: str) -> str | None:
        return self.sources.get(file)


def read_source(path: str | Path) -> str:
    """The text of a main `.ttc` file; `UsageError` when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})") from None


def load(path: str | Path) -> Program:
    """`loads` of the file at `path`, its imports relative to its folder; `UsageError` when the
    file cannot be read."""
    return loads(read_source(path), str(path), base=Path(path).parent)


def loads(text: str, file: str = "<string>", base: Path | None = None) -> Program:
    """Parse `text` (named `file`) and its imports, which resolve relative to `base` (default:
    the current directory).  Raises `TTCSyntaxError` at the first syntax error of any file and
    `CheckErrors` for imports that cannot be read."""
    program = Program(main=file)
    _add(program, text, file, base or Path.cwd())
    return program


def _add(program: Program, text: str, file: str, base: Path) -> None:
    program.sources[file] = text
    module = parse(text, file)
    program.modules[file] = module
    errors: list[CheckError] = []
    for imp in module.imports:
        target = base / imp.path
        key = str(target)
        if key in program.modules:
            continue
        try:
            sub_text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
            errors.append(
                CheckError(f"cannot import {imp.path!r}: {reason} (looked at {target})", imp.span, text)
            )
            continue
        _add(program, sub_text, key, target.parent)
    if errors:
        raise CheckErrors(errors)
