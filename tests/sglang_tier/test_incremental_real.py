"""SGLangBackend against a real server started with ``--incremental-streaming-output``: the
stream then carries deltas, and every result must equal the default (cumulative) server's."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from ttcdsl.runtime.backend import GenRequest, GenResult, Sampling
from ttcdsl.runtime.backends.sglang import SGLangBackend

pytestmark = pytest.mark.anyio

CASES = {
    "stop": ("1, 2, 3,", Sampling(max_new_tokens=30, temperature=0.0, stop=(" 6",)), False),
    "eos": ("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
            Sampling(max_new_tokens=60, temperature=0.0), False),
    "logprobs": ("1, 2, 3,", Sampling(max_new_tokens=6, temperature=0.0), True),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run(url: str, case: str) -> GenResult:
    text, sampling, logprobs = CASES[case]
    async with SGLangBackend(url) as backend:
        ids = await backend.tokenize(text)
        request = GenRequest(rid=case, input_ids=tuple(ids), sampling=sampling,
                             logprobs=logprobs, top_logprobs=2 if logprobs else 0)
        return await backend.generate(request)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_incremental_results_equal_cumulative_ones(
    case: str, incremental_url: str, sglang_url: str
) -> None:
    incremental = await run(incremental_url, case)
    cumulative = await run(sglang_url, case)
    assert incremental.output_ids == cumulative.output_ids
    assert incremental.text == cumulative.text
    assert (incremental.finish, incremental.matched) == (cumulative.finish, cumulative.matched)
    assert incremental.completion_tokens == cumulative.completion_tokens
    if CASES[case][2]:
        assert incremental.logprobs == pytest.approx(cumulative.logprobs, abs=1e-3)
        assert incremental.top_logprobs is not None and cumulative.top_logprobs is not None
        assert [set(t) for t in incremental.top_logprobs] == [
            set(t) for t in cumulative.top_logprobs
        ]


async def test_cancelling_an_incremental_stream_stops_the_server(
    incremental_url: str, load: Any
) -> None:
    async with SGLangBackend(incremental_url) as backend:
        ids = await backend.tokenize("1, 2, 3, 4,")
        sampling = Sampling(max_new_tokens=4000, temperature=0.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.generate, GenRequest(rid="c", input_ids=tuple(ids),
                                                       sampling=sampling))
            await load.wait(incremental_url, busy=True, timeout=60)
            tg.cancel_scope.cancel()
    await load.wait(incremental_url, busy=False, timeout=30)
