"""The abstract syntax tree of a `.ttc` file: frozen dataclasses, one per grammar rule.

Every node carries a `Span` (where it came from).  Spans are excluded from equality, so two ASTs
compare equal when they mean the same program, wherever it was written: the formatter's
round-trip property (`parse(format(m)) == m`) relies on that.  Lark objects never appear here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ttcdsl.span import NO_SPAN, Span

__all__ = [
    "Assign",
    "BinOp",
    "BoolLit",
    "BoolOp",
    "BudgetStmt",
    "Call",
    "Compare",
    "Expand",
    "Expr",
    "FloatLit",
    "If",
    "Import",
    "IntLit",
    "KwArg",
    "ListLit",
    "Module",
    "Name",
    "Neg",
    "Not",
    "Param",
    "Prune",
    "Repeat",
    "Return",
    "Sample",
    "Score",
    "Scorer",
    "Setting",
    "Stmt",
    "StrLit",
    "Strategy",
    "Vote",
]

TypeName = Literal["text", "int", "float", "bool"]


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
    kind: Literal["prm", "logprob", "judge", "verifier"]
    arg: str | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


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
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Score:
    branches: Expr
    scorer: Scorer
    agg: Literal["last", "min", "mean", "prod"] | None = None
    budget: int | None = None
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Prune:
    branches: Expr
    keep: Expr
    by: Literal["score", "logprob", "length"] | None = None
    per: Literal["root", "parent"] | None = None
    piped: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Vote:
    branches: Expr
    on: Literal["number", "boxed", "line", "regex"] | None = None
    pattern: str | None = None
    weighted: bool = False
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
)
STEPS = (Sample, Expand, Score, Prune, Vote)

# ---- statements ----


@dataclass(frozen=True)
class BudgetStmt:
    tokens: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


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


Stmt: TypeAlias = BudgetStmt | Assign | Repeat | If | Return

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
