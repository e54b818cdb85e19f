"""Every error the simulator raises on purpose, in one tree.

    SimError               base: a one-line message meant for whoever set the simulator up
    ├── TaskError          a task file that cannot be read or does not validate
    ├── ConfigError        a bad `SimConfig`, `Latency` or `Faults` value
    ├── ServeError         the HTTP server cannot listen on the address it was given
    └── SimRequestError    the engine refuses one generation request; ``status`` is the HTTP
                           status SGLang would answer (400 unless said otherwise)

The simulator is a package of its own: it imports nothing from ``ttcdsl``.  Callers that show
these errors to a user (``ttc sim``, ``ttc run --sim-task``, the testing kit) turn `SimError`
into their own one-line usage error with the same text.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ServeError", "SimError", "SimRequestError", "TaskError"]


class SimError(Exception):
    """Base class; ``str(exc)`` is the whole message."""


class TaskError(SimError):
    """A task file is missing, unreadable, not JSON, or breaks the format (names file and
    problem)."""


class ConfigError(SimError):
    """A configuration value out of range (names the parameter and the value)."""


class ServeError(SimError):
    """The server could not bind its address (e.g. the port is taken)."""


class SimRequestError(SimError):
    """A request the engine refuses; ``status`` is the HTTP status SGLang would answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
