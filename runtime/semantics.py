"""What values mean at run time, as pure functions the executor calls.

`interpolate` turns any value into prompt text (branches: their best branch's text; answers:
their value) and `fill` a prompt's parts into text; `arith` and `compare` give the operators their
meaning (`/` on two ints is floor division; division by zero fails the node); `builtin` gives the
builtins theirs; `const`, `unbound` and `repeat_count` read constants, report a name read before
it was bound, and check a loop count; `apply` appends one generation to its branch and
decides whether the branch is finished (a matched `step` string leaves it open, and so does the
length limit of a `chunk`; a stop string, EOS, the length limit or a budget cut closes it); `p_yes` reads a judge's one-token verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.backend import GenResult
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.values import Answer, Branch, Branches

__all__ = [
    "UNBOUNDED_BUDGET_LEFT",
    "apply",
    "arith",
    "builtin",
    "compare",
    "const",
    "fill",
    "interpolate",
    "p_yes",
    "repeat_count",
    "unbound",
]

# What `budget_left()` says when no level of the budget tree has a cap.
UNBOUNDED_BUDGET_LEFT = 2**31 - 1


def interpolate(value: Any) -> str:
    if isinstance(value, Branches):
        top = agg.best(value.items)
        return top.text if top is not None else ""
    if isinstance(value, Answer):
        return value.value or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def fill(parts: Sequence[str | P.Ref], values: Iterable[Any]) -> str:
    """A prompt's text: its literal parts, and the values of its references interpolated."""
    it = iter(values)
    return "".join(p if isinstance(p, str) else interpolate(next(it)) for p in parts)


def const(n: P.Const) -> Any:
    """A constant's value (a fresh list, so no step can change the plan's)."""
    return list(n.value) if isinstance(n.value, list) else n.value


def unbound(n: P.Param | P.Var) -> NodeFailed:
    return NodeFailed(f"'{n.name}' has no value here (was the loop or branch that binds it skipped?)", n.span)


def repeat_count(times: Any, st: P.Repeat) -> int:
    """The number of passes of a `repeat` (a negative count runs none)."""
    if not isinstance(times, int) or isinstance(times, bool):
        raise NodeFailed(f"repeat count must be an int, got {times!r}", st.span)
    return max(0, times)


def builtin(name: str, args: list[Any], budget: Budget) -> Any:
    """The value of builtin `name` applied to evaluated `args` in a frame with `budget`."""
    match name:
        case "best":
            top = agg.best(args[0].items)
            return Branches([top] if top is not None else [])
        case "active":
            return Branches([b for b in args[0].items if not b.finished])
        case "done":
            return Branches([b for b in args[0].items if b.finished])
        case "size":
            return len(args[0].items)
        case "finished":
            return all(b.finished for b in args[0].items)
        case "agreement":
            return float(args[0].agreement)
        case "best_score":
            scores = [b.score for b in args[0].items if b.score is not None]
            return max(scores) if scores else 0.0
        case "budget_left":
            left = budget.available()
            return UNBOUNDED_BUDGET_LEFT if left is None else left
    raise AssertionError(name)


def budget_tokens(value: Any, s: P.StrategyPlan) -> int:
    """The value of a strategy's `budget EXPR tokens`, checked: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NodeFailed(f"strategy '{s.name}': its budget must come out as at least 1 token, got {value!r}",
                         s.span)
    return value


def arith(n: P.Arith, a: Any, b: Any) -> Any:
    try:
        match n.operator:
            case "+":
                return a + b
            case "-":
                return a - b
            case "*":
                return a * b
            case "/":
                return a // b if isinstance(a, int) and isinstance(b, int) else a / b
            case "%":
                return a % b
    except ZeroDivisionError:
        raise NodeFailed(f"division by zero in {a!r} {n.operator} {b!r}", n.span) from None
    raise AssertionError(n.operator)


def compare(op: str, a: Any, b: Any) -> bool:
    match op:
        case "==":
            return bool(a == b)
        case "!=":
            return bool(a != b)
        case "<":
            return bool(a < b)
        case "<=":
            return bool(a <= b)
        case ">":
            return bool(a > b)
        case ">=":
            return bool(a >= b)
    raise AssertionError(op)


def apply(branch: Branch, r: GenResult, budget_cut: bool, stops: list[str], step: str | None,
          chunk: bool = False) -> None:
    """Append a generation to its branch and decide whether the branch is finished (``chunk``:
    reaching the request's own length limit leaves it open)."""
    text = r.text
    branch.ids.extend(r.output_ids)
    if r.logprobs is not None:
        branch.logprob = (branch.logprob or 0.0) + sum(r.logprobs)
        branch.n_tokens += len(r.logprobs)
    if chunk and r.finish == "length" and not budget_cut:
        branch.steps.append(text)
        return
    if r.finish == "stop" and isinstance(r.matched, str):
        if step is not None and r.matched == step and r.matched not in stops:
            branch.steps.append(text)
            return
        if text.endswith(r.matched):
            text = text[: len(text) - len(r.matched)]
        branch.steps.append(text)
        branch.finished, branch.finish_reason = True, "stop"
        return
    branch.steps.append(text)
    branch.finished = True
    if r.finish == "length":
        branch.finish_reason = "budget" if budget_cut else "length"
    elif r.finish == "stop":
        branch.finish_reason = "eos" if isinstance(r.matched, int) else "stop"
    else:
        branch.finish_reason = r.finish


def p_yes(r: GenResult) -> float:
    """P(yes) of a judge's one-token verdict, normalised against P(no)."""
    yes = no = 0.0
    for alternatives in (r.top_logprobs or [])[:1]:
        for token, lp in alternatives.items():
            word = token.strip().lower()
            if math.isnan(lp) or word not in ("yes", "no"):
                continue
            # A log probability is at most 0; a server's larger one must not overflow `exp`.
            p = math.exp(min(lp, 0.0))
            if word == "yes":
                yes += p
            else:
                no += p
    if yes + no > 0:
        return yes / (yes + no)
    return 1.0 if r.text.strip().lower().startswith("yes") else 0.0
