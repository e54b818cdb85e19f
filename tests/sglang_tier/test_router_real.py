"""SGLangBackend through a real sglang-router 0.3.2 in front of the real server: router mode
is detected, requests stay single-prompt, tokenizing falls back to prompt logprobs (the router
has no tokenizer here), and closing a stream still stops the worker."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from ttcdsl.errors import BackendError
from ttcdsl.runtime.backend import GenRequest, Sampling
from ttcdsl.runtime.backends.sglang import SGLangBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def greedy(n: int, **kwargs: Any) -> Sampling:
    return Sampling(max_new_tokens=n, temperature=0.0, **kwargs)


async def test_the_router_is_detected_and_serves_the_workers_model(
    router_url: str, sglang_url: str
) -> None:
    async with SGLangBackend(router_url) as routed, SGLangBackend(sglang_url) as direct:
        assert routed.router and not direct.router
        assert routed.info.model == direct.info.model


async def test_tokens_and_generations_match_the_direct_server(
    router_url: str, sglang_url: str
) -> None:
    async with SGLangBackend(router_url) as routed, SGLangBackend(sglang_url) as direct:
        text = "1, 2, 3,"
        ids = await routed.tokenize(text)
        assert ids == await direct.tokenize(text)
        assert await routed.detokenize(ids) == text
        request = GenRequest(rid="r", input_ids=tuple(ids), sampling=greedy(30, stop=(" 6",)))
        via_router = await routed.generate(request)
        straight = await direct.generate(request)
    assert via_router.output_ids == straight.output_ids
    assert via_router.text == straight.text == " 4, 5, 6"
    assert (via_router.finish, via_router.matched) == (straight.finish, straight.matched)


async def test_forks_through_the_router_reuse_the_warmed_prefix(router_url: str) -> None:
    async with SGLangBackend(router_url) as backend:
        prompt = await backend.tokenize(f"Memo {uuid.uuid4().hex}: say something.")
        await backend.warm(prompt)
        results = []

        async def fork() -> None:
            request = GenRequest(rid="f", input_ids=tuple(prompt),
                                 sampling=Sampling(max_new_tokens=3, temperature=0.8))
            results.append(await backend.generate(request))

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(fork)
    assert [r.cached_tokens for r in results] == [len(prompt) - 1] * 2


async def test_cancelling_through_the_router_stops_the_worker(
    router_url: str, sglang_url: str, load: Any
) -> None:
    async with SGLangBackend(router_url) as backend:
        ids = await backend.tokenize("1, 2, 3, 4,")
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.generate,
                          GenRequest(rid="c", input_ids=tuple(ids), sampling=greedy(4000)))
            await load.wait(sglang_url, busy=True, timeout=60)
            tg.cancel_scope.cancel()
    await load.wait(sglang_url, busy=False, timeout=60)


async def test_reward_through_a_router_without_a_reward_model_names_the_flag(
    router_url: str,
) -> None:
    async with SGLangBackend(router_url) as backend:
        with pytest.raises(BackendError, match="--reward-url"):
            await backend.reward(["The answer is 4."])
