"""The abstract syntax tree of a `.ttc` file: frozen dataclasses, one per grammar rule.

Every node carries a `Span` (where it came from).  Spans are excluded from equality, so two ASTs
compare equal when they mean the same program, wherever it was written: the formatter's
round-trip property (`parse(format(m)) == m`) relies on that.  Lark objects never appear here.

Also here, because every stage after the parser needs them:

* `Template`: a string's `{name}` interpolations, parsed once per string (`StrLit.template`,
  `Scorer.template` for a judge) and read by the checker and by lowering;
* walkers: `children(node)` yields a node's direct sub-nodes in source order, `walk(node)` every
  node under it (itself first), `expressions(node)` and `statements(body)` the expressions and
  statements among them.  Stages iterate with these instead of recursing by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Literal, TypeAlias

from ttcdsl.span import NO_SPAN, Span
from ttcdsl.vocabulary import (
    Aggregation,
    Extractor,
    PruneGroup,
    PruneOrder,
    ResampleMethod,
    ResampleWeighting,
    ScorerKind,
    StopRule,
    TypeName,
)

__all__ = [
    "Assign",
    "BinOp",
    "BoolLit",
    "BoolOp",
    "BudgetStmt",
    "Call",
    "Compare",
    "Expand",
    "Expect",
    "Expr",
    "FloatLit",
    "If",
    "Import",
    "IntLit",
    "Interp",
    "KwArg",
    "ListLit",
    "Module",
    "Name",
    "Neg",
    "Not",
    "Param",
    "Prune",
    "Repeat",
    "Resample",
    "Return",
    "Sample",
    "Score",
    "Scorer",
    "Setting",
    "Stmt",
    "StrLit",
    "Strategy",
    "Template",
    "Vote",
    "children",
    "expressions",
    "parse_template",
    "statements",
    "walk",
]

# ---- string templates ----


@dataclass(frozen=True)
class Interp:
    """`{name}` in a string: the name and its offset in the string's value."""

    name: str
    offset: int


@dataclass(frozen=True)
class Template:
    """A string's value as literal text and interpolations (`{{` and `}}` already read as single
    braces).  `error` says what is wrong with a stray or empty brace; `parts` is then empty."""

    parts: tuple[str | Interp, ...]
    error: str | None = None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, Interp)]

    @property
    def is_literal(self) -> bool:
        """No interpolation (and no error): the string is just its `text`."""
        return self.error is None and not self.names

    @property
    def text(self) -> str:
        """The literal parts joined: the string's text when `is_literal`."""
        return "".join(p for p in self.parts if isinstance(p, str))


_INTERP = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_template(value: str) -> Template:
    """Split a string's value into literal text and `{name}` interpolations."""
    parts: list[str | Interp] = []
    literal: list[str] = []
    pos = 0
    for m in _INTERP.finditer(value):
        literal.append(value[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif m.group(1) is not None:
            name = m.group(1).strip()
            if not _NAME.fullmatch(name):
                return Template((), f"'{{{m.group(1)}}}' is not an interpolation: write {{name}} "
                                    "with a defined name, or {{ and }} for literal braces")
            if "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(Interp(name, m.start()))
        else:
            return Template((), f"a lone '{token}' in a string: write {token}{token} for a literal brace")
    literal.append(value[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    return Template(tuple(parts))


# ---- expressions ----


@dataclass(frozen=True)
class IntLit:
    value: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class FloatLit:
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class StrLit:
    """A string; `{name}` interpolates, `{{` and `}}` are literal braces.  `value` is the text
    after escapes are processed (and, for a triple-quoted string, after dedenting)."""

    value: str
    triple: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    @cached_property
    def template(self) -> Template:
        """`value` parsed as a template, once per string."""
        return parse_template(self.value)


@dataclass(frozen=True)
class BoolLit:
    value: bool
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class ListLit:
    items: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class BinOp:
    """Arithmetic `+ - * / %`; on branches `+` is the union."""

    op: str
    left: Expr
    right: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Compare:
    op: str
    left: Expr
    right: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    left: Expr
    right: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    operand: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class KwArg:
    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    """A builtin (`best(b)`) or a strategy call (`sc(q, n = 4) budget 2000`)."""

    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[KwArg, ...] = ()
    budget: int | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Setting:
    """One `KEY = VALUE` of a `with` clause."""

    key: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Scorer:
    """`prm`, `logprob`, `judge("template")` or `verifier("module:function")`."""

    kind: ScorerKind
    arg: str | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    @cached_property
    def template(self) -> Template | None:
        """A judge's template, parsed once; None for the other scorers."""
        return parse_template(self.arg) if self.kind == "judge" and self.arg is not None else None


@dataclass(frozen=True)
class Sample:
    count: Expr
    prompt: Expr
    settings: tuple[Setting, ...] = ()
    budget: int | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Expand:
    branches: Expr
    count: Expr
    settings: tuple[Setting, ...] = ()
    budget: int | None = None
    piped: bool = False
    # `after TEXT`: text appended to every child before it continues (None: no injection).
    inject: Expr | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Score:
    branches: Expr
    scorer: Scorer
    agg: Aggregation | None = None
    budget: int | None = None
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Prune:
    branches: Expr
    keep: Expr
    by: PruneOrder | None = None
    per: PruneGroup | None = None
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Vote:
    """`vote BRANCHES [on KIND ["pattern"]] [weighted] [counting unfinished]
    [until RULE >= THRESHOLD [after MIN_VOTES]]`.  `until` is None for an ordinary vote;
    `min_votes` is None when `after` is omitted; `unfinished` says unfinished branches vote too."""

    branches: Expr
    on: Extractor | None = None
    pattern: str | None = None
    weighted: bool = False
    until: StopRule | None = None
    threshold: Expr | None = None
    min_votes: Expr | None = None
    unfinished: bool = False
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Resample:
    """`resample BRANCHES [to COUNT] [by softmax TEMPERATURE | by weight] [systematic|multinomial]`;
    each clause is None when omitted (`temperature` is set only `by softmax`)."""

    branches: Expr
    count: Expr | None = None
    by: ResampleWeighting | None = None
    temperature: Expr | None = None
    method: ResampleMethod | None = None
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


Expr: TypeAlias = (
    IntLit
    | FloatLit
    | StrLit
    | BoolLit
    | Name
    | ListLit
    | BinOp
    | Compare
    | BoolOp
    | Not
    | Neg
    | Call
    | Sample
    | Expand
    | Score
    | Prune
    | Vote
    | Resample
)

# ---- statements ----


@dataclass(frozen=True)
class BudgetStmt:
    """`budget N tokens` (`tokens` is N) or `budget (EXPR) tokens` (`tokens` is 0 and `expr` an
    expression of the strategy's int parameters, evaluated when the strategy is called)."""

    tokens: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    expr: Expr | None = None


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Repeat:
    times: Expr
    until: Expr | None
    body: tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class If:
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Expect:
    """`expect COND`: a property of the values computed so far, checked only in test mode."""

    cond: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


Stmt: TypeAlias = BudgetStmt | Assign | Repeat | If | Return | Expect

# ---- declarations ----


@dataclass(frozen=True)
class Param:
    name: str
    type: TypeName
    default: Expr | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Strategy:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Import:
    path: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Module:
    """One parsed file."""

    imports: tuple[Import, ...]
    strategies: tuple[Strategy, ...]
    file: str = field(default="<string>", compare=False)


Node: TypeAlias = Expr | Stmt | KwArg | Setting | Scorer | Param | Strategy | Import | Module
"""Anything `walk` visits."""

# ---- walkers ----

_STMT_TYPES = (BudgetStmt, Assign, Repeat, If, Return, Expect)
_NODE_TYPES = (
    IntLit, FloatLit, StrLit, BoolLit, Name, ListLit, BinOp, Compare, BoolOp, Not, Neg, Call,
    Sample, Expand, Score, Prune, Vote, Resample, *_STMT_TYPES, KwArg, Setting, Scorer, Param,
    Strategy, Import, Module,
)
# The fields of each node class that can hold sub-nodes (a node or a tuple of nodes), in
# declaration order, which is source order for every node.
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name not in ("span", "file"))
    for cls in _NODE_TYPES
}
# `expand B by N after TEXT with ...`: the injected text is written before the settings.
_CHILD_FIELDS[Expand] = ("branches", "count", "inject", "settings", "budget", "piped")


def children(node: Node) -> Iterator[Node]:
    """The direct sub-nodes of `node`, in source order."""
    for name in _CHILD_FIELDS[type(node)]:
        value = getattr(node, name)
        if isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, _NODE_TYPES))
        elif isinstance(value, _NODE_TYPES):
            yield value


def walk(node: Node) -> Iterator[Node]:
    """`node` and every node under it, depth first, in source order."""
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(children(current))))


def expressions(node: Node | tuple[Stmt, ...]) -> Iterator[Expr]:
    """Every expression under `node` (or under every statement of a body), in source order."""
    roots = node if isinstance(node, tuple) else (node,)
    for root in roots:
        for n in walk(root):
            if isinstance(n, _EXPR_TYPES):
                yield n


def statements(body: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """Every statement of `body` and of the blocks nested in it, in source order."""
    for st in body:
        yield st
        if isinstance(st, Repeat):
            yield from statements(st.body)
        elif isinstance(st, If):
            yield from statements(st.then)
            yield from statements(st.orelse)


_EXPR_TYPES = (
    IntLit, FloatLit, StrLit, BoolLit, Name, ListLit, BinOp, Compare, BoolOp, Not, Neg, Call,
    Sample, Expand, Score, Prune, Vote, Resample,
)
