"""`expect COND`: parsed, formatted, checked, lowered; skipped in normal runs, reported in test mode."""

from __future__ import annotations

import anyio
import pytest

from ttcdsl import plan as P
from ttcdsl.compiler import compile_source
from ttcdsl.errors import CheckErrors
from ttcdsl.fmt import format_source
from ttcdsl.runtime.backends.scripted import ScriptedBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import ExpectOutcome, RunResult

SOURCE = """\
strategy s(question: text, n: int = 3) {
    b = sample n from question with max_tokens = 20
    expect size(b) <= n
    repeat 2 {
        b = expand b by 2 with max_tokens = 5 | prune keep n by length
        expect size(b) <= n and
               budget_left() >= 0
    }
    a = vote b
    expect agreement(a) > 1
    return a
}
"""


def _run(source: str, expect: list[ExpectOutcome] | None, sequential: bool = False) -> RunResult:
    plan = compile_source(source, "e.ttc").plan

    async def main() -> RunResult:
        async with ScriptedBackend() as backend:
            opts = RunOptions(seed=3, sequential=sequential, expect=None if expect is None else expect.append)
            return await run_plan(plan, backend, {"question": "q"}, opts)

    return anyio.run(main)


def test_expect_lowers_to_a_statement_with_its_text() -> None:
    plan = compile_source(SOURCE, "e.ttc").plan
    expects = [st for st in plan.strategy().body if isinstance(st, P.Expect)]
    assert [e.text for e in expects] == ["size(b) <= n", "agreement(a) > 1"]
    loop = next(st for st in plan.strategy().body if isinstance(st, P.Repeat))
    inner = [st for st in loop.body if isinstance(st, P.Expect)]
    assert [e.text for e in inner] == ["size(b) <= n and budget_left() >= 0"]
    assert P.decode(P.encode(plan)) == plan


def test_expect_formats_and_round_trips() -> None:
    formatted = format_source(SOURCE, "e.ttc")
    assert "        expect size(b) <= n and budget_left() >= 0\n" in formatted
    assert format_source(formatted, "e.ttc") == formatted


@pytest.mark.parametrize(("body", "message"), [
    ("expect size(b)", "an `expect` condition must be a bool, got an int"),
    ("expect size(sample 1 from question) > 0", "an `expect` condition cannot run a step"),
    ("expect nope > 1", "unknown name 'nope'"),
])
def test_check_rejects_bad_expects(body: str, message: str) -> None:
    source = f"strategy s(question: text) {{\n    b = sample 2 from question\n    {body}\n    return b\n}}\n"
    with pytest.raises(CheckErrors) as info:
        compile_source(source, "e.ttc")
    assert message in str(info.value)


def test_normal_runs_skip_expects_and_test_mode_reports_each_outcome() -> None:
    plain = _run(SOURCE, None)
    seen: list[ExpectOutcome] = []
    tested = _run(SOURCE, seen)
    assert tested.usage == plain.usage  # evaluating the expects costs no tokens
    assert [(o.line, o.where, o.held) for o in seen] == [
        (3, "", True), (6, "@0", True), (6, "@1", True), (10, "", False),
    ]
    sequential: list[ExpectOutcome] = []
    _run(SOURCE, sequential, sequential=True)
    assert sorted(sequential, key=lambda o: (o.line, o.where)) == sorted(seen, key=lambda o: (o.line, o.where))
