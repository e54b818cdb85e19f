"""The front half as one pipeline: `.ttc` source -> `Plan` plus warnings.

`compile_source` runs the five stages in order; each is a pure function in its own module whose
docstring states its contract:

    loads            text -> Program       parse the file and its imports (ttcdsl.program)
    check            Program -> Checked    names, types, budgets; every error (ttcdsl.check)
    lower            Checked -> Plan       the plan graph, bounds not yet set (ttcdsl.lower)
    annotate         Plan -> Plan          static worst-case tokens per step (ttcdsl.bounds)
    budget_warnings  Plan -> warnings      worst cases above budgets (ttcdsl.budget_warnings);
                                           a worst case no budget can hold is an error

Errors come out as raised: `TTCSyntaxError` (first syntax error), `CheckErrors` (all semantic
errors), `UsageError` (unreadable file, unknown entry, bad argument value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttcdsl import plan as P
from ttcdsl.args import bind_known
from ttcdsl.bounds import annotate
from ttcdsl.budget_warnings import absurd_steps, budget_warnings
from ttcdsl.check import check
from ttcdsl.errors import CheckErrors, CheckWarning, NodeFailed
from ttcdsl.lower import lower
from ttcdsl.program import Program, loads, read_source

__all__ = ["Compiled", "compile_file", "compile_source"]


@dataclass
class Compiled:
    """A compiled program: the plan to run, the warnings to show, and the `Program` (its source
    texts let a run failure show its `.ttc` line: `locate`)."""

    program: Program
    plan: P.Plan
    warnings: list[CheckWarning]

    def locate(self, exc: NodeFailed) -> NodeFailed:
        """`exc` with the source text of the file it names, so `render()` shows line and caret."""
        if exc.span is not None:
            exc.source = self.program.source_of(exc.span.file)
        return exc


def compile_source(text: str, file: str = "<string>", entry: str | None = None,
                   args: Mapping[str, Any] | None = None, base: Path | None = None) -> Compiled:
    """Compile `text` (named `file`; imports resolve relative to `base`).  `entry` picks the
    strategy a run starts with (default: the last one of the file); `args` are values for its
    parameters (strings from a command line or typed values), used only by the static bounds."""
    program = loads(text, file, base)
    checked = check(program)
    plan = lower(checked, entry)
    plan = annotate(plan, bind_known(plan.strategy(), args or {}))
    absurd = absurd_steps(plan, program.sources)
    if absurd:
        raise CheckErrors(absurd)
    warnings = budget_warnings(plan, program.sources)
    return Compiled(program, plan, warnings)


def compile_file(path: str | Path, entry: str | None = None,
                 args: Mapping[str, Any] | None = None) -> Compiled:
    """`compile_source` of a file; its imports resolve relative to its folder."""
    return compile_source(read_source(path), str(path), entry, args, base=Path(path).parent)
