"""OpenAIBackend against a real sglang==0.5.23 server's /v1/completions (SmolLM2-135M on CPU),
directly and through a real sglang-router, and the simulator's /v1 checked against it.

Greedy decoding where outputs are compared (``sampling_seed`` does not reproduce on CPU); the
native SGLang backend on the same server is the reference.  One extra server runs with
``--enable-cache-report`` (the only way SGLang's /v1 reports cached prompt tokens).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.args import bind_args
from ttcdsl.compiler import compile_file
from ttcdsl.runtime.backend import GenRequest, GenResult, Sampling
from ttcdsl.runtime.backends.openai import OpenAIBackend
from ttcdsl.runtime.backends.sglang import SGLangBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import SimConfig, SimEngine
from ttcdsl.runtime.sim.server import running_server

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
COUNT = "1, 2, 3,"
CHAT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
EOS = 2  # <|im_end|>


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def cache_report_url(start_sglang: Any) -> Iterator[str]:
    """A real server that reports cached prompt tokens on /v1 (``--enable-cache-report``)."""
    with start_sglang("cache-report", "--enable-cache-report") as url:
        yield url


def greedy(n: int, **kwargs: Any) -> Sampling:
    return Sampling(max_new_tokens=n, temperature=0.0, **kwargs)


def req(ids: list[int], sampling: Sampling, **kwargs: Any) -> GenRequest:
    return GenRequest(rid="tier-v1", input_ids=tuple(ids), sampling=sampling, **kwargs)


def same(a: GenResult, b: GenResult) -> None:
    assert (a.text, a.output_ids, a.finish, a.matched, a.completion_tokens) == (
        b.text, b.output_ids, b.finish, b.matched, b.completion_tokens)


async def test_start_up_learns_what_sglang_v1_can_do(sglang_url: str, model_dir: Any) -> None:
    async with OpenAIBackend(sglang_url) as backend:
        p = backend.profile
        assert (p.model, p.kind, p.tokenize, p.forks) == (str(model_dir), "sglang", "/tokenize", "warm")
        assert p.prompt_ids and p.token_ids and p.stop_field == "matched_stop" and p.streams


@pytest.mark.parametrize(("text", "sampling", "stream"), [
    (COUNT, greedy(30, stop=(" 6",)), False),
    (COUNT, greedy(30, stop=(" 6",)), True),
    (CHAT, greedy(60), False),
    (COUNT, greedy(6), True),
])  # fmt: skip
async def test_generations_match_the_native_backend(
    sglang_url: str, text: str, sampling: Sampling, stream: bool
) -> None:
    async with OpenAIBackend(sglang_url) as ours, SGLangBackend(sglang_url) as native:
        ids = await ours.tokenize(text)
        assert ids == await native.tokenize(text)
        mine = await ours.generate(req(ids, sampling, stream=stream))
        same(mine, await native.generate(req(ids, sampling)))
    if sampling.stop:
        assert (mine.text, mine.matched) == (" 4, 5, 6", " 6")
    if text == CHAT:
        assert (mine.finish, mine.matched, mine.output_ids[-1]) == ("eos", EOS, EOS)


async def test_a_continuation_from_exact_ids_equals_one_greedy_run(sglang_url: str) -> None:
    async with OpenAIBackend(sglang_url) as backend:
        prompt = await backend.tokenize(COUNT)
        first = await backend.generate(req(prompt, greedy(6)))
        second = await backend.generate(req(prompt + first.output_ids, greedy(6)))
        whole = await backend.generate(req(prompt, greedy(12)))
    assert first.output_ids + second.output_ids == whole.output_ids
    assert first.text + second.text == whole.text
    assert second.prompt_tokens == len(prompt) + 6
    assert second.cached_tokens == 0  # this server does not report cached tokens on /v1


async def test_logprobs_and_top_alternatives_per_token(sglang_url: str) -> None:
    async with OpenAIBackend(sglang_url) as backend:
        ids = await backend.tokenize(COUNT)
        result = await backend.generate(req(ids, greedy(5), logprobs=True, top_logprobs=3))
    assert result.logprobs is not None and result.top_logprobs is not None
    assert len(result.logprobs) == len(result.top_logprobs) == 5
    for logprob, top in zip(result.logprobs, result.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(logprob)


async def test_cancelling_a_stream_stops_the_generation(sglang_url: str, load: Any) -> None:
    async with OpenAIBackend(sglang_url) as backend:
        ids = await backend.tokenize("1, 2, 3, 4,")
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.generate, req(ids, greedy(4000), stream=True))
            await load.wait(sglang_url, busy=True, timeout=60)
            tg.cancel_scope.cancel()
    await load.wait(sglang_url, busy=False, timeout=30)


async def test_forks_after_a_warm_up_are_served_from_the_cache(cache_report_url: str) -> None:
    async with OpenAIBackend(cache_report_url) as backend:
        prompt = await backend.tokenize(f"Note {uuid.uuid4().hex}: write one short sentence.")
        warm = await backend.warm(prompt)
        assert (warm.prompt_tokens, warm.cached_tokens) == (len(prompt), 0)
        results: list[GenResult] = []

        async def fork(seed: int) -> None:
            results.append(await backend.generate(req(prompt, Sampling(max_new_tokens=4, seed=seed))))

        async with anyio.create_task_group() as tg:
            for seed in range(3):
                tg.start_soon(fork, seed)
    assert [r.cached_tokens for r in results] == [len(prompt) - 1] * 3


def like(ours: Any, theirs: Any, path: str = "$") -> None:
    """The same keys in the same order, nesting and JSON kinds; null on either side matches."""
    if ours is None or theirs is None:
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), path
        for key in theirs:
            like(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), path
        for item in ours[:1]:
            if theirs:
                like(item, theirs[0], f"{path}[0]")
    else:
        assert isinstance(ours, (int, float)) == isinstance(theirs, (int, float)), path
        assert isinstance(ours, str) == isinstance(theirs, str), path


async def test_the_simulators_v1_answers_look_like_sglangs(cache_report_url: str) -> None:
    """The requests the backend sends, to the real server and to the simulator (reporting
    cached tokens, like this server): the same keys in the same order, the same kinds."""
    bodies = [
        {"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 8, "temperature": 0,
         "return_token_ids": True, "stop": [" the"], "no_stop_trim": True, "seed": 3},
        {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0,
         "return_token_ids": True, "logprobs": 2},
    ]
    engine = SimEngine(None, SimConfig(cache_report=True))
    async with running_server(engine=engine) as sim_url, aiohttp.ClientSession() as http:
        for body in bodies:
            answers = []
            for url in (cache_report_url, sim_url):
                sent = dict(body)
                if url == sim_url and isinstance(body["prompt"], list):
                    sent["prompt"] = engine.tokenize("The capital of France is")
                async with http.post(url + "/v1/completions", json={"model": "m", **sent}) as resp:
                    assert resp.status == 200
                    answers.append(await resp.json())
            real, ours = answers
            for answer in answers:  # alternatives are keyed by token text
                for choice in answer["choices"]:
                    if choice.get("logprobs"):
                        choice["logprobs"]["top_logprobs"] = []
            like(ours, real)


async def test_through_the_router_prompts_go_as_text(router_url: str, sglang_url: str) -> None:
    async with OpenAIBackend(router_url) as routed, OpenAIBackend(sglang_url) as direct:
        p = routed.profile
        assert (p.kind, p.prompt_ids, p.token_ids) == ("sglang-router", False, True)
        ids = await routed.tokenize(COUNT)
        assert ids == await direct.tokenize(COUNT)
        step = await routed.generate(req(ids, greedy(30, stop=(" 6",))))
        same(step, await direct.generate(req(ids, greedy(30, stop=(" 6",)))))
        more = await routed.generate(req(ids + step.output_ids, greedy(3)))
        same(more, await direct.generate(req(ids + step.output_ids, greedy(3))))


async def test_a_strategy_runs_within_its_budget(sglang_url: str) -> None:
    plan = compile_file(str(REPO / "programs" / "self_consistency.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": "What is 2 + 3?", "n": "4"})
    async with OpenAIBackend(sglang_url) as backend:
        result = await run_plan(plan, backend, values, RunOptions(seed=1, budget=160))
    assert 0 < result.usage.completion_tokens <= 160
    assert result.usage.requests >= 4
