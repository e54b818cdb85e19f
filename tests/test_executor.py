"""The executor on the scripted backend: semantics, budgets, concurrency, failures."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl.compiler import compile_source
from ttcdsl.errors import NodeFailed, RunError
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RetryPolicy, RunOptions, run_plan
from ttcdsl.runtime.values import Answer, Branches, RunResult

FAST_RETRY = RetryPolicy(attempts=4, base_s=0.0, cap_s=0.0)

SC = """
strategy sc(question: text, n: int = 6) {
    budget 4000 tokens
    chains = sample n from "Q: {question}\\n" with max_tokens = 64, temperature = 0.7
    return vote chains on number
}
"""

BEAM = """
strategy beam(question: text, width: int = 2, branch: int = 3) {
    budget 3000 tokens
    beams = sample width * branch from "{question}\\n" with step = " ", max_tokens = 20
          | score with prm
          | prune keep width by score
    repeat 4 until finished(beams) {
        beams = expand beams by branch with step = " ", max_tokens = 20 budget 200
              | score with prm agg mean
              | prune keep width by score
    }
    return best(beams)
}
"""

CALLS = """
strategy inner(question: text, n: int = 4) {
    budget 500 tokens
    return vote (sample n from question with max_tokens = 40) on number
}
strategy outer(question: text) {
    budget 2000 tokens
    a = inner(question, n = 3) budget 60
    b = inner(question)
    both = sample 2 from "{a} or {b}?" with max_tokens = 30
    if agreement(a) >= 0.5 {
        return vote both on number
    } else {
        return b
    }
}
"""


def run(src: str, backend: ScriptedBackend | None = None, args: dict[str, Any] | None = None,
        root: Budget | None = None, **opts: Any) -> RunResult:
    plan = compile_source(src, "t.ttc").plan
    backend = backend or ScriptedBackend()
    opts.setdefault("seed", 7)
    opts.setdefault("retry", FAST_RETRY)
    values = {p.name: p.default for p in plan.strategy().params}
    values.update({"question": "What is 6 * 7?"}, **(args or {}))
    return anyio.run(run_plan, plan, backend, values, RunOptions(**opts), root)


def summary(r: RunResult) -> Any:
    v = r.value
    if isinstance(v, Branches):
        v = [(b.id, b.text, b.score, b.finish_reason) for b in v.items]
    elif isinstance(v, Answer):
        v = (v.value, v.agreement, v.votes)
    return v, r.usage, [(n.id, n.completion_tokens, n.requests, n.calls) for n in r.nodes]


@pytest.mark.parametrize("src", [SC, BEAM, CALLS], ids=["sc", "beam", "calls"])
def test_reference_and_concurrent_executors_agree(src: str) -> None:
    assert summary(run(src)) == summary(run(src, sequential=True))


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    assert summary(run(BEAM, seed=3)) == summary(run(BEAM, seed=3))
    assert summary(run(BEAM, seed=3))[0] != summary(run(BEAM, seed=4))[0]


def test_forks_run_concurrently_under_the_limiter() -> None:
    wide = ScriptedBackend(Script(latency_s=0.02))
    run(SC, wide, args={"n": 8})
    assert wide.max_in_flight == 8
    narrow = ScriptedBackend(Script(latency_s=0.02))
    run(SC, narrow, args={"n": 8}, concurrency=3)
    assert narrow.max_in_flight == 3


def test_forks_of_one_prompt_are_warmed_first_then_sent_as_ids() -> None:
    b = ScriptedBackend()
    run(SC, b, args={"n": 4})
    kinds = [k for k, _ in b.events]
    assert kinds == ["warm", "generate", "generate", "generate", "generate"]
    prompt = tuple(ord(c) for c in "Q: What is 6 * 7?\n")
    assert all(ids == prompt for _, ids in b.events)


def test_expand_continues_from_the_exact_tokens_of_its_parent() -> None:
    b = ScriptedBackend()
    run(BEAM, b)
    prompt = tuple(ord(c) for c in "What is 6 * 7?\n")
    first_round = {r.input_ids for r in b.requests[:6]}
    assert first_round == {prompt}
    later = [r for r in b.requests[6:]]
    assert later and all(r.input_ids[: len(prompt)] == prompt and len(r.input_ids) > len(prompt) for r in later)


def test_seeds_differ_per_fork_and_iteration() -> None:
    b = ScriptedBackend()
    run(BEAM, b)
    seeds = [r.sampling.seed for r in b.requests]
    assert len(set(seeds)) == len(seeds)


def test_tiny_budget_is_a_flagged_partial_result_not_an_error() -> None:
    src = SC.replace("budget 4000 tokens", "budget 10 tokens")
    r = run(src, args={"n": 4})
    assert r.budget_exhausted
    assert r.usage.completion_tokens <= 10
    assert isinstance(r.value, Answer)


def test_fair_split_sends_no_request_for_forks_with_no_share() -> None:
    b = ScriptedBackend()
    src = SC.replace("budget 4000 tokens", "budget 3 tokens")
    run(src, b, args={"n": 6})
    assert sorted(r.sampling.max_new_tokens for r in b.requests) == [1, 1, 1]


def test_call_budget_and_callee_budget_nest() -> None:
    root = Budget(None)
    r = run(CALLS, root=root)
    assert root.violations() == []
    calls = [u for u in r.nodes if u.op == "call"]
    first = next(u for u in calls if u.budget == 60)
    assert first.completion_tokens <= 60
    assert all(u.completion_tokens <= 500 for u in calls)


def test_transient_failures_are_retried() -> None:
    b = ScriptedBackend(Script(transient_every=2))
    r = run(SC, b, args={"n": 3})
    assert isinstance(r.value, Answer)
    assert len(b.requests) > 3


def test_permanent_failure_names_the_ttc_line() -> None:
    with pytest.raises(NodeFailed, match=r"t\.ttc:4:\d+: sample failed: model exploded"):
        run(SC, ScriptedBackend(Script(fail="model exploded")))


def test_backend_reporting_more_tokens_than_allowed_is_a_protocol_error() -> None:
    with pytest.raises(NodeFailed, match=r"broke the protocol: it reported 65 completion tokens for a request allowed 64"):
        run(SC, ScriptedBackend(Script(overreport=True)))


def test_timeout_cancels_in_flight_requests() -> None:
    b = ScriptedBackend(Script(latency_s=30))
    with pytest.raises(RunError, match=r"timed out after 0\.2 s"):
        run(SC, b, timeout_s=0.2)
    assert b.in_flight == 0


def test_verifier_needs_explicit_permission_then_scores() -> None:
    src = """
strategy v(question: text) {
    return sample 3 from question with max_tokens = 40 | score with verifier("verifier_examples:has_digit")
}
"""
    with pytest.raises(NodeFailed, match="allow it with --allow-verifier"):
        run(src)
    r = run(src, allow_verifier=True)
    assert [b.score for b in r.value.items] == [float(any(c.isdigit() for c in b.text)) for b in r.value.items]


def test_verifier_exception_fails_the_node_with_its_message() -> None:
    src = """
strategy v(question: text) {
    return sample 1 from question with max_tokens = 5 | score with verifier("verifier_examples:broken")
}
"""
    with pytest.raises(NodeFailed, match=r"t\.ttc:3:\d+: verifier 'verifier_examples:broken' raised ValueError: cannot verify"):
        run(src, allow_verifier=True)


def test_judge_scores_are_p_yes_from_top_logprobs() -> None:
    src = """
strategy j(question: text) {
    b = sample 2 from question with max_tokens = 5
    return score b with judge("Is this right? {question} {branch} Yes or No:")
}
"""
    r = run(src)
    import math
    expected = math.exp(-0.3) / (math.exp(-0.3) + math.exp(-1.4))
    assert all(abs(b.score - expected) < 1e-9 for b in r.value.items)
    assert r.usage.completion_tokens <= 2 * 5 + 2


# ---- the budget invariant under arbitrary backend behaviour ----

PROGRAMS = [SC, BEAM, CALLS]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    src=st.sampled_from(PROGRAMS),
    budget=st.integers(1, 400),
    chaos=st.integers(0, 10**6),
    transient=st.sampled_from([0, 3, 5]),
    seed=st.integers(0, 1000),
)
def test_budget_invariant_holds_for_any_backend_behaviour(src: str, budget: int, chaos: int, transient: int,
                                                          seed: int) -> None:
    b = ScriptedBackend(Script(chaos=chaos, transient_every=transient))
    root = Budget(budget)
    r = run(src, b, root=root, seed=seed)
    assert root.violations() == []
    assert b.reported == root.spent == r.usage.completion_tokens <= budget
    assert b.in_flight == 0


def test_until_is_tested_before_each_pass_so_an_early_stop_spends_nothing() -> None:
    src = """
strategy adaptive(question: text) {
    chains = sample 2 from question with max_tokens = 10
    repeat 3 until size(chains) >= 2 {
        chains = chains + sample 2 from question with max_tokens = 10
    }
    return chains
}
"""
    b = ScriptedBackend()
    r = run(src, b)
    assert len(b.requests) == 2 and len(r.value.items) == 2


def test_until_stops_once_its_condition_holds() -> None:
    src = """
strategy grow(question: text) {
    chains = sample 1 from question with max_tokens = 10
    repeat 5 until size(chains) >= 3 {
        chains = chains + sample 1 from question with max_tokens = 10
    }
    return chains
}
"""
    b = ScriptedBackend()
    assert len(run(src, b).value.items) == 3 and len(b.requests) == 3


def test_a_callers_logprob_scorer_gets_logprobs_for_a_callees_branches() -> None:
    src = """
strategy gen(question: text) {
    return sample 2 from question with max_tokens = 6
}
strategy rank(question: text) {
    return gen(question) | score with logprob
}
"""
    r = run(src)
    assert all(b.score == -0.5 for b in r.value.items)


class NoLogprobs(ScriptedBackend):
    """A backend that ignores the request's ask for token logprobs."""

    async def generate(self, request: Any) -> Any:
        result = await super().generate(request)
        result.logprobs = None
        return result


@pytest.mark.parametrize("sequential", [False, True])
def test_a_backend_that_returns_no_logprobs_fails_the_step_that_asked(sequential: bool) -> None:
    src = 'strategy s() {\n    return sample 3 from "x" with max_tokens = 6 | score with logprob\n}\n'
    plan = compile_source(src).plan
    with pytest.raises(NodeFailed, match=r"`score with logprob` needs token logprobs, but the backend "
                                         r"returned none") as info:
        anyio.run(run_plan, plan, NoLogprobs(), {}, RunOptions(sequential=sequential))
    assert info.value.span is not None and info.value.span.line == 2


def test_an_absurd_fork_count_fails_at_once_naming_the_limit() -> None:

    src = 'strategy s(n: int = 1) {\n    return sample n from "x"\n}\n'
    plan = compile_source(src).plan
    with pytest.raises(NodeFailed, match=r"sample would make 100000000000000000000 forks; one step makes at most 100000"):
        anyio.run(run_plan, plan, ScriptedBackend(), {"n": 10**20})


def test_a_long_loop_that_spends_nothing_still_meets_its_deadline() -> None:

    src = """
strategy s() {
    budget 10 tokens
    b = sample 1 from "x" with max_tokens = 5
    repeat 1000000000 {
        b = expand b by 1 with max_tokens = 5
    }
    return b
}
"""
    plan = compile_source(src).plan
    for sequential in (False, True):
        with pytest.raises(RunError, match=r"timed out after 0\.5 s"):
            anyio.run(run_plan, plan, ScriptedBackend(), {}, RunOptions(timeout_s=0.5, sequential=sequential))


def test_budget_left_in_until_is_read_after_the_previous_pass_is_refunded() -> None:
    # Each pass reserves 50 and spends a few tokens; read while the pass is in flight,
    # budget_left() would be about 150 and stop the loop after one pass.
    src = """
strategy s(question: text) {
    budget 200 tokens
    x = sample 1 from question with max_tokens = 50
    repeat 6 until budget_left() < 160 {
        x = sample 1 from question with max_tokens = 50
    }
    return x
}
"""
    backend = ScriptedBackend(Script(text=lambda request, seed: "ok.", latency_s=0.01))
    for sequential in (False, True):
        r = run(src, backend, sequential=sequential)
        assert [n.calls for n in r.nodes if n.op == "sample"] == [1, 6]
