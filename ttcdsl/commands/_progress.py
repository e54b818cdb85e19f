"""The progress bar of long `ttc` commands (dataset mode of `ttc run`, `ttc bench`).

One rich bar: a description, the bar, ``done/total``, an optional note (e.g. the accuracy so
far), elapsed time and ETA.  It draws on the console it is given (the commands give stderr) and
only when that console is a terminal.  Elsewhere (pipes, files, CI logs) it draws nothing and
instead prints one plain line, ``description: done/total note elapsed``, at most every
``PLAIN_EVERY_S`` seconds while work advances (none for a run shorter than that), so no control
codes reach a log yet a long run still shows where it is.  Messages printed on the same console
while the bar runs appear above it.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["PLAIN_EVERY_S", "ProgressBar"]

PLAIN_EVERY_S = 5.0


class ProgressBar:
    """``with ProgressBar(console, "label", total) as bar: ... bar.advance()``.

    ``transient=True`` removes the bar when the block ends (for commands that print a table
    after it); otherwise its last state stays on screen."""

    def __init__(self, console: Console, description: str, total: int, *,
                 transient: bool = False) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(),
            console=console, transient=transient, disable=not console.is_terminal,
        )
        self._task: TaskID = self._progress.add_task(escape(description), total=total, note="")
        self._console = console
        self._t0 = self._last = time.monotonic()
        self._plain: dict[str, Any] = {"description": description, "done": 0, "total": total, "note": ""}

    @property
    def shown(self) -> bool:
        """Whether the bar is drawn (the console is a terminal)."""
        return not self._progress.disable

    def advance(self, steps: int = 1) -> None:
        self._progress.advance(self._task, steps)
        self._plain["done"] = int(self._plain["done"]) + steps
        self._tick()

    def update(self, *, completed: int | None = None, description: str | None = None,
               note: str | None = None) -> None:
        """Set how many are done, the label (plain text) or the note (plain text)."""
        fields: dict[str, Any] = {} if note is None else {"note": escape(note)}
        self._progress.update(
            self._task, completed=completed,
            description=None if description is None else escape(description), **fields,
        )
        changes = {"done": completed, "description": description, "note": note}
        self._plain.update({k: v for k, v in changes.items() if v is not None})
        self._tick()

    def _tick(self) -> None:
        """Off a terminal: the plain progress line, when `PLAIN_EVERY_S` passed since the last."""
        now = time.monotonic()
        if self.shown or now - self._last < PLAIN_EVERY_S:
            return
        self._last = now
        p = self._plain
        note = f" {p['note']}" if p["note"] else ""
        self._console.print(f"{p['description']}: {p['done']}/{p['total']}{note} {now - self._t0:.0f} s",
                            markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()
