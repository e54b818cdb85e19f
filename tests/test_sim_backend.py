"""SimBackend: the Backend contract in-process, and the same answers as the HTTP server."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import anyio
import pytest

from ttcdsl.errors import BackendError, TransientBackendError
from ttcdsl.runtime.backend import Backend, GenRequest, Sampling
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.sim import Faults, Latency, SimConfig, load_task
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.sim.tokenizer import EOS_ID

pytestmark = pytest.mark.anyio

DEMO = Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json"
TASK = load_task(DEMO)
PROMPT = "Solve step by step; separate steps with a blank line.\nWhat is 17 + 25?\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gen(rid: str, ids: list[int], **sampling: object) -> GenRequest:
    sampling.setdefault("max_new_tokens", 400)
    return GenRequest(rid=rid, input_ids=tuple(ids), sampling=Sampling(**sampling))  # type: ignore[arg-type]


async def test_it_is_a_backend_with_a_reward_model() -> None:
    async with SimBackend(TASK) as backend:
        assert isinstance(backend, Backend)
        assert backend.info.name == "sim" and backend.info.has_reward and backend.info.url is None
        text = "any text <|im_end|> é"
        assert await backend.detokenize(await backend.tokenize(text)) == text


async def test_a_step_ends_at_the_stop_string_which_the_text_keeps() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        result = await backend.generate(gen("a", ids, seed=1, stop=("\n\n",)))
        assert result.finish == "stop" and result.matched == "\n\n"
        assert result.text.startswith("Step 1 of ") and result.text.endswith(".\n\n")
        assert result.text == await backend.detokenize(result.output_ids)
        assert result.completion_tokens == len(result.output_ids)
        assert result.prompt_tokens == len(ids)


async def test_a_whole_sample_ends_with_eos() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        result = await backend.generate(gen("a", ids, seed=1, max_new_tokens=2000))
        assert result.finish == "eos" and result.matched == EOS_ID
        assert result.output_ids[-1] == EOS_ID
        assert re.search(r"\nThe answer is \d+\.$", result.text)  # no special token text


async def test_max_new_tokens_is_never_exceeded() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        for n in (0, 1, 5, 17):
            result = await backend.generate(gen("a", ids, seed=1, max_new_tokens=n))
            assert (
                result.completion_tokens == n
                and result.finish == "length"
                and result.matched is None
            )


async def test_warm_then_forks_hit_the_cache_and_stats_count_it() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        warm = await backend.warm(ids)
        assert (warm.prompt_tokens, warm.cached_tokens) == (len(ids), 0)
        results = []

        async def fork(j: int) -> None:
            results.append(await backend.generate(gen(f"f{j}", ids, seed=j, stop=("\n\n",))))

        async with anyio.create_task_group() as tg:
            for j in range(4):
                tg.start_soon(fork, j)
        assert {r.cached_tokens for r in results} == {len(ids) - 1}
        stats = backend.stats
        assert stats.requests == 5 and stats.warm_requests == 1
        assert stats.prefill_tokens == len(ids) + 4


async def test_expanding_a_branch_continues_exactly_from_its_tokens() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        branch: list[int] = []
        for step in range(20):
            r = await backend.generate(
                gen(f"s{step}", ids + branch, seed=100 + step, stop=("\n\n",))
            )
            assert r.cached_tokens == len(ids + branch) - 1 or step == 0
            branch += r.output_ids
            if r.finish == "eos":
                break
        text = await backend.detokenize(branch)
        total = int(re.match(r"Step 1 of (\d+):", text).group(1))  # type: ignore[union-attr]
        assert text.count("Step ") == total and step == total - 1


async def test_logprobs_and_top_logprobs_come_back_per_token() -> None:
    async with SimBackend(TASK) as backend:
        ids = await backend.tokenize(PROMPT)
        r = await backend.generate(
            GenRequest(
                rid="l",
                input_ids=tuple(ids),
                sampling=Sampling(max_new_tokens=12, seed=2),
                logprobs=True,
                top_logprobs=2,
            )
        )
        assert r.logprobs is not None and r.top_logprobs is not None
        assert len(r.logprobs) == len(r.top_logprobs) == 12
        assert all(lp < 0 for lp in r.logprobs)
        assert all(len(alts) == 2 for alts in r.top_logprobs)
        plain = await backend.generate(gen("p", ids, seed=2, max_new_tokens=12))
        assert plain.logprobs is None and plain.top_logprobs is None
        assert plain.output_ids == r.output_ids


async def test_reward_scores_the_newest_step() -> None:
    async with SimBackend(TASK) as backend:
        good = PROMPT + "Step 1 of 3: we now have 42. Next we add.\n\n"
        bad = PROMPT + "Step 1 of 3: we now have 32. Next we add.\n\n"
        scores = await backend.reward([good, bad])
        assert scores[0] > scores[1]


async def test_cancelling_generate_stops_the_request() -> None:
    async with SimBackend(TASK, SimConfig(latency=Latency(decode_s=0.01))) as backend:
        ids = await backend.tokenize(PROMPT)
        with anyio.move_on_after(0.05):
            await backend.generate(gen("c", ids, seed=1, max_new_tokens=10**4))
        stats = backend.stats
        assert stats.in_flight == 0 and stats.aborted == 1
        assert 0 < stats.completion_tokens < 10**4


async def test_faults_surface_as_transient_errors() -> None:
    async with SimBackend(
        TASK, SimConfig(faults=Faults(error_rate=0.5, reset_rate=0.5))
    ) as backend:
        ids = await backend.tokenize(PROMPT)
        messages = set()
        for j in range(20):
            with pytest.raises(TransientBackendError) as info:
                await backend.generate(gen(f"x{j}", ids))
            messages.add(re.sub(r"request \S+", "request R", str(info.value)))
        assert messages == {
            "sim: simulated HTTP 503 for request R",
            "sim: simulated connection reset for request R",
        }


async def test_refused_requests_raise_backend_errors() -> None:
    async with SimBackend(TASK, SimConfig(context_length=8)) as backend:
        with pytest.raises(
            BackendError,
            match=r"sim: The input \(\d+ tokens\) is longer than the model's context length \(8 tokens\)\.",
        ):
            await backend.generate(gen("x", await backend.tokenize(PROMPT)))
        with pytest.raises(BackendError, match="out of range"):
            await backend.detokenize([-5])


async def test_the_http_server_answers_identically() -> None:
    backend = SimBackend(TASK)
    ids = await backend.tokenize(PROMPT)
    await backend.warm(ids)
    async with running_server(engine=backend.engine) as url, aiohttp.ClientSession() as http:
        for seed in range(5):
            for stop in ((), ("\n\n",)):
                local = await backend.generate(
                    gen(f"l{seed}", ids, seed=seed, stop=stop, max_new_tokens=300)
                )
                body = {
                    "input_ids": ids,
                    "sampling_params": {
                        "max_new_tokens": 300,
                        "sampling_seed": seed,
                        "stop": list(stop),
                        "no_stop_trim": True,
                    },
                    "rid": f"h{seed}",
                }
                async with http.post(url + "/generate", json=body) as resp:
                    remote = await resp.json()
                assert remote["output_ids"] == local.output_ids
                assert remote["text"] == local.text
                assert remote["meta_info"]["cached_tokens"] == local.cached_tokens == len(ids) - 1
        async with http.post(url + "/classify", json={"text": [PROMPT]}) as resp:
            assert (await resp.json())[0]["embedding"] == await backend.reward([PROMPT])
    assert backend.stats.requests == 21
