"""SGLangBackend against a real sglang==0.5.23 server (SmolLM2-135M-Instruct on CPU).

Greedy decoding (temperature 0) wherever a test compares outputs: ``sampling_seed`` does not
reproduce samples on CPU.  Generations stay short; the server decodes ~25 tokens/s here.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from ttcdsl.errors import BackendError, BackendUnavailable
from ttcdsl.launch import free_port
from ttcdsl.runtime.backend import GenRequest, Sampling
from ttcdsl.runtime.backends.sglang import SGLangBackend

pytestmark = pytest.mark.anyio

COUNT = "1, 2, 3,"
CHAT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"  # 7 tokens
EOS = 2  # <|im_end|>


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def greedy(max_new_tokens: int, **kwargs: Any) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, **kwargs)


def req(ids: list[int], sampling: Sampling, **kwargs: Any) -> GenRequest:
    return GenRequest(rid="tier", input_ids=tuple(ids), sampling=sampling, **kwargs)


async def test_start_up_reports_the_model_and_a_direct_server(sglang_url: str, model_dir: Any) -> None:
    async with SGLangBackend(sglang_url) as backend:
        assert backend.info.model == str(model_dir)
        assert not backend.router
        assert not backend.info.has_reward


async def test_tokenize_and_detokenize_round_trip(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        ids = await backend.tokenize(CHAT)
        assert ids[0] == 1 and EOS in ids  # <|im_start|> ... <|im_end|>
        assert await backend.detokenize(ids) == CHAT
        assert await backend.tokenize(COUNT) == [33, 28, 216, 34, 28, 216, 35, 28]


async def test_a_stop_string_ends_the_generation_and_stays_in_the_text(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        ids = await backend.tokenize(COUNT)
        result = await backend.generate(req(ids, greedy(30, stop=(" 6",))))
        assert (result.finish, result.matched) == ("stop", " 6")
        assert result.text == " 4, 5, 6"
        assert await backend.detokenize(result.output_ids) == result.text
        assert result.completion_tokens == len(result.output_ids)
        assert result.prompt_tokens == len(ids)


async def test_the_end_of_sequence_token_finishes_eos(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        result = await backend.generate(req(await backend.tokenize(CHAT), greedy(60)))
    assert (result.finish, result.matched) == ("eos", EOS)
    assert result.output_ids[-1] == EOS
    assert result.completion_tokens == len(result.output_ids) < 60


async def test_running_out_of_new_tokens_finishes_length(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        result = await backend.generate(req(await backend.tokenize(COUNT), greedy(6)))
    assert (result.finish, result.matched) == ("length", None)
    assert result.completion_tokens == len(result.output_ids) == 6


async def test_continuing_from_token_ids_equals_one_greedy_run(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        prompt = await backend.tokenize(COUNT)
        first = await backend.generate(req(prompt, greedy(6)))
        second = await backend.generate(req(prompt + first.output_ids, greedy(6)))
        whole = await backend.generate(req(prompt, greedy(12)))
    assert first.output_ids + second.output_ids == whole.output_ids
    assert first.text + second.text == whole.text
    # The continuation's prompt (prompt + first output) was cached by the first request.
    assert second.cached_tokens >= len(prompt)


async def test_forks_after_a_warm_up_reuse_the_whole_prefix(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        prompt = await backend.tokenize(f"Note {uuid.uuid4().hex}: write one short sentence.")
        warm = await backend.warm(prompt)
        assert warm.prompt_tokens == len(prompt)
        results = []

        async def fork() -> None:
            sampling = Sampling(max_new_tokens=4, temperature=0.8)
            results.append(await backend.generate(req(prompt, sampling)))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(fork)
    assert [r.cached_tokens for r in results] == [len(prompt) - 1] * 3
    assert all(r.prompt_tokens == len(prompt) for r in results)


async def test_logprobs_come_one_per_generated_token(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        ids = await backend.tokenize(COUNT)
        result = await backend.generate(req(ids, greedy(5), logprobs=True, top_logprobs=3))
        assert result.logprobs is not None and result.top_logprobs is not None
        assert len(result.logprobs) == len(result.top_logprobs) == len(result.output_ids) == 5
        for token, logprob, top in zip(result.output_ids, result.logprobs, result.top_logprobs,
                                       strict=True):
            assert logprob <= 0.0 and 1 <= len(top) <= 3
            # Greedy: the chosen token is the most likely alternative.
            assert top[await backend.detokenize([token])] == pytest.approx(logprob)
            assert max(top.values()) == pytest.approx(logprob)


async def test_a_seeded_sample_runs(sglang_url: str) -> None:
    async with SGLangBackend(sglang_url) as backend:
        sampling = Sampling(max_new_tokens=4, temperature=0.8, top_p=0.9, top_k=50, min_p=0.01,
                            seed=1234)
        result = await backend.generate(req(await backend.tokenize(COUNT), sampling))
    assert result.finish in ("length", "eos") and 1 <= result.completion_tokens <= 4


async def test_cancelling_mid_stream_stops_the_generation_on_the_server(
    sglang_url: str, load: Any
) -> None:
    async with SGLangBackend(sglang_url) as backend:
        ids = await backend.tokenize("1, 2, 3, 4,")
        async with anyio.create_task_group() as tg:
            # Counting on for 4000 tokens would keep the server busy for minutes.
            tg.start_soon(backend.generate, req(ids, greedy(4000)))
            await load.wait(sglang_url, busy=True, timeout=60)
            tg.cancel_scope.cancel()
    await load.wait(sglang_url, busy=False, timeout=30)


async def test_an_invalid_request_is_a_backend_error_with_the_servers_message(
    sglang_url: str,
) -> None:
    async with SGLangBackend(sglang_url) as backend:
        # A 200 stream carrying an error event instead of tokens.
        with pytest.raises(BackendError, match="max_new_tokens must be at least 0, got -1"):
            await backend.generate(req([504, 3575], Sampling(max_new_tokens=-1)))
        # Refused before generating (also an error event: the request asked for a stream).
        with pytest.raises(BackendError, match=r"The input \(9000 tokens\) is longer than the"):
            await backend.generate(req([504] * 9000, greedy(4)))


async def test_a_dead_url_fails_at_start_up_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable, match="ttc serve --model") as caught:
        async with SGLangBackend(url):
            pass
    assert url in str(caught.value) and "\n" not in str(caught.value)
