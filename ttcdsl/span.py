"""Source positions. Every AST node and every plan node carries one, so any error (at check time
or at run time) can name the `.ttc` file, line and column it came from.

One definition of a line, used by the parser's positions and by the caret renderer alike: a
line ends at ``\n`` (a ``\r`` before it belongs to the break).  Form feeds, vertical tabs, NEL,
U+2028 and U+2029 are characters inside a line, not line breaks (`str.splitlines` would break
there and show the wrong line).  Columns count characters from the start of the line."""

from __future__ import annotations

import msgspec

__all__ = ["NO_SPAN", "Span", "source_lines"]


class Span(msgspec.Struct, frozen=True, array_like=True):
    """A region of a source file; lines and columns are 1-based, the end is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NO_SPAN = Span("<none>", 0, 0, 0, 0)


def source_lines(text: str) -> list[str]:
    """The lines of a source, as positions count them (see the module doc)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
