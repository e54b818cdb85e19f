"""/v1/completions and /v1/embeddings on the simulator (completion shapes are pinned against
recordings in test_sim_server; embeddings follow SGLang 0.5.23's EmbeddingResponse)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ttcdsl.runtime.sim import SimConfig, SimEngine, load_task
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

pytestmark = pytest.mark.anyio

TASK = load_task(Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json")
PROMPT = "Solve step by step.\nWhat is 17 + 25?\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with running_server(engine=SimEngine(TASK)) as url, aiohttp.ClientSession() as http:
        yield url, http


async def complete(
    server: tuple[str, aiohttp.ClientSession], body: dict[str, Any]
) -> tuple[int, Any]:
    url, http = server
    async with http.post(url + "/v1/completions", json=body) as resp:
        text = await resp.text()
        return resp.status, text if body.get("stream") else json.loads(text)


async def test_finish_reasons_and_usage(server: Any) -> None:
    status, out = await complete(server, {"prompt": PROMPT, "max_tokens": 2000, "seed": 1, "n": 2})
    assert status == 200 and out["object"] == "text_completion"
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "stop"]
    assert [c["matched_stop"] for c in out["choices"]] == [EOS_ID, EOS_ID]
    assert all(c["text"].endswith(".") and "<|im_end|>" not in c["text"] for c in out["choices"])
    usage = out["usage"]
    n_prompt = len(tokenizer.encode(PROMPT))
    assert usage["prompt_tokens"] == n_prompt  # counted once for n samples, like SGLang
    assert usage["total_tokens"] == n_prompt + usage["completion_tokens"]
    status, out = await complete(
        server, {"prompt": PROMPT, "max_tokens": 200, "seed": 1, "stop": ["\n\n"]}
    )
    (choice,) = out["choices"]
    assert (choice["finish_reason"], choice["matched_stop"]) == ("stop", "\n\n")
    assert "\n\n" not in choice["text"]
    status, out = await complete(server, {"prompt": PROMPT, "max_tokens": 3})
    assert (out["choices"][0]["finish_reason"], out["choices"][0]["matched_stop"]) == (
        "length",
        None,
    )


async def test_logprobs_list_tokens_and_alternatives(server: Any) -> None:
    status, out = await complete(
        server, {"prompt": PROMPT, "max_tokens": 6, "seed": 2, "logprobs": 3}
    )
    assert status == 200
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    assert all(len(alts) == 3 for alts in lp["top_logprobs"])


async def test_stream_deltas_add_up_to_the_whole_completion(server: Any) -> None:
    body = {
        "prompt": PROMPT,
        "max_tokens": 40,
        "seed": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, text = await complete(server, body)
    assert status == 200
    events = [b[len("data: ") :] for b in text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 40
    assert all(c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 39 + ["length"]
    _, whole = await complete(server, {**body, "stream": False})
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


async def test_token_id_prompts_and_refusals(server: Any) -> None:
    status, out = await complete(
        server, {"prompt": tokenizer.encode(PROMPT), "max_tokens": 4, "temperature": 0}
    )
    assert status == 200 and out["choices"][0]["text"] == "Step 1 of 4"  # greedy: mid of [3, 6]
    status, out = await complete(server, {"prompt": PROMPT, "echo": True})
    assert (status, out) == (400, {"error": {"message": "echo is not supported by the simulator"}})
    status, out = await complete(server, {"prompt": 5})
    assert status == 400 and out["error"]["message"].startswith("prompt must be")
    status, out = await complete(server, {"prompt": "x", "logprobs": -1})
    assert status == 400 and "logprobs must be a non-negative integer" in out["error"]["message"]


async def test_return_token_ids_gives_output_and_prompt_ids(server: Any) -> None:
    body = {"prompt": PROMPT, "max_tokens": 30, "seed": 4, "stop": [" of"], "no_stop_trim": True,
            "return_token_ids": True}
    status, out = await complete(server, body)
    (choice,) = out["choices"]
    assert status == 200 and list(choice)[-2:] == ["token_ids", "prompt_token_ids"]
    assert choice["prompt_token_ids"] == tokenizer.encode(PROMPT)
    assert tokenizer.decode(choice["token_ids"]) == choice["text"]  # stop tokens included
    assert len(choice["token_ids"]) == out["usage"]["completion_tokens"]
    _, plain = await complete(server, {**body, "return_token_ids": False})
    assert "token_ids" not in plain["choices"][0] and "prompt_token_ids" not in plain["choices"][0]
    status, text = await complete(server, {**body, "stream": True})
    chunks = [json.loads(e[len("data: "):]) for e in text.strip().split("\n\n")[:-1]]
    streamed = [c["choices"][0] for c in chunks]
    assert streamed[0]["prompt_token_ids"] == choice["prompt_token_ids"]
    assert all("prompt_token_ids" not in c for c in streamed[1:])
    assert [t for c in streamed for t in c["token_ids"]] == choice["token_ids"]


def _recorded(name: str) -> tuple[Any, Any]:
    """(request body, response body) of a recording in tests/fixtures/sim/."""
    fixtures = Path(__file__).resolve().parent / "fixtures" / "sim"
    body = (fixtures / f"{name}.req").read_text().partition("\n")[2]
    payload = (fixtures / f"{name}.resp").read_bytes().decode().partition("\r\n\r\n")[2]
    return json.loads(body), json.loads(payload)


async def test_cache_report_counts_cached_prompt_tokens_like_sglang() -> None:
    body, first = _recorded("63_run2_v1_completions_prefix_first")
    _, second = _recorded("64_run2_v1_completions_prefix_second")
    # SGLang with --enable-cache-report: 0 cached, then all but the last prompt token.
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 54}
    assert second["usage"]["prompt_tokens"] == 55
    engine = SimEngine(TASK, SimConfig(cache_report=True))
    async with running_server(engine=engine) as url, aiohttp.ClientSession() as http:
        outs = []
        for _ in range(2):
            async with http.post(url + "/v1/completions", json=body) as resp:
                outs.append(await resp.json())
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(url + "/v1/completions", json=stream) as resp:
            usage = json.loads((await resp.text()).strip().split("\n\n")[-2][len("data: "):])
    for ours, theirs in zip(outs, (first, second)):
        assert list(ours["usage"]) == list(theirs["usage"])
    n = outs[0]["usage"]["prompt_tokens"]
    assert [o["usage"]["prompt_tokens_details"] for o in outs] == [
        {"cached_tokens": 0}, {"cached_tokens": n - 1}
    ]
    assert list(usage["usage"]) == [
        "prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
        "reasoning_tokens",
    ]  # fmt: skip
    assert usage["usage"]["prompt_tokens_details"] == {"cached_tokens": n - 1}


# ---------------------------------------------------------------- /v1/embeddings


async def embed(server: tuple[str, aiohttp.ClientSession], body: Any) -> tuple[int, Any]:
    url, http = server
    async with http.post(url + "/v1/embeddings", json=body) as resp:
        return resp.status, await resp.json()


async def test_embeddings_answer_the_classify_scores_in_openai_shape(server: Any) -> None:
    url, http = server
    good = PROMPT + "Step 1 of 3: we now have 42. Next we add.\n\n"
    bad = PROMPT + "Step 1 of 3: we now have 32. Next we add.\n\n"
    async with http.post(url + "/classify", json={"text": [good, bad]}) as resp:
        classified = [item["embedding"] for item in await resp.json()]
    status, out = await embed(server, {"model": "anything", "input": [good, bad]})
    assert status == 200
    assert list(out) == ["data", "model", "object", "usage"]  # SGLang's EmbeddingResponse order
    assert out["object"] == "list" and out["model"] == "ttc-sim"  # the server's name, as SGLang
    assert out["data"] == [
        {"embedding": classified[0], "index": 0, "object": "embedding"},
        {"embedding": classified[1], "index": 1, "object": "embedding"},
    ]
    assert classified[0][0] > classified[1][0]
    n = len(tokenizer.encode(good)) + len(tokenizer.encode(bad))
    assert out["usage"] == {
        "prompt_tokens": n, "total_tokens": n, "completion_tokens": 0,
        "prompt_tokens_details": None, "reasoning_tokens": 0, "completion_tokens_details": None,
    }  # fmt: skip


async def test_embeddings_take_one_text_token_ids_and_base64(server: Any) -> None:
    text = PROMPT + "Step 1 of 3: we now have 42. Next we add.\n\n"
    _, listed = await embed(server, {"input": [text]})
    score = listed["data"][0]["embedding"]
    _, single = await embed(server, {"input": text})
    ids = tokenizer.encode(text)
    _, by_ids = await embed(server, {"input": ids})
    _, rows = await embed(server, {"input": [ids, ids]})
    assert single["data"][0]["embedding"] == by_ids["data"][0]["embedding"] == score
    assert [d["embedding"] for d in rows["data"]] == [score, score]
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    _, packed = await embed(server, {"input": text, "encoding_format": "base64"})
    (value,) = struct.unpack("<f", base64.b64decode(packed["data"][0]["embedding"]))
    assert value == pytest.approx(score[0], rel=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": ""}, "Input cannot be empty"),
        ({"input": []}, "Input cannot be empty"),
        ({"input": "  "}, "Input cannot be empty or whitespace only"),
        ({"input": ["a", 3]}, "All items in input list must be strings"),
        ({"input": ["a", " "]}, "Input at index 1 cannot be empty or whitespace only"),
        ({"input": [1, "a"]}, "All items in input list must be integers"),
        ({"input": [1, -2]}, "Token ID at index 1 must be non-negative"),
        ({"input": [10**9]}, "token id 1000000000 is out of range"),
        ({"input": "a", "encoding_format": "int8"},
         "encoding_format must be either 'float' or 'base64', got 'int8'"),
        ({"model": "m"}, "input is required"),
    ],
)  # fmt: skip
async def test_embeddings_refuse_bad_input_like_sglang(server: Any, body: Any, message: str) -> None:
    status, out = await embed(server, body)
    assert status == 400
    assert out["object"] == "error" and out["type"] == "BadRequestError" and out["code"] == 400
    assert out["message"].startswith(message), out
