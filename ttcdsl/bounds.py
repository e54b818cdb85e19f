"""Static worst-case completion tokens of every step (what `ttc plan` shows and `ttc check` warns
about).

`annotate(plan, args)` interprets each strategy abstractly with its parameters' defaults (or
`args` for the entry strategy): numbers that are known statically are computed, every branches
value is reduced to an upper bound on its size, loops are run for their full count (an `until`
may stop them earlier at run time, so it is ignored), both sides of an `if` whose condition is not
static are taken, and a call costs the callee's worst case.  Each step then gets a `Bound`:
the worst single invocation (``per_call``), how many times it can run (``calls``) and the sum over
all runs (``total``), each *before* the step's own budget caps it.  `None` means the bound depends
on something only known at run time.

`vote` and `resample` cost nothing themselves.  An anytime vote (`until`) may stop its input step
early, but that step keeps its full worst case: nothing forces an early stop.  A `resample` has
COUNT branches when COUNT is static, as many as its input when COUNT is omitted.

The unit is the backend's completion tokens.  A `sample`/`expand` without `max_tokens` is bounded
by `DEFAULT_MAX_TOKENS` per request, as the runtime enforces; a scorer costs its
`tokens_per_branch` (`ttcdsl.vocabulary.SCORERS`: `JUDGE_TOKENS` for a judge, nothing for `prm`,
`logprob` and `verifier`).  Both constants live in `ttcdsl.vocabulary` and are re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ttcdsl import plan
from ttcdsl.vocabulary import DEFAULT_MAX_TOKENS, JUDGE_TOKENS, SCORERS

__all__ = ["DEFAULT_MAX_TOKENS", "JUDGE_TOKENS", "annotate", "worst_case"]

_MAX_ITERATIONS = 10_000


class _Unknown:
    def __repr__(self) -> str:
        return "?"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class _Branches:
    size: int | None
    roots: int | None = None  # how many distinct roots (for `prune ... per root`)


class _Stop(Exception):
    """A `return` ended the strategy on this path."""


def _mul(*xs: int | None) -> int | None:
    out = 1
    for x in xs:
        if x is None:
            return None
        out *= x
    return out


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _min_budget(tokens: int | None, budget: int | None) -> int | None:
    if budget is None:
        return tokens
    return budget if tokens is None else min(tokens, budget)


class _Interp:
    def __init__(self, p: plan.Plan, record: bool) -> None:
        self.p = p
        self.record = record
        self.stats: dict[int, list[int | None]] = {}  # id -> [per_call, calls, total]
        self.unbounded_loop = 0
        self._worst_cache: dict[tuple[str, tuple[tuple[str, Any], ...]], int | None] = {}

    # ---- strategies ----

    def strategy(self, name: str, args: Mapping[str, Any]) -> int | None:
        s = self.p.strategies[name]
        self.nodes = {n.id: n for n in s.nodes}
        env: dict[str, Any] = {}
        for param in s.params:
            if param.name in args:
                env[param.name] = args[param.name]
            elif param.default is not None:
                env[param.name] = param.default
            else:
                env[param.name] = UNKNOWN
        self.env = env
        self.spent: int | None = 0
        with contextlib.suppress(_Stop):
            self.block(s.body)
        return self.spent

    def worst_of_call(self, name: str, args: Mapping[str, Any]) -> int | None:
        key = (name, tuple(sorted((k, v) for k, v in args.items() if not isinstance(v, (_Unknown, _Branches, list)))))
        if key not in self._worst_cache:
            inner = _Interp(self.p, record=False)
            inner._worst_cache = self._worst_cache
            worst = inner.strategy(name, args)
            self._worst_cache[key] = _min_budget(worst, self.p.strategies[name].budget)
        return self._worst_cache[key]

    # ---- statements ----

    def block(self, stmts: list[plan.Stmt]) -> None:
        for st in stmts:
            match st:
                case plan.Bind():
                    self.env[st.name] = self.ev(st.value)
                case plan.Return():
                    self.ev(st.value)
                    raise _Stop
                case plan.If():
                    cond = self.ev(st.cond)
                    if isinstance(cond, bool):
                        self.block(st.then if cond else st.orelse)
                        continue
                    self.fork(st.then, st.orelse)
                case plan.Repeat():
                    times = self.ev(st.times)
                    if isinstance(times, int) and not isinstance(times, bool) and times <= _MAX_ITERATIONS:
                        for _ in range(max(0, times)):
                            self.block(st.body)
                            if st.until is not None:
                                self.ev(st.until)
                    else:
                        self.unbounded_loop += 1
                        try:
                            self.block(st.body)
                        finally:
                            self.unbounded_loop -= 1
                        self.spent = None

    def fork(self, then: list[plan.Stmt], orelse: list[plan.Stmt]) -> None:
        start_env, start_spent = dict(self.env), self.spent
        results = []
        for body in (then, orelse):
            self.env, self.spent = dict(start_env), start_spent
            stopped = False
            try:
                self.block(body)
            except _Stop:
                stopped = True
            results.append((self.env, self.spent, stopped))
        (e1, s1, stop1), (e2, s2, stop2) = results
        self.spent = None if s1 is None or s2 is None else max(s1, s2)
        self.env = {k: _merge(e1.get(k, UNKNOWN), e2.get(k, UNKNOWN)) for k in set(e1) | set(e2)}
        if stop1 and stop2:
            raise _Stop

    # ---- expressions ----

    def note(self, node: plan.Node, per_call: int | None, budget: int | None) -> None:
        spent = _min_budget(per_call, budget)
        self.spent = _add(self.spent, spent)
        if not self.record:
            return
        st = self.stats.setdefault(node.id, [0, 0, 0])
        st[0] = None if st[0] is None or per_call is None else max(st[0], per_call)
        st[1] = None if st[1] is None or self.unbounded_loop else st[1] + 1
        st[2] = None if st[2] is None or self.unbounded_loop else _add(st[2], per_call)

    def ev(self, ref: plan.Ref) -> Any:
        n = self.nodes[ref.node]
        match n:
            case plan.Const():
                return n.value
            case plan.Param() | plan.Var():
                return self.env.get(n.name, UNKNOWN)
            case plan.Prompt() | plan.Compare() | plan.Logic() | plan.Vote():
                # Unknown until run time; the inputs still count for what they spend.
                for r in plan.refs(n):
                    self.ev(r)
                return UNKNOWN
            case plan.ListOf():
                return [self.ev(i) for i in n.items]
            case plan.Arith():
                return _arith(n.operator, self.ev(n.left), self.ev(n.right))
            case plan.Union():
                a, b = self.ev(n.left), self.ev(n.right)
                return _Branches(_add(_size(a), _size(b)), _add(_roots(a), _roots(b)))
            case plan.Not() | plan.Neg():
                v = self.ev(n.operand)
                if isinstance(n, plan.Neg) and isinstance(v, (int, float)):
                    return -v
                return UNKNOWN
            case plan.Builtin():
                vals = [self.ev(a) for a in n.args]
                if n.name == "best":
                    size = _size(vals[0])
                    return _Branches(1 if size is None else min(1, size))
                if n.name in ("active", "done"):
                    return _Branches(_size(vals[0]), _roots(vals[0]))
                return UNKNOWN
            case plan.Call():
                args = {k: self.ev(v) for k, v in n.args.items()}
                worst = self.worst_of_call(n.strategy.name, args)
                self.note(n, worst, n.budget)
                returns = self.p.strategies[n.strategy.name].returns
                return _Branches(None) if returns == "branches" else UNKNOWN
            case plan.Sample():
                count = _int(self.ev(n.count))
                prompt_ = self.ev(n.prompt)
                del prompt_
                self.note(n, _mul(count, self.max_tokens(n.settings)), n.budget)
                return _Branches(count, count)
            case plan.Expand():
                branches = self.ev(n.branches)
                size = _size(branches)
                count = _int(self.ev(n.count))
                self.note(n, _mul(size, count, self.max_tokens(n.settings)), n.budget)
                return _Branches(_mul(size, count), _roots(branches))
            case plan.Score():
                branches = self.ev(n.branches)
                for r in plan.refs(n.scorer):
                    self.ev(r)
                cost = _mul(_size(branches), SCORERS[n.scorer.kind].tokens_per_branch)
                self.note(n, cost, n.budget)
                return branches
            case plan.Prune():
                branches = self.ev(n.branches)
                size, roots = _size(branches), _roots(branches)
                keep = _int(self.ev(n.keep))
                cap = keep if n.per == "all" else _mul(keep, roots) if n.per == "root" else None
                if cap is not None:
                    size = cap if size is None else min(cap, size)
                return _Branches(size, roots)
            case plan.Resample():
                return self.resample(n)
        raise AssertionError(n)

    def resample(self, n: plan.Resample) -> _Branches:
        """Free; COUNT copies (or as many as the input has), each keeping its root, so there are
        at most as many roots as in the input and as copies."""
        branches = self.ev(n.branches)
        size = _size(branches) if n.count is None else _int(self.ev(n.count))
        if size is not None:
            size = max(0, size)  # a negative count fails at run time: nothing comes out
        if n.temperature is not None:
            self.ev(n.temperature)
        roots = _roots(branches)
        if roots is not None and size is not None:
            roots = min(roots, size)
        return _Branches(size, roots)

    def max_tokens(self, settings: plan.Settings) -> int | None:
        """Worst case of one fork: `max_tokens`, plus `think_max` for a thinking budget (the
        thinking phase, then at most `max_tokens` of answer)."""
        if settings.chunk is not None:
            return _int(self.ev(settings.chunk))
        answer = DEFAULT_MAX_TOKENS if settings.max_tokens is None else _int(self.ev(settings.max_tokens))
        if settings.think_max is None:
            return answer
        think = _int(self.ev(settings.think_max))
        return None if answer is None or think is None else answer + think


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _size(v: Any) -> int | None:
    return v.size if isinstance(v, _Branches) else None


def _roots(v: Any) -> int | None:
    return v.roots if isinstance(v, _Branches) else None


def _arith(op: str, a: Any, b: Any) -> Any:
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return UNKNOWN
    if isinstance(a, bool) or isinstance(b, bool):
        return UNKNOWN
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a // b if isinstance(a, int) and isinstance(b, int) else a / b
        if op == "%":
            return a % b
    except ZeroDivisionError:
        return UNKNOWN
    return UNKNOWN


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, _Branches) and isinstance(b, _Branches):
        size = None if a.size is None or b.size is None else max(a.size, b.size)
        roots = None if a.roots is None or b.roots is None else max(a.roots, b.roots)
        return _Branches(size, roots)
    if isinstance(a, _Unknown) or isinstance(b, _Unknown):
        return UNKNOWN
    return a if a == b and type(a) is type(b) else UNKNOWN


def worst_case(p: plan.Plan, name: str, args: Mapping[str, Any] | None = None) -> int | None:
    """Static worst-case completion tokens of one call of strategy `name` (before its budget)."""
    return _Interp(p, record=False).strategy(name, args or {})


def annotate(p: plan.Plan, args: Mapping[str, Any]) -> plan.Plan:
    """Stage 4: return `p` with `bound` filled in on every `Budgeted` step and `worst` on every
    strategy.  `args` are values (already of their parameters' types) for the entry strategy's
    parameters; every other parameter counts with its default, or as unknown.  Pure."""
    strategies: dict[str, plan.StrategyPlan] = {}
    for name, s in p.strategies.items():
        interp = _Interp(p, record=True)
        worst = interp.strategy(name, args if name == p.entry else {})
        nodes: list[plan.Node] = []
        for node in s.nodes:
            if isinstance(node, plan.Budgeted):
                st = interp.stats.get(node.id)
                bound = plan.Bound(st[0], st[1], st[2]) if st else plan.Bound(0, 0, 0)
                node = msgspec.structs.replace(node, bound=bound)
            nodes.append(node)
        strategies[name] = msgspec.structs.replace(s, nodes=nodes, worst=worst)
    return msgspec.structs.replace(p, strategies=strategies)
