"""Hypothesis strategies that generate `.ttc` programs (part of `ttcdsl.testing`).

    programs()          source text of well-typed, runnable programs: every draw checks cleanly
                        and compiles; small sizes (counts 1-4, max_tokens 1-64, loops 1-3,
                        strategy budgets 50-2000) so a simulated run is quick
    modules()           the ASTs behind `programs()`: `format_module(m)` is the text, and
                        `parse(format_module(m)) == m`
    grammar_programs()  any text the grammar derives, tokens separated by whitespace and
                        comments; most of it fails the checker: for robustness properties
    keywords()          the words the grammar reserves somewhere (never generated as names)

The generated programs use one `question: text` parameter (plus optional ints with defaults),
so `--arg question=...` is all a run needs.  `scorers` limits the scorers used (the default
avoids `verifier`, which needs user Python).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from ttcdsl import ast
from ttcdsl.fmt import INDENT, _triple, format_module
from ttcdsl.parse import grammar_text

__all__ = ["grammar_programs", "keywords", "modules", "programs"]

SCORERS = ("prm", "logprob", "judge")
_ALL_SCORERS = ("prm", "logprob", "judge", "verifier")


@functools.lru_cache(maxsize=1)
def keywords() -> frozenset[str]:
    """Every identifier-like word the grammar uses as a keyword, in any position."""
    from lark import Lark

    words: set[str] = {"true", "false"}
    for t in Lark(grammar_text(), parser="lalr").terminals:
        if t.pattern.type == "str" and re.fullmatch(r"[A-Za-z_]\w*", t.pattern.value):
            words.add(t.pattern.value)
        elif t.pattern.type == "re":
            body = t.pattern.value
            if body.startswith("(?:") and body.endswith(")"):
                body = body[3:-1]
            alternatives = body.split("|")
            if all(re.fullmatch(r"[A-Za-z_]\w*", a) for a in alternatives):
                words.update(alternatives)
    words.add("budget")
    return frozenset(words)


_STEMS = ("b", "beams", "p", "x", "chains", "k", "draft", "pool", "a", "prompt_", "_t", "Q", "by")


def _names(draw: st.DrawFn, count: int) -> list[str]:
    """`count` distinct identifiers (a stem and a running number: never a keyword)."""
    stems = draw(st.lists(st.sampled_from(_STEMS), min_size=count, max_size=count))
    return [f"{stem}{i}" for i, stem in enumerate(stems)]


# ---- literals ----

_WORDS = ("Solve", "the", "problem", "step", "by", "answer", "is", "X.", "Think", "carefully:",
          '"quoted"', "a\\b", "{{literal}}", "tab\there", "100%", "", " ")


@st.composite
def _text(draw: st.DrawFn, names: Sequence[str], multiline: bool = True) -> str:
    """Prompt text: words, `{name}` interpolations of `names`, escapes and line breaks."""
    pieces = draw(st.lists(
        st.one_of(
            st.sampled_from(_WORDS),
            st.sampled_from([f"{{{n}}}" for n in names]) if names else st.sampled_from(_WORDS),
            st.just("\n") if multiline else st.just(" "),
        ),
        min_size=1, max_size=8,
    ))
    return " ".join(pieces).strip(" ") or "Solve"


def _string(draw: st.DrawFn, value: str) -> ast.StrLit:
    """A string literal, triple-quoted when the text has lines and a block can hold it."""
    triple = "\n" in value and _triple(value, INDENT * 2) is not None and draw(st.booleans())
    return ast.StrLit(value, triple)


def _float(draw: st.DrawFn, low: int, high: int) -> ast.FloatLit:
    return ast.FloatLit(draw(st.integers(low, high)) / 100)


# ---- the generation context ----


@dataclass
class _Scope:
    """What a statement may refer to while generating one strategy body."""

    texts: list[str] = field(default_factory=list)
    ints: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # unused identifiers, popped as needed
    helpers: list[ast.Strategy] = field(default_factory=list)
    helper_returns: dict[str, str] = field(default_factory=dict)
    scorers: tuple[str, ...] = SCORERS

    def new_name(self) -> str:
        return self.fresh.pop()


def _small_int(draw: st.DrawFn, scope: _Scope, low: int = 1, high: int = 4) -> ast.Expr:
    """An int expression whose value is in [low, high] for any value of the int parameters."""
    choice = draw(st.integers(0, 3)) if scope.ints and low == 1 else 0
    if choice == 0 or choice == 1:
        return ast.IntLit(draw(st.integers(low, high)))
    name = ast.Name(draw(st.sampled_from(scope.ints)))
    if choice == 2:  # (n % high) + 1  stays in [1, high]
        return ast.BinOp("+", ast.BinOp("%", name, ast.IntLit(high)), ast.IntLit(1))
    # (n * 2 - n) % high + 1
    twice = ast.BinOp("-", ast.BinOp("*", name, ast.IntLit(2)), name)
    return ast.BinOp("+", ast.BinOp("%", twice, ast.IntLit(high)), ast.IntLit(1))


def _settings(draw: st.DrawFn, scope: _Scope) -> tuple[ast.Setting, ...]:
    settings = [ast.Setting("max_tokens", ast.IntLit(draw(st.integers(1, 64))))]
    extra = draw(st.lists(
        st.sampled_from(["temperature", "top_p", "top_k", "min_p", "seed", "stop", "step"]),
        unique=True, max_size=3,
    ))
    for key in extra:
        value: ast.Expr
        if key == "temperature":
            value = _float(draw, 0, 150)
        elif key in ("top_p",):
            value = _float(draw, 1, 100)
        elif key == "min_p":
            value = _float(draw, 0, 30)
        elif key == "top_k":
            k = draw(st.integers(-1, 50).filter(lambda v: v != 0))
            value = ast.Neg(ast.IntLit(1)) if k == -1 else ast.IntLit(k)
        elif key == "seed":
            value = ast.IntLit(draw(st.integers(0, 2**31 - 1)))
        elif key == "stop":
            stops = draw(st.lists(st.sampled_from(["\n\n\n", "END", "Question:", "}}"]),
                                  min_size=1, max_size=3, unique=True))
            lits = tuple(ast.StrLit(s) for s in stops)
            value = lits[0] if len(lits) == 1 and draw(st.booleans()) else ast.ListLit(lits)
        else:
            value = ast.StrLit(draw(st.sampled_from(["\n\n", "\n"])))
        settings.append(ast.Setting(key, value))
    return tuple(draw(st.permutations(settings)))


def _step_budget(draw: st.DrawFn) -> int | None:
    return draw(st.one_of(st.none(), st.integers(1, 500)))


def _scorer(draw: st.DrawFn, scope: _Scope) -> ast.Scorer:
    kind = draw(st.sampled_from(scope.scorers))
    if kind == "judge":
        names = ["question", *scope.texts[:2]]
        text = draw(_text(names, multiline=False))
        return ast.Scorer("judge", f"Is this a correct answer? {text}\n{{branch}}\nAnswer yes or no.")
    if kind == "verifier":
        return ast.Scorer("verifier", "ttcdsl_checks.math:verify")
    return ast.Scorer(kind)  # type: ignore[arg-type]


def _pipe_tail(draw: st.DrawFn, scope: _Scope, head: ast.Expr, expand: bool) -> ast.Expr:
    """`head` followed by up to three piped steps; an expand is always followed by a prune so
    that branch sets stay small."""
    expr = head
    if expand:
        inject = draw(st.sampled_from([None, None, ast.StrLit("Wait,"), ast.StrLit(" Let me check.\n")]))
        expr = ast.Expand(expr, _small_int(draw, scope), _settings(draw, scope), _step_budget(draw),
                          piped=draw(st.booleans()), inject=inject)
    scored = False
    if draw(st.booleans()):
        agg = draw(st.sampled_from([None, "last", "min", "mean", "prod"]))
        expr = ast.Score(expr, _scorer(draw, scope), agg, _step_budget(draw), piped=draw(st.booleans()))  # type: ignore[arg-type]
        scored = True
    if expand or draw(st.booleans()):
        by = draw(st.sampled_from(["score", None] if scored else ["logprob", "length"]))
        per = draw(st.sampled_from([None, "root", "parent"]))
        expr = ast.Prune(expr, _small_int(draw, scope), by, per, piped=draw(st.booleans()))  # type: ignore[arg-type]
    return expr


def _sample(draw: st.DrawFn, scope: _Scope) -> ast.Expr:
    prompt: ast.Expr
    if scope.texts and draw(st.booleans()) is True:
        prompt = ast.Name(draw(st.sampled_from(scope.texts)))
    else:
        prompt = _string(draw, draw(_text(["question", *scope.answers[:1], *scope.branches[:1]])))
    sample = ast.Sample(_small_int(draw, scope), prompt, _settings(draw, scope), _step_budget(draw))
    return _pipe_tail(draw, scope, sample, expand=False)


def _branches_expr(draw: st.DrawFn, scope: _Scope) -> ast.Expr:
    kinds = ["sample"]
    if scope.branches:
        kinds += ["pipe", "expand", "builtin"]
        if len(scope.branches) > 1:
            kinds.append("union")
    if any(scope.helper_returns[h.name] == "branches" for h in scope.helpers):
        kinds.append("call")
    kind = draw(st.sampled_from(kinds))
    if kind == "sample":
        return _sample(draw, scope)
    if kind == "call":
        helper = draw(st.sampled_from([h for h in scope.helpers if scope.helper_returns[h.name] == "branches"]))
        return _call(draw, scope, helper)
    source = ast.Name(draw(st.sampled_from(scope.branches)))
    if kind == "pipe":
        return _pipe_tail(draw, scope, source, expand=False)
    if kind == "expand":
        return _pipe_tail(draw, scope, source, expand=True)
    if kind == "builtin":
        return ast.Call(draw(st.sampled_from(["best", "active", "done"])), (source,))
    a, b = draw(st.lists(st.sampled_from(scope.branches), min_size=2, max_size=2, unique=True))
    return ast.BinOp("+", ast.Name(a), ast.Name(b))


def _call(draw: st.DrawFn, scope: _Scope, helper: ast.Strategy) -> ast.Call:
    question: ast.Expr = ast.Name("question")
    args: tuple[ast.Expr, ...] = ()
    kwargs: tuple[ast.KwArg, ...] = ()
    if draw(st.booleans()):
        args = (question,)
    else:
        kwargs = (ast.KwArg("question", question),)
    optional = [p for p in helper.params if p.default is not None]
    if optional and draw(st.booleans()) is True:
        kwargs += (ast.KwArg(optional[0].name, _small_int(draw, scope)),)
    budget = draw(st.one_of(st.none(), st.integers(10, 1000)))
    return ast.Call(helper.name, args, kwargs, budget)


def _condition(draw: st.DrawFn, scope: _Scope) -> ast.Expr:
    options: list[ast.Expr] = [
        ast.Compare(draw(st.sampled_from([">", ">=", "<", "<=", "==", "!="])),
                    ast.Call("budget_left"), ast.IntLit(draw(st.integers(0, 100)))),
    ]
    for b in scope.branches[:2]:
        options += [
            ast.Call("finished", (ast.Name(b),)),
            ast.Not(ast.Call("finished", (ast.Name(b),))),
            ast.Compare(">", ast.BinOp("*", ast.Call("size", (ast.Name(b),)), ast.IntLit(2)),
                        ast.IntLit(draw(st.integers(0, 8)))),
        ]
    for a in scope.answers[:1]:
        options.append(ast.Compare(">=", ast.Call("agreement", (ast.Name(a),)), _float(draw, 0, 100)))
    for n in scope.ints[:1]:
        options.append(ast.Compare("<", ast.BinOp("+", ast.Name(n), ast.IntLit(1)), ast.IntLit(3)))
    cond = draw(st.sampled_from(options))
    if draw(st.integers(0, 3)) == 0:
        other = draw(st.sampled_from(options))
        cond = ast.BoolOp(draw(st.sampled_from(["and", "or"])), cond, other)
    return cond


def _truth(draw: st.DrawFn, scope: _Scope) -> ast.Expr:
    """A condition that holds in every run (for `expect`): the language's own laws."""
    b = ast.Name(draw(st.sampled_from(scope.branches)))

    def size(e: ast.Expr) -> ast.Call:
        return ast.Call("size", (e,))

    laws: list[ast.Expr] = [
        ast.Compare(">=", size(b), ast.IntLit(0)),
        ast.Compare(">=", ast.Call("budget_left"), ast.IntLit(0)),
        ast.Compare("==", ast.BinOp("+", size(ast.Call("active", (b,))), size(ast.Call("done", (b,)))), size(b)),
        ast.BoolOp("or", ast.Not(ast.Call("finished", (b,))), ast.Compare("==", size(ast.Call("done", (b,))), size(b))),
    ]
    for a in scope.answers[:1]:
        agreement = ast.Call("agreement", (ast.Name(a),))
        laws.append(ast.BoolOp("and", ast.Compare(">=", agreement, ast.IntLit(0)),
                               ast.Compare("<=", agreement, ast.IntLit(1))))
    return draw(st.sampled_from(laws))


def _rebind(draw: st.DrawFn, scope: _Scope) -> ast.Stmt:
    """Inside a block only existing names are rebound, so every name is bound on every path."""
    target = draw(st.sampled_from(scope.branches))
    return ast.Assign(target, _branches_expr(draw, scope))


def _block(draw: st.DrawFn, scope: _Scope) -> tuple[ast.Stmt, ...]:
    return tuple(_rebind(draw, scope) for _ in range(draw(st.integers(1, 2))))


def _statement(draw: st.DrawFn, scope: _Scope) -> list[ast.Stmt]:
    kinds = ["branches"]
    if scope.branches:
        kinds += ["repeat", "if", "answer", "prompt", "expect"]
    if scope.ints and scope.fresh:
        kinds.append("int")
    kind = draw(st.sampled_from(kinds))
    if kind == "expect":
        return [ast.Expect(_truth(draw, scope))]
    if kind == "branches" or (not scope.fresh and kind in ("answer", "prompt", "int")):
        if scope.branches and (not scope.fresh or draw(st.booleans())):
            return [_rebind(draw, scope)]
        value = _branches_expr(draw, scope)
        name = scope.new_name()
        scope.branches.append(name)
        return [ast.Assign(name, value)]
    if kind == "repeat":
        b = draw(st.sampled_from(scope.branches))
        body_expr = _pipe_tail(draw, scope, ast.Name(b), expand=True)
        body: tuple[ast.Stmt, ...] = (ast.Assign(b, body_expr),)
        until = _condition(draw, scope) if draw(st.booleans()) else None
        return [ast.Repeat(ast.IntLit(draw(st.integers(1, 3))), until, body)]
    if kind == "if":
        cond = _condition(draw, scope)
        then = _block(draw, scope)
        shape = draw(st.sampled_from(["if", "else", "else-if"]))
        orelse: tuple[ast.Stmt, ...] = ()
        if shape == "else":
            orelse = _block(draw, scope)
        elif shape == "else-if":
            orelse = (ast.If(_condition(draw, scope), _block(draw, scope), _block(draw, scope)),)
        return [ast.If(cond, then, orelse)]
    if kind == "answer":
        name = scope.new_name()
        value = _vote(draw, scope, draw(st.sampled_from(scope.branches)))
        scope.answers.append(name)
        return [ast.Assign(name, value)]
    if kind == "prompt":
        name = scope.new_name()
        text = draw(_text(["question", *scope.answers, *scope.branches[:1]]))
        scope.texts.append(name)
        return [ast.Assign(name, _string(draw, text))]
    name = scope.new_name()
    n = draw(st.sampled_from(scope.ints))
    value = ast.BinOp("+", ast.BinOp("%", ast.Name(n), ast.IntLit(4)), ast.IntLit(1))
    scope.ints.append(name)
    return [ast.Assign(name, value)]


def _vote(draw: st.DrawFn, scope: _Scope, source: str) -> ast.Expr:
    on = draw(st.sampled_from([None, "number", "boxed", "line", "regex"]))
    pattern = r"answer is (\d+)" if on == "regex" else None
    branches: ast.Expr = ast.Name(source)
    weighted = False
    if draw(st.booleans()):  # weighted votes need scores: score right before voting
        branches = ast.Score(branches, _scorer(draw, scope), None, _step_budget(draw), piped=True)
        weighted = draw(st.booleans())
    return ast.Vote(branches, on, pattern, weighted, unfinished=draw(st.booleans()),  # type: ignore[arg-type]
                    piped=draw(st.booleans()))


@st.composite
def _strategy(draw: st.DrawFn, name: str, names: list[str], helpers: list[ast.Strategy],
              helper_returns: dict[str, str], scorers: tuple[str, ...],
              returns: str | None = None) -> ast.Strategy:
    scope = _Scope(fresh=list(names), helpers=helpers, helper_returns=helper_returns, scorers=scorers)
    params = [ast.Param("question", "text")]
    for _ in range(draw(st.integers(0, 2))):
        pname = scope.new_name()
        params.append(ast.Param(pname, "int", ast.IntLit(draw(st.integers(1, 4)))))
        scope.ints.append(pname)
    body: list[ast.Stmt] = []
    if draw(st.integers(0, 4)):
        body.append(ast.BudgetStmt(draw(st.integers(50, 2000))))
    prompt = scope.new_name()
    body.append(ast.Assign(prompt, _string(draw, draw(_text(["question"])))))
    scope.texts.append(prompt)
    first = scope.new_name()
    body.append(ast.Assign(first, _sample(draw, scope)))
    scope.branches.append(first)
    for _ in range(draw(st.integers(0, 4))):
        body += _statement(draw, scope)
    kind = returns or draw(st.sampled_from(["answer", "branches"]))
    source = draw(st.sampled_from(scope.branches))
    if kind == "answer":
        value = _vote(draw, scope, source)
    else:
        returned: list[ast.Expr] = [ast.Name(source), ast.Call("best", (ast.Name(source),))]
        value = draw(st.sampled_from(returned))
    body.append(ast.Return(value))
    return ast.Strategy(name, tuple(params), tuple(body))


@st.composite
def _module(draw: st.DrawFn, scorers: tuple[str, ...], calls: bool) -> ast.Module:
    idents = _names(draw, 41)
    strategy_names, idents = idents[:3], idents[3:]
    helpers: list[ast.Strategy] = []
    returns: dict[str, str] = {}
    for i in range(draw(st.integers(0, 2)) if calls else 0):
        kind = draw(st.sampled_from(["answer", "branches"]))
        helper = draw(_strategy(strategy_names[i], idents[12 * i : 12 * i + 12], [], {}, scorers, kind))
        helpers.append(helper)
        returns[helper.name] = kind
    main = draw(_strategy(strategy_names[2], idents[24:37], helpers, returns, scorers))
    if calls and helpers and draw(st.booleans()):
        # make sure a call appears: bind the helper's result and interpolate or vote it
        helper = draw(st.sampled_from(helpers))
        name = idents[37]
        call_stmt: ast.Stmt = ast.Assign(name, _call(draw, _Scope(), helper))
        main = ast.Strategy(main.name, main.params, (*main.body[:-1], call_stmt, main.body[-1]))
    return ast.Module((), (*helpers, main))


def modules(*, scorers: Sequence[str] = SCORERS, calls: bool = True) -> st.SearchStrategy[ast.Module]:
    """ASTs of well-typed programs (see `programs`); the last strategy is the entry."""
    chosen = tuple(scorers)
    if not chosen or any(s not in _ALL_SCORERS for s in chosen):
        raise InvalidArgument(f"scorers must be a non-empty subset of {_ALL_SCORERS}, got {scorers!r}")
    if not isinstance(calls, bool):
        raise InvalidArgument(f"calls must be a bool, got {calls!r}")
    return _module(chosen, calls)


def programs(*, scorers: Sequence[str] = SCORERS, calls: bool = True) -> st.SearchStrategy[str]:
    """Source text of well-typed, runnable programs that check cleanly.

    Each draw has up to two helper strategies (called with and without `budget`, when `calls`)
    and an entry strategy (the last one) taking `question: text` and optional int parameters
    with defaults.  Bodies mix the five steps with all their clauses, pipelines, `repeat`
    loops with static counts (1-3, some with `until`), `if`/`else`/`else if`, `+` on branches,
    integer arithmetic, step budgets and a strategy budget (50-2000), and return an answer
    (a vote) or branches, and `expect` statements that hold in every run (laws of the
    builtins, such as `size(active(b)) + size(done(b)) == size(b)`).  Counts are 1-4 and `max_tokens` 1-64; every `expand` is followed by
    a `prune`, and `weighted` votes and `prune ... by score` only follow a `score`."""
    return modules(scorers=scorers, calls=calls).map(format_module)


# ---- grammar-derived text ----


def _terminal_strategies() -> dict[str, st.SearchStrategy[str]]:
    from lark import Lark

    reserved = keywords()
    out: dict[str, st.SearchStrategy[str]] = {}
    for t in Lark(grammar_text(), parser="lalr").terminals:
        if t.pattern.type == "str":
            out[t.name] = st.just(t.pattern.value)
    out.update({
        "NAME": st.one_of(
            st.sampled_from(["question", "n", "b", "p", "beams", "best", "size", "sc"]),
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in reserved),
        ),
        "INT": st.one_of(st.integers(0, 20).map(str), st.sampled_from(["00", "4096", "99999999999999999999"])),
        "FLOAT": st.sampled_from(["0.5", "1.", ".25", "0.0", "1.5", "10.75"]),
        "STRING": st.sampled_from(['"x"', '"{question}"', '"\\n\\n"', '"a\\"b"', '"{{}}"', '""',
                                   '"(\\\\d+)"', '"m:f"', '"{branch} ok?"', '"\\q"', '"{"', '"{ }"']),
        "LONG_STRING": st.sampled_from(['"""\n    a\n    {question}\n    """', '"""x"""', '""""""',
                                        '"""\n  "q" \\t\n"""']),
        "BUDGET_STMT": st.just("budget"),
        "TYPE": st.sampled_from(["text", "int", "float", "bool"]),
        "COMP_OP": st.sampled_from(["==", "!=", "<=", ">=", "<", ">"]),
        "ADD_OP": st.sampled_from(["+", "-"]),
        "MUL_OP": st.sampled_from(["*", "/", "%"]),
        "AGG_KIND": st.sampled_from(["last", "min", "mean", "prod"]),
        "PRUNE_KEY": st.sampled_from(["score", "logprob", "length"]),
        "PER_KIND": st.sampled_from(["root", "parent"]),
        "EXTRACTOR": st.sampled_from(["number", "boxed", "line", "regex"]),
        "STOP_RULE": st.sampled_from(["agreement", "confidence"]),
        "WEIGHTED": st.just("weighted"),
        "COMMENT": st.sampled_from(["# c", "# budget 5 tokens", '# "']),
        "WS": st.sampled_from([" ", "\n", "  ", "\t", "\n\n    "]),
    })
    # Every token ends with a separator, so neighbours never merge into one token; a comment
    # always ends its line.
    return {name: s.map(_ends_line if name == "COMMENT" else _spaced) for name, s in out.items()}


def _spaced(token: str) -> str:
    return token + " "


def _ends_line(comment: str) -> str:
    return comment + "\n"


def grammar_programs() -> st.SearchStrategy[str]:
    """Text derived from grammar/ttc.lark with `hypothesis.extra.lark.from_lark`: names avoid
    keywords, strings and numbers come from small pools (including bad escapes and stray braces),
    and whitespace and comments appear between tokens.  Most draws fail the checker, and some
    fail the parser (the grammar resolves its few shift/reduce conflicts by shifting)."""
    from hypothesis.extra.lark import from_lark
    from lark import Lark

    grammar = Lark(grammar_text(), parser="lalr", start="start")
    return from_lark(grammar, start="start", explicit=_terminal_strategies())
