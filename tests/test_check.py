"""Stage 2 (`ttcdsl.check`): every semantic error word for word, all errors of a program reported
together in source order, and the programs that must check cleanly (the library, the golden
fixtures and everything `ttcdsl.testing.programs()` generates)."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from ttcdsl.check import check
from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.errors import CheckErrors
from ttcdsl.program import load, loads
from ttcdsl.testing import programs

ROOT = Path(__file__).resolve().parent.parent
HEAD = "strategy s(question: text) {\n"


def errors_of(source: str, file: str = "prog.ttc") -> str:
    with pytest.raises(CheckErrors) as info:
        compile_source(textwrap.dedent(source), file)
    return info.value.render()


# (name, source, the whole rendered report)
SEMANTIC_ERRORS = [
    (
        "unknown name with a suggestion",
        HEAD + "    chains = sample 4 from question\n    return vote chanis\n}\n",
        """\
        prog.ttc:3:17: error: unknown name 'chanis'; did you mean 'chains'?
                return vote chanis
                            ^^^^^^""",
    ),
    (
        "unknown name without a close match",
        HEAD + "    return vote zzz\n}\n",
        """\
        prog.ttc:2:17: error: unknown name 'zzz'; expected a parameter or a name assigned above
                return vote zzz
                            ^^^""",
    ),
    (
        "voting on a number",
        "strategy s(n: int) {\n    return vote n\n}\n",
        """\
        prog.ttc:2:17: error: the input of `vote` must be branches, got an int
                return vote n
                            ^""",
    ),
    (
        "expanding an answer",
        HEAD + "    a = vote sample 2 from question\n    return expand a by 2\n}\n",
        """\
        prog.ttc:3:19: error: the input of `expand` must be branches, got an answer
                return expand a by 2
                              ^""",
    ),
    (
        "unknown sampling key with a suggestion",
        HEAD + "    return sample 2 from question with max_token = 5\n}\n",
        """\
        prog.ttc:2:40: error: unknown sampling key 'max_token'; did you mean 'max_tokens'?
                return sample 2 from question with max_token = 5
                                                   ^^^^^^^^^^^^^""",
    ),
    (
        "unknown sampling key listing the known ones",
        HEAD + "    return sample 2 from question with colour = 5\n}\n",
        """\
        prog.ttc:2:40: error: unknown sampling key 'colour'; expected one of max_tokens, temperature, top_p, top_k, min_p, seed, stop, step
                return sample 2 from question with colour = 5
                                                   ^^^^^^^^^^""",
    ),
    (
        "sample count of zero",
        HEAD + "    return sample 0 from question\n}\n",
        """\
        prog.ttc:2:19: error: the sample count must be at least 1, got 0
                return sample 0 from question
                              ^""",
    ),
    (
        "negative expand count",
        HEAD + "    b = sample 2 from question\n    return expand b by -1\n}\n",
        """\
        prog.ttc:3:24: error: the expand count must be at least 1, got -1
                return expand b by -1
                                   ^^""",
    ),
    (
        "keep zero",
        HEAD + "    b = sample 2 from question\n    return prune b keep 0\n}\n",
        """\
        prog.ttc:3:25: error: the `keep` count must be at least 1, got 0
                return prune b keep 0
                                    ^""",
    ),
    (
        "unknown interpolation with a suggestion",
        HEAD + '    return sample 2 from "Q: {questoin}"\n}\n',
        """\
        prog.ttc:2:26: error: unknown name 'questoin' in {questoin}; did you mean 'question'?
                return sample 2 from "Q: {questoin}"
                                     ^^^^^^^^^^^^^^^""",
    ),
    (
        "a lone brace in a prompt",
        HEAD + '    return sample 2 from "f(x) = {x"\n}\n',
        """\
        prog.ttc:2:26: error: a lone '{' in a string: write {{ for a literal brace
                return sample 2 from "f(x) = {x"
                                     ^^^^^^^^^^^""",
    ),
    (
        "recursion through another strategy names the cycle",
        "strategy a(q: text) {\n    return b(q)\n}\n\nstrategy b(q: text) {\n    return a(q)\n}\n",
        """\
        prog.ttc:6:12: error: recursion between strategies is not allowed: a -> b -> a
                return a(q)
                       ^^^^""",
    ),
    (
        "self recursion",
        "strategy a(q: text) {\n    return a(q)\n}\n",
        """\
        prog.ttc:2:12: error: strategy 'a' calls itself; recursion is not allowed
                return a(q)
                       ^^^^""",
    ),
    (
        "missing return",
        HEAD + "    b = sample 2 from question\n    if finished(b) {\n        return b\n    }\n}\n",
        """\
        prog.ttc:1:1: error: strategy 's' can end without returning a value: end it with `return EXPR`
            strategy s(question: text) {
            ^""",
    ),
    (
        "argument of the wrong type",
        "strategy h(q: text, n: int = 2) {\n    return sample n from q\n}\n\n"
        'strategy s(question: text) {\n    return h(question, "four")\n}\n',
        """\
        prog.ttc:6:24: error: argument 'n' of 'h' must be an int, got a text
                return h(question, "four")
                                   ^^^^^^""",
    ),
    (
        "missing argument",
        "strategy h(q: text, n: int) {\n    return sample n from q\n}\n\n"
        "strategy s(question: text) {\n    return h(n = 2)\n}\n",
        """\
        prog.ttc:6:12: error: 'h' needs a value for 'q'
                return h(n = 2)
                       ^^^^^^^^""",
    ),
    (
        "too many arguments",
        "strategy h(q: text) {\n    return sample 1 from q\n}\n\n"
        "strategy s(question: text) {\n    return h(question, 2)\n}\n",
        """\
        prog.ttc:6:12: error: 'h' takes 1 argument, got 2
                return h(question, 2)
                       ^^^^^^^^^^^^^^""",
    ),
    (
        "unknown keyword argument lists the parameters",
        "strategy h(q: text, n: int = 1) {\n    return sample n from q\n}\n\n"
        "strategy s(question: text) {\n    return h(question, m = 2)\n}\n",
        """\
        prog.ttc:6:24: error: 'h' has no parameter 'm' (its parameters: q, n)
                return h(question, m = 2)
                                   ^^^^^""",
    ),
    (
        "misspelt strategy",
        "strategy helper(q: text) {\n    return q\n}\n\nstrategy s(question: text) {\n    return hepler(question)\n}\n",
        """\
        prog.ttc:6:12: error: unknown function or strategy 'hepler'; did you mean 'helper'?
                return hepler(question)
                       ^^^^^^^^^^^^^^^^""",
    ),
    (
        "builtin with a budget",
        HEAD + "    b = sample 2 from question\n    return best(b) budget 10\n}\n",
        """\
        prog.ttc:3:12: error: best() is a builtin; only strategy calls take a budget
                return best(b) budget 10
                       ^^^^^^^^^^^^^^^^^""",
    ),
    (
        "duplicate strategy",
        "strategy s(q: text) {\n    return q\n}\n\nstrategy s(q: text) {\n    return q\n}\n",
        """\
        prog.ttc:5:1: error: strategy 's' is already defined at prog.ttc:1
            strategy s(q: text) {
            ^""",
    ),
    (
        "strategy budget inside a loop",
        HEAD + "    b = sample 2 from question\n    repeat 2 {\n        budget 100 tokens\n"
        "        b = expand b by 2\n    }\n    return b\n}\n",
        """\
        prog.ttc:4:9: error: `budget N tokens` belongs at the top of a strategy; give a step its own `budget N` instead
                    budget 100 tokens
                    ^^^^^^^^^^^^^^^^^""",
    ),
    (
        "strategy budget written where a step budget was meant",
        HEAD + "    b = sample 2 from question budget 100 tokens\n    return vote b\n}\n",
        """\
        prog.ttc:2:32: error: `budget 100 tokens` right after a statement is the strategy's budget, not the step's: a step's own budget is `budget 100` without 'tokens' (put the strategy budget on a line of its own)
                b = sample 2 from question budget 100 tokens
                                           ^^^^^^^^^^^^^^^^^""",
    ),
    (
        "bad regex",
        HEAD + '    b = sample 2 from question\n    return vote b on regex "(\\\\d+"\n}\n',
        """\
        prog.ttc:3:12: error: bad regex '(\\\\d+': missing ), unterminated subpattern at position 0
                return vote b on regex "(\\\\d+"
                       ^^^^^^^^^^^^^^^^^^^^^^^""",
    ),
    (
        "regex without a group",
        HEAD + '    b = sample 2 from question\n    return vote b on regex "\\\\d+"\n}\n',
        """\
        prog.ttc:3:12: error: the regex '\\\\d+' needs a group: the vote uses group 1 of the last match
                return vote b on regex "\\\\d+"
                       ^^^^^^^^^^^^^^^^^^^^^^""",
    ),
    (
        "judge template without the branch",
        HEAD + '    b = sample 2 from question\n    return score b with judge("Is it right?")\n}\n',
        """\
        prog.ttc:3:25: error: a judge template must show the graded branch: put {branch} in it
                return score b with judge("Is it right?")
                                    ^^^^^^^^^^^^^^^^^^^^^""",
    ),
    (
        "verifier target without a function",
        HEAD + '    b = sample 2 from question\n    return score b with verifier("checks.verify")\n}\n',
        """\
        prog.ttc:3:25: error: verifier target 'checks.verify' must look like "package.module:function"
                return score b with verifier("checks.verify")
                                    ^^^^^^^^^^^^^^^^^^^^^^^^^""",
    ),
    (
        "negative temperature",
        HEAD + "    return sample 2 from question with temperature = -0.5\n}\n",
        """\
        prog.ttc:2:54: error: `temperature` must be at least 0, got -0.5
                return sample 2 from question with temperature = -0.5
                                                                 ^^^^""",
    ),
    (
        "top_p above one",
        HEAD + "    return sample 2 from question with top_p = 1.5\n}\n",
        """\
        prog.ttc:2:48: error: `top_p` must be in (0, 1], got 1.5
                return sample 2 from question with top_p = 1.5
                                                           ^^^""",
    ),
    (
        "zero max_tokens",
        HEAD + "    return sample 2 from question with max_tokens = 0\n}\n",
        """\
        prog.ttc:2:53: error: `max_tokens` must be at least 1, got 0
                return sample 2 from question with max_tokens = 0
                                                                ^""",
    ),
    (
        "empty step separator",
        HEAD + '    return sample 2 from question with step = ""\n}\n',
        """\
        prog.ttc:2:47: error: `step` cannot be an empty string
                return sample 2 from question with step = ""
                                                          ^^""",
    ),
    (
        "if on branches",
        HEAD + "    b = sample 2 from question\n    if b {\n        return b\n    }\n    return b\n}\n",
        """\
        prog.ttc:3:8: error: an `if` condition must be a bool, got branches
                if b {
                   ^""",
    ),
    (
        "rebinding to another type",
        HEAD + "    b = sample 2 from question\n    b = vote b\n    return b\n}\n",
        """\
        prog.ttc:3:5: error: 'b' holds branches; it cannot be rebound to an answer
                b = vote b
                ^^^^^^^^^^""",
    ),
    (
        "returning two types",
        HEAD + "    b = sample 2 from question\n    if finished(b) {\n        return b\n    }\n    return vote b\n}\n",
        """\
        prog.ttc:1:1: error: strategy 's' returns different types: answer, branches
            strategy s(question: text) {
            ^""",
    ),
    (
        "adding branches and a number",
        HEAD + "    b = sample 2 from question\n    return b + 1\n}\n",
        """\
        prog.ttc:3:12: error: cannot add branches and an int: '+' adds numbers, joins texts or unites branches
                return b + 1
                       ^^^^^""",
    ),
    (
        "parameter default of the wrong type",
        'strategy s(q: text, n: int = "four") {\n    return q\n}\n',
        """\
        prog.ttc:1:30: error: the default of 'n' is a text, but the parameter is an int
            strategy s(q: text, n: int = "four") {
                                         ^^^^^^""",
    ),
    (
        "an anytime vote on a name",
        HEAD + "    b = sample 4 from question\n    return vote b until agreement >= 0.8\n}\n",
        """\
        prog.ttc:3:17: error: an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can stop them as they finish; write `sample ... | vote ... until ...`
                return vote b until agreement >= 0.8
                            ^""",
    ),
    (
        "an anytime vote on a piped name",
        HEAD + "    b = sample 4 from question\n    return b | vote until agreement >= 0.8\n}\n",
        """\
        prog.ttc:3:12: error: an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can stop them as they finish; write `sample ... | vote ... until ...`
                return b | vote until agreement >= 0.8
                       ^""",
    ),
    (
        "an anytime vote on a union",
        HEAD + "    return vote (sample 2 from question + sample 2 from question) until agreement >= 0.8\n}\n",
        """\
        prog.ttc:2:18: error: an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can stop them as they finish; write `sample ... | vote ... until ...`
                return vote (sample 2 from question + sample 2 from question) until agreement >= 0.8
                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^""",
    ),
    (
        "an anytime vote on a call",
        HEAD + "    b = sample 4 from question\n    return vote best(b) until confidence >= 0.9\n}\n",
        """\
        prog.ttc:3:17: error: an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can stop them as they finish; write `sample ... | vote ... until ...`
                return vote best(b) until confidence >= 0.9
                            ^^^^^^^""",
    ),
    (
        "an anytime vote on a scored sample",
        HEAD + "    return sample 4 from question | score with prm | vote weighted until confidence >= 0.9\n}\n",
        """\
        prog.ttc:2:37: error: an anytime vote (`until`) takes its branches straight from a `sample` or `expand`, so it can stop them as they finish; write `sample ... | vote ... until ...`
                return sample 4 from question | score with prm | vote weighted until confidence >= 0.9
                                                ^^^^^^^^^^^^^^""",
    ),
    (
        "an until threshold that is not a number",
        HEAD + '    return sample 4 from question | vote until agreement >= "high"\n}\n',
        """\
        prog.ttc:2:61: error: the threshold of `until` must be an int or a float, got a text
                return sample 4 from question | vote until agreement >= "high"
                                                                        ^^^^^^""",
    ),
    (
        "an until threshold above one",
        HEAD + "    return sample 4 from question | vote until agreement >= 1.5\n}\n",
        """\
        prog.ttc:2:61: error: the threshold of `until` must be in [0, 1], got 1.5
                return sample 4 from question | vote until agreement >= 1.5
                                                                        ^^^""",
    ),
    (
        "a negative until threshold",
        HEAD + "    return sample 4 from question | vote until confidence >= -0.5\n}\n",
        """\
        prog.ttc:2:62: error: the threshold of `until` must be in [0, 1], got -0.5
                return sample 4 from question | vote until confidence >= -0.5
                                                                         ^^^^""",
    ),
    (
        "an after count that is not an int",
        HEAD + "    return sample 4 from question | vote until agreement >= 0.8 after 2.5\n}\n",
        """\
        prog.ttc:2:71: error: the `after` count must be an int, got a float
                return sample 4 from question | vote until agreement >= 0.8 after 2.5
                                                                                  ^^^""",
    ),
    (
        "an after count of zero",
        HEAD + "    return sample 4 from question | vote until agreement >= 0.8 after 0\n}\n",
        """\
        prog.ttc:2:71: error: the `after` count must be at least 1, got 0
                return sample 4 from question | vote until agreement >= 0.8 after 0
                                                                                  ^""",
    ),
    (
        "resampling an answer",
        HEAD + "    a = vote sample 2 from question\n    return resample a\n}\n",
        """\
        prog.ttc:3:21: error: the input of `resample` must be branches, got an answer
                return resample a
                                ^""",
    ),
    (
        "a resample count that is not an int",
        HEAD + "    b = sample 4 from question\n    return resample b to 1.5\n}\n",
        """\
        prog.ttc:3:26: error: the resample count must be an int, got a float
                return resample b to 1.5
                                     ^^^""",
    ),
    (
        "a negative resample count",
        HEAD + "    b = sample 4 from question\n    return b | resample to -1\n}\n",
        """\
        prog.ttc:3:28: error: the resample count must be at least 0, got -1
                return b | resample to -1
                                       ^^""",
    ),
    (
        "a softmax temperature that is not a number",
        HEAD + "    b = sample 4 from question\n    return resample b by softmax question\n}\n",
        """\
        prog.ttc:3:34: error: the softmax temperature must be an int or a float, got a text
                return resample b by softmax question
                                             ^^^^^^^^""",
    ),
    (
        "a softmax temperature of zero",
        HEAD + "    b = sample 4 from question\n    return resample b by softmax 0\n}\n",
        """\
        prog.ttc:3:34: error: the softmax temperature must be above 0, got 0
                return resample b by softmax 0
                                             ^""",
    ),
    (
        "a file without strategies",
        "# nothing here\n",
        """\
        prog.ttc:1:1: error: this file defines no strategy; expected `strategy NAME(PARAMS) { ... }`
            # nothing here
            ^""",
    ),
]


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in SEMANTIC_ERRORS], ids=[c[0] for c in SEMANTIC_ERRORS])
def test_semantic_error_text(source: str, expected: str) -> None:
    assert errors_of(source) == textwrap.dedent(expected)


def test_all_errors_are_reported_together_in_source_order() -> None:
    report = errors_of("""\
        strategy s(question: text) {
            b = sample 0 from questoin with tempreature = 0.5
            return vote b on regex "x"
        }

        strategy t(n: int) {
            return vote n
        }
    """)
    heads = [line for line in report.splitlines() if ": error: " in line]
    assert heads == [
        "prog.ttc:2:16: error: the sample count must be at least 1, got 0",
        "prog.ttc:2:23: error: unknown name 'questoin'; did you mean 'question'?",
        "prog.ttc:2:37: error: unknown sampling key 'tempreature'; did you mean 'temperature'?",
        "prog.ttc:3:12: error: the regex 'x' needs a group: the vote uses group 1 of the last match",
        "prog.ttc:7:17: error: the input of `vote` must be branches, got an int",
    ]
    with pytest.raises(CheckErrors) as info:
        compile_source(textwrap.dedent("strategy s(n: int) {\n    return vote n\n}\nstrategy t(n: int) {\n    return vote n\n}\n"))
    assert str(info.value) == "the input of `vote` must be branches, got an int (and 1 more)"


def test_errors_in_an_imported_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "lib.ttc").write_text("strategy helper(q: text) {\n    return vote q\n}\n")
    main = tmp_path / "main.ttc"
    main.write_text('import "lib.ttc"\n\nstrategy s(q: text) {\n    return helper(q)\n}\n')
    with pytest.raises(CheckErrors) as info:
        check(load(main))
    assert info.value.render() == (
        f"{tmp_path / 'lib.ttc'}:2:17: error: the input of `vote` must be branches, got a text\n"
        "        return vote q\n"
        "                    ^"
    )


def test_missing_import_says_where_it_looked(tmp_path: Path) -> None:
    main = tmp_path / "main.ttc"
    main.write_text('import "nowhere.ttc"\n\nstrategy s(q: text) {\n    return q\n}\n')
    with pytest.raises(CheckErrors) as info:
        load(main)
    assert info.value.render() == (
        f"{main}:1:1: error: cannot import 'nowhere.ttc': no such file (looked at {tmp_path / 'nowhere.ttc'})\n"
        '    import "nowhere.ttc"\n'
        "    ^^^^^^^^^^^^^^^^^^^^"
    )


def test_import_cycles_are_harmless(tmp_path: Path) -> None:
    (tmp_path / "a.ttc").write_text('import "b.ttc"\nstrategy a(q: text) {\n    return b(q)\n}\n')
    (tmp_path / "b.ttc").write_text('import "a.ttc"\nstrategy b(q: text) {\n    return sample 1 from q\n}\n')
    plan = compile_file(tmp_path / "a.ttc").plan
    assert plan.entry == "a" and set(plan.strategies) == {"a", "b"}


def test_library_programs_and_golden_fixtures_check_clean() -> None:
    files = sorted(glob.glob(str(ROOT / "programs" / "*.ttc"))) + sorted(
        glob.glob(str(ROOT / "tests" / "fixtures" / "plans" / "*.ttc"))
    )
    assert len(files) >= 6
    for path in files:
        check(load(path))  # raises CheckErrors on any problem


def test_types_of_branches_answers_and_numbers_are_recorded() -> None:
    checked = check(loads(textwrap.dedent("""\
        strategy s(question: text, n: int = 2) {
            b = sample n * 2 from question
            a = vote b
            return agreement(a) > 0.5
        }
    """)))
    assert checked.returns == {"s": "bool"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_generated_programs_check_clean(source: str) -> None:
    try:
        check(loads(source))
    except CheckErrors as exc:  # pragma: no cover - shows the program on failure
        raise AssertionError(f"{exc.render()}\n--- program ---\n{source}") from None


def test_until_sees_only_names_bound_before_the_loop() -> None:
    from ttcdsl.compiler import compile_source
    from ttcdsl.errors import CheckErrors

    src = """strategy s(question: text) {
    repeat 3 until finished(later) {
        later = sample 1 from question
    }
    return later
}
"""
    with pytest.raises(CheckErrors, match="unknown name 'later'"):
        compile_source(src, "u.ttc")


def test_anytime_votes_on_a_sample_or_expand_written_in_place_check_clean() -> None:
    checked = check(loads(textwrap.dedent("""\
        strategy s(question: text, n: int = 16, t: float = 0.9) {
            a = sample 16 from question with max_tokens = 512 | vote on number until agreement >= 0.8
            b = vote (sample n from question) on boxed until confidence >= 0.95 after 5
            roots = sample 2 from question
            c = roots | expand by n | vote until confidence >= t after n / 2
            d = vote expand roots by 2 on line until agreement >= 1
            return resample roots to n by softmax t + 1 multinomial
        }
    """)))
    assert checked.returns == {"s": "branches"}


def test_an_anytime_vote_on_something_that_is_not_branches_gets_the_type_error_only() -> None:
    report = errors_of("strategy s(n: int) {\n    return vote n until agreement >= 0.5\n}\n")
    assert [line for line in report.splitlines() if ": error: " in line] == [
        "prog.ttc:2:17: error: the input of `vote` must be branches, got an int",
    ]
