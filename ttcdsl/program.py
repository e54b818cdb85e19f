"""Stage 1, loading a program: a `.ttc` source and everything it imports.

`loads(text, file, base)` parses the source and, transitively, every `import "other.ttc"`
(resolved relative to the importing file, the first one relative to `base`; each file is read
once, so import cycles are harmless).  The `Program` keeps every source text, so that any later
error (at check time or at run time) can show its line.  `load(path)` does the same for a file,
which `read_source(path)` reads.  Only regular files of UTF-8 text are read (an import must
also name a `.ttc` file): a device, a directory or another kind of file is refused by name, and
its content is never shown.
"""

from __future__ import annotations

import stat
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
    problem, text = _read(Path(path))
    if text is None:
        raise UsageError(f"{path}: {problem}")
    return text


# Larger source files than this are refused (a real program is a few kilobytes).
MAX_SOURCE_BYTES = 4 * 1024 * 1024


def _read(path: Path) -> tuple[str, str | None]:
    """(why not, None) or ("", the text): only a regular file of UTF-8 text is a source."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "no such file", None
    except ValueError:  # a NUL byte in the path
        return "not a valid file name (it contains a NUL byte)", None
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})", None
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a .ttc file", None
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file; expected a .ttc file", None
    if info.st_size > MAX_SOURCE_BYTES:
        return f"too large for a .ttc file ({info.st_size} bytes)", None
    try:
        return "", path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}); expected a .ttc file", None
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})", None


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
    """Parse `file` and every file it imports, transitively: a work list, not recursion, so an
    import chain of any depth is fine."""
    pending = [(text, file, base)]
    while pending:
        text, file, base = pending.pop()
        program.sources[file] = text
        module = parse(text, file)
        program.modules[file] = module
        errors: list[CheckError] = []
        found: list[tuple[str, str, Path]] = []
        for imp in module.imports:
            target = base / imp.path
            key = str(target)
            if key in program.modules or any(key == p[1] for p in pending):
                continue
            if not imp.path.endswith(".ttc"):
                problem, sub_text = "expected a .ttc file", None
            else:
                problem, sub_text = _read(target)
            if sub_text is None:
                shown = key.replace("\0", "\\0")
                errors.append(CheckError(
                    f"cannot import {imp.path!r}: {problem} (looked at {shown})", imp.span, text))
                continue
            found.append((sub_text, key, target.parent))
        if errors:
            raise CheckErrors(errors)
        pending.extend(reversed(found))  # first import next: the order of a depth-first walk
