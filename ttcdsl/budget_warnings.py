"""Stage 5: budget warnings, what `ttc check` prints after a program compiles.

`budget_warnings(plan, sources)` compares each static worst case (set by `ttcdsl.bounds`) with
the budget written beside it and returns one `CheckWarning` for every step or strategy whose
worst case may exceed its budget, sorted by position.  A warning never stops a program: the
runtime splits or cuts what does not fit (a partial result, flagged), so these only say where
that can happen.  Pure.

`absurd_steps(plan, sources)` is the one case that is an error, not a warning: a step whose
static worst case is more tokens than any budget can be written as (`MAX_BUDGET`), such as
`sample 100000000000000000 from p`.  No budget could ever let it run as written, so `ttc check`
refuses it at its place instead of leaving a run to cut it down.
"""

from __future__ import annotations

from collections.abc import Mapping

from ttcdsl import plan as P
from ttcdsl.errors import CheckError, CheckWarning
from ttcdsl.parse import MAX_INT_DIGITS

__all__ = ["MAX_BUDGET", "absurd_steps", "budget_warnings"]

# The largest budget a program can write (the longest integer literal the parser reads).
MAX_BUDGET = 10**MAX_INT_DIGITS - 1


def absurd_steps(plan: P.Plan, sources: Mapping[str, str]) -> list[CheckError]:
    """Steps of an annotated `plan` whose static worst case no budget can hold."""
    out: list[CheckError] = []
    for s in plan.strategies.values():
        for n in s.nodes:
            if isinstance(n, P.Budgeted) and n.bound is not None and n.bound.total is not None \
                    and n.bound.total > MAX_BUDGET:
                out.append(CheckError(
                    f"the worst case of this {n.op} is {n.bound.total} tokens, more than any "
                    f"budget can hold (at most {MAX_BUDGET}); lower its counts",
                    n.span, sources.get(n.span.file)))
    out.sort(key=lambda e: (e.span.file, e.span.line, e.span.col))
    return out


def budget_warnings(plan: P.Plan, sources: Mapping[str, str]) -> list[CheckWarning]:
    """Steps and strategies of an annotated `plan` whose worst case exceeds their budget;
    `sources` (file -> text) lets each warning show its line."""
    out: list[CheckWarning] = []
    for s in plan.strategies.values():
        src = sources.get(s.span.file)
        for n in s.nodes:
            if isinstance(n, P.Budgeted):
                message = _step_warning(n)
                if message is not None:
                    out.append(CheckWarning(message, n.span, src))
        if s.budget is not None and (s.worst is None or s.worst > s.budget):
            worst = "unbounded" if s.worst is None else f"{s.worst} tokens"
            out.append(CheckWarning(
                f"worst case of strategy '{s.name}' is {worst}, above its budget of {s.budget} "
                "tokens: a run may end early with a partial result", s.span, src))
    out.sort(key=lambda w: (w.span.file, w.span.line, w.span.col))
    return out


def _step_warning(n: P.Budgeted) -> str | None:
    if n.bound is None or n.budget is None:
        return None
    if n.bound.per_call is None:
        return f"{n.op} has budget {n.budget} but its worst case is only known at run time"
    if n.bound.per_call <= n.budget:
        return None
    effect = (
        "the callee may end early with a partial result" if isinstance(n, P.Call)
        else "its requests will share the budget fairly and may be cut short"
    )
    return (f"worst case of this {n.op} is {n.bound.per_call} tokens per call, above its "
            f"budget of {n.budget}: {effect}")
