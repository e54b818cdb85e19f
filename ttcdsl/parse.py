"""The parser, one file at a time (stage 1, `ttcdsl.program.loads`, runs it on a file and its
imports): source text -> `ast.Module`.

`parse(source, file)` is a pure function.  It either returns a frozen AST whose every node carries
its `Span`, or raises `TTCSyntaxError` for the *first* thing it cannot read, saying what was
expected there and which bracket is still open.  Lark's trees and tokens never leave this module.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import textwrap
from decimal import Decimal
from importlib import resources
from typing import Any, TypeAlias

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from ttcdsl import ast
from ttcdsl.errors import TTCSyntaxError
from ttcdsl.span import Span, source_lines
from ttcdsl.vocabulary import (
    AGGREGATIONS,
    EXTRACTORS,
    PARAM_TYPES,
    PRUNE_GROUPS,
    PRUNE_ORDERS,
    RESERVED_NAMES,
    STOP_RULES,
    TypeName,
    or_list,
)

__all__ = ["grammar_text", "parse", "unescape"]


def grammar_text() -> str:
    """The grammar as shipped in the package (grammar/ttc.lark)."""
    return resources.files("ttcdsl").joinpath("grammar", "ttc.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    # `cache=True`: lark keeps the analysed grammar in the temp dir (keyed by grammar and
    # options), which makes every later `ttc` start several times faster.
    return Lark(
        grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True
    )


def parse(source: str, file: str = "<string>") -> ast.Module:
    """Parse one `.ttc` file.  Raises `TTCSyntaxError` (only) on bad input."""
    try:
        tree = _parser().parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, file) from None
    _check_depth(tree, source, file)
    try:
        module: ast.Module = _Builder(file).transform(tree)
    except VisitError as exc:  # errors raised while building nodes, e.g. a bad escape
        if isinstance(exc.orig_exc, TTCSyntaxError):
            err = exc.orig_exc
            err.source = source
            raise err from None
        raise
    return ast.Module(module.imports, module.strategies, file)


# Longer integer literals than this are refused (2**63 has 19 digits).
MAX_INT_DIGITS = 18

# Deeper nesting than this is refused: later stages recurse over the tree, and no real program
# comes near it (a 100-term sum written out, or 100 nested `not`s, is already far beyond).
MAX_DEPTH = 100


def _check_depth(tree: Tree[Token], source: str, file: str) -> None:
    """Raise `TTCSyntaxError` at the first node nested more than `MAX_DEPTH` levels deep."""
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TTCSyntaxError(
                f"this is nested more than {MAX_DEPTH} levels deep; "
                "split the expression into steps with names",
                _span(file, node.meta),
                source,
            )
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


# ---- strings ----

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0"}


def unescape(body: str, span: Span) -> str:
    """Process backslash escapes (`\\n \\t \\r \\" \\\\ \\0`); anything else is an error."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise TTCSyntaxError(
                    f"unknown escape '\\{nxt}' in a string; "
                    'use \\n, \\t, \\r, \\", \\\\ or \\0 (braces are written {{ and }})',
                    span,
                )
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def dedent_triple(body: str) -> str:
    """The value of a triple-quoted string: the blank line after the opening quotes and the
    whitespace-only line before the closing quotes are dropped, then common indentation."""
    lines = body.split("\n")
    if len(lines) > 1 and not lines[0].strip():
        lines = lines[1:]
    if len(lines) > 1 and not lines[-1].strip():
        lines = lines[:-1]
    return textwrap.dedent("\n".join(lines))


# ---- tree -> AST ----


def _span(file: str, meta: Any) -> Span:
    if getattr(meta, "empty", True):
        return Span(file, 0, 0, 0, 0)
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: Token) -> Span:
    return Span(
        file,
        tok.line or 0,
        tok.column or 0,
        tok.end_line or tok.line or 0,
        tok.end_column or tok.column or 0,
    )


# The grammar's TYPE terminal reads exactly these words (tests/test_parse.py checks it).
_PARAM_TYPE: dict[str, TypeName] = {t: t for t in PARAM_TYPES}

# A step written after `|`: its class and its fields but the input (the value on the left).
_PipeStep: TypeAlias = tuple[
    type[ast.Expand] | type[ast.Score] | type[ast.Prune] | type[ast.Vote] | type[ast.Resample],
    dict[str, Any],
]
# `vote ... until RULE >= THRESHOLD [after MIN_VOTES]` as the builder passes it on.
_Until: TypeAlias = tuple[str, ast.Expr, ast.Expr | None]


def _settings(clause: Any) -> tuple[ast.Setting, ...]:
    return tuple(clause) if clause is not None else ()


@v_args(meta=True, inline=True)
class _Builder(Transformer[Token, Any]):
    """Turns lark's tree into `ast` nodes; one method per grammar rule or alias."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta: Any) -> Span:
        return _span(self.file, meta)

    @v_args(meta=True, inline=False)
    def start(self, meta: Any, items: list[Any]) -> ast.Module:
        imports = tuple(i for i in items if isinstance(i, ast.Import))
        strategies = tuple(i for i in items if isinstance(i, ast.Strategy))
        return ast.Module(imports, strategies, self.file)

    def import_decl(self, meta: Any, path: Token) -> ast.Import:
        return ast.Import(self._string(path).value, self._s(meta))

    @v_args(meta=True, inline=False)
    def strategy(self, meta: Any, items: list[Any]) -> ast.Strategy:
        name, *params, body = items
        return ast.Strategy(
            str(name), tuple(p for p in params if p is not None), body, self._s(meta)
        )

    def _name(self, tok: Token) -> str:
        if str(tok) in RESERVED_NAMES:
            raise TTCSyntaxError(
                f"'{tok}' is a keyword and cannot name a value; choose another name",
                _tok_span(self.file, tok),
            )
        return str(tok)

    def param(self, meta: Any, name: Token, type_: Token, default: Any) -> ast.Param:
        return ast.Param(self._name(name), _PARAM_TYPE[str(type_)], default, self._s(meta))

    @v_args(meta=True, inline=False)
    def block(self, meta: Any, stmts: list[Any]) -> tuple[ast.Stmt, ...]:
        return tuple(stmts)

    def budget_stmt(self, meta: Any, _kw: Token, tokens: Token | ast.Expr) -> ast.BudgetStmt:
        if isinstance(tokens, Token):
            return ast.BudgetStmt(self._int(tokens), self._s(meta))
        return ast.BudgetStmt(0, self._s(meta), expr=tokens)

    def assign(self, meta: Any, name: Token, value: ast.Expr) -> ast.Assign:
        return ast.Assign(self._name(name), value, self._s(meta))

    def repeat(self, meta: Any, times: ast.Expr, until: Any, body: Any) -> ast.Repeat:
        return ast.Repeat(times, until, body, self._s(meta))

    def if_stmt(self, meta: Any, cond: ast.Expr, then: Any, orelse: Any) -> ast.If:
        if isinstance(orelse, ast.If):
            orelse = (orelse,)
        return ast.If(cond, then, orelse or (), self._s(meta))

    def return_stmt(self, meta: Any, value: ast.Expr) -> ast.Return:
        return ast.Return(value, self._s(meta))

    def expect_stmt(self, meta: Any, cond: ast.Expr) -> ast.Expect:
        return ast.Expect(cond, self._s(meta))

    # ---- expressions ----

    def pipe(self, meta: Any, left: ast.Expr, step: _PipeStep) -> ast.Expr:
        # The step's span is its own (`| prune keep 2` on its line), not the whole pipeline's,
        # so an error or a runtime failure names the line of that step.
        kind, fields = step
        return kind(left, **fields, piped=True)

    def or_op(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.BoolOp:
        return ast.BoolOp("or", left, right, self._s(meta))

    def and_op(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.BoolOp:
        return ast.BoolOp("and", left, right, self._s(meta))

    def not_op(self, meta: Any, operand: ast.Expr) -> ast.Not:
        return ast.Not(operand, self._s(meta))

    def compare(self, meta: Any, left: ast.Expr, op: Token, right: ast.Expr) -> ast.Compare:
        return ast.Compare(str(op), left, right, self._s(meta))

    def binop(self, meta: Any, left: ast.Expr, op: Token, right: ast.Expr) -> ast.BinOp:
        return ast.BinOp(str(op), left, right, self._s(meta))

    def neg(self, meta: Any, operand: ast.Expr) -> ast.Expr:
        return ast.Neg(operand, self._s(meta))

    def int_lit(self, meta: Any, tok: Token) -> ast.IntLit:
        return ast.IntLit(self._int(tok), self._s(meta))

    def float_lit(self, meta: Any, tok: Token) -> ast.FloatLit:
        value = float(tok)
        if not math.isfinite(value):
            raise TTCSyntaxError("this number is too large to be a float", _tok_span(self.file, tok))
        return ast.FloatLit(value, self._s(meta))

    def string_lit(self, meta: Any, tok: Token) -> ast.StrLit:
        return self._string(tok)

    def _string(self, tok: Token) -> ast.StrLit:
        span = _tok_span(self.file, tok)
        text = str(tok)
        if text.startswith('"""'):
            return ast.StrLit(unescape(dedent_triple(text[3:-3]), span), True, span)
        return ast.StrLit(unescape(text[1:-1], span), False, span)

    def _int(self, tok: Token) -> int:
        # Python refuses to convert very long digit strings; no count, budget or seed needs them.
        if len(tok) > MAX_INT_DIGITS:
            raise TTCSyntaxError(
                f"this integer has {len(tok)} digits; integers have at most {MAX_INT_DIGITS}",
                _tok_span(self.file, tok),
            )
        return int(tok)

    def true_lit(self, meta: Any) -> ast.BoolLit:
        return ast.BoolLit(True, self._s(meta))

    def false_lit(self, meta: Any) -> ast.BoolLit:
        return ast.BoolLit(False, self._s(meta))

    def name(self, meta: Any, tok: Token) -> ast.Name:
        return ast.Name(str(tok), self._s(meta))

    @v_args(meta=True, inline=False)
    def list_lit(self, meta: Any, items: list[Any]) -> ast.ListLit:
        return ast.ListLit(tuple(i for i in items if i is not None), self._s(meta))

    @v_args(meta=True, inline=False)
    def call(self, meta: Any, items: list[Any]) -> ast.Call:
        name, *args, budget = items
        positional = tuple(a for a in args if a is not None and not isinstance(a, ast.KwArg))
        kwargs = tuple(a for a in args if isinstance(a, ast.KwArg))
        return ast.Call(str(name), positional, kwargs, budget, self._s(meta))

    def kwarg(self, meta: Any, name: Token, value: ast.Expr) -> ast.KwArg:
        return ast.KwArg(str(name), value, self._s(meta))

    # ---- steps ----

    def sample(self, meta: Any, count: Any, prompt: Any, settings: Any, budget: Any) -> ast.Sample:
        return ast.Sample(count, prompt, _settings(settings), budget, self._s(meta))

    def expand(self, meta: Any, branches: Any, count: Any, inject: Any, settings: Any, budget: Any) -> ast.Expand:
        return ast.Expand(branches, count, _settings(settings), budget, inject=inject, span=self._s(meta))

    def inject(self, meta: Any, text: Any) -> ast.Expr:
        return text  # type: ignore[no-any-return]

    def score(self, meta: Any, branches: Any, scorer: Any, agg: Any, budget: Any) -> ast.Score:
        return ast.Score(branches, scorer, agg, budget, span=self._s(meta))

    def prune(self, meta: Any, branches: Any, keep: Any, by: Any, per: Any) -> ast.Prune:
        return ast.Prune(branches, keep, by, per, span=self._s(meta))

    def vote(self, meta: Any, branches: Any, on: Any, weighted: Any, unfinished: Any,
             until: Any) -> ast.Vote:
        return ast.Vote(branches, **self._vote_fields(meta, on, weighted, unfinished, until))

    def resample(self, meta: Any, branches: Any, count: Any, by: Any, method: Any) -> ast.Resample:
        return ast.Resample(branches, **self._resample_fields(meta, count, by, method))

    def pexpand(self, meta: Any, count: Any, inject: Any, settings: Any, budget: Any) -> _PipeStep:
        return ast.Expand, {"count": count, "settings": _settings(settings), "budget": budget, "inject": inject,
                            "span": self._s(meta)}

    def pscore(self, meta: Any, scorer: Any, agg: Any, budget: Any) -> _PipeStep:
        return ast.Score, {"scorer": scorer, "agg": agg, "budget": budget, "span": self._s(meta)}

    def pprune(self, meta: Any, keep: Any, by: Any, per: Any) -> _PipeStep:
        return ast.Prune, {"keep": keep, "by": by, "per": per, "span": self._s(meta)}

    def pvote(self, meta: Any, on: Any, weighted: Any, unfinished: Any, until: Any) -> _PipeStep:
        return ast.Vote, self._vote_fields(meta, on, weighted, unfinished, until)

    def presample(self, meta: Any, count: Any, by: Any, method: Any) -> _PipeStep:
        return ast.Resample, self._resample_fields(meta, count, by, method)

    def _vote_fields(self, meta: Any, on: Any, weighted: Any, unfinished: Any,
                     until: _Until | None) -> dict[str, Any]:
        kind, pattern = on if on is not None else (None, None)
        rule, threshold, min_votes = until if until is not None else (None, None, None)
        return {"on": kind, "pattern": pattern, "weighted": weighted is not None,
                "unfinished": unfinished is not None, "until": rule,
                "threshold": threshold, "min_votes": min_votes, "span": self._s(meta)}

    def _resample_fields(self, meta: Any, count: Any, by: Any, method: Any) -> dict[str, Any]:
        weighting, temperature = by if by is not None else (None, None)
        return {"count": count, "by": weighting, "temperature": temperature, "method": method,
                "span": self._s(meta)}

    @v_args(meta=True, inline=False)
    def with_clause(self, meta: Any, settings: list[ast.Setting]) -> tuple[ast.Setting, ...]:
        return tuple(settings)

    def setting(self, meta: Any, key: Token, value: ast.Expr) -> ast.Setting:
        return ast.Setting(str(key), value, self._s(meta))

    def step_budget(self, meta: Any, tokens: Token) -> int:
        return self._int(tokens)

    def prm_scorer(self, meta: Any) -> ast.Scorer:
        return ast.Scorer("prm", None, self._s(meta))

    def logprob_scorer(self, meta: Any) -> ast.Scorer:
        return ast.Scorer("logprob", None, self._s(meta))

    def judge_scorer(self, meta: Any, template: Token) -> ast.Scorer:
        return ast.Scorer("judge", self._string(template).value, self._s(meta))

    def verifier_scorer(self, meta: Any, target: Token) -> ast.Scorer:
        return ast.Scorer("verifier", self._string(target).value, self._s(meta))

    def agg(self, meta: Any, kind: Token) -> str:
        return str(kind)

    def prune_by(self, meta: Any, key: Token) -> str:
        return str(key)

    def prune_per(self, meta: Any, kind: Token) -> str:
        return str(kind)

    def vote_on(self, meta: Any, kind: Token, pattern: Token | None) -> tuple[str, str | None]:
        if str(kind) == "regex":
            if pattern is None:
                raise TTCSyntaxError(
                    'vote ... on regex needs a pattern: on regex "answer: (\\d+)"',
                    _tok_span(self.file, kind),
                )
            return "regex", self._string(pattern).value
        if pattern is not None:
            raise TTCSyntaxError(
                f"vote ... on {kind} takes no pattern (only `on regex \"...\"` does)",
                _tok_span(self.file, pattern),
            )
        return str(kind), None

    def vote_until(self, meta: Any, rule: Token, op: Token, threshold: ast.Expr,
                   min_votes: ast.Expr | None) -> _Until:
        if str(op) != ">=":
            raise TTCSyntaxError(
                f"an anytime vote stops once `{rule}` reaches its threshold: "
                f"write `until {rule} >= X`, not '{op}'",
                _tok_span(self.file, op),
            )
        return str(rule), threshold, min_votes

    def resample_to(self, meta: Any, count: ast.Expr) -> ast.Expr:
        return count

    def by_softmax(self, meta: Any, temperature: ast.Expr) -> tuple[str, ast.Expr]:
        return "softmax", temperature

    def by_weight(self, meta: Any) -> tuple[str, None]:
        return "weight", None

    def resample_method(self, meta: Any, word: Token) -> str:
        return str(word)


# ---- syntax errors ----

_TOKEN_NAMES = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "TYPE": f"a type ({or_list(PARAM_TYPES)})",
    "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/' or '%'",
    "AGG_KIND": or_list(AGGREGATIONS),
    "PRUNE_KEY": or_list(PRUNE_ORDERS),
    "PER_KIND": or_list(PRUNE_GROUPS),
    "EXTRACTOR": or_list(EXTRACTORS),
    "STOP_RULE": or_list(STOP_RULES),
    "BUDGET_STMT": "budget",
    "WEIGHTED": "'weighted'",
    "$END": "the end of the file",
}

# The grammar's whole-word lists: what each is called when a word is not one of them.
_WORD_LISTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "AGG_KIND": ("aggregation", AGGREGATIONS),
    "PRUNE_KEY": ("prune key", PRUNE_ORDERS),
    "PER_KIND": ("prune group", PRUNE_GROUPS),
    "EXTRACTOR": ("extractor", EXTRACTORS),
}

# Groups of terminals named together in "expected ..." lists, so a message stays short.
_STATEMENT_STARTS = frozenset({"NAME", "IF", "REPEAT", "RETURN", "BUDGET_STMT", "EXPECT"})
_EXPRESSION_STARTS = frozenset({
    "NAME", "INT", "FLOAT", "STRING", "LONG_STRING", "LPAR", "LSQB", "MINUS",
    *(word.upper() for word in RESERVED_NAMES),
})
_OPERATORS = frozenset({"ADD_OP", "MUL_OP", "COMP_OP", "AND", "OR", "VBAR"})
# Opt-in clauses an error message does not suggest (they are documented; listing them after
# every vote would only lengthen the message).
_UNLISTED = frozenset({"COUNTING_UNFINISHED"})


def _describe(term: str) -> str:
    if term in _TOKEN_NAMES:
        return _TOKEN_NAMES[term]
    for t in _parser().terminals:
        if t.name == term and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return term.lower()


def _expected_list(expected: set[str]) -> str:
    """What the parser could accept, punctuation and keywords first, then the groups."""
    terms = {t for t in expected if (not t.startswith("_") or t == "$END") and t not in _UNLISTED}
    groups: list[str] = []
    if {"IF", "REPEAT", "RETURN"} <= terms:
        terms -= _STATEMENT_STARTS
        groups.append("a new statement")
    if len(terms & _EXPRESSION_STARTS) >= 5:
        terms -= _EXPRESSION_STARTS
        groups.insert(0, "an expression")
    if terms & _OPERATORS:
        terms -= _OPERATORS
        terms.discard("LPAR")  # only `name(` of a call: never what was meant here
        groups.insert(0, "an operator")
    names = sorted(
        (_describe(t) for t in terms),
        key=lambda d: (not d.startswith("'") or d[1:-1].isalpha(), d),
    )
    names = list(dict.fromkeys(names)) + groups
    if not names:
        return "something else"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _accepted(exc: UnexpectedInput) -> set[str]:
    """The terminals the parser really accepts at the error (LALR's own list can be wider)."""
    parser = getattr(exc, "interactive_parser", None)
    if parser is not None:
        try:
            return set(parser.accepts())
        except Exception:  # the precise set is an improvement only
            pass
    return set(getattr(exc, "expected", ()) or ())


def _code_only(source: str) -> str:
    """`source` with strings and comments blanked out (same length, newlines kept)."""
    return re.sub(
        r'"""(?:[^"\\]|\\.|"(?!""))*(?:"""|$)|"(?:[^"\\\n]|\\.)*"?|#[^\n]*',
        lambda m: re.sub(r"[^\n]", " ", m.group(0)),
        source,
    )


_EXPONENT = re.compile(r"(?<![\w.])(?:\d+\.\d*|\.\d+|\d+)[eE][+-]?\d+\b")


_KEYWORD_AS_NAME = re.compile(
    r"(?:^|[{};(,]|\s)(" + "|".join(sorted(RESERVED_NAMES)) + r")\s*(?:=(?!=)|:)", re.M
)


def _keyword_hint(code: str, upto: int) -> str:
    """A note about a keyword bound as a name before `upto` (`score = ...`): the binding parses,
    but every later use of the name reads as the keyword."""
    m = _KEYWORD_AS_NAME.search(code, 0, upto)
    if m is None:
        return ""
    line = code.count("\n", 0, m.start(1)) + 1
    return f" (note: '{m.group(1)}' at line {line} is a keyword and cannot name a value; rename it)"


def _exponent_hint(code: str, upto: int) -> str:
    """A note about a number written with an exponent before `upto` (`1e-3` reads as `1`,
    the name `e`, `-`, `3`), which is the usual cause of a puzzling error after it."""
    found = [m for m in _EXPONENT.finditer(code, 0, upto)]
    if not found:
        return ""
    m = found[-1]
    text = m.group(0)
    line = code.count("\n", 0, m.start()) + 1
    value = format(Decimal(text), "f")
    if "." not in value and ("." in text.split("e")[0].split("E")[0] or "-" in text):
        value += ".0"
    return f" (note: numbers have no exponent form: '{text}' at line {line} must be written {value})"


def _open_bracket(source: str, upto: int) -> tuple[str, int, int] | None:
    """The innermost bracket still open before offset `upto`: (char, line, col)."""
    stack: list[tuple[str, int, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    code = _code_only(source[: min(upto, len(source))])
    line, col = 1, 1
    for ch in code:
        if ch in "([{":
            stack.append((ch, line, col))
        elif ch in ")]}" and stack and stack[-1][0] == pairs[ch]:
            stack.pop()
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    return stack[-1] if stack else None


def _still_open(opened: tuple[str, int, int]) -> str:
    closer = {"(": ")", "[": "]", "{": "}"}[opened[0]]
    return f" (the '{opened[0]}' opened at line {opened[1]} is still open: close it with '{closer}')"


def _syntax_error(exc: UnexpectedInput, source: str, file: str) -> TTCSyntaxError:
    line = exc.line if exc.line and exc.line > 0 else max(1, source.count("\n") + 1)
    col = exc.column if exc.column and exc.column > 0 else 1
    pos = exc.pos_in_stream if exc.pos_in_stream is not None else len(source)
    code = _code_only(source)
    if isinstance(exc, UnexpectedCharacters):
        ch = source[pos] if pos < len(source) else ""
        if ch == '"' and source.startswith('"""', pos - 2):
            msg = "unterminated triple-quoted string: close it with '\"\"\"'"
            line, col = line, max(1, col - 2)
        elif ch == '"':
            msg = "unterminated string: close it with a matching '\"' (use \"\"\"...\"\"\" for text over several lines)"
        else:
            msg = f"unexpected character {ch!r}"
        return TTCSyntaxError(msg + _exponent_hint(code, pos), Span(file, line, col, line, col + 1), source)
    expected = _accepted(exc)
    token = getattr(exc, "token", None)
    if isinstance(exc, UnexpectedEOF) or token is None or token.type == "$END":
        lines = source_lines(source)
        if len(lines) > 1 and lines[-1] == "":  # the break that ends the last line
            lines.pop()
        line = len(lines)
        col = len(lines[-1]) + 1
        opened = _open_bracket(source, len(source))
        msg = f"unexpected end of file; expected {_expected_list(expected)}"
        if opened:
            msg += _still_open(opened)
        hints = _exponent_hint(code, len(source)) + _keyword_hint(code, len(source))
        return TTCSyntaxError(msg + hints, Span(file, line, col, line, col + 1), source)
    shown = str(token).split("\n")[0]
    width = len(shown) or 1
    msg = f"unexpected {shown!r}; expected {_expected_list(expected)}"
    opened = _open_bracket(source, pos)
    word_start = pos
    while word_start > 0 and (source[word_start - 1].isalnum() or source[word_start - 1] == "_"):
        word_start -= 1
    if token.type == "NAME" and expected == {"TYPE"}:
        msg = f"unknown type '{shown}'; expected {or_list(PARAM_TYPES)}"
    elif token.type == "NAME" and len(expected) == 1 and next(iter(expected)) in _WORD_LISTS:
        what, words = _WORD_LISTS[next(iter(expected))]
        close = difflib.get_close_matches(shown, words, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; expected {or_list(words)}"
        msg = f"unknown {what} '{shown}'{hint}"
    elif token.type in ("TOKENS", "BUDGET_STMT"):
        msg = (
            "`budget N tokens` is a statement of its own and cannot stand here; "
            "a step takes `budget N` without 'tokens'"
        )
    elif expected == {"STOP_RULE"}:
        msg += (
            "; an `until` right after a vote is the vote's own, `vote ... until agreement >= X`"
            " (put a vote that ends a repeat count in parentheses)"
        )
    elif token.type == "COMP_OP" and "COMP_OP" not in expected:
        msg = f"unexpected {shown!r}: comparisons do not chain; write `a < b and b < c`"
    elif token.type == "EQUAL" and "COMP_OP" in expected:
        msg = "unexpected '=': to compare, write '=='; a single '=' binds a name"
    elif token.type == "INT" and expected == {"EQUAL"} and re.search(r"\bbudget\s*$", code[:pos]):
        msg = (
            f"a strategy budget is written `budget {shown} tokens`; "
            "a step's own budget goes right after the step, e.g. `sample 4 from p budget 500`"
        )
    elif token.type == "NAME" and word_start < pos and source[word_start:pos] in PARAM_TYPES:
        word = source[word_start : pos + len(shown)]
        msg = f"unknown type '{word}'; expected {or_list(PARAM_TYPES)}"
        col -= pos - word_start
        width = len(word)
    elif token.type in ("RPAR", "RSQB", "RBRACE") and (opened is None or opened[0] != {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}[token.type]):
        if opened is None or token.type != "RBRACE":
            msg = f"unexpected {shown!r}: no '{ {'RPAR': '(', 'RSQB': '[', 'RBRACE': '{'}[token.type]}' is open here"
        if opened is not None:
            msg += _still_open(opened)
    elif opened and token.type == "LBRACE" and opened[0] != "{":
        msg += _still_open(opened)
    hints = _exponent_hint(code, pos) + _keyword_hint(code, pos)
    return TTCSyntaxError(msg + hints, Span(file, line, col, line, col + width), source)
