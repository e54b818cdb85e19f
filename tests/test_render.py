"""`ttcdsl.render`: the `ttc plan` text table and Graphviz dot show the clauses of the anytime vote
and of resample (other forms are covered through the CLI in tests/test_cli_front.py)."""

from __future__ import annotations

import textwrap

from ttcdsl.compiler import compile_source
from ttcdsl.render import to_dot, to_text

SOURCE = textwrap.dedent("""\
    strategy s(question: text, n: int = 4) {
        quick = sample 8 from question with max_tokens = 10 | vote on boxed until agreement >= 0.8
        sure = vote (sample n from question) until confidence >= 0.95 after 5
        b = sample 4 from question with max_tokens = 10 | score with prm
        c = resample b to n by softmax 0.5 multinomial
        return resample c by weight
    }
""")


def rows() -> dict[str, list[str]]:
    """The text table's rows by node id, split on two or more spaces."""
    lines = to_text(compile_source(SOURCE, "prog.ttc").plan).splitlines()[2:]
    cells = [[c for c in line.strip().split("  ") if c] for line in lines if line.strip()]
    return {c[0]: [x.strip() for x in c[1:]] for c in cells}


def test_text_shows_the_stopping_rule_and_after_count_of_an_anytime_vote() -> None:
    table = rows()
    votes = [r for r in table.values() if r[0] == "vote"]
    assert [r[2] for r in votes] == [
        "n4 on boxed until agreement >= 0.8 after 3",
        "n10 on number until confidence >= 0.95 after 5",
    ]
    assert all(r[3:] == ["0", "-", "0", "-"] for r in votes)


def test_text_shows_the_count_weighting_and_method_of_a_resample() -> None:
    resamples = [r for r in rows().values() if r[0] == "resample"]
    assert [r[1:3] for r in resamples] == [
        ["5", "b to n by softmax 0.5 multinomial"],
        ["6", "c by weight"],
    ]


def test_dot_labels_carry_the_same_clauses() -> None:
    dot = to_dot(compile_source(SOURCE, "prog.ttc").plan)
    assert "vote (line 2)\\nn4 on boxed until agreement >= 0.8 after 3" in dot
    assert "resample (line 5)\\nb to n by softmax 0.5 multinomial" in dot
    assert "resample (line 6)\\nc by weight" in dot
