"""Every error ttcdsl raises on purpose, in one tree.

    TTCError                      base: anything the user can act on; never shown as a traceback
    ├── SourceError               points at a place in a .ttc file (file, line, column, caret)
    │   ├── TTCSyntaxError        the parser stopped at the first thing it could not read
    │   └── CheckError            one semantic error; `CheckErrors` carries all of them
    ├── CheckErrors               every semantic error of a program, reported together
    ├── UsageError                a bad command-line argument, argument value or input file
    ├── RunError                  the runtime could not finish a node
    │   └── NodeFailed            a node failed permanently; shows its .ttc line like a SourceError
    └── BackendError              a model server or model misbehaved
        ├── BackendUnavailable    start-up failed: says what was tried and how to fix it
        ├── TransientBackendError worth retrying (connection reset, 429, 502, 503)
        └── ProtocolViolation     the backend broke its contract (e.g. more tokens than allowed)

Running out of budget is *not* an error: it is a normal, flagged outcome of a run.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttcdsl.span import Span, source_lines

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CheckError",
    "CheckErrors",
    "CheckWarning",
    "NodeFailed",
    "ProtocolViolation",
    "RunError",
    "SourceError",
    "TTCError",
    "TTCSyntaxError",
    "TransientBackendError",
    "UsageError",
]


class TTCError(Exception):
    """Base class: a message meant for the user, rendered by `render()`."""

    def render(self) -> str:
        return f"error: {self}"


class SourceError(TTCError):
    """An error at a place in a source file."""

    severity = "error"

    def __init__(self, message: str, span: Span, source: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source

    def render(self) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, then the source line and a caret under the column."""
        return _render_at(self.span, self.source, self.severity, self.message)


def _render_at(span: Span, source: str | None, severity: str, message: str) -> str:
    """How every error with a place is shown: `FILE:LINE:COL: SEVERITY: MESSAGE`, then (when the
    source text is known) the line, indented, and carets under the span's part of it.  Lines are
    `source_lines`; characters that would move the caret (tabs, other control characters) are
    shown as spaces, and a very long line is cut to a window around the column."""
    head = f"{span}: {severity}: {message}"
    if source is None:
        return head
    lines = source_lines(source)
    if not 1 <= span.line <= len(lines):
        return head
    text = "".join(" " if not ch.isprintable() else ch for ch in lines[span.line - 1])
    col = min(max(1, span.col), len(text) + 1)
    width = 1
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    width = max(1, min(width, len(text) - col + 1))
    start = max(0, col - 1 - _WINDOW // 2) if len(text) > _WINDOW else 0
    shown = text[start : start + _WINDOW]
    lead, tail = ("..." if start else ""), ("..." if start + _WINDOW < len(text) else "")
    width = min(width, len(shown) - (col - 1 - start))
    caret = " " * (len(lead) + col - 1 - start) + "^" * max(1, width)
    return f"{head}\n    {lead}{shown}{tail}\n    {caret}"


# The most characters of a source line an error shows.
_WINDOW = 120


class TTCSyntaxError(SourceError):
    """The program could not be parsed; syntax errors stop at the first one."""


class CheckError(SourceError):
    """One semantic error found by the checker."""


class CheckWarning(SourceError):
    """A finding that does not stop the program (e.g. a worst case above a budget)."""

    severity = "warning"


class CheckErrors(TTCError):
    """All semantic errors of a program, in source order."""

    def __init__(self, errors: Sequence[CheckError]) -> None:
        self.errors = list(errors)
        first = self.errors[0].message if self.errors else "no errors"
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(first + more)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class UsageError(TTCError):
    """A bad argument, value or input file given to the CLI or the API."""


class RunError(TTCError):
    """The runtime could not complete."""


class NodeFailed(RunError):
    """A plan node failed permanently.  `span` is the node's place in the `.ttc` source.

    `str()` is one line, `FILE:LINE:COL: MESSAGE` (what dataset mode records per failed item);
    `render()` is the form `ttc check` uses for its errors, with the source line and a caret
    once `source` is set (the CLI sets it from the compiled program: `Compiled.locate`)."""

    def __init__(self, message: str, span: Span | None = None, source: str | None = None) -> None:
        super().__init__(f"{span}: {message}" if span is not None else message)
        self.message = message
        self.span = span
        self.source = source

    def render(self) -> str:
        if self.span is None:
            return f"error: {self.message}"
        return _render_at(self.span, self.source, "error", self.message)


class BackendError(TTCError):
    """The model server or the embedded model misbehaved."""


class BackendUnavailable(BackendError):
    """A backend could not start: the message says what was tried and how to fix it."""


class TransientBackendError(BackendError):
    """A failure worth retrying with backoff."""


class ProtocolViolation(BackendError):
    """The backend broke its contract, e.g. returned more tokens than it was allowed."""
