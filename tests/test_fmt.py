"""The formatter (`ttcdsl.fmt`): the canonical layout, parentheses exactly where the grammar needs
them, strings and numbers that read back unchanged, comments kept in place, and the properties
`parse(format_module(m)) == m` and idempotence on generated, fixture and library programs."""

from __future__ import annotations

import glob
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl import ast
from ttcdsl.errors import TTCSyntaxError
from ttcdsl.fmt import format_module, format_source
from ttcdsl.parse import parse
from ttcdsl.testing import grammar_programs, modules, programs

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted(glob.glob(str(ROOT / "programs" / "*.ttc")))
FIXTURES = sorted(glob.glob(str(ROOT / "tests" / "fixtures" / "plans" / "**" / "*.ttc"), recursive=True))


def fmt(source: str) -> str:
    return format_source(textwrap.dedent(source))


def roundtrip(module: ast.Module) -> str:
    """Format, then check that the text reads back as the same module and is a fixed point."""
    text = format_module(module)
    assert parse(text) == module, text
    assert format_module(parse(text)) == text
    return text


def strategy_of(*body: ast.Stmt) -> ast.Module:
    return ast.Module((), (ast.Strategy("s", (ast.Param("p", "text"),), body),))


def test_messy_source_gets_the_canonical_layout() -> None:
    messy = """\
        import   "lib.ttc"
        strategy   beam(question:text,width:int=4){budget 900 tokens
        p="{question}\\nSolve."
        beams=sample width*2 from p with step="\\n\\n",max_tokens=64|score with prm|prune keep width by score
        repeat 3 until finished(beams) or budget_left()<10 {beams=expand beams by 2 with max_tokens=64 budget 300|prune keep width}
        if size(beams)>1{return vote beams on regex "answer: (\\\\d+)" weighted}else if not finished(beams){return vote beams}else{return vote(beams)}}
        strategy other(q:text){return q}
    """
    assert fmt(messy) == textwrap.dedent("""\
        import "lib.ttc"

        strategy beam(question: text, width: int = 4) {
            budget 900 tokens
            p = "{question}\\nSolve."
            beams = sample width * 2 from p with step = "\\n\\n", max_tokens = 64
                  | score with prm
                  | prune keep width by score
            repeat 3 until finished(beams) or budget_left() < 10 {
                beams = expand beams by 2 with max_tokens = 64 budget 300
                      | prune keep width
            }
            if size(beams) > 1 {
                return vote beams on regex "answer: (\\\\d+)" weighted
            } else if not finished(beams) {
                return vote beams
            } else {
                return vote beams
            }
        }

        strategy other(q: text) {
            return q
        }
    """)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = (a + b) * -(c - d) % e", "x = (a + b) * -(c - d) % e"),
        ("x = a - (b - c) - d", "x = a - (b - c) - d"),
        ("x = not (a and b) or c == d", "x = not (a and b) or c == d"),
        ("x = (not a) and (b or c)", "x = not a and (b or c)"),
        ("x = - -a", "x = - -a"),
        ("x = ((sample 2 from q))", "x = sample 2 from q"),
        ("x = score (sample 2 from q) with prm", "x = score (sample 2 from q) with prm"),
        ("x = (prune b keep 2) + c", "x = (prune b keep 2) + c"),
        ("x = (sample 2 from q with max_tokens = 4) + c", "x = (sample 2 from q with max_tokens = 4) + c"),
        ("x = sample 2 from q + c", "x = sample 2 from q + c"),
        ("x = sample (2 < 3) from (q | vote)", "x = sample (2 < 3) from (q | vote)"),
        ("x = f((sample 1 from q with seed = 1), y)", "x = f((sample 1 from q with seed = 1), y)"),
        ("x = sample 2 from (f(q)) budget 5", "x = sample 2 from (f(q)) budget 5"),
        ("x = expand (prune b keep 1) by 2", "x = expand (prune b keep 1) by 2"),
        ("x = vote (vote b) on line", "x = vote (vote b) on line"),
        ("x = [a | vote, (b | vote)]", "x = [a | vote, b | vote]"),
        ("x = f(k = (b | vote), n = 2)", "x = f(k = b | vote, n = 2)"),
    ],
)
def test_parentheses_only_where_the_grammar_needs_them(source: str, expected: str) -> None:
    text = fmt(f"strategy s() {{\n    {source}\n    return x\n}}\n")
    assert text.splitlines()[1] == "    " + expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = vote (sample 2 from q) until agreement >= 0.5", "x = vote sample 2 from q until agreement >= 0.5"),
        ("x = vote (vote b) until agreement >= 0.5", "x = vote (vote b) until agreement >= 0.5"),
        ("x = vote (sample 2 from q) until agreement >= (0.5 + t) after (n)", "x = vote sample 2 from q until agreement >= 0.5 + t after n"),
        ("x = vote (sample 2 from q) until agreement >= (0.5 < t)", "x = vote sample 2 from q until agreement >= (0.5 < t)"),
        ("x = (vote b until agreement >= 0.5) + c", "x = (vote b until agreement >= 0.5) + c"),
        ("x = (vote b on line) + c", "x = vote b on line + c"),
        ("x = vote (b | vote until confidence >= 0.9) on boxed", "x = vote (b | vote until confidence >= 0.9) on boxed"),
        ("x = resample (resample b) to 2", "x = resample (resample b) to 2"),
        ("x = resample (resample b to 2) by weight", "x = resample (resample b to 2) by weight"),
        ("x = resample (resample b by weight) multinomial", "x = resample (resample b by weight) multinomial"),
        ("x = resample b to (2 + k) by softmax (t * 2)", "x = resample b to 2 + k by softmax t * 2"),
        ("x = expand (resample b) by 2", "x = expand (resample b) by 2"),
        ("x = (b | resample to 2) + c", "x = (b | resample to 2) + c"),
        ("x = (resample b systematic) + c", "x = resample b systematic + c"),
        ("x = (resample b to 2 multinomial) + c", "x = resample b to 2 multinomial + c"),
    ],
)
def test_parentheses_where_an_anytime_vote_or_a_resample_would_take_what_follows(source: str, expected: str) -> None:
    text = fmt(f"strategy s() {{\n    {source}\n    return x\n}}\n")
    assert text.splitlines()[1] == "    " + expected
    assert parse(text) == parse(f"strategy s() {{\n    {source}\n    return x\n}}\n")


def test_the_anytime_vote_and_resample_get_the_canonical_layout() -> None:
    messy = """\
        strategy s(question:text,n:int=16){
        a=sample n from question with max_tokens=512|vote on number until agreement>=0.8
        b=vote(sample n from question)on boxed until confidence>=0.95 after 5
        c=sample 4 from question|score with prm|resample to n by softmax 0.5 multinomial
        repeat(c|vote)until finished(c){c=resample c by weight}
        return c}
    """
    assert fmt(messy) == textwrap.dedent("""\
        strategy s(question: text, n: int = 16) {
            a = sample n from question with max_tokens = 512
              | vote on number until agreement >= 0.8
            b = vote sample n from question on boxed until confidence >= 0.95 after 5
            c = sample 4 from question
              | score with prm
              | resample to n by softmax 0.5 multinomial
            repeat (c | vote) until finished(c) {
                c = resample c by weight
            }
            return c
        }
    """)


def test_parentheses_keep_a_step_from_swallowing_the_next_statement() -> None:
    source = textwrap.dedent("""\
        strategy s(q: text) {
            x = (score b with prm)
            agg = 1
            y = (sample 1 from q budget 5)
            tokens = 2
            return x
        }
    """)
    text = format_source(source)
    assert text == source
    assert parse(text) == parse(source)


def test_triple_quoted_strings_stay_triple_quoted_blocks() -> None:
    source = textwrap.dedent('''\
        strategy s(q: text) {
            p = """
                Solve "this" with \\\\ care:
                  {q}

                End."""
            return sample 1 from p
        }
    ''')
    assert format_source(source) == textwrap.dedent('''\
        strategy s(q: text) {
            p = """
                Solve "this" with \\\\ care:
                  {q}

                End.
                """
            return sample 1 from p
        }
    ''')


@pytest.mark.parametrize(
    "value",
    ['a\n"""b"""\n', "line\n  \n  spaces only", "\ttab\nx", 'ends with quote"', "", "\n", "one line", "a\r\nb\0"],
)
def test_every_triple_quoted_value_reads_back(value: str) -> None:
    roundtrip(strategy_of(ast.Return(ast.StrLit(value, triple=True))))


def test_a_triple_quoted_value_no_block_can_hold_becomes_an_escaped_string() -> None:
    module = strategy_of(ast.Return(ast.StrLit("  every line\n  is indented", triple=True)))
    text = format_module(module)
    assert '    return "  every line\\n  is indented"' in text
    assert parse(text).strategies[0].body == (ast.Return(ast.StrLit("  every line\n  is indented")),)


@pytest.mark.parametrize(
    ("value", "written"),
    [(0.7, "0.7"), (1e-05, "0.00001"), (1e22, "10000000000000000000000.0"), (3.0, "3.0"), (0.1 + 0.2, "0.30000000000000004")],
)
def test_floats_are_written_without_exponents_and_read_back_exactly(value: float, written: str) -> None:
    text = roundtrip(strategy_of(ast.Return(ast.FloatLit(value))))
    assert f"return {written}\n" in text


def test_long_with_lists_wrap_after_commas() -> None:
    text = fmt("""\
        strategy s(q: text) {
            b = sample 2 from q with max_tokens = 64, temperature = 0.7, top_p = 0.95, top_k = 40, min_p = 0.05, seed = 7 budget 150
            return b
        }
    """)
    assert text.splitlines()[1:3] == [
        "    b = sample 2 from q with max_tokens = 64, temperature = 0.7, top_p = 0.95, top_k = 40,",
        "            min_p = 0.05, seed = 7 budget 150",
    ]
    assert all(len(line) <= 100 for line in text.splitlines())


def test_comments_and_paragraph_breaks_are_kept_in_place() -> None:
    source = textwrap.dedent("""\
        import "x.ttc"  # helpers

        # about s

        # more about s
        strategy s(question: text) {  # header
            # first
            budget 100 tokens  # cap

            # before the pipeline
            b = sample 2 from "{question}"  # one
              # inside the pipeline
              | score with prm  # two
              | prune keep 1  # three
            if size(b) > 1 {  # if
                b = b + b
                # end of then
            } else {  # else
                b = best(b)
            }  # after if
            repeat 2 {}  # empty loop
            return vote b  # ret
            # before the close
        }  # end
        # end of file
    """)
    assert format_source(source) == source.replace(
        "    b = sample 2 from", "    # inside the pipeline\n    b = sample 2 from"
    ).replace("      # inside the pipeline\n", "")


def test_a_comment_at_the_end_of_a_one_line_pipeline_moves_to_its_last_line() -> None:
    text = fmt('strategy s(q: text) {\n    b = sample 2 from q | vote  # the answer\n    return b\n}\n')
    assert text.splitlines()[1:3] == ["    b = sample 2 from q", "      | vote  # the answer"]


def test_format_module_drops_comments() -> None:
    source = "# doc\nstrategy s(q: text) {  # h\n    return q  # r\n}\n"
    assert format_module(parse(source)) == "strategy s(q: text) {\n    return q\n}\n"


def test_a_file_with_a_syntax_error_is_not_formatted() -> None:
    with pytest.raises(TTCSyntaxError):
        format_source("strategy s( {")


@pytest.mark.parametrize("path", LIBRARY + FIXTURES, ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_library_and_fixture_programs_round_trip_and_are_fixed_points(path: str) -> None:
    source = Path(path).read_text()
    roundtrip(parse(source))
    formatted = format_source(source)
    assert parse(formatted) == parse(source)
    assert format_source(formatted) == formatted


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_golden_fixtures_are_already_formatted(path: str) -> None:
    source = Path(path).read_text()
    assert format_source(source) == source


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules())
def test_generated_modules_round_trip(module: ast.Module) -> None:
    roundtrip(module)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(grammar_programs())
def test_any_parsable_text_round_trips_and_formats_idempotently(source: str) -> None:
    try:
        module = parse(source)
    except TTCSyntaxError:
        return
    roundtrip(module)
    formatted = format_source(source)
    assert parse(formatted) == module
    assert format_source(formatted) == formatted


@st.composite
def commented_programs(draw: st.DrawFn) -> str:
    """A generated program with comments sprinkled on their own lines and after code, and
    blank lines, never inside a triple-quoted string."""
    lines = draw(programs(calls=False)).split("\n")
    out: list[str] = []
    in_string = False
    for i, line in enumerate(lines):
        started_inside = in_string
        if line.count('"""') % 2:
            in_string = not in_string
        if not started_inside and line.strip() and draw(st.integers(0, 3)) == 0:
            out.append(" " * draw(st.integers(0, 6)) + f"# own {i}")
        if not in_string and line.strip() and draw(st.integers(0, 3)) == 0:
            line += f"  # end {i}"
        out.append(line)
        if not in_string and draw(st.integers(0, 6)) == 0:
            out.append("")
    return "\n".join(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commented_programs())
def test_comments_survive_formatting_and_formatting_is_idempotent(source: str) -> None:
    formatted = format_source(source)
    assert parse(formatted) == parse(source)
    assert format_source(formatted) == formatted
    for comment in re.findall(r"# (?:own|end) \d+", source):
        assert comment in formatted


# ---- the anytime vote and resample in any position ----

_NUMBERS = st.sampled_from([
    ast.IntLit(2), ast.FloatLit(0.5), ast.Name("t"), ast.BinOp("+", ast.Name("t"), ast.IntLit(1)),
    ast.BinOp("*", ast.Name("t"), ast.IntLit(2)), ast.Compare("<", ast.Name("t"), ast.IntLit(1)),
    ast.Neg(ast.Name("t")), ast.Call("size", (ast.Name("b"),)),
])
_LEAVES = st.sampled_from([
    ast.Name("b"), ast.Sample(ast.IntLit(2), ast.Name("q")), ast.Prune(ast.Name("b"), ast.IntLit(1)),
    ast.Vote(ast.Name("b")), ast.Expand(ast.Name("b"), ast.IntLit(2)), ast.BinOp("+", ast.Name("b"), ast.Name("c")),
])


@st.composite
def _anytime_vote(draw: st.DrawFn, inner: st.SearchStrategy[ast.Expr]) -> ast.Expr:
    on = draw(st.sampled_from([None, "number", "regex"]))
    until = draw(st.sampled_from([None, "agreement", "confidence"]))
    return ast.Vote(
        draw(inner), on, r"x (\d)" if on == "regex" else None, draw(st.booleans()), until,
        draw(_NUMBERS) if until else None, draw(st.one_of(st.none(), _NUMBERS)) if until else None,
        piped=draw(st.booleans()),
    )


@st.composite
def _resample(draw: st.DrawFn, inner: st.SearchStrategy[ast.Expr]) -> ast.Expr:
    by = draw(st.sampled_from([None, "weight", "softmax"]))
    return ast.Resample(
        draw(inner), draw(st.one_of(st.none(), _NUMBERS)), by, draw(_NUMBERS) if by == "softmax" else None,
        draw(st.sampled_from([None, "systematic", "multinomial"])), piped=draw(st.booleans()),
    )


_NESTED = st.recursive(_LEAVES, lambda inner: st.one_of(_anytime_vote(inner), _resample(inner)), max_leaves=4)
_NEW_FORMS = st.one_of(_anytime_vote(_NESTED), _resample(_NESTED))


@st.composite
def _placed(draw: st.DrawFn) -> ast.Module:
    """A vote or resample where a clause, an operator or another statement could follow it."""
    e = draw(_NEW_FORMS)
    # Names a step could take as a clause word (`agg`, `tokens`); a word that can follow any
    # value (`on`, `to`, `after`, ...) cannot start the next statement at all.
    after = ast.Assign(draw(st.sampled_from(["y", "agg", "tokens"])), ast.IntLit(1))
    body: tuple[ast.Stmt, ...] = draw(st.sampled_from([
        (ast.Assign("x", e), after),
        (ast.Assign("x", ast.BinOp("+", e, ast.Name("c"))),),
        (ast.Assign("x", ast.Expand(e, ast.IntLit(2))),),
        (ast.Assign("x", ast.Vote(e, until="agreement", threshold=ast.FloatLit(0.5))),),
        (ast.Assign("x", ast.Resample(e, ast.IntLit(3))),),
        (ast.Repeat(e, ast.Compare(">=", ast.Name("agreement"), ast.FloatLit(0.5)), (after,)),),
        (ast.Repeat(ast.IntLit(2), None, (ast.Assign("x", e),)),),
    ]))
    return strategy_of(*body, ast.Return(ast.Name("x")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_placed())
def test_anytime_votes_and_resamples_round_trip_wherever_they_stand(module: ast.Module) -> None:
    roundtrip(module)
