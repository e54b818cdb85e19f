"""`budget (EXPR) tokens`: a strategy budget computed from its int parameters, checked statically."""

from __future__ import annotations

import anyio
import pytest

from ttcdsl.compiler import compile_source
from ttcdsl.errors import CheckErrors, NodeFailed
from ttcdsl.fmt import format_source
from ttcdsl.runtime.backends.scripted import ScriptedBackend
from ttcdsl.runtime.executor import RunOptions, run_plan

SCALED = """strategy sc(question: text, n: int = 4) {
    budget (n * 30 + 10) tokens
    chains = sample n from question with max_tokens = 100
    return vote chains on number
}
"""


def _run(src: str, **args: object) -> object:
    plan = compile_source(src).plan
    values = {"question": "q", "n": 4, **args}
    return anyio.run(run_plan, plan, ScriptedBackend(), values, RunOptions(seed=1))


@pytest.mark.parametrize("sequential", [False, True])
def test_the_budget_follows_the_parameter(sequential: bool) -> None:
    for n in (2, 5):
        plan = compile_source(SCALED).plan
        result = anyio.run(run_plan, plan, ScriptedBackend(), {"question": "q", "n": n},
                           RunOptions(seed=1, sequential=sequential))
        assert result.budget == n * 30 + 10
        assert result.usage.completion_tokens <= n * 30 + 10


def test_it_formats_and_plans() -> None:
    assert format_source(SCALED) == SCALED
    assert compile_source(SCALED).plan.strategy().budget_expr is not None
    literal = compile_source(SCALED.replace("(n * 30 + 10)", "700")).plan.strategy()
    assert literal.budget == 700 and literal.budget_expr is None


@pytest.mark.parametrize(("budget", "where"), [
    ("(n * t)", "t"), ("(size(x))", "size(x)"), ("(m + 1)", "m"),
])
def test_anything_but_int_parameters_and_numbers_is_refused(budget: str, where: str) -> None:
    src = f"""strategy s(question: text, n: int = 2, t: float = 0.5) {{
    budget {budget} tokens
    x = sample n from question
    m = 3
    return x
}}
"""
    with pytest.raises(CheckErrors) as info:
        compile_source(src)
    text = info.value.render()
    assert "a strategy budget is a number or integer arithmetic on int parameters" in text
    assert where in text


def test_a_budget_below_one_token_fails_at_the_call() -> None:
    with pytest.raises(NodeFailed, match="its budget must come out as at least 1 token, got -50"):
        _run(SCALED.replace("(n * 30 + 10)", "(n * 0 - 50)"))
