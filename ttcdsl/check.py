"""Stage 2: semantic checks of a parsed `Program`.

`check(program)` is pure: it returns a `Checked` (the type of every expression, each strategy's
return type and a topological order of strategies, callees first) or raises `CheckErrors` with
*all* problems found, in source order.  It checks names (parameters, bindings, interpolations,
strategies, builtins), types (e.g. `vote` needs branches, `expand` cannot take an answer),
sampling keys and values, literal counts, thresholds, temperatures and budgets, regex patterns,
that an anytime vote reads a `sample`/`expand` written right there, calls between strategies
(arguments, recursion) and that every strategy returns a value.  Builtin signatures and sampling
keys (types, ranges) come from `ttcdsl.vocabulary`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ttcdsl import ast
from ttcdsl.errors import CheckError, CheckErrors
from ttcdsl.program import Program
from ttcdsl.span import Span
from ttcdsl.vocabulary import BUILTINS, JUDGE_BRANCH, NUMERIC, SAMPLING_KEYS, SCORERS, THINK_KEYS

__all__ = ["Checked", "check"]

_ERR = "error"  # the type of an expression that already failed; suppresses follow-up errors

_ANYTIME_INPUT = (
    "an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can "
    "stop them as they finish; write `sample ... | vote ... until ...`"
)


@dataclass
class Checked:
    """What later stages need from the checker."""

    program: Program
    types: dict[int, str] = field(default_factory=dict)  # id(expr) -> type
    returns: dict[str, str] = field(default_factory=dict)  # strategy -> return type
    order: list[str] = field(default_factory=list)  # callees before callers

    def type_of(self, expr: ast.Expr) -> str:
        return self.types.get(id(expr), _ERR)


def check(program: Program) -> Checked:
    """Check every strategy of `program`; raise `CheckErrors` listing every problem."""
    return _Checker(program).run()


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _article(type_: str) -> str:
    return {"int": "an int", "answer": "an answer", "branches": "branches"}.get(type_, f"a {type_}")


class _Checker:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.errors: list[CheckError] = []
        self.result = Checked(program)
        self.strategies = program.strategies
        self.file = program.main

    # ---- reporting ----

    def error(self, message: str, span: Span) -> None:
        self.errors.append(CheckError(message, span, self.program.source_of(span.file)))

    # ---- driver ----

    def run(self) -> Checked:
        self._duplicates()
        order, cyclic = self._call_order()
        self.result.order = order
        for name in order:
            strategy = self.strategies[name]
            self.result.returns[name] = _ERR if name in cyclic else "pending"
            self._strategy(strategy)
        if not self.program.main_strategies:
            self.error(
                "this file defines no strategy; expected `strategy NAME(PARAMS) { ... }`",
                Span(self.program.main, 1, 1, 1, 2),
            )
        if self.errors:
            self.errors.sort(key=lambda e: (e.span.file != self.program.main, e.span.file, e.span.line, e.span.col))
            raise CheckErrors(self.errors)
        return self.result

    def _duplicates(self) -> None:
        seen: dict[str, ast.Strategy] = {}
        for module in self.program.modules.values():
            for s in module.strategies:
                if s.name in seen and seen[s.name] is not s:
                    first = seen[s.name].span
                    self.error(
                        f"strategy '{s.name}' is already defined at {first.file}:{first.line}",
                        s.span,
                    )
                seen.setdefault(s.name, s)

    def _call_order(self) -> tuple[list[str], set[str]]:
        """Strategies in dependency order; report each cycle once, naming it."""
        graph = {name: _called(s, self.strategies) for name, s in self.strategies.items()}
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        cyclic: set[str] = set()
        stack: list[str] = []
        depth: dict[str, int] = {}  # the longest chain of calls starting at a strategy
        too_deep: list[str] = []

        def refuse(name: str, callee: str, span: Span) -> None:
            # Deeper chains are refused (the later stages recurse along them), once.
            cyclic.update((*stack, callee))
            if not too_deep:
                too_deep.append(callee)
                self.error(
                    f"strategy calls nest more than {MAX_CALL_DEPTH} deep from here "
                    f"({name} -> {callee} -> ...); flatten the chain into fewer strategies",
                    span,
                )

        def visit(name: str) -> None:
            state[name] = 1
            stack.append(name)
            depth[name] = 1
            for callee, span in graph[name]:
                if len(stack) >= MAX_CALL_DEPTH and callee not in state:
                    refuse(name, callee, span)
                    continue
                if state.get(callee) == 2:
                    depth[name] = max(depth[name], depth[callee] + 1)
                    if depth[name] > MAX_CALL_DEPTH:
                        refuse(name, callee, span)
                if state.get(callee) == 1:
                    cycle = [*stack[stack.index(callee) :], callee]
                    cyclic.update(cycle)
                    if len(cycle) == 2:
                        msg = f"strategy '{callee}' calls itself; recursion is not allowed"
                    else:
                        msg = "recursion between strategies is not allowed: " + " -> ".join(cycle)
                    self.error(msg, span)
                elif callee not in state:
                    visit(callee)
                    depth[name] = max(depth[name], depth[callee] + 1)
            stack.pop()
            state[name] = 2
            order.append(name)

        for name in self.strategies:
            if name not in state:
                visit(name)
        return order, cyclic

    # ---- strategies and statements ----

    def _strategy(self, s: ast.Strategy) -> None:
        scope: dict[str, str] = {}
        seen_default = False
        for p in s.params:
            if p.name in scope:
                self.error(f"parameter '{p.name}' is declared twice", p.span)
            scope[p.name] = p.type
            if p.default is not None:
                seen_default = True
                t = self.expr(p.default, {})
                if not isinstance(p.default, (ast.IntLit, ast.FloatLit, ast.StrLit, ast.BoolLit, ast.Neg)):
                    self.error(f"the default of '{p.name}' must be a literal value", p.default.span)
                elif t != _ERR and not _assignable(t, p.type):
                    self.error(
                        f"the default of '{p.name}' is {_article(t)}, but the parameter is {_article(p.type)}",
                        p.default.span,
                    )
                elif isinstance(p.default, ast.StrLit) and p.default.template.names:
                    self.error(f"the default of '{p.name}' cannot interpolate names", p.default.span)
            elif seen_default:
                self.error(
                    f"parameter '{p.name}' needs a default: it follows a parameter that has one",
                    p.span,
                )
        ctx = _Ctx(s, scope)
        budgets = [st for st in s.body if isinstance(st, ast.BudgetStmt)]
        for extra in budgets[1:]:
            self.error("a strategy has at most one `budget N tokens` statement", extra.span)
        self.block(s.body, ctx, top=True)
        if not _always_returns(s.body):
            self.error(
                f"strategy '{s.name}' can end without returning a value: end it with `return EXPR`",
                s.span,
            )
        types = [t for t in ctx.returns if t != _ERR]
        if len(set(types)) > 1:
            self.error(
                f"strategy '{s.name}' returns different types: {', '.join(sorted(set(types)))}",
                s.span,
            )
        if self.result.returns.get(s.name) != _ERR:
            self.result.returns[s.name] = types[0] if types else _ERR

    def block(self, stmts: Sequence[ast.Stmt], ctx: _Ctx, top: bool = False) -> None:
        returned = False
        previous: ast.Stmt | None = None
        for st in stmts:
            if returned:
                self.error("unreachable statement after `return`", st.span)
                returned = False  # report once per block
            if isinstance(st, ast.BudgetStmt) and previous is not None and previous.span.end_line == st.span.line:
                # `x = sample ... budget 100 tokens` reads as a step without a budget followed
                # by the strategy's budget statement: almost certainly not what was meant.
                self.error(
                    f"`budget {st.tokens} tokens` right after a statement is the strategy's budget, "
                    f"not the step's: a step's own budget is `budget {st.tokens}` without 'tokens' "
                    "(put the strategy budget on a line of its own)",
                    st.span,
                )
            previous = st
            if isinstance(st, ast.BudgetStmt):
                if not top:
                    self.error(
                        "`budget N tokens` belongs at the top of a strategy; "
                        "give a step its own `budget N` instead",
                        st.span,
                    )
                if st.expr is not None:
                    self.budget_expr(st.expr, ctx)
                elif st.tokens <= 0:
                    self.error("a budget must be at least 1 token", st.span)
            elif isinstance(st, ast.Assign):
                t = self.expr(st.value, ctx.scope)
                old = ctx.scope.get(st.name)
                if old is not None and t != _ERR and old != _ERR and not _assignable(t, old):
                    self.error(
                        f"'{st.name}' holds {_article(old)}; it cannot be rebound to {_article(t)}",
                        st.span,
                    )
                elif old is None:
                    ctx.scope[st.name] = t
            elif isinstance(st, ast.Repeat):
                self.expect(st.times, ctx.scope, ("int",), "a repeat count")
                self.positive_literal(st.times, "a repeat count")
                # `until` is tested before every pass, so it sees only names bound before the loop.
                if st.until is not None:
                    self.expect(st.until, ctx.scope, ("bool",), "an `until` condition")
                self.block(st.body, ctx)
            elif isinstance(st, ast.If):
                self.expect(st.cond, ctx.scope, ("bool",), "an `if` condition")
                self.block(st.then, ctx)
                self.block(st.orelse, ctx)
            elif isinstance(st, ast.Return):
                ctx.returns.append(self.expr(st.value, ctx.scope))
                returned = True
            elif isinstance(st, ast.Expect):
                self.expect_stmt(st, ctx.scope)

    def expect_stmt(self, st: ast.Expect, scope: dict[str, str]) -> None:
        """`expect COND`: a bool over values already computed.  It runs only in test mode, so it
        may not generate (a step or a strategy call would make test runs spend differently)."""
        self.expect(st.cond, scope, ("bool",), "an `expect` condition")
        for e in ast.expressions(st.cond):
            work = isinstance(e, (ast.Sample, ast.Expand, ast.Score, ast.Prune, ast.Vote, ast.Resample))
            if work or (isinstance(e, ast.Call) and e.func not in BUILTINS):
                self.error(
                    "an `expect` condition cannot run a step or call a strategy: bind the value "
                    "to a name first and state the property of that name",
                    e.span,
                )
                return

    # ---- expressions ----

    def expect(self, e: ast.Expr, scope: dict[str, str], types: tuple[str, ...], what: str) -> str:
        t = self.expr(e, scope)
        if t != _ERR and t not in types and not ("float" in types and t == "int"):
            wanted = " or ".join(_article(x) for x in types)
            self.error(f"{what} must be {wanted}, got {_article(t)}", e.span)
            return _ERR
        return t

    def positive_literal(self, e: ast.Expr, what: str) -> None:
        value = _literal_int(e)
        if value is not None and value < 1:
            self.error(f"{what} must be at least 1, got {value}", e.span)

    def expr(self, e: ast.Expr, scope: dict[str, str]) -> str:
        t = self._expr(e, scope)
        self.result.types[id(e)] = t
        return t

    def _expr(self, e: ast.Expr, scope: dict[str, str]) -> str:
        match e:
            case ast.IntLit():
                return "int"
            case ast.FloatLit():
                return "float"
            case ast.BoolLit():
                return "bool"
            case ast.StrLit():
                self.template(e.template, e.span, scope, extra=())
                return "text"
            case ast.Name():
                if e.id in scope:
                    return scope[e.id]
                hint = _suggest(e.id, scope)
                self.error(f"unknown name '{e.id}'{hint or '; expected a parameter or a name assigned above'}", e.span)
                return _ERR
            case ast.ListLit():
                for item in e.items:
                    self.expect(item, scope, ("text",), "a list item")
                return "list"
            case ast.BinOp():
                return self.binop(e, scope)
            case ast.Compare():
                lt, rt = self.expr(e.left, scope), self.expr(e.right, scope)
                if _ERR in (lt, rt):
                    return "bool"
                ordered = e.op not in ("==", "!=")
                ok = (lt in NUMERIC and rt in NUMERIC) or (not ordered and lt == rt and lt in ("text", "bool"))
                if not ok:
                    self.error(f"cannot compare {_article(lt)} with {_article(rt)} using '{e.op}'", e.span)
                return "bool"
            case ast.BoolOp():
                self.expect(e.left, scope, ("bool",), f"each side of '{e.op}'")
                self.expect(e.right, scope, ("bool",), f"each side of '{e.op}'")
                return "bool"
            case ast.Not():
                self.expect(e.operand, scope, ("bool",), "the operand of 'not'")
                return "bool"
            case ast.Neg():
                t = self.expect(e.operand, scope, ("int", "float"), "the operand of '-'")
                return t
            case ast.Call():
                return self.call(e, scope)
            case ast.Sample():
                self.expect(e.count, scope, ("int",), "the sample count")
                self.positive_literal(e.count, "the sample count")
                self.expect(e.prompt, scope, ("text",), "the prompt of `sample`")
                self.settings(e.settings, scope)
                self.thinking(e.settings, e.budget)
                self.step_budget(e.budget, e.span)
                return "branches"
            case ast.Expand():
                self.expect(e.branches, scope, ("branches",), "the input of `expand`")
                self.expect(e.count, scope, ("int",), "the expand count")
                self.positive_literal(e.count, "the expand count")
                if e.inject is not None:
                    self.expect(e.inject, scope, ("text",), "the injected text (`after`)")
                    if isinstance(e.inject, ast.StrLit) and not e.inject.value:
                        self.error("`after` needs text to inject, got an empty string", e.inject.span)
                self.settings(e.settings, scope)
                self.thinking(e.settings, e.budget)
                self.step_budget(e.budget, e.span)
                return "branches"
            case ast.Score():
                self.expect(e.branches, scope, ("branches",), "the input of `score`")
                self.scorer(e.scorer, scope)
                self.step_budget(e.budget, e.span)
                return "branches"
            case ast.Prune():
                self.expect(e.branches, scope, ("branches",), "the input of `prune`")
                self.expect(e.keep, scope, ("int",), "the `keep` count")
                self.positive_literal(e.keep, "the `keep` count")
                return "branches"
            case ast.Vote():
                return self.vote(e, scope)
            case ast.Resample():
                return self.resample(e, scope)
        raise AssertionError(f"unhandled expression {e!r}")

    def resample(self, e: ast.Resample, scope: dict[str, str]) -> str:
        self.expect(e.branches, scope, ("branches",), "the input of `resample`")
        if e.count is not None:
            self.expect(e.count, scope, ("int",), "the resample count")
            count = _literal_int(e.count)
            if count is not None and count < 0:
                self.error(f"the resample count must be at least 0, got {count}", e.count.span)
        if e.temperature is not None:
            self.expect(e.temperature, scope, NUMERIC, "the softmax temperature")
            temperature = _literal_number(e.temperature)
            if temperature is not None and temperature <= 0:
                self.error(f"the softmax temperature must be above 0, got {temperature:g}", e.temperature.span)
        return "branches"

    def vote(self, e: ast.Vote, scope: dict[str, str]) -> str:
        t = self.expect(e.branches, scope, ("branches",), "the input of `vote`")
        if e.on == "regex" and e.pattern is not None:
            try:
                groups = re.compile(e.pattern).groups
            except re.error as exc:
                self.error(f"bad regex {e.pattern!r}: {exc}", e.span)
            else:
                if groups < 1:
                    self.error(
                        f"the regex {e.pattern!r} needs a group: the vote uses group 1 of the last match",
                        e.span,
                    )
        if e.until is None:
            return "answer"
        # The runtime drives the input step itself and cancels its requests once the vote is
        # settled, so that step must be written right here, not arrive as a finished value.
        if t == "branches" and not isinstance(e.branches, (ast.Sample, ast.Expand)):
            self.error(_ANYTIME_INPUT, e.branches.span)
        elif isinstance(e.branches, (ast.Sample, ast.Expand)):
            for s in e.branches.settings:
                if s.key in THINK_KEYS:
                    self.error(f"an anytime vote (`until`) cannot stop a step with a thinking budget (`{s.key}`)", s.span)
        if e.threshold is not None:
            self.expect(e.threshold, scope, NUMERIC, "the threshold of `until`")
            v = _literal_number(e.threshold)
            if v is not None and not 0 <= v <= 1:
                self.error(f"the threshold of `until` must be in [0, 1], got {v:g}", e.threshold.span)
        if e.min_votes is not None:
            self.expect(e.min_votes, scope, ("int",), "the `after` count")
            self.positive_literal(e.min_votes, "the `after` count")
        return "answer"

    def binop(self, e: ast.BinOp, scope: dict[str, str]) -> str:
        lt, rt = self.expr(e.left, scope), self.expr(e.right, scope)
        if _ERR in (lt, rt):
            return _ERR
        if lt in NUMERIC and rt in NUMERIC:
            return "int" if lt == rt == "int" else "float"
        if e.op == "+" and lt == rt and lt in ("text", "branches"):
            return lt
        if e.op == "+":
            self.error(
                f"cannot add {_article(lt)} and {_article(rt)}: '+' adds numbers, joins texts "
                "or unites branches",
                e.span,
            )
        else:
            self.error(f"'{e.op}' needs numbers, got {_article(lt)} and {_article(rt)}", e.span)
        return _ERR

    def call(self, e: ast.Call, scope: dict[str, str]) -> str:
        if e.func in BUILTINS:
            params, result = BUILTINS[e.func].params, BUILTINS[e.func].result
            if e.kwargs:
                self.error(f"{e.func}() takes no keyword arguments", e.kwargs[0].span)
            if e.budget is not None:
                self.error(f"{e.func}() is a builtin; only strategy calls take a budget", e.span)
            if len(e.args) != len(params):
                self.error(f"{e.func}() takes {len(params)} argument{'s' if len(params) != 1 else ''}, got {len(e.args)}", e.span)
            for arg, want in zip(e.args, params):
                self.expect(arg, scope, (want,), f"the argument of {e.func}()")
            for arg in e.args[len(params) :]:
                self.expr(arg, scope)
            return result
        target = self.strategies.get(e.func)
        if target is None:
            for arg in (*e.args, *(k.value for k in e.kwargs)):
                self.expr(arg, scope)
            hint = _suggest(e.func, [*BUILTINS, *self.strategies]) or (
                f"; expected a builtin ({', '.join(BUILTINS)}) or a strategy of this file or an import"
            )
            self.error(f"unknown function or strategy '{e.func}'{hint}", e.span)
            return _ERR
        self.step_budget(e.budget, e.span)
        declared = {p.name: p for p in target.params}
        given: dict[str, ast.Expr] = {}
        if len(e.args) > len(target.params):
            n = len(target.params)
            self.error(f"'{e.func}' takes {n} argument{'s' if n != 1 else ''}, got {len(e.args)}", e.span)
        for p, arg in zip(target.params, e.args):
            given[p.name] = arg
        for kw in e.kwargs:
            if kw.name not in declared:
                hint = _suggest(kw.name, declared) or f" (its parameters: {', '.join(declared) or 'none'})"
                self.error(f"'{e.func}' has no parameter '{kw.name}'{hint}", kw.span)
            elif kw.name in given:
                self.error(f"argument '{kw.name}' is given twice", kw.span)
            given[kw.name] = kw.value
        for arg in e.args[len(target.params) :]:
            self.expr(arg, scope)
        for name, arg in given.items():
            if name in declared:
                self.expect(arg, scope, (declared[name].type,), f"argument '{name}' of '{e.func}'")
            else:
                self.expr(arg, scope)
        missing = [p.name for p in target.params if p.default is None and p.name not in given]
        if missing:
            self.error(f"'{e.func}' needs a value for {', '.join(repr(m) for m in missing)}", e.span)
        ret = self.result.returns.get(e.func, _ERR)
        return _ERR if ret == "pending" else ret

    def settings(self, settings: Sequence[ast.Setting], scope: dict[str, str]) -> None:
        seen: set[str] = set()
        for s in settings:
            if s.key in seen:
                self.error(f"sampling key '{s.key}' is given twice", s.span)
            seen.add(s.key)
            key = SAMPLING_KEYS.get(s.key)
            if key is None:
                # (the listing names the core keys of DESIGN §2, not `chunk` and the `think_*` keys
                # of sequential scaling; a near miss of those is still named)
                plain = [k for k in SAMPLING_KEYS if k not in THINK_KEYS and k != "chunk"]
                hint = _suggest(s.key, SAMPLING_KEYS) or f"; expected one of {', '.join(plain)}"
                self.error(f"unknown sampling key '{s.key}'{hint}", s.span)
                self.expr(s.value, scope)
                continue
            self.expect(s.value, scope, key.types, f"`{s.key}`")
            if s.key == "step" and isinstance(s.value, ast.StrLit) and not s.value.value:
                self.error("`step` cannot be an empty string", s.value.span)
            v = _literal_number(s.value)
            if v is not None and key.valid is not None and not key.valid(v):
                self.error(f"`{s.key}` must be {key.rule}, got {v:g}", s.value.span)

    def thinking(self, settings: Sequence[ast.Setting], budget: int | None) -> None:
        """A thinking budget's keys fit together: every `think_*` key needs `think_max`, the
        minimum is at most the cap, and the cap fits the step's own budget; `chunk` is at least
        1 and comes without `max_tokens` and thinking keys."""
        keys = {s.key: s for s in settings}
        if "chunk" in keys:
            size = _literal_number(keys["chunk"].value)
            if size is not None and size < 1:
                self.error(f"`chunk` must be at least 1, got {size:g}", keys["chunk"].value.span)
            clash = next((k for k in ("max_tokens", *THINK_KEYS) if k in keys), None)
            if clash is not None:
                self.error(f"`chunk` and `{clash}` do not go together: a chunk is its own max_tokens, "
                           "and a thinking budget runs to the end of its phase", keys["chunk"].span)
        given = {s.key: s for s in settings if s.key in THINK_KEYS}
        cap = given.get("think_max")
        if cap is None:
            for s in given.values():
                self.error(f"`{s.key}` needs `think_max` (the cap on the thinking phase)", s.span)
            return
        top = _literal_number(cap.value)
        low = given.get("think_min")
        least = _literal_number(low.value) if low is not None else None
        for key, v in (("think_max", top), ("think_min", least)):
            if v is not None and v < 1:
                self.error(f"`{key}` must be at least 1, got {v:g}", given[key].value.span)
        if top is not None and least is not None and least > top:
            self.error(f"`think_min` ({least:g}) is more than `think_max` ({top:g})", low.span)  # type: ignore[union-attr]
        if top is not None and budget is not None and top > budget:
            self.error(f"`think_max` ({top:g}) is more than this step's budget ({budget})", cap.span)
        for s in given.values():
            if s.key in ("think_wrapup", "think_extend_text") and isinstance(s.value, ast.StrLit) and not s.value.value:
                self.error(f"`{s.key}` cannot be an empty string", s.value.span)

    def budget_expr(self, e: ast.Expr, ctx: _Ctx) -> None:
        """`budget EXPR tokens`: integer arithmetic on int parameters and numbers only, so the
        budget is known as soon as the strategy is called."""
        params = {p.name for p in ctx.strategy.params if p.type == "int"}
        assigned = {st.name for st in ast.statements(ctx.strategy.body) if isinstance(st, ast.Assign)}
        bad = _budget_term(e, params - assigned)
        if bad is not None:
            self.error("a strategy budget is a number or integer arithmetic on int parameters "
                       "(e.g. `budget (n * 600) tokens`)", bad.span)
            return
        self.expect(e, ctx.scope, ("int",), "the strategy budget")

    def step_budget(self, budget: int | None, span: Span) -> None:
        if budget is not None and budget <= 0:
            self.error("a budget must be at least 1 token", span)

    def scorer(self, scorer: ast.Scorer, scope: dict[str, str]) -> None:
        if scorer.template is not None:
            self.template(scorer.template, scorer.span, scope, extra=(JUDGE_BRANCH,))
            if scorer.template.error is None and JUDGE_BRANCH not in scorer.template.names:
                self.error("a judge template must show the graded branch: put {branch} in it", scorer.span)
        elif SCORERS[scorer.kind].argument == "target" and scorer.arg is not None and not re.fullmatch(
            r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", scorer.arg
        ):
            self.error(
                f"verifier target {scorer.arg!r} must look like \"package.module:function\"",
                scorer.span,
            )

    def template(self, template: ast.Template, span: Span, scope: dict[str, str], extra: tuple[str, ...]) -> None:
        if template.error is not None:
            self.error(template.error, span)
            return
        for name in template.names:
            if name in extra:
                continue
            if name not in scope:
                hint = _suggest(name, [*scope, *extra])
                self.error(f"unknown name '{name}' in {{{name}}}{hint or '; a prompt can use parameters and names assigned above'}", span)
            elif scope[name] == "list":
                self.error(f"'{name}' is a list and cannot be interpolated into text", span)


@dataclass
class _Ctx:
    strategy: ast.Strategy
    scope: dict[str, str]
    returns: list[str] = field(default_factory=list)


def _assignable(value: str, target: str) -> bool:
    return value == target or (value == "int" and target == "float")


def _literal_int(e: ast.Expr) -> int | None:
    if isinstance(e, ast.IntLit):
        return e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.IntLit):
        return -e.operand.value
    return None


def _literal_number(e: ast.Expr) -> float | None:
    if isinstance(e, (ast.IntLit, ast.FloatLit)):
        return e.value
    if isinstance(e, ast.Neg):
        inner = _literal_number(e.operand)
        return None if inner is None else -inner
    return None


def _always_returns(stmts: Sequence[ast.Stmt]) -> bool:
    for st in stmts:
        if isinstance(st, ast.Return):
            return True
        if isinstance(st, ast.If) and st.orelse and _always_returns(st.then) and _always_returns(st.orelse):
            return True
    return False


# The deepest chain of strategy calls a program may have (s1 calls s2 calls ... s32).
MAX_CALL_DEPTH = 32


def _called(s: ast.Strategy, strategies: dict[str, ast.Strategy]) -> list[tuple[str, Span]]:
    return [
        (e.func, e.span)
        for e in ast.expressions(s.body)
        if isinstance(e, ast.Call) and e.func in strategies and e.func not in BUILTINS
    ]


def _budget_term(e: ast.Expr, params: set[str]) -> ast.Expr | None:
    """The first part of a budget expression that is not an int literal, an int parameter or
    arithmetic on them (None: the whole expression is fine)."""
    match e:
        case ast.IntLit():
            return None
        case ast.Name():
            return None if e.id in params else e
        case ast.BinOp() if e.op in ("+", "-", "*", "/", "%"):
            return _budget_term(e.left, params) or _budget_term(e.right, params)
        case ast.Neg():
            return _budget_term(e.operand, params)
    return e
