"""The simulator's HTTP server against real loopback connections: SGLang-shaped responses
(compared with recordings of a real SGLang 0.5.23 server in tests/fixtures/sim/), the radix
cache over HTTP, streaming, abort, faults."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.runtime.sim import Faults, Latency, ServeError, SimConfig, SimEngine, load_task
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sim"
TASK = load_task(Path(__file__).resolve().parents[1] / "data" / "tasks" / "demo.json")
PROMPT = "Solve step by step.\nWhat is 17 + 25?\n"
# Keys a real server adds with --enable-metrics (run 2 of the recordings); not part of the shape.
METRIC_KEYS = {
    "storage_prefetch_wait", "storage_staging_wait", "forward_entry_time", "prefill_finished_time",
    "queue_time", "request_received_ts", "first_token_latency", "api_server_dispatch_finish_ts",
    "request_finished_ts", "decode_throughput",
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, SimEngine, aiohttp.ClientSession]]:
    engine = SimEngine(TASK)
    async with running_server(engine=engine) as url, aiohttp.ClientSession() as http:
        yield url, engine, http


# ---------------------------------------------------------------- recordings


def recorded(name: str) -> tuple[str, str, Any, int, str]:
    """(method, path, request body, status, response body text) of a recorded exchange."""
    req = (FIXTURES / f"{name}.req").read_text()
    line, _, body = req.partition("\n")
    method, path = line.split()
    resp = (FIXTURES / f"{name}.resp").read_bytes().decode()
    head, _, payload = resp.partition("\r\n\r\n")
    status = int(head.split()[1])
    if name.startswith("32_"):  # deliberately malformed
        return method, path, body.strip(), status, payload
    request_body = json.loads(body) if body.strip() and method != "GET" else None
    return method, path, request_body, status, payload


def events(payload: str) -> list[Any]:
    out: list[Any] = []
    for block in payload.split("\n\n"):
        block = block.strip()
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "num" if isinstance(value, (int, float)) else type(value).__name__


def assert_like(ours: Any, theirs: Any, path: str = "$") -> None:
    """Same keys (and key order), nesting and JSON types; null on either side matches anything."""
    if ours is None or theirs is None:
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        want = [k for k in theirs if k not in METRIC_KEYS]
        assert list(ours) == want, f"{path}: keys {list(ours)} != {want}"
        for key in want:
            assert_like(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), path
        if theirs:
            for i, item in enumerate(ours):
                assert_like(item, theirs[min(i, len(theirs) - 1)], f"{path}[{i}]")
    else:
        assert _kind(ours) == _kind(theirs), f"{path}: {ours!r} vs {theirs!r}"


async def call(
    http: aiohttp.ClientSession, url: str, method: str, path: str, body: Any = None
) -> tuple[int, str]:
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    async with http.request(method, url + path, **kwargs) as resp:
        return resp.status, await resp.text()


SAME_SHAPE = [
    "01_get_model_info", "06_v1_models", "08_generate_n4", "10_generate_greedy",
    "12_generate_logprob", "14_generate_logprob_noprompt", "16_prefix_first", "19_generate_batch_texts",
    "20_generate_input_ids", "21_generate_stop_str", "22_generate_stop_token_ids", "23_generate_rid",
    "36_v1_completions", "37_v1_completions_n2_logprobs", "70_run2_generate_max_new_tokens_0",
    "73_run2_tokenize", "74_run2_detokenize",
]  # fmt: skip


@pytest.mark.parametrize("name", SAME_SHAPE)
async def test_responses_have_the_recorded_shape(server: Any, name: str) -> None:
    url, engine, http = server
    method, path, body, status, payload = recorded(name)
    if name == "20_generate_input_ids":  # the recorded ids are SmolLM2's; send ours
        body["input_ids"] = tokenizer.encode("The capital of France is")
    if name == "74_run2_detokenize":
        body["tokens"] = tokenizer.encode("The capital of France is")
    if name == "21_generate_stop_str":  # a stop string the sim's text contains
        body["sampling_params"]["stop"] = [" of"]
    if name == "22_generate_stop_token_ids":  # room to reach the end-of-sequence token
        body["sampling_params"]["max_new_tokens"] = 400
    got_status, text = await call(http, url, method, path, body)
    assert got_status == status
    ours, theirs = json.loads(text), json.loads(payload)
    for obj in (ours, theirs):  # top alternatives are keyed by token text: compare the values
        for choice in obj.get("choices", []) if isinstance(obj, dict) else []:
            if choice.get("logprobs"):
                choice["logprobs"]["top_logprobs"] = [
                    list(d.values()) for d in choice["logprobs"]["top_logprobs"]
                ]
    if name == "01_get_model_info":  # ours lists a subset of the model card
        assert set(ours) <= set(theirs) and ours["model_path"] == engine.config.model
        return
    assert_like(ours, theirs)


@pytest.mark.parametrize(
    "name",
    [
        "09_generate_n4_stream",
        "11_generate_stream",
        "13_generate_logprob_stream",
        "38_v1_completions_stream",
    ],
)
async def test_streams_have_the_recorded_shape(server: Any, name: str) -> None:
    url, _, http = server
    method, path, body, status, payload = recorded(name)
    async with http.request(method, url + path, json=body) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        ours = events(await resp.text())
    theirs = events(payload)
    assert ours[-1] == theirs[-1] == "[DONE]"
    assert_like(ours[0], theirs[0])
    assert_like(ours[-2], theirs[-2])
    assert_like(ours[1:-2], theirs[1:-2])


@pytest.mark.parametrize(
    "name",
    [
        "28_err_missing_text", "29_err_bad_max_new_tokens", "30_err_bad_temperature",
        "31_err_unknown_sampling_param", "34_err_stream_bad_param", "35_err_unknown_path",
        "07_flush_cache_initial", "04_health", "51_abort_request_rid",
    ],
)  # fmt: skip
async def test_errors_and_plain_answers_match_the_recording_exactly(server: Any, name: str) -> None:
    url, _, http = server
    method, path, body, status, payload = recorded(name)
    assert await call(http, url, method, path, body) == (status, payload)


async def test_malformed_json_gets_the_openai_style_error(server: Any) -> None:
    url, _, http = server
    method, path, body, status, payload = recorded("32_err_bad_json")
    got_status, text = await call(http, url, method, path, body)
    assert got_status == status == 400
    assert_like(json.loads(text), json.loads(payload))


async def test_too_long_inputs_are_refused_like_sglang(server: Any) -> None:
    url, _, http = server
    ids = [tokenizer.piece_id(" the")] * 9000
    status, text = await call(
        http, url, "POST", "/generate", {"input_ids": ids, "sampling_params": {"max_new_tokens": 4}}
    )
    assert status == 400
    assert json.loads(text) == {
        "error": {
            "message": "The input (9000 tokens) is longer than the model's context length (8192 tokens)."
        }
    }


# ---------------------------------------------------------------- behaviour over HTTP


async def generate(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url + "/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_cached_tokens_over_http(server: Any) -> None:
    url, engine, http = server
    n = len(tokenizer.encode(PROMPT))
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    assert (await generate(http, url, body))["meta_info"]["cached_tokens"] == 0
    second = await generate(http, url, body)
    assert second["meta_info"]["cached_tokens"] == n - 1
    assert second["meta_info"]["cached_tokens_details"] == {"device": n - 1, "host": 0}
    assert (await call(http, url, "POST", "/flush_cache"))[0] == 200
    samples = await generate(
        http, url, {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "n": 4}}
    )
    assert [s["meta_info"]["cached_tokens"] for s in samples] == [n - 1] * 4  # after the warm-up
    async with http.get(url + "/sim/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 7 and stats["warm_requests"] == 1
    assert stats["prefill_tokens"] == n + 1 + n + 4
    async with http.post(url + "/sim/stats/reset") as resp:
        assert resp.status == 200
    assert engine.stats.requests == 0


async def test_n_samples_are_prompt_major_and_differ(server: Any) -> None:
    url, _, http = server
    body = {
        "text": [PROMPT, "What is 38 + 47?\n"],
        "sampling_params": {"max_new_tokens": 600, "n": 3, "sampling_seed": 5},
        "rid": "job",
    }
    out = await generate(http, url, body)
    assert len(out) == 6
    assert [o["meta_info"]["id"] for o in out] == [f"job_{k}" for k in range(6)]
    assert all("17 + 25" not in o["text"] for o in out)
    single = await generate(
        http, url, {"text": PROMPT, "sampling_params": {"max_new_tokens": 600, "sampling_seed": 5}}
    )
    assert out[0]["output_ids"] == single["output_ids"]  # sample 0 uses the seed itself
    assert len({tuple(o["output_ids"]) for o in out[:3]}) == 3


async def test_stop_strings_are_trimmed_unless_asked_otherwise(server: Any) -> None:
    url, _, http = server
    sp = {"max_new_tokens": 200, "stop": ["\n\n"], "sampling_seed": 3}
    trimmed = await generate(http, url, {"text": PROMPT, "sampling_params": sp})
    kept = await generate(
        http, url, {"text": PROMPT, "sampling_params": {**sp, "no_stop_trim": True}}
    )
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": "\n\n"}
    assert kept["text"] == trimmed["text"] + "\n\n"
    assert trimmed["output_ids"] == kept["output_ids"]
    assert tokenizer.decode(kept["output_ids"]) == kept["text"]


async def test_eos_is_reported_with_its_id_and_hidden_from_text(server: Any) -> None:
    url, _, http = server
    out = await generate(
        http, url, {"text": PROMPT, "sampling_params": {"max_new_tokens": 2000, "sampling_seed": 1}}
    )
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_ID}
    assert out["output_ids"][-1] == EOS_ID
    assert out["text"].rstrip().split("\n")[-1].startswith("The answer is ")
    assert out["meta_info"]["completion_tokens"] == len(out["output_ids"])


async def test_streaming_chunks_are_cumulative(server: Any) -> None:
    url, _, http = server
    body = {
        "text": PROMPT,
        "sampling_params": {"max_new_tokens": 30, "sampling_seed": 2},
        "stream": True,
        "return_logprob": True,
    }
    async with http.post(url + "/generate", json=body) as resp:
        chunks = events(await resp.text())
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert len(chunks) == 30
    for k, chunk in enumerate(chunks, start=1):
        assert len(chunk["output_ids"]) == k == chunk["meta_info"]["completion_tokens"]
        assert len(chunk["meta_info"]["output_token_logprobs"]) == k
        assert chunk["text"] == tokenizer.decode(chunk["output_ids"], skip_special_tokens=True)
        assert (chunk["meta_info"]["finish_reason"] is None) == (k < 30)
    whole = await generate(http, url, {**body, "stream": False})
    assert whole["output_ids"] == chunks[-1]["output_ids"]


async def test_batch_streams_are_indexed(server: Any) -> None:
    url, _, http = server
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 5, "n": 3}, "stream": True}
    async with http.post(url + "/generate", json=body) as resp:
        chunks = events(await resp.text())[:-1]
    assert {c["index"] for c in chunks} == {0, 1, 2}
    finals = [c for c in chunks if c["meta_info"]["finish_reason"] is not None]
    assert sorted(c["index"] for c in finals) == [0, 1, 2]


async def test_a_batch_stream_has_the_recorded_shape(server: Any) -> None:
    url, _, http = server
    method, path, body, status, payload = recorded("69_run2_generate_batch_stream")
    async with http.request(method, url + path, json=body) as resp:
        assert resp.status == status
        ours = events(await resp.text())
    theirs = events(payload)
    assert ours[-1] == theirs[-1] == "[DONE]"
    assert len(ours) == len(theirs) == 7  # 2 prompts x 3 tokens, then [DONE]
    for i in (0, 1):
        mine = [c for c in ours[:-1] if c["index"] == i]
        recorded_i = [c for c in theirs[:-1] if c["index"] == i]
        assert_like(mine[0], recorded_i[0])
        assert_like(mine[1], recorded_i[1])
        # The recording's final chunk also stamps a send time: a --enable-metrics key there.
        del recorded_i[2]["meta_info"]["response_sent_to_client_ts"]
        assert_like(mine[2], recorded_i[2])
        assert [len(c["output_ids"]) for c in mine] == [1, 2, 3]


BATCH_PROMPTS = [PROMPT, "What is 38 + 47?\n", "Solve: What is 12 * 13?\n"]


def _batch_body(**extra: Any) -> dict[str, Any]:
    return {
        "input_ids": [tokenizer.encode(p) for p in BATCH_PROMPTS],
        "sampling_params": [
            {"max_new_tokens": 40 + 10 * i, "sampling_seed": 7 + i} for i in range(3)
        ],
        **extra,
    }


async def test_a_batch_answers_a_list_in_input_order_like_single_requests(server: Any) -> None:
    url, _, http = server
    out = await generate(http, url, _batch_body(rid="job"))
    assert [o["meta_info"]["id"] for o in out] == ["job_0", "job_1", "job_2"]
    body = _batch_body()
    for i, o in enumerate(out):
        alone = await generate(
            http, url, {"input_ids": body["input_ids"][i], "sampling_params": body["sampling_params"][i]}
        )
        assert (o["output_ids"], o["text"]) == (alone["output_ids"], alone["text"])
        assert o["meta_info"]["finish_reason"] == {"type": "length", "length": 40 + 10 * i}
    listed = await generate(http, url, _batch_body(rid=["a", "b", "c"]))
    assert [o["meta_info"]["id"] for o in listed] == ["a", "b", "c"]
    shared = await generate(
        http, url, {**_batch_body(), "sampling_params": {"max_new_tokens": 5, "sampling_seed": 1}}
    )
    assert [len(o["output_ids"]) for o in shared] == [5, 5, 5]  # one dict for every prompt


async def test_a_batch_stream_interleaves_cumulative_chunks_with_their_index(server: Any) -> None:
    url, _, http = server
    whole = await generate(http, url, _batch_body())
    async with http.post(url + "/generate", json=_batch_body(stream=True, rid="s")) as resp:
        chunks = events(await resp.text())
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    order = [c["index"] for c in chunks]
    # The prompts advance together: every one has started before any has finished.
    assert max(order.index(i) for i in range(3)) < min(
        len(order) - 1 - order[::-1].index(i) for i in range(3)
    )
    for i, expected in enumerate(whole):
        mine = [c for c in chunks if c["index"] == i]
        assert all(c["meta_info"]["id"] == f"s_{i}" for c in mine)
        assert [len(c["output_ids"]) for c in mine] == list(range(1, len(expected["output_ids"]) + 1))
        assert mine[-1]["output_ids"] == expected["output_ids"]
        assert mine[-1]["text"] == expected["text"]
        assert [c["meta_info"]["finish_reason"] is None for c in mine] == [True] * (len(mine) - 1) + [False]


async def test_select_like_the_sglang_frontend(server: Any) -> None:
    # The requests RuntimeEndpoint.select sends: a prefix warm-up, then the choices in a batch.
    url, _, http = server
    prefix = f"{PROMPT}The answer is"
    warm = await generate(http, url, {"text": prefix, "sampling_params": {"max_new_tokens": 0}})
    start = max(warm["meta_info"]["prompt_tokens"] - 2, 0)
    choices = [" 42.", " 32.", " 7."]
    out = await generate(
        http,
        url,
        {
            "text": [prefix + c for c in choices],
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": start,
        },
    )
    for o, choice in zip(out, choices):
        lps = o["meta_info"]["input_token_logprobs"]
        assert lps[0][0] is None  # the cached boundary, as in SGLang
        assert all(isinstance(x[0], float) and x[0] < 0 for x in lps[1:])
        assert all(isinstance(x[2], str) for x in lps)
        assert "".join(x[2] for x in lps[2:]) == choice
        values = [x[0] for x in lps if x[0]]
        assert math.isfinite(sum(values) / len(values))
        assert o["meta_info"]["output_token_logprobs"] == []


async def test_classify_scores_texts(server: Any) -> None:
    url, _, http = server
    good = PROMPT + "Step 1 of 3: we now have 42. Next we add.\n\n"
    bad = PROMPT + "Step 1 of 3: we now have 32. Next we add.\n\n"
    status, text = await call(http, url, "POST", "/classify", {"text": [good, bad]})
    scores = [o["embedding"][0] for o in json.loads(text)]
    assert status == 200 and scores[0] > scores[1]
    status, text = await call(http, url, "POST", "/classify", {"text": good})
    assert json.loads(text)["embedding"] == scores[:1]
    ids = tokenizer.encode(good)
    status, text = await call(http, url, "PUT", "/classify", {"input_ids": ids})
    assert json.loads(text)["embedding"] == scores[:1]


async def test_info_endpoints(server: Any) -> None:
    url, engine, http = server
    for path in ("/model_info", "/get_model_info"):
        status, text = await call(http, url, "GET", path)
        assert status == 200 and json.loads(text)["model_path"] == "ttc-sim"
    for path in ("/server_info", "/get_server_info"):
        status, text = await call(http, url, "GET", path)
        info = json.loads(text)
        assert (
            info["version"] == "0.5.23"
            and info["max_total_num_tokens"] == engine.config.radix_capacity
        )
        assert url.endswith(f":{info['port']}") and info["sim"]["problems"] == len(TASK.problems)
    assert await call(http, url, "GET", "/health_generate") == (200, "")
    assert (await call(http, url, "GET", "/generate"))[0] == 405
    status, text = await call(
        http, url, "PUT", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1}}
    )
    assert status == 200 and json.loads(text)["meta_info"]["completion_tokens"] == 1


async def test_tokenize_batches(server: Any) -> None:
    url, _, http = server
    status, text = await call(http, url, "POST", "/tokenize", {"prompt": ["a b", "c"]})
    assert status == 200
    assert json.loads(text) == {
        "tokens": [tokenizer.encode("a b"), tokenizer.encode("c")],
        "count": [2, 1],
        "max_model_len": 8192,
    }
    status, text = await call(
        http, url, "POST", "/detokenize", {"tokens": [tokenizer.encode("a b<|im_end|>")]}
    )
    assert (status, json.loads(text)) == (200, {"text": ["a b"]})


async def test_bad_values_get_sglang_messages(server: Any) -> None:
    url, _, http = server
    cases = [
        ({"top_p": 0}, "top_p must be in (0, 1], got 0."),
        ({"top_k": 0}, "top_k must be -1 (disable) or at least 1, got 0."),
        (
            {"min_new_tokens": 5, "max_new_tokens": 2},
            "min_new_tokens must be in [0, max_new_tokens(2)], got 5.",
        ),
        ({"n": 0}, "n must be at least 1, got 0."),
        ({"stop_regex": "("}, "invalid stop_regex '('"),
        ({"max_new_tokens": "x"}, "sampling_params.max_new_tokens must be an integer, got 'x'"),
    ]
    for sp, message in cases:
        status, text = await call(
            http, url, "POST", "/generate", {"text": "hi", "sampling_params": sp}
        )
        assert status == 400 and json.loads(text)["error"]["message"].startswith(message), text
    status, text = await call(http, url, "POST", "/generate", {"text": ["a", "b"], "rid": ["x"]})
    assert status == 400 and "rids length mismatch" in text
    for texts, rid, message in [
        (["a", "b"], ["x"], "The specified rids length mismatch with the batch_size for batch processing."),
        (["a", "b", "c"], ["x", "x", "y"], "Duplicate request IDs detected within the request: ['x']"),
        (["a", "b"], 7, "The rid should be a string or a list of strings."),
    ]:  # SGLang's words (io_struct.py)
        status, text = await call(http, url, "POST", "/generate", {"text": texts, "rid": rid})
        assert (status, json.loads(text)) == (400, {"error": {"message": message}})


# ---------------------------------------------------------------- abort, disconnects, faults


async def wait_until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not check():
            await anyio.sleep(0.001)


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, SimEngine, aiohttp.ClientSession]]:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.005)))
    async with running_server(engine=engine) as url, aiohttp.ClientSession() as http:
        yield url, engine, http


LONG = {"text": PROMPT, "sampling_params": {"max_new_tokens": 100000, "ignore_eos": True}}


async def test_abort_request_ends_a_stream_with_its_partial_output(slow_server: Any) -> None:
    url, engine, http = slow_server
    async with http.post(
        url + "/generate", json={**LONG, "rid": "abort-me-1", "stream": True}
    ) as resp:
        first = await resp.content.readuntil(b"\n\n")
        assert json.loads(first[len(b"data: ") :])["meta_info"]["finish_reason"] is None
        assert await call(http, url, "POST", "/abort_request", {"rid": "abort-me"}) == (200, "")
        rest = events((await resp.read()).decode())
    assert rest[-1] == "[DONE]"
    last = rest[-2]
    assert last["meta_info"]["finish_reason"] == {
        "type": "abort",
        "message": "Aborted",
        "status_code": None,
        "err_type": None,
    }
    assert 0 < last["meta_info"]["completion_tokens"] == len(last["output_ids"]) < 100000
    assert engine.stats.aborted == 1


async def test_abort_all_ends_waiting_non_stream_requests(slow_server: Any) -> None:
    url, engine, http = slow_server
    results: list[Any] = []

    async def run(rid: str) -> None:
        results.append(await generate(http, url, {**LONG, "rid": rid}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a")
        tg.start_soon(run, "b")
        await wait_until(lambda: engine.stats.in_flight == 2)
        assert await call(http, url, "POST", "/abort_request", {"abort_all": True}) == (200, "")
    assert [r["meta_info"]["finish_reason"]["type"] for r in results] == ["abort", "abort"]
    assert await call(http, url, "POST", "/abort_request", {"rid": "no-such-rid"}) == (200, "")


@pytest.mark.parametrize("stream", [False, True])
async def test_aborting_one_element_of_a_batch_leaves_the_others_running(
    slow_server: Any, stream: bool
) -> None:
    url, engine, http = slow_server
    lengths = [60, 100000, 60]
    body = {
        "input_ids": [tokenizer.encode(p) for p in BATCH_PROMPTS],
        "sampling_params": [{"max_new_tokens": n, "ignore_eos": True} for n in lengths],
        "rid": "fork",
        "stream": stream,
    }
    results: list[Any] = []

    async def run() -> None:
        async with http.post(url + "/generate", json=body) as resp:
            text = await resp.text()
        if stream:
            chunks = [c for c in events(text) if c != "[DONE]"]
            results.extend(
                [c for c in chunks if c["index"] == i][-1] for i in range(3)
            )
        else:
            results.extend(json.loads(text))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until(lambda: engine.in_flight("fork_1"))
        assert await call(http, url, "POST", "/abort_request", {"rid": "fork_1"}) == (200, "")
    reasons = [r["meta_info"]["finish_reason"]["type"] for r in results]
    assert reasons == ["length", "abort", "length"]
    assert [len(results[i]["output_ids"]) for i in (0, 2)] == [60, 60]
    assert 0 < len(results[1]["output_ids"]) < 100000
    assert engine.stats.aborted == 1


async def test_closing_a_stream_aborts_the_request(slow_server: Any) -> None:
    url, engine, http = slow_server
    resp = await http.post(url + "/generate", json={**LONG, "stream": True})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await wait_until(lambda: engine.stats.aborted == 1)
    assert engine.stats.in_flight == 0


async def test_disconnecting_from_a_non_stream_request_aborts_it(slow_server: Any) -> None:
    url, engine, http = slow_server
    with anyio.move_on_after(0.05):
        await generate(http, url, LONG)
    await wait_until(lambda: engine.stats.aborted == 1)
    assert engine.stats.in_flight == 0


async def test_duplicate_rids_in_flight_are_refused(slow_server: Any) -> None:
    url, engine, http = slow_server
    async with anyio.create_task_group() as tg:
        tg.start_soon(generate, http, url, {**LONG, "rid": "dup"})
        await wait_until(lambda: engine.in_flight("dup"))
        status, text = await call(http, url, "POST", "/generate", {**LONG, "rid": "dup"})
        assert (status, json.loads(text)) == (
            400,
            {"error": {"message": "Duplicate request ID detected: dup"}},
        )
        engine.abort("dup")


async def test_injected_errors_resets_and_stalls() -> None:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 3}}
    async with aiohttp.ClientSession() as http:
        async with running_server(
            TASK, SimConfig(faults=Faults(error_rate=1.0, error_status=503))
        ) as url:
            status, text = await call(http, url, "POST", "/generate", body)
            assert status == 503 and "simulated" in json.loads(text)["error"]["message"]
            assert await call(http, url, "GET", "/health") == (200, "")  # only generation fails
        async with running_server(TASK, SimConfig(faults=Faults(reset_rate=1.0))) as url:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await call(http, url, "POST", "/generate", body)
            async with http.post(url + "/generate", json={**body, "stream": True}) as resp:
                await resp.content.readuntil(b"\n\n")  # the first chunk arrives, then the reset
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
        engine = SimEngine(TASK, SimConfig(faults=Faults(stall_rate=1.0, stall_s=60)))
        async with running_server(engine=engine) as url:
            with pytest.raises(TimeoutError):
                async with http.post(
                    url + "/generate", json=body, timeout=aiohttp.ClientTimeout(total=0.2)
                ):
                    pass
            assert engine.stats.faults == 1


async def test_a_busy_port_is_a_serve_error() -> None:
    async with running_server(TASK) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(
            ServeError,
            match=f"port {port} on 127.0.0.1 is already in use; choose another with --port",
        ):
            async with running_server(TASK, port=port):
                pass


async def test_stopping_the_server_aborts_what_is_in_flight() -> None:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.01)))
    results: list[Any] = []

    async def run(http: aiohttp.ClientSession, url: str) -> None:
        results.append(await generate(http, url, LONG))

    with anyio.fail_after(20):  # a guard against hanging, not a timing assertion
        # Exits run inner first: the server stops while the request is still in flight.
        async with (
            aiohttp.ClientSession() as http,
            anyio.create_task_group() as tg,
            running_server(engine=engine) as url,
        ):
            tg.start_soon(run, http, url)
            await wait_until(lambda: engine.stats.in_flight == 1)
    assert results[0]["meta_info"]["finish_reason"]["type"] == "abort"
    assert engine.stats.aborted == 1
