"""Static worst-case tokens (`ttcdsl.bounds`): exact numbers for loops, branches, calls, prunes
and unknown counts, and the warnings `ttc check` prints when a worst case exceeds a budget."""

from __future__ import annotations

import textwrap
from typing import Any

from ttcdsl import plan as P
from ttcdsl.bounds import DEFAULT_MAX_TOKENS, JUDGE_TOKENS, worst_case
from ttcdsl.compiler import compile_source


def compiled(source: str, **args: Any) -> P.Plan:
    return compile_source(textwrap.dedent(source), "prog.ttc", args=args or None).plan


def bounds(plan: P.Plan, strategy: str | None = None) -> list[tuple[str, int | None, int | None, int | None]]:
    """(op, per_call, calls, total) of every step that can spend tokens, in node order."""
    return [
        (type(n).__name__.lower(), n.bound.per_call, n.bound.calls, n.bound.total)
        for n in plan.strategy(strategy).nodes
        if isinstance(n, (P.Sample, P.Expand, P.Score, P.Call)) and n.bound is not None
    ]


def test_loops_are_multiplied_out_and_until_is_ignored() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            b = sample 2 from q with max_tokens = 10
            repeat 3 until finished(b) {
                b = expand b by 2 with max_tokens = 10 | prune keep 2
            }
            return b
        }
    """)
    assert bounds(plan) == [("sample", 20, 1, 20), ("expand", 40, 3, 120)]
    assert plan.strategy().worst == 140


def test_nested_loops_multiply_their_counts() -> None:
    plan = compiled("""\
        strategy s(q: text, outer: int = 2) {
            b = sample 1 from q with max_tokens = 5
            repeat outer {
                repeat outer + 1 {
                    b = expand b by 1 with max_tokens = 5
                }
            }
            return b
        }
    """)
    assert bounds(plan) == [("sample", 5, 1, 5), ("expand", 5, 6, 30)]
    assert plan.strategy().worst == 35


def test_if_else_takes_the_costlier_side() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            b = sample 1 from q with max_tokens = 10
            if finished(b) {
                b = sample 5 from q with max_tokens = 10
            } else {
                b = sample 2 from q with max_tokens = 100
            }
            return b
        }
    """)
    assert bounds(plan) == [("sample", 10, 1, 10), ("sample", 50, 1, 50), ("sample", 200, 1, 200)]
    assert plan.strategy().worst == 10 + 200


def test_step_budgets_cap_what_the_strategy_can_spend_but_not_the_bound() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            b = sample 4 from q with max_tokens = 100 budget 150
            return b
        }
    """)
    assert bounds(plan) == [("sample", 400, 1, 400)]
    assert plan.strategy().worst == 150


def test_calls_cost_the_callee_capped_by_its_own_and_the_call_budget() -> None:
    plan = compiled("""\
        strategy helper(q: text, n: int = 4) {
            budget 300 tokens
            return sample n from q with max_tokens = 100
        }

        strategy s(q: text) {
            a = helper(q)
            b = helper(q, n = 2) budget 150
            c = helper(q, n = 1)
            return a + b + c
        }
    """)
    assert bounds(plan, "helper") == [("sample", 400, 1, 400)]
    assert plan.strategy("helper").worst == 400
    assert bounds(plan) == [("call", 300, 1, 300), ("call", 200, 1, 200), ("call", 100, 1, 100)]
    assert plan.strategy().worst == 300 + 150 + 100


def test_prune_shrinks_sizes_and_per_root_keeps_per_root() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            b = sample 8 from q with max_tokens = 1
              | prune keep 2
              | expand by 3 with max_tokens = 1
            roots = sample 4 from q with max_tokens = 1
                  | expand by 3 with max_tokens = 1
                  | prune keep 1 per root
                  | expand by 2 with max_tokens = 1
            return b + roots
        }
    """)
    assert bounds(plan) == [
        ("sample", 8, 1, 8), ("expand", 6, 1, 6),
        ("sample", 4, 1, 4), ("expand", 12, 1, 12), ("expand", 8, 1, 8),
    ]


def test_resample_is_free_and_has_count_branches_or_as_many_as_its_input() -> None:
    plan = compiled("""\
        strategy s(q: text, k: int = 3) {
            b = sample 2 from q with max_tokens = 10 | score with prm
            x = resample b to 5 by softmax 0.5 | expand by 2 with max_tokens = 10
            y = expand (resample b) by 1 with max_tokens = 10
            z = expand (b | resample to k * 2 multinomial) by 1 with max_tokens = 10
            w = expand (resample b to size(b)) by 1 with max_tokens = 10
            return x + y + z + w
        }
    """)
    assert bounds(plan) == [
        ("sample", 20, 1, 20), ("score", 0, 1, 0),
        ("expand", 100, 1, 100), ("expand", 20, 1, 20), ("expand", 60, 1, 60), ("expand", None, 1, None),
    ]
    assert plan.strategy().worst is None


def test_resampled_copies_keep_their_roots() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            three = sample 3 from q with max_tokens = 1
            many = resample three to 10 | prune keep 1 per root | expand by 1 with max_tokens = 1
            few = resample three to 2 | prune keep 2 per root | expand by 1 with max_tokens = 1
            return many + few
        }
    """)
    # 10 copies of 3 roots keep one per root: 3; 2 copies have at most 2 roots: 2.
    assert bounds(plan) == [("sample", 3, 1, 3), ("expand", 3, 1, 3), ("expand", 2, 1, 2)]


def test_an_anytime_vote_costs_nothing_and_its_input_keeps_its_worst_case() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            budget 100 tokens
            return sample 8 from q with max_tokens = 10 | vote until agreement >= 0.5 after 2
        }
    """)
    assert bounds(plan) == [("sample", 80, 1, 80)]
    assert plan.strategy().worst == 80


def test_defaults_for_max_tokens_and_judge_cost() -> None:
    plan = compiled("""\
        strategy s(q: text) {
            return sample 3 from q | score with judge("{branch} ok?") | score with prm
        }
    """)
    assert bounds(plan) == [
        ("sample", 3 * DEFAULT_MAX_TOKENS, 1, 3 * DEFAULT_MAX_TOKENS),
        ("score", 3 * JUDGE_TOKENS, 1, 3 * JUDGE_TOKENS),
        ("score", 0, 1, 0),
    ]


def test_unknown_counts_make_the_bound_unknown() -> None:
    plan = compiled("""\
        strategy s(q: text, n: int) {
            budget 1000 tokens
            b = sample 2 from q with max_tokens = 10
            repeat n {
                b = expand b by 1 with max_tokens = 10
            }
            return sample n from q with max_tokens = 10
        }
    """)
    assert bounds(plan) == [("sample", 20, 1, 20), ("expand", 20, None, None), ("sample", None, 1, None)]
    assert plan.strategy().worst is None


def test_given_arguments_replace_defaults_and_unknowns() -> None:
    source = """\
        strategy s(q: text, n: int, width: int = 2) {
            b = sample width from q with max_tokens = 10
            repeat n {
                b = expand b by 1 with max_tokens = 10
            }
            return b
        }
    """
    plan = compiled(source, n=4, width=3)
    assert bounds(plan) == [("sample", 30, 1, 30), ("expand", 30, 4, 120)]
    assert worst_case(plan, "s", {"n": 1, "width": 1}) == 20


def test_warnings_name_the_step_or_strategy_whose_worst_case_exceeds_its_budget() -> None:
    result = compile_source(textwrap.dedent("""\
        strategy helper(q: text) {
            return sample 3 from q with max_tokens = 100
        }

        strategy s(q: text, n: int) {
            budget 500 tokens
            b = sample 4 from q with max_tokens = 100 budget 300
            c = helper(q) budget 200
            repeat n {
                b = expand b by 1 with max_tokens = 10 budget 50
            }
            return b + c
        }
    """), "prog.ttc")
    assert [w.render() for w in result.warnings] == [
        "prog.ttc:5:1: warning: worst case of strategy 's' is unbounded, above its budget of 500 tokens: "
        "a run may end early with a partial result\n"
        "    strategy s(q: text, n: int) {\n"
        "    ^",
        "prog.ttc:7:9: warning: worst case of this sample is 400 tokens per call, above its budget of 300: "
        "its requests will share the budget fairly and may be cut short\n"
        "        b = sample 4 from q with max_tokens = 100 budget 300\n"
        "            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        "prog.ttc:8:9: warning: worst case of this call is 300 tokens per call, above its budget of 200: "
        "the callee may end early with a partial result\n"
        "        c = helper(q) budget 200\n"
        "            ^^^^^^^^^^^^^^^^^^^^",
    ]


def test_no_warnings_when_every_budget_covers_its_worst_case() -> None:
    result = compile_source(textwrap.dedent("""\
        strategy s(q: text) {
            budget 500 tokens
            b = sample 4 from q with max_tokens = 100 budget 400
            return b
        }
    """))
    assert result.warnings == []
