"""Source positions. Every AST node and every plan node carries one, so any error (at check time
or at run time) can name the `.ttc` file, line and column it came from."""

from __future__ import annotations

import msgspec

__all__ = ["NO_SPAN", "Span"]


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
