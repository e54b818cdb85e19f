"""`HarnessError`: a harness input that cannot be used, worded by whoever shows it.

A harness knows its inputs by role (the input file, the output file, the sweep...), not by the
flag or parameter a front end used to pass them.  So each message is a template over the names
of those roles (the keys of `WORDS`) and the facts of the case: ``str()`` fills the roles with
plain words, and a front end fills them with its own names through `HarnessError.in_terms`
(`ttc` names its flags, so its users read ``--input data.jsonl: no such file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ttcdsl.errors import UsageError

__all__ = ["WORDS", "HarnessError"]

# The roles a harness message may name, in plain words (the template keys).
WORDS: Mapping[str, str] = {
    "input": "the input file",
    "input_line": "the input file, line",
    "output": "the output file",
    "resume": "resume=True",
    "arg": "the argument",
    "sweep": "the sweep",
    "repeats": "repeats",
    "json": "the bench JSON",
}


class HarnessError(UsageError):
    """A bad dataset, output file, sweep or argument given to a harness (never a traceback).

    ``template`` uses ``{role}`` for the names in `WORDS` and ``{fact}`` for the keyword
    arguments; facts are substituted as values, so they may contain any text."""

    def __init__(self, template: str, **facts: Any) -> None:
        self.template = template
        self.facts = facts
        super().__init__(self.in_terms(WORDS))

    def in_terms(self, names: Mapping[str, str]) -> str:
        """The message with the roles called by ``names`` (every role the template uses)."""
        return self.template.format_map({**names, **self.facts})
