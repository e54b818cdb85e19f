"""The canonical layout of `.ttc` source: `format_module(ast) -> str` and `format_source(text)`.

Promises:

* `parse(format_module(m)) == m` for every module `m` the parser can produce (spans aside), and
  formatting is idempotent: `format_source(format_source(s)) == format_source(s)`.
* Layout: imports first, then the strategies, one blank line apart; 4-space indentation, one
  statement per line; a statement-level pipeline printed one `| step` per continuation line with
  the bars aligned under the `=` (or under `return`'s expression); a `with` list that would pass
  100 columns continues after a comma, two levels deeper; `else if` chains; parentheses only
  where the grammar needs them (operator precedence, and the few places where a step or call
  would take a clause or operator that follows it, e.g. `score (sample 2 from p) with prm`).
* Strings keep the form the author chose: a triple-quoted string is printed as an indented
  triple-quoted block when that reproduces its value exactly (checked by dedenting it again),
  otherwise as a one-line string with escapes; one-line strings stay one-line.

`format_module` sees only the AST, so it drops comments and blank lines.  `format_source` (what
`ttc fmt` uses) keeps them: each own-line comment stays before the statement (or closing brace)
that follows it, each end-of-line comment stays on the line of the code it follows, and a single
blank line between statements is kept.  A comment written inside a multi-line expression moves
to just before that statement.  Neither function checks semantics: any program that parses can
be formatted.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeGuard

from lark import Lark, Token

from ttcdsl import ast
from ttcdsl.parse import dedent_triple, grammar_text, parse, unescape
from ttcdsl.span import NO_SPAN
from ttcdsl.vocabulary import RESAMPLE_METHODS, SCORERS

__all__ = ["INDENT", "format_module", "format_source"]

INDENT = "    "

# Binding levels, loosest first (grammar: pipeline < or < and < not < comparison < +,- <
# *,/,% < unary - < atom).  A sub-expression below the level its position needs is parenthesised.
_PIPE, _OR, _AND, _NOT, _CMP, _SUM, _TERM, _FACTOR, _ATOM = range(9)
_BINARY_LEVEL = {"+": _SUM, "-": _SUM, "*": _TERM, "/": _TERM, "%": _TERM}

# Tokens that may follow an expression, named for the follow/absorb analysis: "+" stands for
# both additive operators, "*" for the multiplicative ones, keywords for themselves.
_SUM_TAIL = frozenset({"+", "*"})
_CLOSE = frozenset({")"})
# What an operand printed last at each level would take in when the next token is it.
_TAILS = {_SUM: _SUM_TAIL, _OR: frozenset({*_SUM_TAIL, "COMP", "and", "or"})}
_NOTHING: frozenset[str] = frozenset()


def format_module(module: ast.Module) -> str:
    """The canonical source of `module`, without comments."""
    return _Formatter(_Notes()).module(module)


def format_source(source: str, file: str = "<string>") -> str:
    """Parse `source` and return it in canonical layout, keeping comments and single blank lines.

    Raises `TTCSyntaxError` (from the parser) when `source` does not parse."""
    module = parse(source, file)
    return _Formatter(_attach(module, _scan(source), source)).module(module)


# ---- literals ----


def _float(value: float) -> str:
    """A FLOAT token (digits '.' digits, no exponent) that reads back as exactly `value`."""
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
_ESC_RE = re.compile(r'[\\"\n\t\r\0]')
_LONG_STRING = re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"""', re.S)


def _one_line(value: str) -> str:
    return '"' + _ESC_RE.sub(lambda m: _ESC[m.group(0)], value) + '"'


def _escape_triple_line(line: str) -> str:
    out = line.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\0")
    # A quote followed by another quote could close the string: escape all but the last of a run.
    return re.sub(r'"(?=")', '\\\\"', out)


def _triple(value: str, indent: str) -> str | None:
    """`value` as a triple-quoted block indented by `indent`, or None if no such block reads
    back as exactly `value` (e.g. every line starts with spaces: dedenting would remove them)."""
    groups: list[str] = []
    for line in value.split("\n"):
        escaped = _escape_triple_line(line)
        # A line of spaces only would be emptied by dedenting: glue it to the previous line.
        if groups and escaped and not escaped.strip(" "):
            groups[-1] += "\\n" + escaped
        else:
            groups.append(escaped)
    body = "\n".join(indent + g if g else "" for g in groups)
    candidates = ['"""\n' + body + "\n" + indent + '"""']
    if "\n" not in value:
        candidates.insert(0, '"""' + _escape_triple_line(value).replace('"', '\\"') + '"""')
    for text in candidates:
        if _LONG_STRING.fullmatch(text) and _reads_as(text[3:-3], value):
            return text
    return None


def _reads_as(body: str, value: str) -> bool:
    try:
        return unescape(dedent_triple(body), NO_SPAN) == value
    except Exception:  # an escape that does not read back: not a candidate
        return False


# ---- comments and blank lines (format_source only) ----


@dataclass
class _Notes:
    """What `format_source` keeps beside the AST, keyed by `id()` of AST nodes (or of a block
    owner for its closing brace: `("end", id)`, `("then", id)`)."""

    leading: dict[Any, list[str]] = field(default_factory=dict)
    first_line: dict[Any, int] = field(default_factory=dict)  # source line of the first leading
    # end-of-line comments: key -> {relative source line of the key's node: [comments]}
    trailing: dict[Any, dict[int, list[str]]] = field(default_factory=dict)
    blank_before: set[Any] = field(default_factory=set)
    # source line count of each simple statement (to keep a trailing comment on its own line)
    height: dict[Any, int] = field(default_factory=dict)
    eof: list[str] = field(default_factory=list)


class _Collector:
    def __init__(self) -> None:
        self.tokens: list[Token] = []

    def __call__(self, tok: Token) -> Token:
        self.tokens.append(tok)
        return tok


_SCAN_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _scanner() -> tuple[Lark, _Collector]:
    sink = _Collector()
    callbacks = {"COMMENT": sink, "RBRACE": sink, "LONG_STRING": sink}
    return Lark(grammar_text(), parser="lalr", lexer_callbacks=callbacks), sink


def _scan(source: str) -> list[Token]:
    """The comments, closing braces and triple-quoted strings of a source that parses."""
    parser, sink = _scanner()
    with _SCAN_LOCK:
        sink.tokens = []
        parser.parse(source)
        return sink.tokens


@dataclass
class _Anchor:
    line: int
    key: Any
    node: Any = None  # a statement, strategy or import; None for a closing brace


def _anchors(module: ast.Module, closers: Sequence[Token]) -> list[_Anchor]:
    """Everything a comment can attach to, in printing order."""
    out: list[_Anchor] = [_Anchor(i.span.line, id(i), i) for i in module.imports]

    def closer_after(line: int, col: int) -> int:
        for tok in closers:
            if (tok.line or 0, tok.column or 0) >= (line, col):
                return tok.line or line
        return line

    def block(stmts: Sequence[ast.Stmt]) -> None:
        for st in stmts:
            out.append(_Anchor(st.span.line, id(st), st))
            if isinstance(st, ast.Repeat):
                block(st.body)
                out.append(_Anchor(st.span.end_line, ("end", id(st))))
            elif isinstance(st, ast.If):
                block(st.then)
                last = st.then[-1].span if st.then else st.cond.span
                then_line = closer_after(last.end_line, last.end_col) if st.orelse else st.span.end_line
                out.append(_Anchor(then_line, ("then", id(st))))
                block(st.orelse)
                if st.orelse and not _is_else_if(st):
                    out.append(_Anchor(st.span.end_line, ("end", id(st))))

    for s in module.strategies:
        out.append(_Anchor(s.span.line, id(s), s))
        block(s.body)
        out.append(_Anchor(s.span.end_line, ("end", id(s))))
    return out


def _is_else_if(st: ast.If) -> bool:
    return len(st.orelse) == 1 and isinstance(st.orelse[0], ast.If)


def _simple_statements(anchors: Iterable[_Anchor]) -> list[_Anchor]:
    return [a for a in anchors if isinstance(a.node, (ast.Assign, ast.Return, ast.BudgetStmt, ast.Expect))]


def _attach(module: ast.Module, tokens: Sequence[Token], source: str) -> _Notes:
    notes = _Notes()
    comments = [t for t in tokens if t.type == "COMMENT"]
    anchors = _anchors(module, [t for t in tokens if t.type == "RBRACE"])
    by_line = sorted(range(len(anchors)), key=lambda i: (anchors[i].line, i))
    simple = _simple_statements(anchors)
    lines = source.split("\n")
    in_string = {
        line
        for t in tokens
        if t.type == "LONG_STRING"
        for line in range((t.line or 0) + 1, (t.end_line or 0) + 1)
    }
    comment_lines = {t.line for t in comments if not lines[(t.line or 1) - 1][: (t.column or 1) - 1].strip()}

    def code_lines(node: Any) -> list[int]:
        """The lines of a statement that print as lines: code, or text of a string."""
        return [
            n for n in range(node.span.line, node.span.end_line + 1)
            if n in in_string or (lines[n - 1].strip() and n not in comment_lines)
        ]

    def containing(line: int) -> _Anchor | None:
        """The simple statement whose source spans `line` (after its first line)."""
        for a in simple:
            if a.node.span.line < line <= a.node.span.end_line:
                return a
        return None

    def header_of(line: int) -> _Anchor | None:
        """The innermost strategy/repeat/if whose header spans `line`."""
        best = None
        for a in anchors:
            node = a.node
            if isinstance(node, (ast.Strategy, ast.Repeat, ast.If)) and node.span.line <= line <= node.span.end_line:
                best = a
        return best

    for tok in comments:
        line, text = tok.line or 1, str(tok).rstrip()
        own_line = not lines[line - 1][: (tok.column or 1) - 1].strip()
        if own_line:
            inside = containing(line)
            target = inside or next((anchors[i] for i in by_line if anchors[i].line > line), None)
            blank = line >= 2 and not lines[line - 2].strip()
            if target is None:
                if blank:
                    notes.eof.append("")
                notes.eof.append(text)
            else:
                leading = notes.leading.setdefault(target.key, [])
                if blank and leading:
                    leading.append("")  # keep one blank line between comment paragraphs
                leading.append(text)
                notes.first_line.setdefault(target.key, line)
            continue
        starting = [a for a in anchors if a.line == line]
        if starting:
            owner, rel = starting[-1], 0
        elif (inside := containing(line)) is not None:
            owner, rel = inside, code_lines(inside.node).index(line)
        elif (header := header_of(line)) is not None:
            owner, rel = header, 0
        else:
            notes.eof.append(text)
            continue
        notes.trailing.setdefault(owner.key, {}).setdefault(rel, []).append(text)

    for a in simple:
        notes.height[a.key] = len(code_lines(a.node))
    for a in anchors:
        first = min(a.line, notes.first_line.get(a.key, a.line))
        if first >= 2 and not lines[first - 2].strip():
            notes.blank_before.add(a.key)
    return notes


# ---- the printer ----


@dataclass(frozen=True)
class _Out:
    """A printed expression: its text, its binding level, and the tokens its right end would
    swallow if one of them came next (e.g. a `prune ... keep 2` takes `+`, `by` and `per`)."""

    text: str
    level: int
    absorbs: frozenset[str] = _NOTHING


class _Formatter:
    def __init__(self, notes: _Notes) -> None:
        self.notes = notes
        self.indent = ""

    # ---- declarations ----

    def module(self, m: ast.Module) -> str:
        out: list[str] = []
        for i, imp in enumerate(m.imports):
            if i and id(imp) in self.notes.blank_before:
                out.append("")
            self.leading(out, id(imp))
            out.append(self.trail(id(imp), [f"import {_one_line(imp.path)}"])[0])
        for s in m.strategies:
            if out:
                out.append("")
            self.leading(out, id(s))
            out += self.strategy(s)
        if self.notes.eof:
            eof = self.notes.eof
            if not out and eof[0] == "":
                eof = eof[1:]
            out += eof
        return "\n".join(out) + "\n" if out else ""

    def strategy(self, s: ast.Strategy) -> list[str]:
        params = ", ".join(self.param(p) for p in s.params)
        head = _flat(f"strategy {s.name}({params}) {{")
        self.indent = ""
        return self.end_trail(("end", id(s)), self.block_lines(head, s.body, ("end", id(s)), id(s), ""))

    def param(self, p: ast.Param) -> str:
        text = f"{p.name}: {p.type}"
        if p.default is not None:
            self.indent = ""
            text += " = " + _flat(self.sub(p.default, _PIPE, frozenset({",", ")"})).text)
        return text

    # ---- statements ----

    def leading(self, out: list[str], key: Any, indent: str = "") -> None:
        for text in self.notes.leading.get(key, ()):
            out.append(indent + text if text else "")

    def trail(self, key: Any, lines: list[str]) -> list[str]:
        """Append `key`'s end-of-line comments to `lines` (keeping their relative line when the
        statement kept its height, else on the first or the last line)."""
        found = self.notes.trailing.get(key)
        if not found:
            return lines
        lines = list(lines)
        height = self.notes.height.get(key, 1)
        in_string = _lines_ending_in_string(lines)
        for rel, texts in sorted(found.items()):
            # Same height: same line.  Else a comment of the statement's last source line goes
            # on the last printed line, of its first line on the first, any other on the last.
            last = len(lines) - 1
            i = rel if len(lines) == height else (0 if rel == 0 and height > 1 else last)
            if i >= len(lines) or in_string[i]:
                i = len(lines) - 1
            lines[i] += "  " + "  ".join(texts)
        return lines

    def block_lines(self, head: str, body: Sequence[ast.Stmt], end_key: Any, head_key: Any,
                    indent: str) -> list[str]:
        """`head {`, the statements one level deeper, and the closing `}` at `indent`."""
        closing = self.notes.leading.get(end_key, [])
        if not body and not closing:
            return self.trail(head_key, [indent + head + "}"])
        out = self.trail(head_key, [indent + head])
        inner = indent + INDENT
        for i, st in enumerate(body):
            if i and id(st) in self.notes.blank_before:
                out.append("")
            self.leading(out, id(st), inner)
            follow = _statement_start(body[i + 1]) if i + 1 < len(body) else frozenset({"}"})
            out += self.statement(st, inner, follow)
        if closing and body and end_key in self.notes.blank_before:
            out.append("")
        out += [inner + c if c else "" for c in closing]
        return [*out, indent + "}"]

    def statement(self, st: ast.Stmt, indent: str, follow: frozenset[str]) -> list[str]:
        self.indent = indent
        match st:
            case ast.BudgetStmt():
                tokens = st.tokens if st.expr is None else f"({self.sub(st.expr, _SUM, frozenset({')'})).text})"
                return self.trail(id(st), [f"{indent}budget {tokens} tokens"])
            case ast.Assign():
                return self.trail(id(st), self.value_lines(f"{indent}{st.name} = ", st.value, follow))
            case ast.Return():
                return self.trail(id(st), self.value_lines(f"{indent}return ", st.value, follow))
            case ast.Expect():
                return self.trail(id(st), self.value_lines(f"{indent}expect ", st.cond, follow))
            case ast.Repeat():
                times = self.sub(st.times, _PIPE, frozenset({"until", "{"} if st.until else {"{"}))
                head = _flat(f"repeat {times.text}")
                if st.until is not None:
                    head += " until " + _flat(self.sub(st.until, _PIPE, frozenset({"{"})).text)
                lines = self.block_lines(head + " {", st.body, ("end", id(st)), id(st), indent)
                return self.end_trail(("end", id(st)), lines)
            case ast.If():
                return self.if_lines(st, indent, "if ")
        raise AssertionError(f"unhandled statement {st!r}")

    def end_trail(self, key: Any, lines: list[str]) -> list[str]:
        found = self.notes.trailing.get(key)
        if found:
            lines = list(lines)
            lines[-1] += "  " + "  ".join(t for texts in found.values() for t in texts)
        return lines

    def if_lines(self, st: ast.If, indent: str, keyword: str) -> list[str]:
        self.indent = indent
        cond = _flat(self.sub(st.cond, _PIPE, frozenset({"{"})).text)
        lines = self.block_lines(f"{keyword}{cond} {{", st.then, ("then", id(st)), id(st), indent)
        if not st.orelse:
            return self.end_trail(("then", id(st)), lines)
        closing = lines.pop()  # "}" of the then-block; the else goes on the same line
        if _is_else_if(st):
            inner = st.orelse[0]
            assert isinstance(inner, ast.If)
            lines += self.leading_of_else(inner, indent)
            rest = self.if_lines(inner, indent, closing.strip() + " else if ")
            rest[0] = self.end_trail(("then", id(st)), [rest[0]])[0]
            return lines + rest
        rest = self.block_lines(closing.strip() + " else {", st.orelse, ("end", id(st)), ("then", id(st)), indent)
        return lines + self.end_trail(("end", id(st)), rest)

    def leading_of_else(self, inner: ast.If, indent: str) -> list[str]:
        # Comments written just before `if` of an `else if` (e.g. in `else { # c \n if ...`)
        # go before the `} else if` line, inside the then-block, as comments of that brace.
        return [indent + INDENT + c if c else "" for c in self.notes.leading.get(id(inner), ())]

    def value_lines(self, prefix: str, value: ast.Expr, follow: frozenset[str]) -> list[str]:
        """`prefix` + the value; a pipeline gets one `| step` per line, bars under the `=`."""
        chain: list[ast.Expr] = []
        head = value
        while _piped(head):
            chain.append(head)
            head = head.branches
        indent = len(prefix) - len(prefix.lstrip(" "))
        if not chain:
            return _wrap(prefix + self.sub(value, _PIPE, follow).text, indent)
        last = self.pipe_step(chain[0], follow)
        if last.absorbs & follow:  # the last step would swallow the next statement's first word
            return _wrap(prefix + self.sub(value, _PIPE, follow).text, indent)
        pad = " " * (len(prefix) - 2)
        lines = _wrap(prefix + self.sub(head, _PIPE, frozenset({"|"})).text, indent)
        for step in reversed(chain[1:]):
            lines += _wrap(f"{pad}| {self.pipe_step(step, frozenset({'|'})).text}", len(pad))
        lines += _wrap(f"{pad}| {last.text}", len(pad))
        return lines

    # ---- expressions ----

    def sub(self, e: ast.Expr, level: int, follow: frozenset[str]) -> _Out:
        """`e` printed where the grammar wants `level` and the next token is one of `follow`."""
        out = self.emit(e, follow)
        if out.level >= level and not (out.absorbs & follow):
            return out
        inner = self.emit(e, _CLOSE)
        return _Out(f"({inner.text})", _ATOM)

    def emit(self, e: ast.Expr, follow: frozenset[str]) -> _Out:
        match e:
            case ast.IntLit():
                return _Out(str(e.value), _ATOM)
            case ast.FloatLit():
                return _Out(_float(e.value), _ATOM)
            case ast.BoolLit():
                return _Out("true" if e.value else "false", _ATOM)
            case ast.StrLit():
                return _Out(self.string(e), _ATOM)
            case ast.Name():
                return _Out(e.id, _ATOM)
            case ast.ListLit():
                items = self.items(e.items, "]")
                return _Out(f"[{items}]", _ATOM)
            case ast.Call():
                args = [*e.args, *e.kwargs]
                inner = self.items(args, ")")
                if e.budget is None:
                    return _Out(f"{e.func}({inner})", _ATOM, frozenset({"budget"}))
                return _Out(f"{e.func}({inner}) budget {e.budget}", _ATOM, frozenset({"tokens"}))
            case ast.BinOp():
                lvl = _BINARY_LEVEL[e.op]
                token = "+" if lvl == _SUM else "*"
                left = self.sub(e.left, lvl, frozenset({token}))
                right = self.sub(e.right, lvl + 1, follow)
                return _Out(f"{left.text} {e.op} {right.text}", lvl, right.absorbs)
            case ast.Compare():
                left = self.sub(e.left, _SUM, frozenset({"COMP"}))
                right = self.sub(e.right, _SUM, follow)
                return _Out(f"{left.text} {e.op} {right.text}", _CMP, right.absorbs)
            case ast.BoolOp():
                lvl = _OR if e.op == "or" else _AND
                left = self.sub(e.left, lvl, frozenset({e.op}))
                right = self.sub(e.right, lvl + 1, follow)
                return _Out(f"{left.text} {e.op} {right.text}", lvl, right.absorbs)
            case ast.Not():
                operand = self.sub(e.operand, _NOT, follow)
                return _Out(f"not {operand.text}", _NOT, operand.absorbs)
            case ast.Neg():
                operand = self.sub(e.operand, _FACTOR, follow)
                sep = " " if operand.text.startswith("-") else ""
                return _Out(f"-{sep}{operand.text}", _FACTOR, operand.absorbs)
            case ast.Sample() | ast.Expand() | ast.Score() | ast.Prune() | ast.Vote() | ast.Resample():
                if _piped(e):
                    left = self.sub(e.branches, _PIPE, frozenset({"|"}))
                    step = self.pipe_step(e, follow)
                    return _Out(f"{left.text} | {step.text}", _PIPE, step.absorbs)
                return self.seq(_step_parts(e, with_input=True), follow, _ATOM)
        raise AssertionError(f"unhandled expression {e!r}")

    def pipe_step(self, e: ast.Expr, follow: frozenset[str]) -> _Out:
        return self.seq(_step_parts(e, with_input=False), follow, _PIPE)

    def items(self, items: Sequence[Any], closer: str) -> str:
        texts = []
        for i, item in enumerate(items):
            follow = frozenset({","}) if i + 1 < len(items) else frozenset({closer})
            if isinstance(item, ast.KwArg):
                value = self.sub(item.value, _PIPE, follow).text
                texts.append(f"{item.name} = {value}")
            else:
                texts.append(self.sub(item, _PIPE, follow).text)
        return ", ".join(texts)

    def seq(self, parts: list[Any], follow: frozenset[str], level: int) -> _Out:
        """Print a step from its parts: keywords (str), sub-expressions (`_Sub`) and the set of
        clause keywords it would still accept at its end (`_Open`)."""
        texts: list[str] = []
        absorbs: frozenset[str] = _NOTHING
        words = [p for p in parts if not isinstance(p, _Open)]
        for i, part in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else None
            if isinstance(part, _Sub):
                after = follow if nxt is None else frozenset({_first_token(nxt)})
                out = self.sub(part.expr, part.level, after)
                texts.append(out.text)
                absorbs = out.absorbs | _TAILS.get(part.reads or part.level, _NOTHING)
            else:
                texts.append(part)
                absorbs = frozenset({"tokens"}) if part.startswith("budget ") else _NOTHING
        tail = next((p.words for p in parts if isinstance(p, _Open)), _NOTHING)
        text = ""
        for i, t in enumerate(texts):
            if not text or t == ",":
                text += t
            else:  # a long `with` list may break after its commas (see `_wrap`)
                text += (_BREAK if texts[i - 1] == "," else " ") + t
        return _Out(text, level, absorbs | tail)

    def string(self, e: ast.StrLit) -> str:
        if e.triple:
            block = _triple(e.value, self.indent + INDENT)
            if block is not None:
                return block
        return _one_line(e.value)


_BREAK = "\0"  # "a space, or a line break": NUL never appears in printed strings (escaped)
WIDTH = 100


def _flat(text: str) -> str:
    return text.replace(_BREAK, " ")


def _wrap(text: str, indent: int) -> list[str]:
    """Fill `text` to `WIDTH` columns, breaking only at `_BREAK`s; continuation lines are
    indented two levels deeper than `indent`."""
    chunks = text.split(_BREAK)
    lines = [chunks[0]]
    cont = " " * (indent + 2 * len(INDENT))
    for chunk in chunks[1:]:
        current = lines[-1].rsplit("\n", 1)[-1]
        first = chunk.split("\n", 1)[0]
        if len(current) + 1 + len(first) <= WIDTH:
            lines[-1] += " " + chunk
        else:
            lines.append(cont + chunk)
    return "\n".join(lines).split("\n")


def _lines_ending_in_string(lines: Sequence[str]) -> list[bool]:
    """For each printed line: does it end inside a triple-quoted string?  (A comment appended
    there would become part of the text.)"""
    out: list[bool] = []
    inside = False
    for line in lines:
        i = 0
        while i < len(line):
            if line[i] == "\\":
                i += 2
            elif line.startswith('"""', i):
                inside = not inside
                i += 3
            elif line[i] == '"' and not inside:
                j = i + 1
                while j < len(line) and line[j] != '"':
                    j += 2 if line[j] == "\\" else 1
                i = j + 1
            else:
                i += 1
        out.append(inside)
    return out


@dataclass(frozen=True)
class _Sub:
    expr: ast.Expr
    level: int
    # The level the grammar reads there, when looser than the one printed: what follows an
    # operand at the end of a step is read into it up to that level.
    reads: int | None = None


@dataclass(frozen=True)
class _Open:
    words: frozenset[str]


def _first_token(part: Any) -> str:
    if isinstance(part, _Sub):
        raise AssertionError("two sub-expressions in a row")
    word: str = part.split(" ", 1)[0]
    return "STRING" if word.startswith('"') else word


def _piped(e: ast.Expr) -> TypeGuard[ast.Expand | ast.Score | ast.Prune | ast.Vote | ast.Resample]:
    return isinstance(e, (ast.Expand, ast.Score, ast.Prune, ast.Vote, ast.Resample)) and e.piped


def _statement_start(st: ast.Stmt) -> frozenset[str]:
    """The first token of a statement, as far as the expression before it could swallow it."""
    if isinstance(st, ast.Assign):
        return frozenset({st.name})
    return frozenset({"statement"})


def _settings_parts(settings: Sequence[ast.Setting]) -> list[Any]:
    parts: list[Any] = []
    for i, s in enumerate(settings):
        parts += ["with" if i == 0 else ",", f"{s.key} =", _Sub(s.value, _SUM)]
    return parts


def _step_parts(e: Any, with_input: bool) -> list[Any]:
    """The printed parts of a step, with the clause keywords still open at its end."""
    parts: list[Any] = []
    match e:
        case ast.Sample():
            parts = ["sample", _Sub(e.count, _SUM), "from", _Sub(e.prompt, _FACTOR)]
            parts += _settings_parts(e.settings)
            parts += _budget_parts(e.budget, bool(e.settings), "with")
        case ast.Expand():
            parts = ["expand", *_input(e, with_input), "by", _Sub(e.count, _SUM)]
            if e.inject is not None:
                parts += ["after", _Sub(e.inject, _FACTOR)]
            parts += _settings_parts(e.settings)
            parts += _budget_parts(e.budget, bool(e.settings), "with")
            if e.inject is None and not e.settings and e.budget is None:
                parts[-1] = _Open(frozenset({"budget", "with", "after"}))
        case ast.Score():
            parts = ["score", *_input(e, with_input), "with", _scorer(e.scorer)]
            if e.agg is not None:
                parts.append(f"agg {e.agg}")
            parts += _budget_parts(e.budget, e.agg is not None, "agg")
        case ast.Prune():
            parts = ["prune", *_input(e, with_input), "keep", _Sub(e.keep, _SUM)]
            if e.by is not None:
                parts.append(f"by {e.by}")
            if e.per is not None:
                parts.append(f"per {e.per}")
            else:
                parts.append(_Open(frozenset({"per"} if e.by else {"by", "per"})))
        case ast.Vote():
            parts = ["vote", *_input(e, with_input), *_vote_parts(e)]
        case ast.Resample():
            parts = ["resample", *_input(e, with_input), *_resample_parts(e)]
    return parts


def _vote_parts(e: ast.Vote) -> list[Any]:
    parts: list[Any] = []
    if e.on is not None:
        parts.append(f"on {e.on}")
        if e.pattern is not None:
            parts.append(_one_line(e.pattern))
    if e.weighted:
        parts.append("weighted")
    if e.unfinished:
        parts.append("counting unfinished")
    if e.until is None:
        # What the vote would still take; `until` too, so a vote ending a repeat count with an
        # `until` of its own is parenthesised: `repeat (b | vote) until COND`.
        still = {"until"} | ({"counting"} if not e.unfinished else set()) | (
            {"weighted"} if not e.weighted and not e.unfinished else set()) | (
            {"on"} if e.on is None and not e.weighted and not e.unfinished else set())
        return [*parts, _Open(frozenset(still))]
    assert e.threshold is not None
    parts += [f"until {e.until} >=", _Sub(e.threshold, _SUM)]
    if e.min_votes is None:
        return [*parts, _Open(frozenset({"after"}))]
    return [*parts, "after", _Sub(e.min_votes, _SUM)]


def _resample_parts(e: ast.Resample) -> list[Any]:
    parts: list[Any] = []
    if e.count is not None:
        parts += ["to", _Sub(e.count, _SUM)]
    if e.by == "softmax":
        assert e.temperature is not None, "the parser sets a temperature with `by softmax`"
        parts += ["by softmax", _Sub(e.temperature, _SUM)]
    elif e.by is not None:
        parts.append(f"by {e.by}")
    if e.method is not None:
        return [*parts, e.method]
    still = set(RESAMPLE_METHODS) | ({"by"} if e.by is None else set()) | (
        {"to"} if e.by is None and e.count is None else set())
    return [*parts, _Open(frozenset(still))]


def _input(e: Any, with_input: bool) -> list[Any]:
    # The grammar reads any expression short of a pipeline here (its `_operand`); one that is
    # not an atom is still printed in parentheses, which say where the input ends.
    return [_Sub(e.branches, _FACTOR, reads=_OR)] if with_input else []


def _budget_parts(budget: int | None, clause_before: bool, optional: str) -> list[Any]:
    """`budget N`, or what the step still accepts at its end without one: `budget`, and the
    optional clause before it (`with`/`agg`) or, after a `with` list, another `, key = value`."""
    if budget is not None:
        return [f"budget {budget}"]
    if not clause_before:
        return [_Open(frozenset({"budget", optional}))]
    return [_Open(frozenset({"budget", ","} if optional == "with" else {"budget"}))]


def _scorer(s: ast.Scorer) -> str:
    if SCORERS[s.kind].argument is not None:
        return f"{s.kind}({_one_line(s.arg or '')})"
    return s.kind
