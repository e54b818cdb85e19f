"""Robustness of the language front: what users naturally write parses the way the README says
(step operands up to the step's own keyword, whole-word clause words), odd blanks and huge
literals end in one located error or a clean parse, and every error shows the right line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl import ast
from ttcdsl.compiler import compile_source
from ttcdsl.errors import SourceError, TTCError, TTCSyntaxError
from ttcdsl.fmt import format_source
from ttcdsl.parse import MAX_INT_DIGITS, parse

PARAMS = "a: text, b: text, x: text, xs: text, p: text, q: text"


def value_of(expr: str) -> ast.Expr:
    source = f"strategy s({PARAMS}) {{\n    r = {expr}\n    return r\n}}\n"
    stmt = parse(source).strategies[0].body[0]
    assert isinstance(stmt, ast.Assign)
    return stmt.value


def names(e: ast.Expr) -> object:
    """The shape of an expression: steps and operators by name, leaves by their text."""
    match e:
        case ast.Name():
            return e.id
        case ast.IntLit():
            return e.value
        case ast.BinOp():
            return (e.op, names(e.left), names(e.right))
        case ast.Call():
            return (e.func, *[names(a) for a in e.args])
        case ast.Sample():
            return ("sample", names(e.count), names(e.prompt))
        case ast.Expand() | ast.Score() | ast.Prune() | ast.Vote() | ast.Resample():
            return (type(e).__name__.lower(), names(e.branches))
    raise AssertionError(e)


@pytest.mark.parametrize(
    ("expr", "shape"),
    [
        ("vote a + b on number", ("vote", ("+", "a", "b"))),
        ("prune active(x) + done(x) keep 2 by length", ("prune", ("+", ("active", "x"), ("done", "x")))),
        ("score a + b with prm", ("score", ("+", "a", "b"))),
        ("expand a + b by 2", ("expand", ("+", "a", "b"))),
        ("resample a + b to 2", ("resample", ("+", "a", "b"))),
        ("vote a + b", ("vote", ("+", "a", "b"))),
        ("sample 2 from p + q", ("+", ("sample", 2, "p"), "q")),
        ("sample 2 * 3 from p", ("sample", ("*", 2, 3), "p")),
        ("sample 2 from (p + q)", ("sample", 2, ("+", "p", "q"))),
        ("(vote a) + b", ("+", ("vote", "a"), "b")),
        ("a + b | prune keep 1", ("prune", ("+", "a", "b"))),
    ],
)
def test_a_steps_input_runs_up_to_its_own_keyword(expr: str, shape: object) -> None:
    assert names(value_of(expr)) == shape


def test_the_readme_precedence_example_compiles() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("strategy precedence(", 1)[1].split("```", 1)[0]
    compile_source("strategy precedence(" + block)


@pytest.mark.parametrize(
    ("clause", "message"),
    [
        ("prune xs keep 1 by scores", "unknown prune key 'scores' (did you mean 'score'?)"),
        ("vote xs on numbers", "unknown extractor 'numbers' (did you mean 'number'?)"),
        ("score xs with prm agg lasts", "unknown aggregation 'lasts' (did you mean 'last'?)"),
        ("prune xs keep 1 per roots", "unknown prune group 'roots' (did you mean 'root'?)"),
        ("prune xs keep 1 by zzz", "unknown prune key 'zzz'; expected score, logprob or length"),
    ],
)
def test_clause_words_match_only_whole_words(clause: str, message: str) -> None:
    # The error is at the misspelt word itself (the last of the clause), not on the next line.
    col = len("    r = ") + clause.rindex(" ") + 2
    source = f"strategy s(xs: text) {{\n    r = {clause}\n    s = 3\n    return r\n}}\n"
    with pytest.raises(TTCSyntaxError) as info:
        parse(source, "prog.ttc")
    assert str(info.value) == message
    assert (info.value.span.line, info.value.span.col) == (2, col)


def test_the_formatter_keeps_the_new_operands_reading_the_same() -> None:
    source = textwrap.dedent(f"""\
        strategy s({PARAMS}) {{
            u = vote a + b on number
            v = (vote a) + b
            w = prune active(x) + done(x) keep 2 by length
            return u
        }}
        """)
    formatted = format_source(source)
    assert parse(formatted).strategies == parse(source).strategies
    assert format_source(formatted) == formatted


# ---- source positions -------------------------------------------------------------------------

ODD_BLANKS = ["\f", "\v", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("blank", ODD_BLANKS)
def test_an_odd_blank_earlier_in_the_file_does_not_move_the_error(blank: str) -> None:
    source = f"# a comment {blank} with it\nstrategy s() {{\n  {blank}\n    return x +\n}}\n"
    with pytest.raises(TTCSyntaxError) as info:
        parse(source, "prog.ttc")
    rendered = info.value.render().splitlines()
    assert rendered[0] == "prog.ttc:5:1: error: unexpected '}'; expected an expression"
    assert rendered[1:] == ["    }", "    ^"]


def test_the_caret_stays_under_the_column_past_tabs_and_control_characters() -> None:
    source = "strategy s() {\n\t\f\treturn questoin\n}\n"
    with pytest.raises(TTCError) as info:
        compile_source(source, "prog.ttc")
    assert isinstance(info.value, SourceError) or hasattr(info.value, "errors")
    text = info.value.render()
    line, caret = text.splitlines()[1:3]
    assert caret.index("^") == line.index("questoin")


def test_a_very_long_source_line_is_shown_around_its_column() -> None:
    source = "strategy s() { return " + "1 + " * 500 + "}\n"
    with pytest.raises(TTCSyntaxError) as info:
        parse(source, "prog.ttc")
    _head, line, caret = info.value.render().splitlines()
    assert len(line) < 140 and line.strip().startswith("...")
    assert line[caret.index("^")] == "}"


# ---- huge literals and odd whitespace, generated ------------------------------------------------


def test_an_integer_literal_thousands_of_digits_long_is_one_located_error() -> None:
    source = "strategy s() {\n    return " + "9" * 5000 + "\n}\n"
    with pytest.raises(TTCSyntaxError) as info:
        parse(source, "prog.ttc")
    assert str(info.value) == f"this integer has 5000 digits; integers have at most {MAX_INT_DIGITS}"
    assert (info.value.span.line, info.value.span.col) == (2, 12)


blanks = st.lists(st.sampled_from([" ", "\t", "\n", "\r\n", *ODD_BLANKS, "# c\n"]), max_size=3).map("".join)
numbers = st.one_of(st.integers(0, 10**40).map(str), st.text("0123456789", min_size=1, max_size=6000),
                    st.builds(lambda a, b: f"{a}.{b}", st.text("0123456789", min_size=1, max_size=400),
                              st.text("0123456789", max_size=3)))


@settings(max_examples=60, deadline=None)
@given(numbers, numbers, st.lists(blanks, min_size=8, max_size=8))
def test_generated_programs_with_huge_literals_and_odd_blanks_compile_or_fail_located(
    n1: str, n2: str, ws: list[str]
) -> None:
    source = (f"strategy{ws[0] or ' '}s(q: text){ws[1]}{{{ws[2]}b = sample {n1} from q with "
              f"max_tokens ={ws[3]}{n2}{ws[4]}budget {n1}{ws[5]}\n return{ws[6] or ' '}vote b{ws[7]}}}\n")
    try:
        compile_source(source, "gen.ttc")
    except TTCError as exc:
        text = exc.render()
        assert text.startswith("gen.ttc:"), text
        assert len(text.splitlines()[0]) < 300


def test_a_count_no_budget_can_hold_is_a_located_check_error() -> None:
    source = "strategy s(q: text, n: int = 100000000000000000) {\n    b = sample n from q\n    return vote b\n}\n"
    with pytest.raises(TTCError) as info:
        compile_source(source, "prog.ttc")
    assert info.value.render().splitlines()[0] == (
        "prog.ttc:2:9: error: the worst case of this sample is 25600000000000000000 tokens, more "
        "than any budget can hold (at most 999999999999999999); lower its counts")
