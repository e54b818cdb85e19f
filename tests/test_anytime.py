"""The anytime vote (`vote ... until`) and `resample` at run time.

The anytime vote's decision must equal the offline rule applied to the same finished branches in
the order they finished; when it stops, running requests are cancelled, unsent ones never go out,
and every unused reservation is refunded.  `resample` draws copies in proportion to the weights,
reproducibly.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.compiler import compile_source
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.backend import GenRequest, GenResult
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import Answer, Branch, Branches, TraceRecord

ANSWERS = ["7", "7", "12", "7", "42", "7", "12", "7", "7", "12", "7", "7", "42", "7", "7", "7"]

ANYTIME = """
strategy s(n: int = 16, threshold: float = 0.9, after: int = 3) {{
    budget 4000 tokens
    return sample n from "Q" with max_tokens = 40 | vote on number until {rule} >= threshold after after
}}
"""


def _text(request: GenRequest, seed: int) -> str:
    """Each fork writes the answer its (derived) seed picks from ANSWERS."""
    return f"so the answer is {ANSWERS[seed % len(ANSWERS)]}."


class Jittered(ScriptedBackend):
    """A scripted model whose requests take seeded random times, so forks finish in any order."""

    def __init__(self, jitter_seed: int) -> None:
        super().__init__(Script(text=_text))
        self._rng = random.Random(jitter_seed)
        self.cancelled = 0

    async def generate(self, request: GenRequest) -> GenResult:
        try:
            await anyio.sleep(self._rng.random() * 0.02)
            return await super().generate(request)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


def _run(source: str, backend: ScriptedBackend, *, sequential: bool = False, seed: int = 5,
         concurrency: int = 16, args: dict[str, Any] | None = None) -> tuple[Any, list[TraceRecord], Budget]:
    plan = compile_source(source).plan
    trace: list[TraceRecord] = []
    root = Budget(None)

    async def main() -> Any:
        return await run_plan(plan, backend, args or {}, RunOptions(
            seed=seed, concurrency=concurrency, sequential=sequential, trace=trace.append), root=root)

    return anyio.run(main), trace, root


def _offline(texts: list[str], rule: str, threshold: float, after: int) -> tuple[Answer, int]:
    """The stopping rule applied to branches in finish order: the vote at the first prefix that
    settles it (or over all of them), and that prefix's length."""
    branches: list[Branch] = []
    answer = agg.vote([], "number")
    for text in texts:
        branches.append(Branch(id="b", root="b", parent=None, prompt="", prompt_ids=(), steps=[text],
                               finished=True, finish_reason="stop"))
        answer = agg.vote(branches, "number")
        if agg.settled(answer, rule, threshold, after):
            break
    return answer, len(branches)


@settings(max_examples=25, deadline=None)
@given(jitter=st.integers(0, 2**32), rule=st.sampled_from(["agreement", "confidence"]),
       threshold=st.sampled_from([0.5, 0.6, 0.8, 0.9, 0.99]), after=st.integers(1, 6))
def test_the_decision_equals_the_offline_rule_in_finish_order(
    jitter: int, rule: str, threshold: float, after: int
) -> None:
    backend = Jittered(jitter)
    result, trace, root = _run(ANYTIME.format(rule=rule), backend,
                               args={"threshold": threshold, "after": after})
    finished = [r.text or "" for r in trace if r.kind == "generate" and r.error is None]
    expected, used = _offline(finished, rule, threshold, after)
    answer = result.value
    assert (answer.value, answer.votes) == (expected.value, expected.votes)
    assert answer.used == used == len(finished)
    assert answer.used + answer.aborted + answer.unsent == 16
    # Every reservation was settled or refunded, at every level; what was kept is what the
    # backend reported for the requests that finished.
    assert root.violations() == []
    assert root.spent == result.usage.completion_tokens == backend.reported
    assert backend.cancelled == answer.aborted


def test_the_sequential_reference_stops_sending_once_settled() -> None:
    backend = ScriptedBackend(Script(text=lambda request, seed: "so the answer is 7."))
    result, trace, _ = _run(ANYTIME.format(rule="agreement"), backend, sequential=True,
                            args={"threshold": 0.75, "after": 4})
    answer = result.value
    texts = [r.text or "" for r in trace if r.kind == "generate"]
    expected, used = _offline(texts, "agreement", 0.75, 4)
    assert answer.value == expected.value
    assert answer.value == "7" and answer.used == used == len(backend.requests) == 4
    assert answer.aborted == 0 and answer.unsent == 12 and answer.stopped_early


@pytest.mark.parametrize("latency", [0.0, -1.0])
def test_the_concurrent_executor_sends_nothing_once_settled_by_answers_that_come_at_once(
        latency: float) -> None:
    # latency -1: the backend answers without ever suspending, so one worker task sends every
    # fork in turn; it must stop at the fourth answer, as the sequential reference does.
    backend = ScriptedBackend(Script(text=lambda request, seed: "so the answer is 7.", latency_s=latency))
    result, _, root = _run(ANYTIME.format(rule="agreement"), backend,
                           args={"threshold": 0.75, "after": 4}, concurrency=1)
    answer = result.value
    assert answer.value == "7" and answer.used == len(backend.requests) == 4
    assert answer.aborted == 0 and answer.unsent == 12 and answer.stopped_early
    assert root.violations() == []


def test_a_rule_that_never_holds_lets_every_branch_vote() -> None:
    # Seed 6: the first chains disagree, so agreement 1.0 is never reached.
    result, _, _ = _run(ANYTIME.format(rule="agreement"), Jittered(1), args={"threshold": 1.0}, seed=6)
    answer = result.value
    assert (answer.used, answer.aborted, answer.unsent, answer.stopped_early) == (16, 0, 0, False)
    # The same forks (same seeds) voted by an ordinary vote give the same answer.
    plain, _, _ = _run(ANYTIME.format(rule="agreement").replace(
        " until agreement >= threshold after after", ""), Jittered(1), seed=6)
    assert (answer.value, answer.votes) == (plain.value.value, plain.value.votes)


def test_the_answer_reports_how_the_vote_stopped_in_json() -> None:
    from ttcdsl.runtime.values import value_to_json

    result, _, _ = _run(ANYTIME.format(rule="confidence"), Jittered(3), args={"threshold": 0.9})
    out = value_to_json(result.value)
    assert {"used", "aborted", "unsent", "stopped_early"} <= set(out)
    assert out["used"] + out["aborted"] + out["unsent"] == 16


# --- resample ------------------------------------------------------------------------------------

RESAMPLE = """
strategy s(n: int = 400) {{
    b = sample 4 from "Q" with max_tokens = 40 | score with prm
    return resample b to n {how}
}}
"""


def _scores(branches: Branches) -> list[float]:
    return [b.score for b in branches.items if b.score is not None]


@pytest.mark.parametrize("how", ["", "by weight multinomial", "by softmax 0.5", "by softmax 0.2 multinomial"])
def test_resample_draws_in_proportion_to_the_weights_reproducibly(how: str) -> None:
    source = RESAMPLE.format(how=how)
    first, _, _ = _run(source, ScriptedBackend())
    again, _, _ = _run(source, ScriptedBackend())
    other, _, _ = _run(source, ScriptedBackend(), seed=6)
    copies: Branches = first.value
    assert [b.parent for b in copies.items] == [b.parent for b in again.value.items]
    assert len(copies.items) == 400
    parents = Counter(b.parent for b in copies.items)
    scored = {b.parent: b.score for b in copies.items}
    originals = [Branch(id=p, root=p, parent=None, prompt="", prompt_ids=(), score=s)
                 for p, s in sorted(scored.items())]
    temperature = float(how.split("softmax ")[1].split()[0]) if "softmax" in how else None
    expected = dict(zip([b.id for b in originals], agg.weights(originals, temperature)))
    # Systematic: within one copy of its share; multinomial: within 5 standard deviations.
    for parent, p in expected.items():
        slack = 1 if "multinomial" not in how else 5 * (400 * p * (1 - p)) ** 0.5 + 1
        assert abs(parents[parent] - 400 * p) <= slack, (parent, parents[parent], p)
    # Copies keep their original's tokens and score and are new branches under it.
    assert all(b.id.startswith("n") and b.parent in expected for b in copies.items)
    assert other.value.items[0].id == copies.items[0].id  # ids are positions, not seeds


def test_resampled_copies_continue_independently_from_their_exact_tokens() -> None:
    source = """
strategy s() {
    b = sample 2 from "Q" with step = " ", max_tokens = 40 | score with prm
    c = resample b to 6
    return expand c by 1 with step = " ", max_tokens = 40
}
"""
    backend = ScriptedBackend()
    result, _, _ = _run(source, backend)
    branches = result.value.items
    assert len(branches) == 6
    firsts = {tuple(r.input_ids) for r in backend.requests[:2]}
    # Each continuation starts from its original's prompt + first step, exactly.
    for r in backend.requests[2:]:
        assert any(r.input_ids[: len(f)] == f for f in firsts)
    seeds = [r.sampling.seed for r in backend.requests[2:]]
    assert len(set(seeds)) == len(seeds)


# --- on the simulator: aborted requests stop generating -------------------------------------------


def test_on_the_simulator_a_stopped_vote_leaves_nothing_generating() -> None:
    from ttcdsl.runtime.backends.sim import SimBackend
    from ttcdsl.runtime.sim import Latency, SimConfig, load_task

    task = load_task("data/tasks/demo.json")
    question = task.problems[0].question
    source = """
strategy s(question: text) {
    budget 16384 tokens
    p = "Solve: {question}\\n"
    return sample 16 from p with max_tokens = 400 | vote on number until agreement >= 0.0 after 1
}
"""
    backend = SimBackend(task, SimConfig(latency=Latency(decode_s=0.002), seed=1))
    result, _, root = _run(source, backend, args={"question": question})
    answer = result.value
    stats = backend.engine.stats
    assert answer.used >= 1 and answer.aborted >= 1 and answer.stopped_early
    assert answer.used + answer.aborted + answer.unsent == 16
    # The simulator saw every abort and has nothing left running.  The run was charged what was
    # streamed, the aborted requests' partial output included: everything the simulator
    # generated except, per aborted request, the one token it was writing when the abort came.
    assert stats.aborted == answer.aborted and stats.in_flight == 0
    assert root.violations() == [] and root.spent == result.usage.completion_tokens
    charged = result.usage.completion_tokens
    assert charged <= stats.completion_tokens <= charged + answer.aborted
    generated = stats.completion_tokens
    anyio.run(anyio.sleep, 0.2)
    assert backend.engine.stats.completion_tokens == generated
