"""The whole front half as one pipeline: source -> parse -> check -> lower -> Plan.

    program = load(path)          # parse the file and its imports   (ttcdsl.program, ttcdsl.parse)
    checked = check(program)      # names, types, budgets; all errors (ttcdsl.check)
    plan    = lower(checked, ...) # plan graph + static bounds         (ttcdsl.lower, ttcdsl.bounds)

`compile_file` returns the plan and the warnings (`CheckWarning`: a step or strategy whose static
worst case exceeds its budget, so the runtime will split or cut it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttcdsl import plan as P
from ttcdsl.check import check
from ttcdsl.errors import CheckWarning
from ttcdsl.lower import lower
from ttcdsl.program import Program, load, loads

__all__ = ["Compiled", "compile_file", "compile_source", "warnings"]


@dataclass
class Compiled:
    program: Program
    plan: P.Plan
    warnings: list[CheckWarning]


def compile_file(path: str | Path, entry: str | None = None, args: Mapping[str, Any] | None = None) -> Compiled:
    return _compile(load(path), entry, args)


def compile_source(text: str, file: str = "<string>", entry: str | None = None,
                   args: Mapping[str, Any] | None = None, base: Path | None = None) -> Compiled:
    return _compile(loads(text, file, base), entry, args)


def _compile(program: Program, entry: str | None, args: Mapping[str, Any] | None) -> Compiled:
    plan = lower(check(program), entry, args)
    return Compiled(program, plan, warnings(plan, program))


def warnings(plan: P.Plan, program: Program) -> list[CheckWarning]:
    """Steps and strategies whose static worst case exceeds their budget."""
    out: list[CheckWarning] = []
    for s in plan.strategies.values():
        src = program.source_of(s.span.file)
        for n in s.nodes:
            bound = getattr(n, "bound", None)
            budget = getattr(n, "budget", None)
            if bound is None or budget is None:
                continue
            if bound.per_call is None:
                out.append(CheckWarning(
                    f"{n.__class__.__name__.lower()} has budget {budget} but its worst case is "
                    "only known at run time", n.span, src))
            elif bound.per_call > budget:
                op = n.__class__.__name__.lower()
                effect = (
                    "the callee may end early with a partial result" if op == "call"
                    else "its requests will share the budget fairly and may be cut short"
                )
                out.append(CheckWarning(
                    f"worst case of this {op} is {bound.per_call} tokens per call, above its "
                    f"budget of {budget}: {effect}", n.span, src))
        if s.budget is not None and (s.worst is None or s.worst > s.budget):
            worst = "unbounded" if s.worst is None else f"{s.worst} tokens"
            out.append(CheckWarning(
                f"worst case of strategy '{s.name}' is {worst}, above its budget of {s.budget} "
                "tokens: a run may end early with a partial result", s.span, src))
    out.sort(key=lambda w: (w.span.file, w.span.line, w.span.col))
    return out
