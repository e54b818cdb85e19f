"""Stage 1 (`ttcdsl.parse`): the AST each form produces, the exact syntax error texts, and that
no input at all makes the front half crash with anything but the project's own errors."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ttcdsl import ast
from ttcdsl.compiler import compile_source
from ttcdsl.errors import CheckErrors, TTCSyntaxError
from ttcdsl.parse import MAX_DEPTH, dedent_triple, parse
from ttcdsl.testing import grammar_programs

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(glob.glob(str(ROOT / "programs" / "*.ttc")) + glob.glob(str(ROOT / "tests" / "fixtures" / "plans" / "*.ttc")))


def body(src: str) -> tuple[ast.Stmt, ...]:
    """The statements of the only strategy in `src`."""
    return parse(textwrap.dedent(src)).strategies[0].body


# ---- what the parser builds ----


def test_pipeline_desugars_to_nested_steps_marked_piped() -> None:
    (assign, _) = body("""
        strategy s(q: text) {
            b = sample 4 from q | score with prm agg min | prune keep 2 by score per root | vote on line weighted
            return b
        }
    """)
    assert isinstance(assign, ast.Assign)
    assert assign.value == ast.Vote(
        ast.Prune(
            ast.Score(ast.Sample(ast.IntLit(4), ast.Name("q")), ast.Scorer("prm"), "min", piped=True),
            ast.IntLit(2), "score", "root", piped=True,
        ),
        "line", None, True, piped=True,
    )


def test_anytime_vote_direct_and_piped() -> None:
    (piped, direct) = body("""
        strategy s(p: text, n: int) {
            return sample 16 from p with max_tokens = 512 | vote on number until agreement >= 0.8
            return vote (sample n from p) on boxed until confidence >= 0.95 after 5
        }
    """)
    assert isinstance(piped, ast.Return) and isinstance(direct, ast.Return)
    sixteen = ast.Sample(ast.IntLit(16), ast.Name("p"), (ast.Setting("max_tokens", ast.IntLit(512)),))
    assert piped.value == ast.Vote(sixteen, "number", until="agreement", threshold=ast.FloatLit(0.8), piped=True)
    assert direct.value == ast.Vote(
        ast.Sample(ast.Name("n"), ast.Name("p")), "boxed",
        until="confidence", threshold=ast.FloatLit(0.95), min_votes=ast.IntLit(5),
    )
    weighted = body("strategy s(p: text) { return sample 2 from p | vote weighted until agreement >= 1 - 0.5 after 2 * 2 }")[0]
    assert isinstance(weighted, ast.Return) and isinstance(weighted.value, ast.Vote)
    assert weighted.value.weighted and weighted.value.threshold == ast.BinOp("-", ast.IntLit(1), ast.FloatLit(0.5))
    assert weighted.value.min_votes == ast.BinOp("*", ast.IntLit(2), ast.IntLit(2))


def test_resample_direct_and_piped_with_every_clause() -> None:
    stmts = body("""
        strategy s(b: int) {
            x = resample b
            y = resample b to 4 by softmax 0.5 multinomial
            z = b | score with prm | resample by weight systematic
            return b | resample to size(b) + 1
        }
    """)
    values = [st.value for st in stmts if isinstance(st, (ast.Assign, ast.Return))]
    b = ast.Name("b")
    assert values == [
        ast.Resample(b),
        ast.Resample(b, ast.IntLit(4), "softmax", ast.FloatLit(0.5), "multinomial"),
        ast.Resample(ast.Score(b, ast.Scorer("prm"), piped=True), by="weight", method="systematic", piped=True),
        ast.Resample(b, ast.BinOp("+", ast.Call("size", (b,)), ast.IntLit(1)), piped=True),
    ]
    assert list(ast.children(values[1])) == [b, ast.IntLit(4), ast.FloatLit(0.5)]


def test_repeat_until_reads_as_before_beside_the_votes_until() -> None:
    (loop, _) = body("""
        strategy s(n: int, v: int) {
            repeat n until agreement(v) >= 0.5 { v = v + 1 }
            return v
        }
    """)
    assert loop == ast.Repeat(
        ast.Name("n"),
        ast.Compare(">=", ast.Call("agreement", (ast.Name("v"),)), ast.FloatLit(0.5)),
        (ast.Assign("v", ast.BinOp("+", ast.Name("v"), ast.IntLit(1))),),
    )
    # `agreement` and `confidence` still name values, in a repeat's condition too.
    (_, named, _) = body("""
        strategy s(n: int) {
            agreement = 0.0
            repeat n until agreement >= 0.5 { agreement = 1.0 }
            return agreement
        }
    """)
    assert isinstance(named, ast.Repeat) and named.until == ast.Compare(">=", ast.Name("agreement"), ast.FloatLit(0.5))
    # A vote ending a repeat count takes the `until` (as every dangling clause goes to the step
    # before it); in parentheses it leaves it to the repeat.
    (open_vote, closed_vote, _) = body("""
        strategy s(b: int) {
            repeat b | vote until agreement >= 0.5 { b = 1 }
            repeat (b | vote) until agreement >= 0.5 { b = 1 }
            return b
        }
    """)
    assert isinstance(open_vote, ast.Repeat) and isinstance(closed_vote, ast.Repeat)
    assert open_vote.until is None and isinstance(open_vote.times, ast.Vote) and open_vote.times.until == "agreement"
    assert closed_vote.times == ast.Vote(ast.Name("b"), piped=True)
    assert closed_vote.until == ast.Compare(">=", ast.Name("agreement"), ast.FloatLit(0.5))


def test_budget_statement_and_step_budget_are_told_apart_by_tokens() -> None:
    stmts = body("""
        strategy s(q: text) {
            budget 900 tokens
            b = sample 2 from q with max_tokens = 8 budget 40
            budget 50 tokens
            return b
        }
    """)
    assert stmts[0] == ast.BudgetStmt(900)
    assert isinstance(stmts[1], ast.Assign) and isinstance(stmts[1].value, ast.Sample)
    assert stmts[1].value.budget == 40
    assert stmts[2] == ast.BudgetStmt(50)


def test_else_if_is_an_if_nested_in_else_like_a_braced_else() -> None:
    chained = body("""
        strategy s(n: int) {
            if n > 1 { return 1 } else if n > 0 { return 2 } else { return 3 }
        }
    """)
    braced = body("""
        strategy s(n: int) {
            if n > 1 { return 1 } else { if n > 0 { return 2 } else { return 3 } }
        }
    """)
    assert chained == braced
    (outer,) = chained
    assert isinstance(outer, ast.If) and isinstance(outer.orelse[0], ast.If)


def test_precedence_from_pipeline_down_to_unary_minus() -> None:
    (ret,) = body("""
        strategy s(a: int, b: int) {
            return not a + b * -a > 2 and a % 2 == 0 or b < 1
        }
    """)
    assert isinstance(ret, ast.Return)
    a, b = ast.Name("a"), ast.Name("b")
    product = ast.BinOp("*", b, ast.Neg(a))
    left = ast.Not(ast.Compare(">", ast.BinOp("+", a, product), ast.IntLit(2)))
    both = ast.BoolOp("and", left, ast.Compare("==", ast.BinOp("%", a, ast.IntLit(2)), ast.IntLit(0)))
    assert ret.value == ast.BoolOp("or", both, ast.Compare("<", b, ast.IntLit(1)))


def test_step_inputs_bind_tighter_than_operators() -> None:
    (assign, _) = body("""
        strategy s(q: text) {
            u = sample 2 from q + sample 1 from q
            return u
        }
    """)
    assert isinstance(assign, ast.Assign)
    assert assign.value == ast.BinOp(
        "+", ast.Sample(ast.IntLit(2), ast.Name("q")), ast.Sample(ast.IntLit(1), ast.Name("q"))
    )


def test_triple_quoted_string_drops_edge_lines_and_common_indent_then_unescapes() -> None:
    (assign, _) = body('''
        strategy s(q: text) {
            p = """
                Problem: {q}
                  indented \\t tab
                Say "done"."""
            return p
        }
    ''')
    assert isinstance(assign, ast.Assign)
    assert assign.value == ast.StrLit('Problem: {q}\n  indented \t tab\nSay "done".', triple=True)
    assert dedent_triple("\n    a\n    ") == "a"


def test_strings_keep_interpolations_and_literal_braces_raw() -> None:
    (ret,) = body('strategy s(q: text) { return "{q} {{x}} \\"y\\" \\\\ \\n" }')
    assert isinstance(ret, ast.Return)
    assert ret.value == ast.StrLit('{q} {{x}} "y" \\ \n')
    assert ret.value.template == ast.Template((ast.Interp("q", 0), ' {x} "y" \\ \n'))


def test_calls_keep_positional_keyword_arguments_and_call_budget() -> None:
    (ret,) = body("strategy s(q: text) { return sc(q, n = 4) budget 2000 }")
    assert isinstance(ret, ast.Return)
    assert ret.value == ast.Call("sc", (ast.Name("q"),), (ast.KwArg("n", ast.IntLit(4)),), 2000)


def test_imports_comments_and_soft_keywords_as_names() -> None:
    module = parse(textwrap.dedent("""
        import "lib/a.ttc"  # helpers
        # a strategy
        strategy s(with: int, last: int) {  # soft keywords are fine as names
            agg = with + last
            return agg
        }
    """))
    assert module.imports == (ast.Import("lib/a.ttc"),)
    assert [p.name for p in module.strategies[0].params] == ["with", "last"]


def test_every_node_knows_its_line_and_column() -> None:
    (assign, ret) = body("""
        strategy s(q: text) {
            b = sample 2 from q
              | vote
            return b
        }
    """)
    assert isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Vote)
    sample = assign.value.branches
    assert (assign.span.line, assign.span.col, assign.span.end_line) == (3, 5, 4)
    assert (sample.span.line, sample.span.col) == (3, 9)
    assert (ret.span.line, ret.span.col) == (5, 5)


def test_walkers_visit_children_in_source_order() -> None:
    (strategy,) = parse(textwrap.dedent("""\
        strategy s(q: text, n: int = 2) {
            b = sample n from q with max_tokens = 8 | score with prm
            repeat 2 until finished(b) {
                if size(b) > 1 { b = prune b keep 1 } else { b = best(b) }
            }
            return vote b
        }
    """)).strategies
    assign = strategy.body[0]
    assert isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Score)
    sample = assign.value.branches
    assert isinstance(sample, ast.Sample)
    assert list(ast.children(sample)) == [sample.count, sample.prompt, *sample.settings]
    assert [type(n).__name__ for n in ast.walk(assign)] == [
        "Assign", "Score", "Sample", "Name", "Name", "Setting", "IntLit", "Scorer",
    ]
    assert [type(st).__name__ for st in ast.statements(strategy.body)] == [
        "Assign", "Repeat", "If", "Assign", "Assign", "Return",
    ]
    names = [e.id for e in ast.expressions(strategy.body) if isinstance(e, ast.Name)]
    assert names == ["n", "q", "b", "b", "b", "b", "b"]
    assert [type(n).__name__ for n in ast.walk(strategy)][:4] == ["Strategy", "Param", "Param", "IntLit"]


def test_a_strings_template_is_parsed_on_first_use_and_kept() -> None:
    lit = ast.StrLit("Q: {q} {{x}}")
    assert lit.template is lit.template
    assert lit.template == ast.Template(("Q: ", ast.Interp("q", 3), " {x}"))
    assert (lit.template.names, lit.template.is_literal, lit.template.text) == (["q"], False, "Q:  {x}")
    assert ast.parse_template("a } b") == ast.Template((), "a lone '}' in a string: write }} for a literal brace")
    assert ast.Scorer("judge", "{branch}").template == ast.Template((ast.Interp("branch", 0),))
    assert ast.Scorer("verifier", "m:f").template is None


def test_library_programs_and_fixtures_parse() -> None:
    assert SOURCES
    for path in SOURCES:
        assert parse(Path(path).read_text(), path).strategies


# ---- syntax errors, word for word ----

SYNTAX_ERRORS = [
    (
        "missing closing brace names the open one",
        """\
        strategy s(question: text) {
            b = sample 2 from question
            return vote b
        """,
        """\
        prog.ttc:3:18: error: unexpected end of file; expected '}', 'on', 'until', 'weighted', an operator or a new statement (the '{' opened at line 1 is still open: close it with '}')
                return vote b
                             ^""",
    ),
    (
        "missing parenthesis before the body",
        """\
        strategy s(question: text {
            return question
        }
        """,
        """\
        prog.ttc:1:27: error: unexpected '{'; expected ')', ',' or '=' (the '(' opened at line 1 is still open: close it with ')')
            strategy s(question: text {
                                      ^""",
    ),
    (
        "unclosed call at the closing brace",
        """\
        strategy s(question: text) {
            b = sample 2 from question
            return best(b
        }
        """,
        """\
        prog.ttc:4:1: error: unexpected '}'; expected ')', ',', '=' or an operator (the '(' opened at line 3 is still open: close it with ')')
            }
            ^""",
    ),
    (
        "stray closing parenthesis",
        """\
        strategy s(question: text) {
            b = sample 2 from question )
            return vote b
        }
        """,
        """\
        prog.ttc:2:32: error: unexpected ')': no '(' is open here (the '{' opened at line 1 is still open: close it with '}')
                b = sample 2 from question )
                                           ^""",
    ),
    (
        "stray token where a keyword belongs",
        """\
        strategy s(question: text) {
            b = sample 2 question
            return vote b
        }
        """,
        """\
        prog.ttc:2:18: error: unexpected 'question'; expected 'from' or an operator
                b = sample 2 question
                             ^^^^^^^^""",
    ),
    (
        "unterminated string",
        """\
        strategy s(question: text) {
            p = "Solve {question}
            return p
        }
        """,
        """\
        prog.ttc:2:9: error: unterminated string: close it with a matching '"' (use \"\"\"...\"\"\" for text over several lines)
                p = "Solve {question}
                    ^""",
    ),
    (
        "unterminated triple-quoted string",
        '''\
        strategy s(question: text) {
            p = """Solve {question}
            return p
        }
        ''',
        """\
        prog.ttc:2:9: error: unterminated triple-quoted string: close it with '\"\"\"'
                p = \"\"\"Solve {question}
                    ^""",
    ),
    (
        "strategy budget without tokens",
        """\
        strategy s(question: text) {
            budget 100
            return question
        }
        """,
        """\
        prog.ttc:2:12: error: a strategy budget is written `budget 100 tokens`; a step's own budget goes right after the step, e.g. `sample 4 from p budget 500`
                budget 100
                       ^^^""",
    ),
    (
        "budget N tokens inside parentheses after a step",
        """\
        strategy s(question: text) {
            return (sample 2 from question budget 100 tokens)
        }
        """,
        """\
        prog.ttc:2:36: error: `budget N tokens` is a statement of its own and cannot stand here; a step takes `budget N` without 'tokens'
                return (sample 2 from question budget 100 tokens)
                                               ^^^^^^""",
    ),
    (
        "bad escape",
        """\
        strategy s(question: text) {
            p = "a \\d b"
            return p
        }
        """,
        """\
        prog.ttc:2:9: error: unknown escape '\\d' in a string; use \\n, \\t, \\r, \\", \\\\ or \\0 (braces are written {{ and }})
                p = "a \\d b"
                    ^^^^^^^^""",
    ),
    (
        "regex vote without a pattern",
        """\
        strategy s(question: text) {
            b = sample 2 from question
            return vote b on regex
        }
        """,
        """\
        prog.ttc:3:22: error: vote ... on regex needs a pattern: on regex "answer: (\\d+)"
                return vote b on regex
                                 ^^^^^""",
    ),
    (
        "pattern on another extractor",
        """\
        strategy s(question: text) {
            b = sample 2 from question
            return vote b on number "x"
        }
        """,
        """\
        prog.ttc:3:29: error: vote ... on number takes no pattern (only `on regex "..."` does)
                return vote b on number "x"
                                        ^^^""",
    ),
    (
        "chained comparison",
        """\
        strategy s(n: int) {
            return 1 < n < 3
        }
        """,
        """\
        prog.ttc:2:18: error: unexpected '<': comparisons do not chain; write `a < b and b < c`
                return 1 < n < 3
                             ^""",
    ),
    (
        "single equals in a condition",
        """\
        strategy s(n: int) {
            if n = 2 {
                return 1
            }
            return 2
        }
        """,
        """\
        prog.ttc:2:10: error: unexpected '=': to compare, write '=='; a single '=' binds a name
                if n = 2 {
                     ^""",
    ),
    (
        "unknown parameter type",
        """\
        strategy s(n: integer) {
            return n
        }
        """,
        """\
        prog.ttc:1:15: error: unknown type 'integer'; expected text, int, float or bool
            strategy s(n: integer) {
                          ^^^^^^^""",
    ),
    (
        "a number with an exponent",
        """\
        strategy s() {
            x = 1.5e3
            return x
        }
        """,
        """\
        prog.ttc:3:5: error: unexpected 'return'; expected '=' (note: numbers have no exponent form: '1.5e3' at line 2 must be written 1500.0)
                return x
                ^^^^^^""",
    ),
    (
        "a keyword used as a name",
        """\
        strategy s(question: text) {
            score = sample 2 from question
            return vote score
        }
        """,
        """\
        prog.ttc:4:1: error: unexpected '}'; expected an expression (note: 'score' at line 2 is a keyword and cannot name a value; rename it)
            }
            ^""",
    ),
    (
        "a keyword bound but never used",
        """\
        strategy s(question: text) {
            vote = 1
            return question
        }
        """,
        """\
        prog.ttc:2:5: error: 'vote' is a keyword and cannot name a value; choose another name
                vote = 1
                ^^^^""",
    ),
    (
        "an anytime vote compared with something else than >=",
        """\
        strategy s(q: text) {
            return sample 4 from q | vote until agreement > 0.8
        }
        """,
        """\
        prog.ttc:2:51: error: an anytime vote stops once `agreement` reaches its threshold: write `until agreement >= X`, not '>'
                return sample 4 from q | vote until agreement > 0.8
                                                              ^""",
    ),
    (
        "a vote ending a repeat count takes the until",
        """\
        strategy s(b: int) {
            repeat b | vote until finished(b) {
                b = 1
            }
            return b
        }
        """,
        """\
        prog.ttc:2:27: error: unexpected 'finished'; expected agreement or confidence; an `until` right after a vote is the vote's own, `vote ... until agreement >= X` (put a vote that ends a repeat count in parentheses)
                repeat b | vote until finished(b) {
                                      ^^^^^^^^""",
    ),
    (
        "resample clauses out of order",
        """\
        strategy s(b: int) {
            return resample b by weight to 2
        }
        """,
        """\
        prog.ttc:2:33: error: unexpected 'to'; expected '}', an operator or a new statement
                return resample b by weight to 2
                                            ^^""",
    ),
    (
        "a character outside the language",
        """\
        strategy s(n: int) {
            return n @ 2
        }
        """,
        """\
        prog.ttc:2:14: error: unexpected character '@'
                return n @ 2
                         ^""",
    ),
]


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in SYNTAX_ERRORS], ids=[c[0] for c in SYNTAX_ERRORS])
def test_syntax_error_text(source: str, expected: str) -> None:
    with pytest.raises(TTCSyntaxError) as info:
        compile_source(textwrap.dedent(source), "prog.ttc")
    assert info.value.render() == textwrap.dedent(expected)


def test_nesting_deeper_than_the_limit_is_a_syntax_error_not_a_crash() -> None:
    fine = "+".join(["1"] * (MAX_DEPTH - 10))
    compile_source(f"strategy s() {{ return {fine} }}")
    deep = "+".join(["1"] * (MAX_DEPTH * 5))
    with pytest.raises(TTCSyntaxError, match="nested more than 100 levels deep"):
        compile_source(f"strategy s() {{ return {deep} }}")
    with pytest.raises(TTCSyntaxError, match="nested more than 100 levels deep"):
        compile_source(f"strategy s() {{ return {'not ' * 500}true }}")


# ---- robustness: nothing but the project's own errors ----

_FRAGMENTS = ['"', '"""', "{", "}", "(", ")", "[", "]", "|", ",", "=", "==", "#", "\n", " budget ",
              " tokens ", " sample ", " vote ", " score ", "1e3", "-", "not ", "\\", "}}", "{{", " x ",
              "0", " with ", " on regex ", " else ", " if ", " repeat ", " until ", "\t", "\r\n", "é"]


@st.composite
def mutated_programs(draw: st.DrawFn) -> str:
    """A library program with a few random deletions and insertions of text and tokens."""
    source = Path(draw(st.sampled_from(SOURCES))).read_text()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(source)))
        op = draw(st.sampled_from(["delete", "token", "text"]))
        if op == "delete":
            j = draw(st.integers(i, min(len(source), i + 20)))
            source = source[:i] + source[j:]
        elif op == "token":
            source = source[:i] + draw(st.sampled_from(_FRAGMENTS)) + source[i:]
        else:
            source = source[:i] + draw(st.text(max_size=3)) + source[i:]
    return source


def front_half(source: str) -> None:
    """Parse, check, lower: only `TTCSyntaxError` or `CheckErrors` may escape, and both render."""
    try:
        module = parse(source, "f.ttc")
    except TTCSyntaxError as exc:
        assert exc.render().startswith("f.ttc:")
        return
    assert isinstance(module, ast.Module)
    try:
        compile_source(source, "f.ttc")
    except CheckErrors as exc:
        assert exc.errors and exc.render().startswith("f.ttc:")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), mutated_programs()))
@example("strategy s() { return " + "(" * 500 + "1" + ")" * 500 + " }")
@example('strategy s() { x = "\\')
@example("strategy")
def test_arbitrary_text_fails_only_with_the_projects_errors(source: str) -> None:
    front_half(source)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(grammar_programs())
def test_grammar_derived_programs_compile_or_fail_with_the_projects_errors(source: str) -> None:
    front_half(source)
