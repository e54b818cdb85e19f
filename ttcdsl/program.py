"""Loading a program: a `.ttc` file and everything it imports.

`load(path)` reads and parses the file and, transitively, every `import "other.ttc"` (resolved
relative to the importing file; each file is read once, so import cycles are harmless).  The
result keeps every source text so that any later error can show its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ttcdsl import ast
from ttcdsl.errors import CheckError, CheckErrors, TTCSyntaxError, UsageError
from ttcdsl.parse import parse

__all__ = ["Program", "load", "loads"]


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


def load(path: str | Path) -> Program:
    """Read, parse and import.  Raises `UsageError` for an unreadable main file,
    `TTCSyntaxError` for a syntax error, `CheckErrors` for a missing import."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    return loads(text, str(path), base=p.parent)


def loads(text: str, file: str = "<string>", base: Path | None = None) -> Program:
    """Like `load` but from text; imports resolve relative to `base` (default: cwd)."""
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
        try:
            _add(program, sub_text, key, target.parent)
        except TTCSyntaxError:
            raise
    if errors:
        raise CheckErrors(errors)
