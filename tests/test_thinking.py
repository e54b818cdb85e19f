"""Text injection (`expand ... after TEXT`), chunks and thinking budgets (`think_*` keys):
the checker's rules, the plan and its bounds, and the runtime (runtime/thinking.py, steps.py) on
the scripted backend (one character per token, so ids and text are easy to assert) and the sim."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcdsl import plan as P
from ttcdsl.compiler import compile_source
from ttcdsl.errors import CheckErrors, NodeFailed
from ttcdsl.runtime.backend import GenRequest
from ttcdsl.runtime.backends._think import tags_of_parser, tags_of_template
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend
from ttcdsl.runtime.backends.sim import SimBackend, load_task
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.steps import SCORERS
from ttcdsl.runtime.values import Branch, Branches, RunResult, TraceRecord, result_to_json

REPO = Path(__file__).resolve().parents[1]
TAGS = ("<think>", "</think>")


def run(source: str, backend: Any, args: dict[str, Any] | None = None, root: Budget | None = None,
        **opts: Any) -> tuple[RunResult, list[TraceRecord]]:
    plan = compile_source(source, "t.ttc").plan
    values = {p.name: p.default for p in plan.strategy().params} | (args or {})
    records: list[TraceRecord] = []
    opts.setdefault("timeout_s", 60.0)

    async def main() -> RunResult:
        async with backend:
            return await run_plan(plan, backend, values, RunOptions(seed=5, trace=records.append, **opts), root)

    return anyio.run(main), records


def branches(r: RunResult) -> list[Any]:
    assert isinstance(r.value, Branches)
    return r.value.items


def check_errors(source: str) -> list[str]:
    with pytest.raises(CheckErrors) as info:
        compile_source(source, "t.ttc")
    return [e.message for e in info.value.errors]


@dataclass
class CountingBackend(ScriptedBackend):
    """A scripted backend that counts how often each text was tokenized."""

    tokenized: dict[str, int] | None = None

    async def tokenize(self, text: str) -> list[int]:
        self.tokenized = self.tokenized or {}
        self.tokenized[text] = self.tokenized.get(text, 0) + 1
        return await super().tokenize(text)


# ---- the language ----


def test_injection_and_thinking_keys_are_checked_where_they_are_written() -> None:
    assert check_errors("""
strategy s(q: text) {
    a = sample 2 from q with max_tokens = 5, think_min = 3
    b = expand a by 1 after "" with max_tokens = 20, think_max = 50, think_min = 80 budget 40
    c = a | expand by 2 after 3
    d = sample 2 from q with think_max = 10, think_wrapup = "", thnk_max = 3
    e = sample 2 from q with chunk = 10, max_tokens = 5
    return vote (sample 4 from q with think_max = 9) on number until agreement >= 0.5
}""") == [
        "`think_min` needs `think_max` (the cap on the thinking phase)",
        "`after` needs text to inject, got an empty string",
        "`think_max` (50) is more than this step's budget (40)",
        "`think_min` (80) is more than `think_max` (50)",
        "the injected text (`after`) must be a text, got an int",
        "`think_wrapup` cannot be an empty string",
        "unknown sampling key 'thnk_max'; did you mean 'think_max'?",
        "`chunk` and `max_tokens` do not go together: a chunk is its own max_tokens, and a thinking "
        "budget runs to the end of its phase",
        "an anytime vote (`until`) cannot stop a step with a thinking budget (`think_max`)",
    ]


def test_the_plan_bounds_a_thinking_fork_by_its_cap_plus_its_answer() -> None:
    plan = compile_source("""
strategy s(q: text) {
    a = sample 3 from q with think_max = 100, max_tokens = 20
    return expand a by 2 after "Wait," with chunk = 7
}""").plan
    bounds = [n.bound.per_call for n in plan.strategy().nodes if hasattr(n, "bound") and n.bound]
    assert bounds == [3 * 120, 6 * 7]


def test_the_injected_text_round_trips_through_the_formatter() -> None:
    from ttcdsl.fmt import format_source

    src = 'strategy s(q: text) {\n    a = sample 1 from q\n    return expand a by 1 after "Wait," with max_tokens = 9\n}\n'
    assert format_source(src) == src


# ---- injection ----


PROBE = """
strategy s(q: text) {
    chain = sample 2 from q with chunk = 12
    return expand chain by 2 after " Wait," with max_tokens = 6
}"""


def test_injected_text_belongs_to_the_child_and_is_sent_as_exact_ids() -> None:
    backend = CountingBackend()
    r, records = run(PROBE, backend, {"q": "Q? "})
    children = branches(r)
    assert len(children) == 4
    for child in children:
        # The parent's open chunk, then the injection as a step of its own, then the child's text.
        assert len(child.steps[0]) == 12 and child.steps[1] == " Wait," and child.parent is not None
        assert child.finish_reason in ("eos", "length")
    sent = [req for req in backend.requests if req.sampling.max_new_tokens == 6]
    assert len(sent) == 4
    for req in sent:
        assert req.input_ids[-6:] == tuple(ord(c) for c in " Wait,")
    # Tokenized once for the run (and "" once, to find the prompt's special prefix).
    assert backend.tokenized is not None and backend.tokenized[" Wait,"] == 1
    # Injected tokens are reported as such, and cost no completion tokens.
    assert r.usage.injected_tokens == 4 * 6
    expand = next(n for n in r.nodes if n.op == "expand")
    assert expand.injected_tokens == 24 and expand.completion_tokens == sum(
        len(c.ids) - 12 - 6 for c in children)
    assert [rec.injected_tokens for rec in records if rec.kind == "generate" and rec.max_new_tokens == 6] == [6] * 4
    out = result_to_json(r)
    assert out["usage"]["injected_tokens"] == 24 and "thinking_tokens" not in out["usage"]


def test_finished_branches_take_no_injection_and_pass_through() -> None:
    src = """
strategy s(q: text) {
    done = sample 2 from q with max_tokens = 5
    return expand done by 3 after "Wait,"
}"""
    backend = ScriptedBackend()
    r, _ = run(src, backend, {"q": "Q? "})
    assert [b.id for b in branches(r)] == ["n4.0", "n4.1"] and len(backend.requests) == 2
    assert r.usage.injected_tokens == 0 and all("Wait," not in b.text for b in branches(r))


def test_an_injected_text_empty_at_run_time_fails_its_line() -> None:
    src = """
strategy s(q: text, extra: text = "") {
    a = sample 1 from q with chunk = 4
    return expand a by 1 after extra
}"""
    with pytest.raises(NodeFailed, match=r"t.ttc:4:12: `after` has no text to inject"):
        run(src, ScriptedBackend(), {"q": "Q"})


def test_an_injected_continuation_hits_the_prefix_cache_on_the_sim() -> None:
    task = load_task(REPO / "data" / "tasks" / "demo.json")
    r, records = run(PROBE, SimBackend(task), {"q": task.problems[0].question + "\n"})
    first = [rec for rec in records if rec.kind == "generate" and rec.max_new_tokens == 12]
    probes = [rec for rec in records if rec.kind == "generate" and rec.max_new_tokens == 6]
    assert len(probes) == 4
    for rec in probes:
        # Everything before the injected text (prompt + the parent's chunk) is served from cache.
        assert rec.injected_tokens > 0
        assert rec.cached_tokens >= rec.input_tokens - rec.injected_tokens - 1
    assert first and r.usage.injected_tokens == sum(rec.injected_tokens for rec in probes)


NEVER_SENT = """
strategy s(q: text) {
    a = sample 2 from q with chunk = 8
    return expand a by 3 after "Wait," with max_tokens = 8 budget 2 | score with logprob
}"""


def test_score_with_logprob_leaves_injected_tokens_out_and_a_branch_of_only_them_unscored() -> None:
    task = load_task(REPO / "data" / "tasks" / "demo.json")
    r, _ = run(NEVER_SENT, SimBackend(task), {"q": task.problems[0].question + "\n"})
    children = branches(r)
    never_sent = [c for c in children if c.steps[-1] == "Wait,"]  # the budget of 2 reached two forks
    assert len(never_sent) == 4 and all(c.finish_reason == "budget" for c in never_sent)
    for child in never_sent:
        # The injected tokens carry no logprob: the child scores as its parent's generated tokens.
        assert child.n_tokens == 8 and child.score == pytest.approx(child.logprob / 8)
    assert all(c.score is not None for c in children)
    # A branch whose tokens are all injected (a child of a branch that generated nothing, never
    # sent) has no logprob at all: it is unscored, not an error.
    score = next(n for n in compile_source(NEVER_SENT, "t.ttc").plan.strategy().nodes if isinstance(n, P.Score))

    async def scores() -> list[float | None]:
        async with SimBackend(task) as backend:
            injected = await backend.tokenize("Wait,")
            root = Branch(id="n1.0", root="n1.0", parent=None, prompt="Q", prompt_ids=(1,))
            alone = root.child("n2.0")
            alone.ids.extend(injected)
            alone.steps.append("Wait,")
            alone.finished, alone.finish_reason = True, "budget"
            return await SCORERS["logprob"](None, None, score, [alone, never_sent[0]])  # type: ignore[arg-type]

    assert anyio.run(scores) == [None, never_sent[0].score]


def test_a_chunk_leaves_the_branch_open_and_a_budget_cut_still_closes_it() -> None:
    src = """
strategy s(q: text) {
    a = sample 1 from q with chunk = 5
    b = expand a by 1 with chunk = 5
    return b + (expand b by 1 with chunk = 50 budget 3)
}"""
    backend = ScriptedBackend(Script(text=lambda req, seed: "x" * 40))
    r, _ = run(src, backend, {"q": "Q"})
    open_one, cut = branches(r)
    assert (open_one.finished, len(open_one.steps), open_one.text) == (False, 2, "x" * 10)
    assert (cut.finished, cut.finish_reason, len(cut.text)) == (True, "budget", 13)


# ---- thinking budgets ----


def thinker(natural: int, answer: str = " The answer is 7.") -> Any:
    """A scripted reasoning model: it thinks ``natural`` characters (one token each) after the
    prompt's end, then closes its thinking; past the closing tag it answers."""

    def text(request: GenRequest, seed: int) -> str:
        seen = "".join(chr(i) for i in request.input_ids).split("Q:", 1)[1]
        if "</think>" in seen:
            return answer
        body = seen.removeprefix("<think>")
        left = max(1, natural - len(body))
        return ("" if seen.startswith("<think>") else "<think>") + "h" * left + "</think>" + answer

    return text


THINK = """
strategy s(q: text, cap: int = 100, least: int = 1, waits: int = 2) {
    budget 5000 tokens
    return sample 2 from q with think_max = cap, think_min = least, think_extend = waits, max_tokens = 30
}"""


def phases(records: list[TraceRecord]) -> list[tuple[str | None, int, int]]:
    return [(r.phase, r.max_new_tokens or 0, r.completion_tokens) for r in records if r.kind == "generate"]


def test_a_natural_close_within_the_cap_keeps_the_models_tag_and_answers() -> None:
    backend = ScriptedBackend(Script(text=thinker(40)), tags=TAGS)
    r, records = run(THINK, backend, {"q": "Q:"})
    for b in branches(r):
        assert b.text == "<think>" + "h" * 40 + "</think> The answer is 7."
        assert b.finish_reason == "eos"
    assert phases(records) == [("think", 100, 55)] * 2 + [("answer", 30, 18)] * 2
    assert r.usage.thinking_tokens == 110 and r.usage.completion_tokens == 110 + 36
    assert result_to_json(r)["usage"]["answer_tokens"] == 36


def test_the_cap_injects_the_wrapup_and_the_closing_tag() -> None:
    src = THINK.replace("max_tokens = 30", 'think_wrapup = " Time is up.", max_tokens = 30')
    backend = ScriptedBackend(Script(text=thinker(400)), tags=TAGS)
    r, records = run(src, backend, {"q": "Q:"})
    for b in branches(r):
        think, answer = b.text.split(" Time is up.</think>")
        assert len(think) == 100 and answer == " The answer is 7."
    assert r.usage.thinking_tokens == 200 and r.usage.injected_tokens == 2 * len(" Time is up.</think>")
    answers = [rec for rec in records if rec.phase == "answer"]
    assert [rec.injected_tokens for rec in answers] == [20, 20]


def test_an_early_close_is_replaced_by_wait_at_most_k_times() -> None:
    backend = ScriptedBackend(Script(text=thinker(10)), tags=TAGS)
    r, records = run(THINK, backend, {"q": "Q:", "least": 60, "waits": 2})
    for b in branches(r):
        assert b.text.count("Wait") == 2 and b.text.count("</think>") == 1
        assert b.text.endswith("</think> The answer is 7.")
    # think, extended twice (each continuing the exact ids so far), then the answer.
    assert [p for p, *_ in phases(records)] == ["think"] * 6 + ["answer"] * 2
    # The closing tag the model wrote was cut from the ids too: text and ids stay in step.
    b = branches(r)[0]
    assert "".join(chr(i) for i in b.ids if i) == b.text


def test_a_custom_extension_text_and_no_extension_left() -> None:
    src = THINK.replace("max_tokens = 30", 'think_extend_text = " Hmm,", max_tokens = 30')
    backend = ScriptedBackend(Script(text=thinker(10)), tags=TAGS)
    r, _ = run(src, backend, {"q": "Q:", "least": 60, "waits": 1})
    assert all(b.text.count(" Hmm,") == 1 and "Wait" not in b.text for b in branches(r))


def test_a_branch_past_its_thinking_only_answers() -> None:
    src = """
strategy s(q: text) {
    a = sample 1 from q with think_max = 50, max_tokens = 30, step = "answer"
    return expand a by 1 with think_max = 50, max_tokens = 30
}"""
    backend = ScriptedBackend(Script(text=thinker(10)), tags=TAGS)
    _, records = run(src, backend, {"q": "Q:"})
    assert [p for p, *_ in phases(records)] == ["think", "answer", "answer"]


def test_thinking_tags_come_from_the_run_before_the_backend() -> None:
    backend = ScriptedBackend(Script(text=thinker(10)), tags=("<t>", "</t>"))
    r, _ = run(THINK, backend, {"q": "Q:"}, think_tags=TAGS)
    assert all("</think>" in b.text for b in branches(r))


def test_no_thinking_tags_is_a_located_error_never_a_silent_no_op() -> None:
    with pytest.raises(NodeFailed) as info:
        run(THINK, ScriptedBackend(), {"q": "Q:"})
    assert str(info.value).startswith("t.ttc:4:12: `think_max` needs the model's thinking tags, and the "
                                      "scripted backend cannot tell them for model 'scripted'; pass "
                                      "--think-tags OPEN,CLOSE")


def test_thinking_on_the_sim_without_reasoning_problems_needs_think_tags() -> None:
    task = load_task(REPO / "data" / "tasks" / "demo.json")
    with pytest.raises(NodeFailed, match="--think-tags"):
        run(THINK, SimBackend(task), {"q": "Q:"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(natural=st.integers(1, 300), cap=st.integers(1, 120), least=st.integers(1, 120),
       waits=st.integers(0, 3), budget=st.integers(1, 400), chaos=st.none() | st.integers(0, 99))
def test_thinking_budgets_keep_the_hard_budget_guarantee(natural: int, cap: int, least: int, waits: int,
                                                         budget: int, chaos: int | None) -> None:
    src = f"""
strategy s(q: text) {{
    budget {budget} tokens
    return sample 3 from q with think_max = {cap}, think_min = {min(least, cap)}, think_extend = {waits},
        max_tokens = 25
}}"""
    backend = ScriptedBackend(Script(text=thinker(natural), chaos=chaos), tags=TAGS)
    root = Budget(None)
    r, records = run(src, backend, {"q": "Q:"}, root=root)
    assert root.violations() == []
    assert backend.reported == root.spent == r.usage.completion_tokens <= budget
    assert r.usage.thinking_tokens == sum(rec.completion_tokens for rec in records if rec.phase == "think")
    assert all(rec.completion_tokens <= (rec.max_new_tokens or 0) for rec in records if rec.kind == "generate")


# ---- where tags come from ----


def test_reasoning_parsers_and_chat_templates_name_their_tags() -> None:
    assert tags_of_parser("deepseek-r1") == TAGS and tags_of_parser("qwen3") == TAGS
    assert tags_of_parser(None) is None
    with pytest.raises(Exception, match="--think-tags"):
        tags_of_parser("gpt-oss")
    assert tags_of_template("{% if x %}<think>\n{{ r }}\n</think>{% endif %}") == TAGS
    assert tags_of_template("{{ messages }}") is None and tags_of_template(None) is None


# ---- the command line ----


def test_ttc_run_takes_think_tags_and_reports_thinking_apart(capsys: pytest.CaptureFixture[str]) -> None:
    from ttcdsl.cli import main

    program = str(REPO / "programs" / "think_then_vote.ttc")
    task = str(REPO / "data" / "tasks" / "demo.json")
    argv = ["run", program, "--sim-task", task, "--arg", "question=What is 17 + 25?", "--arg", "n=2",
            "--arg", "think=16", "--seed", "1", "--json"]
    assert main([*argv, "--think-tags", "<think>,</think>"]) == 0
    usage = json.loads(capsys.readouterr().out)["usage"]
    assert usage["thinking_tokens"] == 2 * 16  # the demo task never closes: both chains hit the cap
    assert usage["answer_tokens"] == usage["completion_tokens"] - 32 and usage["injected_tokens"] > 0
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "needs the model's thinking tags" in err and "--think-tags" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--think-tags", "<think>"])
    assert exit_info.value.code == 2
    assert "expected OPEN,CLOSE" in capsys.readouterr().err


# ---- SGLang: injection over the wire, tags from the reasoning parser ----


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_injection_over_the_sglang_protocol_hits_the_servers_radix_cache() -> None:
    from ttcdsl.runtime.backends.sglang import SGLangBackend
    from ttcdsl.runtime.sim.server import running_server

    task = load_task(REPO / "data" / "tasks" / "demo.json")
    plan = compile_source(PROBE, "t.ttc").plan
    records: list[TraceRecord] = []
    async with running_server(task) as url, SGLangBackend(url) as backend:
        r = await run_plan(plan, backend, {"q": task.problems[0].question + "\n"},
                           RunOptions(seed=5, trace=records.append, timeout_s=60))
    probes = [rec for rec in records if rec.kind == "generate" and rec.max_new_tokens == 6]
    assert len(probes) == 4 and r.usage.injected_tokens == sum(rec.injected_tokens for rec in probes) > 0
    for rec in probes:
        assert rec.cached_tokens >= rec.input_tokens - rec.injected_tokens - 1
    assert all(" Wait," in b.text for b in branches(r))


def _sglang_lookalike(model_info: dict[str, Any], server_info: dict[str, Any] | None) -> Any:
    from aiohttp import web

    def answer(body: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(body) if body is not None else web.Response(status=200)

        return handler

    app = web.Application()
    app.router.add_get("/health", answer(None))
    for path in ("/model_info", "/get_model_info"):
        app.router.add_get(path, answer(model_info))
    if server_info is not None:
        app.router.add_get("/get_server_info", answer(server_info))
    return app


@pytest.mark.anyio
@pytest.mark.parametrize(("model_info", "server_info", "tags"), [
    ({"model_path": "qwen", "reasoning_parser": "qwen3"}, None, TAGS),
    ({"model_path": "r1"}, {"model_path": "r1", "reasoning_parser": "deepseek-r1"}, TAGS),
    ({"model_path": "plain"}, {"model_path": "plain", "reasoning_parser": None}, None),
    ({"model_path": "old"}, None, None),
])
async def test_sglang_reads_the_tags_of_its_reasoning_parser(model_info: dict[str, Any],
                                                             server_info: dict[str, Any] | None,
                                                             tags: tuple[str, str] | None) -> None:
    from aiohttp import web

    from ttcdsl.runtime.backends.sglang import SGLangBackend

    runner = web.AppRunner(_sglang_lookalike(model_info, server_info))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with SGLangBackend(url) as backend:
            assert await backend.think_tags() == tags
    finally:
        await runner.cleanup()


def test_a_probe_leaves_its_parent_untouched_and_an_anytime_vote_counts_its_injection() -> None:
    src = """
strategy s(q: text) {
    chain = sample 1 from q with chunk = 10
    probe = expand chain by 1 after " So:" with max_tokens = 20
    return chain + probe
}"""
    r, _ = run(src, ScriptedBackend(), {"q": "Q? "})
    chain, probe = branches(r)
    assert chain.steps == [chain.text] and len(chain.ids) == 10 and " So:" not in chain.text
    assert probe.ids[:10] == chain.ids and probe.steps[:2] == [chain.text, " So:"]
    anytime = """
strategy s(q: text) {
    chain = sample 1 from q with chunk = 10
    return vote (expand chain by 6 after " So:" with max_tokens = 40) until agreement >= 0.5 after 2
}"""
    r, records = run(anytime, ScriptedBackend(), {"q": "Q? "})
    sent = [rec for rec in records if rec.kind == "generate" and rec.max_new_tokens == 40 and rec.error is None]
    assert sent and r.usage.injected_tokens == 4 * len(sent)


def test_an_early_close_written_in_other_tokens_than_the_tag_alone_is_cut_by_decoding() -> None:
    from ttcdsl.runtime.backend import GenResult
    from ttcdsl.runtime.thinking import Thinking, think_fork

    words = {1: "h", 2: "</think>", 3: " A", 7: "</thi", 8: "nk>", 9: "Wait"}
    replies = iter([
        GenResult(text="hh</think>", output_ids=[1, 1, 2], finish="stop", completion_tokens=3,
                  prompt_tokens=5, matched="</think>"),
        GenResult(text="h</think>", output_ids=[1, 2], finish="stop", completion_tokens=2,
                  prompt_tokens=8, matched="</think>"),
        GenResult(text=" A", output_ids=[3, 0], finish="eos", completion_tokens=2, prompt_tokens=10, matched=0),
    ])
    sent: list[tuple[tuple[int, ...], int, str | None, int]] = []

    async def send(more: Any, max_new: int, stops: Any, res: Any, note: Any) -> GenResult:
        sent.append((more, max_new, note.phase, note.injected))
        reply = next(replies)
        res.settle(reply.completion_tokens)
        return reply

    async def piece(text: str) -> tuple[int, ...]:
        return {"</think>": (7, 8), "Wait": (9,)}[text]

    async def detokenize(ids: Any) -> str:
        return "".join(words.get(i, "") for i in ids)

    root = Budget(None)
    hold = root.reserve(200)
    think = Thinking(cap=100, least=10, extend=1)
    result, cut = anyio.run(lambda: think_fork(send, hold, think, TAGS, 50, (), False, piece, detokenize))
    hold.release()
    assert (result.text, result.output_ids, result.finish, cut) == ("hhWaith</think> A", [1, 1, 9, 1, 2, 3, 0], "eos", False)
    assert sent == [((), 100, "think", 0), ((1, 1, 9), 97, "think", 1), ((1, 1, 9, 1, 2), 50, "answer", 0)]
    assert result.completion_tokens == 7 and root.spent == 7 and root.violations() == []


def test_a_cap_that_does_not_fit_the_budget_shrinks_so_the_answer_still_fits() -> None:
    src = """
strategy s(q: text, cap: int = 100) {
    return sample 1 from q with think_max = cap, max_tokens = 30 budget 60
}"""
    backend = ScriptedBackend(Script(text=thinker(400)), tags=TAGS)
    r, records = run(src, backend, {"q": "Q:"})
    (b,) = branches(r)
    assert r.usage.thinking_tokens == 30 and b.text.endswith("</think> The answer is 7.")
    assert phases(records) == [("think", 30, 30), ("answer", 30, 18)]
    assert r.budget_exhausted


def test_ttc_run_says_how_much_was_thinking(capsys: pytest.CaptureFixture[str]) -> None:
    from ttcdsl.cli import main

    assert main(["run", str(REPO / "programs" / "think_then_vote.ttc"), "--sim-task",
                 str(REPO / "data" / "tasks" / "demo.json"), "--arg", "question=What is 17 + 25?",
                 "--arg", "n=2", "--arg", "think=16", "--seed", "1", "--think-tags", "<think>,</think>"]) == 0
    assert "of which thinking 32, answer " in capsys.readouterr().out


def test_plans_that_inject_chunk_or_think_say_version_2_and_others_stay_at_1() -> None:
    core = compile_source("strategy s(q: text) {\n    return sample 2 from q with max_tokens = 5\n}\n").plan
    assert core.version == 1
    for settings_ in ("chunk = 5", "think_max = 5"):
        src = f"strategy s(q: text) {{\n    return sample 2 from q with {settings_}\n}}\n"
        assert compile_source(src).plan.version == 2
    assert compile_source(PROBE).plan.version == 2
