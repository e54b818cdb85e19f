"""`SGLangBackend.reward` against a real SGLang serving a model with ``--is-embedding``.

SmolLM2 is no reward model, but served as an embedding model it answers ``/classify`` exactly
as a reward model does (one vector per text; a reward model's vector has one entry): the wire
path is the real one, and the score is the vector's first entry.  Never send /generate to such
a server: SGLang 0.5.23's scheduler crashes on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from ttcdsl.errors import BackendError
from ttcdsl.runtime.backends.sglang import SGLangBackend

pytestmark = pytest.mark.anyio

TEXTS = ["Step 1: 2 + 2 = 4.", "Step 1: 2 + 2 = 5.", "The answer is 4."]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def first_entries(url: str) -> list[float]:
    async with aiohttp.ClientSession() as session, session.post(
        url + "/classify", json={"text": TEXTS}
    ) as resp:
        resp.raise_for_status()
        return [item["embedding"][0] for item in await resp.json()]


async def test_reward_scores_are_the_classify_outputs(sglang_url: str, reward_url: str) -> None:
    async with SGLangBackend(sglang_url, reward_url=reward_url) as backend:
        assert backend.info.has_reward
        scores = await backend.reward(TEXTS)
    assert scores == pytest.approx(await first_entries(reward_url))
    assert len(set(scores)) == len(TEXTS)


@pytest.fixture(scope="module")
def routed_reward_url(reward_url: str, start_router: Any) -> Iterator[str]:
    with start_router(reward_url) as url:
        yield url


async def test_reward_through_a_router_reads_the_same_scores(
    sglang_url: str, reward_url: str, routed_reward_url: str
) -> None:
    async with SGLangBackend(sglang_url, reward_url=routed_reward_url) as backend:
        assert backend.info.has_reward
        scores = await backend.reward(TEXTS)
    assert scores == pytest.approx(await first_entries(reward_url), abs=1e-4)


async def test_a_generation_server_has_no_reward_and_says_which_flag_to_pass(
    sglang_url: str,
) -> None:
    async with SGLangBackend(sglang_url) as backend:
        assert not backend.info.has_reward
        with pytest.raises(BackendError, match=r"not appear to be an embedding model.*--reward-url"):
            await backend.reward(TEXTS)
