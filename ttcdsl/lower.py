"""Stage 3: a checked program -> `Plan`.

`lower(checked, entry=None)` is pure.  Node ids are assigned in a fixed order (the strategies in
definition order, each strategy's expressions depth first, left to right), so the same source
always gives the same plan.  Pipelines have already been desugared by the parser, a name that is
a never-reassigned parameter becomes a `Param` node and every other name a `Var`, `+` on
branches becomes a `Union`, prompts with `{name}` become `Prompt` nodes, omitted clauses get the
defaults of `ttcdsl.vocabulary` (an anytime vote without `after` gets a `Const` of
`DEFAULT_MIN_VOTES`).  The steps' static bounds are left empty: that is the next
stage (`ttcdsl.bounds.annotate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttcdsl import ast, plan
from ttcdsl.check import Checked
from ttcdsl.errors import UsageError
from ttcdsl.vocabulary import (
    BUILTINS,
    DEFAULT_AGGREGATION,
    DEFAULT_EXTRACTOR,
    DEFAULT_MIN_VOTES,
    DEFAULT_PRUNE_GROUP,
    DEFAULT_PRUNE_ORDER,
    DEFAULT_RESAMPLE_METHOD,
    JUDGE_BRANCH,
    PRUNE_NEEDS_LOGPROBS,
    SCORERS,
    VALUE_TYPES,
    ValueType,
)

__all__ = ["lower"]


def lower(checked: Checked, entry: str | None = None) -> plan.Plan:
    """Lower every strategy; `entry` defaults to the last strategy of the main file.  Raises
    `UsageError` when `entry` names no strategy of the program."""
    program = checked.program
    mains = program.main_strategies
    if entry is None:
        entry = mains[-1].name
    elif entry not in program.strategies:
        names = ", ".join(s.name for s in mains)
        raise UsageError(f"no strategy named '{entry}' in {program.main}; it defines: {names}")
    # Branches flow between strategies (a callee's samples may be scored by its caller), so
    # token logprobs are requested everywhere as soon as any strategy scores or prunes by them.
    logprobs = any(
        (isinstance(e, ast.Score) and SCORERS[e.scorer.kind].needs_logprobs)
        or (isinstance(e, ast.Prune) and e.by in PRUNE_NEEDS_LOGPROBS)
        for s in program.strategies.values()
        for e in ast.expressions(s.body)
    )
    next_id = 1
    strategies: dict[str, plan.StrategyPlan] = {}
    for name, s in program.strategies.items():
        lowered = _StrategyLowering(checked, s, next_id, logprobs).run()
        next_id += len(lowered.nodes)
        strategies[name] = lowered
    return plan.Plan(entry=entry, strategies=strategies, version=plan.version_for(strategies))


class _StrategyLowering:
    def __init__(self, checked: Checked, strategy: ast.Strategy, first_id: int, logprobs: bool) -> None:
        self.checked = checked
        self.s = strategy
        self.nodes: list[plan.Node] = []
        self.next_id = first_id
        assigned = {st.name for st in ast.statements(strategy.body) if isinstance(st, ast.Assign)}
        self.params = {p.name for p in strategy.params} - assigned
        self.logprobs = logprobs

    def run(self) -> plan.StrategyPlan:
        stmt = next((st for st in self.s.body if isinstance(st, ast.BudgetStmt)), None)
        budget = stmt.tokens if stmt is not None and stmt.expr is None else None
        budget_expr = self.expr(stmt.expr) if stmt is not None and stmt.expr is not None else None
        body = self.block(self.s.body)
        params = [
            plan.ParamSpec(
                p.name,
                p.type,
                default=_literal(p.default) if p.default is not None else None,
                required=p.default is None,
            )
            for p in self.s.params
        ]
        return plan.StrategyPlan(
            name=self.s.name,
            params=params,
            nodes=self.nodes,
            body=body,
            span=self.s.span,
            returns=_value_type(self.checked.returns.get(self.s.name, "branches")),
            budget=budget,
            budget_expr=budget_expr,
        )

    def add(self, cls: type[Any], e: Any, **fields: Any) -> plan.Ref:
        node_id = self.next_id
        self.next_id += 1
        self.nodes.append(cls(id=node_id, span=e.span, **fields))
        return plan.Ref(node_id)

    def block(self, stmts: Sequence[ast.Stmt]) -> list[plan.Stmt]:
        out: list[plan.Stmt] = []
        for st in stmts:
            match st:
                case ast.BudgetStmt():
                    continue
                case ast.Assign():
                    out.append(plan.Bind(span=st.span, name=st.name, value=self.expr(st.value)))
                case ast.Repeat():
                    times = self.expr(st.times)
                    body = self.block(st.body)
                    until = self.expr(st.until) if st.until is not None else None
                    out.append(plan.Repeat(span=st.span, times=times, until=until, body=body))
                case ast.If():
                    cond = self.expr(st.cond)
                    out.append(
                        plan.If(span=st.span, cond=cond, then=self.block(st.then), orelse=self.block(st.orelse))
                    )
                case ast.Return():
                    out.append(plan.Return(span=st.span, value=self.expr(st.value)))
                case ast.Expect():
                    text = _source_text(self.checked, st.cond.span)
                    out.append(plan.Expect(span=st.span, cond=self.expr(st.cond), text=text))
        return out

    def name(self, name: str, e: Any) -> plan.Ref:
        if name in self.params:
            return self.add(plan.Param, e, name=name)
        return self.add(plan.Var, e, name=name)

    def expr(self, e: ast.Expr) -> plan.Ref:
        match e:
            case ast.IntLit() | ast.FloatLit() | ast.BoolLit():
                return self.add(plan.Const, e, value=e.value)
            case ast.StrLit():
                template = e.template
                if template.is_literal:
                    return self.add(plan.Const, e, value=template.text)
                refs: list[str | plan.Ref] = [
                    p if isinstance(p, str) else self.name(p.name, e) for p in template.parts
                ]
                return self.add(plan.Prompt, e, parts=refs)
            case ast.Name():
                return self.name(e.id, e)
            case ast.ListLit():
                texts = [i for i in e.items if isinstance(i, ast.StrLit) and i.template.is_literal]
                if len(texts) == len(e.items):
                    return self.add(plan.Const, e, value=[i.template.text for i in texts])
                return self.add(plan.ListOf, e, items=[self.expr(i) for i in e.items])
            case ast.BinOp():
                left, right = self.expr(e.left), self.expr(e.right)
                if self.checked.type_of(e) == "branches":
                    return self.add(plan.Union, e, left=left, right=right)
                return self.add(plan.Arith, e, operator=e.op, left=left, right=right)
            case ast.Compare():
                left, right = self.expr(e.left), self.expr(e.right)
                return self.add(plan.Compare, e, operator=e.op, left=left, right=right)
            case ast.BoolOp():
                left, right = self.expr(e.left), self.expr(e.right)
                return self.add(plan.Logic, e, operator=e.op, left=left, right=right)
            case ast.Not():
                return self.add(plan.Not, e, operand=self.expr(e.operand))
            case ast.Neg():
                if isinstance(e.operand, (ast.IntLit, ast.FloatLit)):
                    return self.add(plan.Const, e, value=-e.operand.value)
                return self.add(plan.Neg, e, operand=self.expr(e.operand))
            case ast.Call():
                return self.call(e)
            case ast.Sample():
                count, prompt = self.expr(e.count), self.expr(e.prompt)
                return self.add(
                    plan.Sample, e, count=count, prompt=prompt, settings=self.settings(e.settings),
                    budget=e.budget, logprobs=self.logprobs,
                )
            case ast.Expand():
                branches, count = self.expr(e.branches), self.expr(e.count)
                inject = self.expr(e.inject) if e.inject is not None else None
                return self.add(
                    plan.Expand, e, branches=branches, count=count, inject=inject,
                    settings=self.settings(e.settings), budget=e.budget, logprobs=self.logprobs,
                )
            case ast.Score():
                branches = self.expr(e.branches)
                return self.add(
                    plan.Score, e, branches=branches, scorer=self.scorer(e.scorer, e),
                    agg=e.agg or DEFAULT_AGGREGATION, budget=e.budget,
                )
            case ast.Prune():
                branches, keep = self.expr(e.branches), self.expr(e.keep)
                return self.add(
                    plan.Prune, e, branches=branches, keep=keep, by=e.by or DEFAULT_PRUNE_ORDER,
                    per=e.per or DEFAULT_PRUNE_GROUP,
                )
            case ast.Vote():
                return self.vote(e)
            case ast.Resample():
                return self.resample(e)
        raise AssertionError(f"unhandled expression {e!r}")

    def resample(self, e: ast.Resample) -> plan.Ref:
        branches = self.expr(e.branches)
        count = self.expr(e.count) if e.count is not None else None
        temperature = self.expr(e.temperature) if e.temperature is not None else None
        return self.add(
            plan.Resample, e, branches=branches, count=count, temperature=temperature,
            method=e.method or DEFAULT_RESAMPLE_METHOD,
        )

    def vote(self, e: ast.Vote) -> plan.Ref:
        # An anytime vote's input is a step written in place (the checker saw to it), so the
        # node lowered here is referenced by this vote alone: the runtime may stop it early.
        branches = self.expr(e.branches)
        anytime: dict[str, Any] = {}
        if e.until is not None:
            assert e.threshold is not None, "the parser sets a threshold with every `until`"
            threshold = self.expr(e.threshold)
            if e.min_votes is not None:
                min_votes = self.expr(e.min_votes)
            else:
                min_votes = self.add(plan.Const, e, value=DEFAULT_MIN_VOTES)
            anytime = {"until": e.until, "threshold": threshold, "min_votes": min_votes}
        return self.add(
            plan.Vote, e, branches=branches, on=e.on or DEFAULT_EXTRACTOR, pattern=e.pattern,
            weighted=e.weighted, unfinished=e.unfinished, **anytime,
        )

    def call(self, e: ast.Call) -> plan.Ref:
        if e.func in self.checked.program.strategies and e.func not in BUILTINS:
            target = self.checked.program.strategies[e.func]
            args: dict[str, plan.Ref] = {}
            for p, arg in zip(target.params, e.args):
                args[p.name] = self.expr(arg)
            for kw in e.kwargs:
                args[kw.name] = self.expr(kw.value)
            return self.add(plan.Call, e, strategy=plan.StrategyRef(e.func), args=args, budget=e.budget)
        return self.add(plan.Builtin, e, name=e.func, args=[self.expr(a) for a in e.args])

    def settings(self, settings: Sequence[ast.Setting]) -> plan.Settings:
        values = {s.key: self.expr(s.value) for s in settings}
        return plan.Settings(**values)

    def scorer(self, scorer: ast.Scorer, e: Any) -> plan.Scorer:
        if scorer.template is not None:
            parts: list[str | plan.Ref | plan.BranchText] = []
            for p in scorer.template.parts:
                if isinstance(p, str):
                    parts.append(p)
                elif p.name == JUDGE_BRANCH:
                    parts.append(plan.BranchText())
                else:
                    parts.append(self.name(p.name, scorer))
            return plan.Scorer("judge", template=parts)
        if SCORERS[scorer.kind].argument == "target":
            return plan.Scorer(scorer.kind, target=scorer.arg)
        return plan.Scorer(scorer.kind)


def _value_type(name: str) -> ValueType:
    for t in VALUE_TYPES:
        if t == name:
            return t
    raise AssertionError(f"the checker passed a strategy that returns {name!r}")


def _literal(e: ast.Expr) -> Any:
    if isinstance(e, (ast.IntLit, ast.FloatLit, ast.BoolLit)):
        return e.value
    if isinstance(e, ast.StrLit):
        return e.template.text
    if isinstance(e, ast.Neg):
        return -_literal(e.operand)
    raise AssertionError(e)


def _source_text(checked: Checked, span: Any) -> str:
    """The text `span` covers in its source, on one line (for reports of an `expect`)."""
    lines = (checked.program.source_of(span.file) or "").split("\n")[span.line - 1 : span.end_line]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0][span.col - 1 : span.end_col - 1]
    lines[-1], lines[0] = lines[-1][: span.end_col - 1], lines[0][span.col - 1 :]
    return " ".join(line.strip() for line in lines)
