"""Deadlines and signals for one `ttc` command, enforced even when the work never yields.

The runtime keeps its own deadline (`anyio.fail_after` around a run) and ends on Ctrl-C through
the event loop; both need the running code to reach a checkpoint.  This module is the backstop
for code that does not (a CPU-bound evaluation, a hung shutdown):

* Ctrl-C (SIGINT) and SIGTERM raise `Interrupted` in the main thread at once, wherever it is;
  the CLI prints one line.
* ``timeout``: a real-time alarm `GRACE` seconds after the deadline raises `Overdue` (the
  runtime's own timeout normally fires first, with its own message).
* ``hard=True`` (the real command line, never an in-process test): once a signal or the alarm
  has fired, the process exits `GRACE` seconds later even if clean-up hangs.  Finished dataset
  lines and trace records are flushed as they are written, so nothing finished is lost.

Both exceptions derive from `KeyboardInterrupt`, so asyncio lets them through its tasks the way it
lets Ctrl-C through, and the event loop's clean-up (closing streams, aborting requests) runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from types import FrameType

__all__ = ["GRACE", "Fired", "Interrupted", "Overdue", "guard"]

# Seconds the backstop waits past a deadline, and past a signal before a hard exit.
GRACE = 1.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived; ``status`` is the conventional exit status (130 or 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.status = 128 + signum
        self.word = "terminated" if signum == signal.SIGTERM else "interrupted"


class Overdue(KeyboardInterrupt):
    """The command's deadline passed and the work did not stop on its own."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


class Fired:
    """What `guard` yields: ``what`` is the interruption once a signal or the alarm fired, so an
    error that surfaces in its wake (from another task, say) can be read as that interruption."""

    def __init__(self) -> None:
        self.what: KeyboardInterrupt | None = None


def _exit_later(status: int, line: str) -> None:
    """Exit the process in `GRACE` seconds unless it has ended by then."""

    def hard_exit() -> None:
        with contextlib.suppress(OSError):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(GRACE, hard_exit)
    timer.daemon = True
    timer.start()


def _quiet_shutdown() -> None:
    """The interrupted event loop's clean-up reports every task it finds half-done ("Task
    exception was never retrieved", "coroutine ... was never awaited"): expected after an
    interruption, and not for the user's eyes."""
    logging.getLogger("asyncio").disabled = True
    warnings.filterwarnings("ignore", category=RuntimeWarning)


@contextlib.contextmanager
def guard(timeout: float | None = None, *, hard: bool = False) -> Iterator[Fired]:
    """Install the signal handlers and the deadline alarm for the block (main thread only;
    elsewhere the block runs unguarded)."""
    state = Fired()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def first_time(status: int, line: str) -> bool:
        if state.what is not None:
            if hard:
                os._exit(status)  # a second signal: the user means it
            return False
        _quiet_shutdown()
        if hard:
            _exit_later(status, line)
        return True

    def on_signal(signum: int, frame: FrameType | None) -> None:
        exc = Interrupted(signum)
        if first_time(exc.status, f"ttc: {exc.word}"):
            state.what = exc
            raise exc

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        assert timeout is not None
        if first_time(1, f"ttc: error: the run timed out after {timeout:g} s (raise --timeout)"):
            state.what = Overdue(timeout)
            raise state.what

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    alarm = timeout is not None and math.isfinite(timeout)
    if alarm:
        assert timeout is not None
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout + GRACE)
    try:
        yield state
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)
