"""`ttc run --backend sglang` end to end on the real engine (SmolLM2-135M-Instruct on CPU).

Each fixture runs one small program once through the CLI (`ttcdsl.cli.main`, in-process, with
``--json --trace FILE``) and the tests read what it printed and traced: every step kind, stop and
step strings, end of sequence, budgets that cut generation, continuations sent as exact token
ids, prefix reuse of forks, a dead URL and a run through sglang-router.  Greedy decoding where
a test compares text; generations stay under ~24 tokens (the server decodes ~25 tokens/s).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.cli import main
from ttcdsl.launch import free_port

CHAT_2_PLUS_2 = r"<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
CHAT_SAY_HI = r"<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
JUDGE = (r"Question: What is 2 + 2?\nProposed answer: {branch}\n"
         r"Is the proposed answer correct? Answer Yes or No.\nAnswer:")


@dataclass
class Run:
    """What one `ttc run` printed and traced."""

    status: int
    out: dict[str, Any]
    trace: list[dict[str, Any]]
    stderr: str

    @property
    def branches(self) -> list[dict[str, Any]]:
        branches: list[dict[str, Any]] = self.out["result"]["branches"]
        return branches

    def generations(self, node: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.trace
                if r["kind"] == "generate" and (node is None or r["node"] == node)]

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.trace]

    def node_of(self, op: str) -> int:
        (node,) = [n["id"] for n in self.out["nodes"] if n["op"] == op]
        return int(node)


def ttc_run(folder: Path, source: str, url: str, *flags: str) -> Run:
    """Write ``source`` to a .ttc file and run it through the CLI with --json and --trace."""
    name = uuid.uuid4().hex[:8]
    program = folder / f"{name}.ttc"
    program.write_text(source)
    trace = folder / f"{name}.jsonl"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(["run", str(program), "--backend", "sglang", "--url", url, "--json",
                       "--trace", str(trace), "--seed", "7", *flags])
    if status != 0:
        return Run(status, {}, [], err.getvalue())
    # Trace lines leave out zero counts.
    zeros = dict.fromkeys(("input_tokens", "completion_tokens", "prompt_tokens", "cached_tokens"), 0)
    records = [{**zeros, **json.loads(line)} for line in trace.read_text().splitlines()]
    return Run(status, json.loads(out.getvalue()), records, err.getvalue())


def succeeded(run: Run) -> Run:
    assert run.status == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run_real")


# --- sample / expand, step and stop strings (greedy, so the text is known) ---------------------

STEPS = """
strategy count() {
    p = "1, 2, 3,"
    a = sample 1 from p with step = ",", max_tokens = 8, temperature = 0
    b = expand a by 1 with step = ",", max_tokens = 8, temperature = 0
    c = expand b by 1 with stop = " 7", max_tokens = 8, temperature = 0
    return a + b + c
}
"""


@pytest.fixture(scope="module")
def steps(folder: Path, sglang_url: str) -> Run:
    return succeeded(ttc_run(folder, STEPS, sglang_url))


def test_a_step_string_ends_a_step_and_the_branch_stays_open(steps: Run) -> None:
    first, second, _ = steps.branches
    assert (first["text"], first["finished"], first["finish_reason"]) == (" 4,", False, None)
    assert (second["text"], second["finished"], second["finish_reason"]) == (" 4, 5,", False, None)
    assert second["parent"] == first["id"]


def test_a_stop_string_finishes_the_branch_and_is_cut_from_its_text(steps: Run) -> None:
    last = steps.branches[2]
    # The greedy text is " 4, 5, 6, 7": the stop " 7" ends it and leaves the text.
    assert (last["text"], last["finished"], last["finish_reason"]) == (" 4, 5, 6,", True, "stop")
    assert [r["text"] for r in steps.generations()] == [" 4,", " 5,", " 6, 7"]
    assert [r["finish"] for r in steps.generations()] == ["stop"] * 3
    assert last["tokens"] == sum(r["completion_tokens"] for r in steps.generations())


def test_each_continuation_is_sent_as_the_exact_tokens_so_far_and_hits_the_cache(
    steps: Run,
) -> None:
    gens = steps.generations()
    prompt = gens[0]["input_tokens"]
    assert prompt == gens[0]["prompt_tokens"] == 8
    so_far = prompt
    for parent, child in itertools.pairwise(gens):
        so_far += parent["completion_tokens"]
        assert child["input_tokens"] == child["prompt_tokens"] == so_far
        # The parent's prompt and output are in the radix cache (all but the last token).
        assert child["cached_tokens"] >= so_far - 1


def test_usage_adds_up_over_nodes_and_trace(steps: Run) -> None:
    usage = steps.out["usage"]
    gens = steps.generations()
    assert usage["completion_tokens"] == sum(r["completion_tokens"] for r in gens)
    assert usage["cached_tokens"] == sum(r["cached_tokens"] for r in steps.trace)
    assert sum(n["completion_tokens"] for n in steps.out["nodes"]) == usage["completion_tokens"]
    assert not steps.out["budget_exhausted"]


CUT = f"""
strategy cut() {{
    p = "{CHAT_2_PLUS_2}"
    a = sample 1 from p with step = "nsw", max_tokens = 8, temperature = 0
    return expand a by 1 with max_tokens = 8, temperature = 0
}}
"""


def test_a_step_string_ending_inside_a_token_loses_no_text(folder: Path, sglang_url: str) -> None:
    # The greedy reply is "The answer is 4." in tokens "The", " answer", ...: the step "nsw" is
    # matched inside " answer".  SGLang cuts its text there ("The answ") but keeps the whole
    # token in output_ids, and the next step continues after it.  (With step "\n\n" the same
    # happens whenever SmolLM2 writes one of its "\n\n\n" or "\n\n " tokens.)
    run = succeeded(ttc_run(folder, CUT, sglang_url))
    (branch,) = run.branches
    assert branch["text"] == "The answer is 4."
    assert run.generations()[0]["text"] == "The answer"


# --- end of sequence ---------------------------------------------------------------------------

EOS = f"""
strategy reply() {{
    p = "{CHAT_2_PLUS_2}"
    return sample 1 from p with max_tokens = 24, temperature = 0
}}
"""


def test_the_end_of_sequence_token_finishes_the_branch_eos(folder: Path, sglang_url: str) -> None:
    run = succeeded(ttc_run(folder, EOS, sglang_url))
    (branch,) = run.branches
    assert (branch["finished"], branch["finish_reason"]) == (True, "eos")
    assert branch["text"] == "The answer is 4."
    (gen,) = run.generations()
    assert gen["finish"] == "eos" and branch["tokens"] == gen["completion_tokens"] < 24


# --- forks of one prompt: warm-up, then every fork reuses the prefix ---------------------------

RANKED = """
strategy ranked() {{
    p = "{prompt}"
    all = sample 4 from p with max_tokens = 12, temperature = 0.8 | score with logprob
    top = prune all keep 2 by score
    return top + all
}}
"""


@pytest.fixture(scope="module")
def ranked(folder: Path, sglang_url: str) -> Run:
    # A prompt never seen before, so the warm-up is what puts it in the cache.
    prompt = f"Note {uuid.uuid4().hex}: " + CHAT_2_PLUS_2
    return succeeded(ttc_run(folder, RANKED.format(prompt=prompt), sglang_url))


def test_forks_after_the_warm_up_find_the_whole_prompt_cached(ranked: Run) -> None:
    assert ranked.kinds().count("warm") == 1
    warm = next(r for r in ranked.trace if r["kind"] == "warm")
    gens = ranked.generations()
    assert len(gens) == 4
    assert warm["t_end"] <= min(g["t_start"] for g in gens)  # forks are sent after it
    assert warm["cached_tokens"] < warm["prompt_tokens"] - 1  # a new prompt: it prefills it
    for gen in gens:
        assert gen["prompt_tokens"] == warm["prompt_tokens"] == gen["input_tokens"]
        assert gen["cached_tokens"] == gen["prompt_tokens"] - 1


def test_score_with_logprob_gives_mean_token_logprobs_and_prune_keeps_the_best(
    ranked: Run,
) -> None:
    top, scored = ranked.branches[:2], ranked.branches[2:]
    scores = [b["score"] for b in scored]
    assert len(scored) == 4 and all(math.isfinite(s) and s <= 0.0 for s in scores)
    best_two = sorted(scored, key=lambda b: b["score"], reverse=True)[:2]
    assert sorted(b["id"] for b in top) == sorted(b["id"] for b in best_two)
    assert {b["text"] for b in scored} >= {b["text"] for b in top}


# --- vote, judge, prm --------------------------------------------------------------------------

VOTE = f"""
strategy majority() {{
    p = "{CHAT_2_PLUS_2}"
    chains = sample 4 from p with max_tokens = 24, temperature = 0.5
    return vote chains on number
}}
"""


def test_vote_on_number_counts_the_numbers_the_model_wrote(folder: Path, sglang_url: str) -> None:
    run = succeeded(ttc_run(folder, VOTE, sglang_url))
    result = run.out["result"]
    generations = run.generations()
    assert len(generations) == 4
    # Only chains that ended on their own vote (a chain cut at max_tokens is left out).
    ended = [g for g in generations if g["finish"] in ("stop", "eos")]
    assert result["excluded"] == len(generations) - len(ended)
    votes = result["votes"]
    voters = [g["text"] for g in ended if re.search(r"\d", g["text"])]
    assert sum(votes.values()) == len(voters)
    if not votes:  # sampling on the CPU engine does not reproduce: every chain may run long
        assert (result["value"], result["support"], result["agreement"]) == (None, 0, 0)
        return
    assert result["value"] == max(votes, key=votes.get)
    assert result["support"] == votes[result["value"]]
    assert result["agreement"] == pytest.approx(result["support"] / sum(votes.values()))
    assert sum(result["value"] in t for t in voters) >= result["support"]


JUDGED = f"""
strategy judged() {{
    p = "{CHAT_2_PLUS_2}"
    return sample 2 from p with max_tokens = 12, temperature = 0.8
         | score with judge("{JUDGE}")
}}
"""


def test_judge_asks_the_model_for_one_token_and_scores_p_yes(folder: Path, sglang_url: str) -> None:
    run = succeeded(ttc_run(folder, JUDGED, sglang_url))
    judge = run.generations(run.node_of("score"))
    assert len(judge) == 2
    assert all(r["max_new_tokens"] == 1 and r["completion_tokens"] == 1 for r in judge)
    for branch in run.branches:
        # Both " Yes" and " No" are among SmolLM2's top alternatives: a probability, not 0 or 1.
        assert 0.0 < branch["score"] < 1.0
    assert run.out["usage"]["completion_tokens"] == sum(
        r["completion_tokens"] for r in run.generations())


PRM = """
strategy rewarded() {
    p = "Question: What is 2 + 2?\\nAnswer:"
    all = sample 2 from p with max_tokens = 8, temperature = 0.8 | score with prm
    best = prune all keep 1 by score
    return best + all
}
"""


async def classify(url: str, texts: list[str]) -> list[float]:
    async with aiohttp.ClientSession() as session, session.post(
        url + "/classify", json={"text": texts}
    ) as resp:
        resp.raise_for_status()
        return [item["embedding"][0] for item in await resp.json()]


def test_prm_scores_come_from_the_reward_server(
    folder: Path, sglang_url: str, reward_url: str
) -> None:
    run = succeeded(ttc_run(folder, PRM, sglang_url, "--reward-url", reward_url))
    best, *scored = run.branches
    assert "reward" in run.kinds()
    prompt = "Question: What is 2 + 2?\nAnswer:"
    expected = anyio.run(classify, reward_url, [prompt + b["text"] for b in scored])
    # The reward model runs in bf16 on CPU, where a score depends slightly on which texts share
    # a batch (seen: 4.9e-4 apart), so the tolerance allows a few bf16 steps, no more.
    assert [b["score"] for b in scored] == pytest.approx(expected, abs=3e-3)
    assert best["score"] == max(b["score"] for b in scored)


# --- budgets -----------------------------------------------------------------------------------

CAPPED = f"""
strategy capped() {{
    budget 20 tokens
    p = "{CHAT_SAY_HI}"
    return sample 3 from p with max_tokens = 12, temperature = 0
}}
"""


def test_a_budget_smaller_than_the_forks_want_is_split_fairly(
    folder: Path, sglang_url: str
) -> None:
    run = succeeded(ttc_run(folder, CAPPED, sglang_url))
    gens = run.generations()
    assert sorted(r["max_new_tokens"] for r in gens) == [6, 7, 7]  # 20 over 3 forks
    assert all(r["completion_tokens"] <= r["max_new_tokens"] for r in gens)
    assert run.out["usage"]["completion_tokens"] == sum(r["completion_tokens"] for r in gens) <= 20
    assert run.out["budget_exhausted"] is True
    # The reply is longer than 7 tokens: every fork is cut by the budget.
    assert [b["finish_reason"] for b in run.branches] == ["budget"] * 3


def test_a_fork_left_without_tokens_is_not_sent(folder: Path, sglang_url: str) -> None:
    run = succeeded(ttc_run(folder, CAPPED, sglang_url, "--budget", "2"))
    gens = run.generations()
    assert [r["max_new_tokens"] for r in gens] == [1, 1]
    assert run.out["usage"]["completion_tokens"] <= 2
    assert [b["finish_reason"] for b in run.branches] == ["budget"] * 3
    assert [b["tokens"] for b in run.branches][2] == 0


# --- expand by several forks -------------------------------------------------------------------

GROWN = f"""
strategy grown() {{
    p = "{CHAT_SAY_HI}"
    first = sample 1 from p with step = ".", max_tokens = 16, temperature = 0
    return expand first by 2 with max_tokens = 6, temperature = 0.8
}}
"""


def test_expanded_forks_continue_from_their_parents_tokens(folder: Path, sglang_url: str) -> None:
    run = succeeded(ttc_run(folder, GROWN, sglang_url))
    parent, *children = run.generations()
    assert parent["finish"] == "stop" and parent["text"].endswith(".")
    assert len(children) == 2
    whole = parent["input_tokens"] + parent["completion_tokens"]
    for child in children:
        assert child["input_tokens"] == child["prompt_tokens"] == whole
        assert child["cached_tokens"] >= whole - 1
    for branch in run.branches:
        assert branch["text"].startswith(parent["text"])
        assert branch["tokens"] > parent["completion_tokens"]


# --- errors and the router ---------------------------------------------------------------------


def test_a_dead_url_is_one_line_naming_it(folder: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = ttc_run(folder, EOS, url)
    assert run.status == 1
    line = run.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"ttc: error: cannot reach a SGLang server at {url}")
    assert "ttc serve --model" in line


@pytest.fixture(scope="module")
def routed(folder: Path, router_url: str) -> tuple[Run, Run]:
    prompt = f"Memo {uuid.uuid4().hex}: " + CHAT_2_PLUS_2
    return (succeeded(ttc_run(folder, STEPS, router_url)),
            succeeded(ttc_run(folder, RANKED.format(prompt=prompt), router_url)))


def test_a_run_through_the_router_writes_what_the_server_writes(
    routed: tuple[Run, Run], steps: Run
) -> None:
    through_router, _ = routed
    assert [b["text"] for b in through_router.branches] == [b["text"] for b in steps.branches]
    assert [r["input_tokens"] for r in through_router.generations()] == [
        r["input_tokens"] for r in steps.generations()]


def test_forks_through_the_router_reuse_the_warmed_prefix(routed: tuple[Run, Run]) -> None:
    _, forks = routed
    gens = forks.generations()
    assert forks.kinds().count("warm") == 1 and len(gens) == 4
    assert [g["cached_tokens"] for g in gens] == [g["prompt_tokens"] - 1 for g in gens]


# --- an anytime vote: the rest aborted on the server ----------------------------------------------
# Once the vote stops, the requests still generating are aborted on the server (SGLang's own abort
# counter, sglang:num_aborted_requests_total on /metrics, rises) and the run is charged only what
# the server generated before the abort.

FORKS, MAX_TOKENS = 6, 60
ANYTIME = f"""
strategy first_line() {{
    p = "{CHAT_SAY_HI}"
    return sample {FORKS} from p with max_tokens = {MAX_TOKENS}, temperature = 1.0, stop = "\\n"
         | vote on line until agreement >= 0.0 after 1
}}
"""


def aborted_total(url: str) -> float:
    async def read() -> str:
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            assert resp.status == 200, "the tier's main server runs with --enable-metrics"
            return await resp.text()

    text = anyio.run(read)
    found = re.findall(r"^sglang:num_aborted_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def test_a_stopped_vote_aborts_its_remaining_requests_on_the_server(
    folder: Path, sglang_url: str
) -> None:
    before = aborted_total(sglang_url)
    run = succeeded(ttc_run(folder, ANYTIME, sglang_url))
    result = run.out["result"]
    assert result["stopped_early"] is True and result["used"] >= 1
    assert result["used"] + result["aborted"] + result["unsent"] == FORKS
    aborted = [r for r in run.generations() if r.get("finish") == "abort"]
    assert len(aborted) == result["aborted"] >= 1
    # The server counted the aborts (a request that ended on its own meanwhile is not counted).
    assert 1 <= aborted_total(sglang_url) - before <= result["aborted"]
    # Charged: the finished branches in full, the aborted ones what they had streamed, so the
    # run costs less than its forks' worst case; each abort is traced with its partial tokens.
    charged = run.out["usage"]["completion_tokens"]
    assert charged == sum(r["completion_tokens"] for r in run.generations() if "error" not in r
                          or r.get("finish") == "abort")
    assert charged < FORKS * MAX_TOKENS
