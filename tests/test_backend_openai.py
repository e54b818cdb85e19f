"""OpenAIBackend against real loopback servers: the simulator's /v1 (SGLang's dialect), a fake
vLLM (vLLM's documented dialect, translated onto the simulator), and fakes for what no real
server here does (lying about tokens, refusing keys, offering no token ids at all).

The llama-cpp-python server and sglang-router tests are in test_backend_openai_servers.py; the
real SGLang /v1 in tests/sglang_tier/test_openai_real.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

from ttcdsl.args import bind_args
from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.errors import (
    BackendError,
    BackendUnavailable,
    NodeFailed,
    ProtocolViolation,
    TransientBackendError,
    UsageError,
)
from ttcdsl.launch import TTC, free_port
from ttcdsl.runtime.backend import GenRequest, GenResult, Sampling
from ttcdsl.runtime.backends._openai_wire import recover_stop
from ttcdsl.runtime.backends.factory import BackendOptions, make_backend
from ttcdsl.runtime.backends.openai import OpenAIBackend
from ttcdsl.runtime.backends.sglang import SGLangBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import Faults, Latency, SimConfig, SimEngine, load_task
from ttcdsl.runtime.sim.server import running_server

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
TASK = load_task(REPO / "data" / "tasks" / "demo.json")
QUESTION = "What is 17 + 25?"
PROMPT = f"{QUESTION}\nSolve step by step; separate steps with a blank line.\n"
EOS = 2  # the simulator's <|im_end|>


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def sim(config: SimConfig | None = None) -> AsyncIterator[tuple[str, SimEngine]]:
    engine = SimEngine(TASK, config or SimConfig(cache_report=True))
    async with running_server(engine=engine) as url:
        yield url, engine


def req(ids: list[int], max_new_tokens: int = 40, rid: str = "t", **kwargs: Any) -> GenRequest:
    sampling = {k: kwargs.pop(k) for k in ("temperature", "seed", "stop") if k in kwargs}
    sampling.setdefault("temperature", 0.7)
    sampling.setdefault("seed", 1)
    return GenRequest(rid=rid, input_ids=tuple(ids),
                      sampling=Sampling(max_new_tokens=max_new_tokens, **sampling), **kwargs)


def same(a: GenResult, b: GenResult) -> None:
    """The same generation (prompt and cache accounting aside)."""
    assert (a.text, a.output_ids, a.finish, a.matched, a.completion_tokens) == (
        b.text, b.output_ids, b.finish, b.matched, b.completion_tokens)
    assert (a.logprobs, a.top_logprobs) == (b.logprobs, b.top_logprobs)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


# --- the simulator's /v1 (SGLang's dialect) -------------------------------------------------------


async def test_start_up_learns_what_the_simulator_serves() -> None:
    async with sim() as (url, _), OpenAIBackend(url) as backend:
        p = backend.profile
        assert (p.model, p.kind, p.tokenize, p.forks) == ("ttc-sim", "sglang", "/tokenize", "warm")
        assert p.prompt_ids and p.token_ids and p.stop_field == "matched_stop" and p.abort_by_rid
        assert backend.info.name == "openai" and backend.info.model == "ttc-sim"
        assert not backend.batches


async def test_the_fork_policy_can_be_chosen() -> None:
    async with sim() as (url, engine), OpenAIBackend(url, forks="n") as backend:
        assert backend.profile.forks == "n" and backend.batches
        ids = await backend.tokenize(PROMPT)
        before = engine.stats.requests
        results = await backend.generate_batch([req(ids, seed=s) for s in range(4)])
        # One n=4 request: the simulator (like SGLang) prefills its prompt once, then samples.
        assert len(results) == 4 and engine.stats.requests - before == 1 + 4
        assert results[0].prompt_tokens == len(ids) and results[3].prompt_tokens == 0
    async with sim() as (url, engine), OpenAIBackend(url, forks="serial") as backend:
        before = engine.stats.requests
        assert (await backend.warm(await backend.tokenize(PROMPT))).prompt_tokens == 0
        assert engine.stats.requests == before


@pytest.mark.parametrize("shape", [
    {"stop": ("\n\n",)},
    {"stop": ("\n\n",), "stream": True},
    {"max_new_tokens": 2000},
    {"max_new_tokens": 5, "logprobs": True},
    {"max_new_tokens": 3, "temperature": 0.0, "top_logprobs": 3},
    {"stop": (" of",), "logprobs": True, "stream": True},
])  # fmt: skip
async def test_generations_match_the_native_sglang_backend(shape: dict[str, Any]) -> None:
    """Same seed, same engine: /v1/completions gives what /generate gives, ids included."""
    async with sim() as (url, _), OpenAIBackend(url) as ours, SGLangBackend(url) as native:
        ids = await ours.tokenize(PROMPT)
        assert ids == await native.tokenize(PROMPT)
        first = await ours.generate(req(ids, **shape))
        same(first, await native.generate(req(ids, **shape)))
        # A continuation from the exact ids of prompt + generation.
        more = req([*ids, *first.output_ids], **{**shape, "seed": 2})
        same(await ours.generate(more), await native.generate(more))
    if shape.get("stop") and first.finish == "stop":
        assert first.text.endswith(first.matched)  # the stop string stays in the text
    if shape.get("max_new_tokens") == 2000:
        assert (first.finish, first.matched) == ("eos", EOS)


async def test_prompt_and_cached_tokens_are_the_servers_report() -> None:
    async with sim() as (url, _), OpenAIBackend(url) as backend:
        ids = await backend.tokenize(PROMPT)
        warm = await backend.warm(ids)
        assert (warm.prompt_tokens, warm.cached_tokens) == (len(ids), 0)
        fork = await backend.generate(req(ids))
        assert (fork.prompt_tokens, fork.cached_tokens) == (len(ids), len(ids) - 1)
    async with sim(SimConfig()) as (url, _), OpenAIBackend(url) as backend:
        ids = await backend.tokenize(PROMPT)
        await backend.warm(ids)
        assert (await backend.generate(req(ids))).cached_tokens == 0  # not reported: zero


@pytest.mark.parametrize("stream", [False, True])
async def test_cancelling_aborts_the_request_on_the_server(stream: bool) -> None:
    async with sim(SimConfig(latency=Latency(decode_s=0.5))) as (url, engine), \
            OpenAIBackend(url) as backend:
        ids = await backend.tokenize(PROMPT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.generate, req(ids, 10_000, stream=stream))
            await until(lambda: engine.stats.in_flight == 1)
            tg.cancel_scope.cancel()
        await until(lambda: engine.stats.in_flight == 0)
    assert engine.stats.aborted == 1


@pytest.mark.parametrize(("faults", "error", "words"), [
    (Faults(error_rate=1.0, error_status=503), TransientBackendError, "HTTP 503"),
    (Faults(error_rate=1.0, error_status=429), TransientBackendError, "HTTP 429"),
    (Faults(error_rate=1.0, error_status=400), BackendError, "rejected POST /v1/completions"),
    (Faults(reset_rate=1.0), TransientBackendError, "lost the connection"),
])  # fmt: skip
async def test_server_failures_are_transient_or_permanent(
    faults: Faults, error: type[Exception], words: str
) -> None:
    async with sim() as (url, engine), OpenAIBackend(url) as backend:
        ids = await backend.tokenize(PROMPT)
        engine.config = msgspec.structs.replace(engine.config, faults=faults)  # after start-up
        with pytest.raises(error, match=words) as caught:
            await backend.generate(req(ids, stream=faults.reset_rate > 0))
    assert "\n" not in str(caught.value)
    if error is BackendError:
        assert not isinstance(caught.value, TransientBackendError)
        assert "simulated server fault" in str(caught.value)


async def test_rewards_are_the_simulators_prm_scores() -> None:
    async with sim() as (url, engine), OpenAIBackend(url) as backend:
        texts = [PROMPT + "Step 1 of 3: we now have 42.\n\n", PROMPT + "Step 1 of 3: 32.\n\n"]
        assert await backend.reward(texts) == engine.reward(texts)
        assert await backend.reward([]) == []


async def test_a_strategy_runs_as_on_the_native_backend() -> None:
    """Beam search with a seed: same answer, same tokens, as through SGLang's native API."""
    plan = compile_file(str(REPO / "programs" / "beam_search.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": QUESTION, "depth": "3"})
    results = []
    for make in (OpenAIBackend, SGLangBackend):
        async with sim() as (url, engine), make(url) as backend:
            results.append(await run_plan(plan, backend, values, RunOptions(seed=5)))
        assert engine.stats.in_flight == 0
    ours, native = results
    assert ours.usage.completion_tokens == native.usage.completion_tokens
    assert [b.text for b in ours.value.items] == [b.text for b in native.value.items]


async def test_the_budget_caps_what_the_server_reports() -> None:
    plan = compile_file(str(REPO / "programs" / "self_consistency.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": QUESTION})
    async with sim() as (url, _), OpenAIBackend(url) as backend:
        result = await run_plan(plan, backend, values, RunOptions(seed=3, budget=300))
    assert result.budget_exhausted and 0 < result.usage.completion_tokens <= 300


# --- start-up refusals ----------------------------------------------------------------------------


@asynccontextmanager
async def serve(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
                ) -> AsyncIterator[str]:
    """An aiohttp app on 127.0.0.1 answering ``routes`` ("METHOD /path" -> handler)."""
    app = web.Application()
    for key, handler in routes.items():
        method, path = key.split()
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def answer(body: Any, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)
    return handler


MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "acme"}]}


async def test_an_unreachable_url_is_one_line_naming_what_was_tried() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable) as caught:
        async with OpenAIBackend(url):
            pass
    message = str(caught.value)
    assert "\n" not in message and url in message and "tried GET /v1/models" in message


@pytest.mark.parametrize(("routes", "words"), [
    ({}, "does not look OpenAI-compatible (GET /v1/models: HTTP 404"),
    ({"GET /v1/models": answer({"error": {"message": "bad key"}}, 401)},
     "refused GET /v1/models (HTTP 401: bad key); pass its API key with --api-key-env VAR"),
    ({"GET /v1/models": answer({"data": [{"id": "a"}, {"id": "b"}]})},
     "serves 2 models (a, b); choose one with --model NAME"),
    ({"GET /v1/models": answer(MODELS)},
     "does not look OpenAI-compatible (POST /v1/completions of one test token: HTTP 404"),
    ({"GET /v1/models": answer(MODELS), "POST /v1/completions": answer(
        {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})},
     "returns no generated token ids (return_token_ids) and has no tokenize route"),
])  # fmt: skip
async def test_servers_that_cannot_serve_strategies_are_refused_in_one_line(
    routes: dict[str, Any], words: str
) -> None:
    async with serve(routes) as url:
        with pytest.raises(BackendUnavailable) as caught:
            async with OpenAIBackend(url):
                pass
    assert words in str(caught.value) and "\n" not in str(caught.value)


async def test_an_unknown_model_names_the_served_ones() -> None:
    async with sim() as (url, _):
        with pytest.raises(BackendUnavailable, match="does not serve --model 'gpt-9'; it serves ttc-sim"):
            async with OpenAIBackend(url, model="gpt-9"):
                pass
        async with OpenAIBackend(url, model="ttc-sim") as backend:
            assert backend.info.model == "ttc-sim"


def test_bad_options_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="--backend openai needs --url"):
        make_backend(BackendOptions(backend="openai"))
    monkeypatch.delenv("TTC_TEST_KEY", raising=False)
    with pytest.raises(UsageError, match="--api-key-env TTC_TEST_KEY: that environment variable is not set"):
        make_backend(BackendOptions(backend="openai", url="http://x", api_key_env="TTC_TEST_KEY"))
    with pytest.raises(UsageError, match="--api-key-env is for --backend openai"):
        make_backend(BackendOptions(backend="sglang", url="http://x", api_key_env="TTC_TEST_KEY"))
    with pytest.raises(UsageError, match="timeout must be a positive"):
        OpenAIBackend("http://x", timeout=0)
    with pytest.raises(UsageError, match="--url must be an http"):
        OpenAIBackend("ftp://x")
    monkeypatch.setenv("TTC_TEST_KEY", "sekret")
    backend = make_backend(BackendOptions(backend="openai", url="x:1", api_key_env="TTC_TEST_KEY",
                                          model="m"))
    assert isinstance(backend, OpenAIBackend) and backend.info.model == "m"


async def test_using_the_backend_outside_async_with_is_an_error() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1")
    with pytest.raises(BackendError, match="outside `async with`"):
        await backend.tokenize("a")
    with pytest.raises(UsageError, match="forks must be warm, n or serial"):
        OpenAIBackend("http://127.0.0.1:1", forks="all")


def test_the_cli_reports_a_dead_server_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([*TTC, "run", str(REPO / "programs" / "self_consistency.ttc"),
                           "--backend", "openai", "--url", url, "--arg", f"question={QUESTION}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert any(f"cannot reach an OpenAI-compatible server at {url}" in line for line in lines)
    assert "Traceback" not in proc.stderr


# --- vLLM's dialect (a fake translating onto the simulator) ---------------------------------------


class FakeVLLM:
    """vLLM's OpenAI server as documented (v0.10.2+), answered by the simulator behind it:
    ``owned_by: vllm``; ``/tokenize`` and ``/detokenize`` (which names its text "prompt");
    ``include_stop_str_in_output`` and ``stop_reason`` (None for end-of-sequence);
    ``return_token_ids``; ``n`` fanned out into child requests seeded seed + i; ``/pooling``
    with a process reward model's per-step rows ``[P(bad), P(good)]``; an API key when
    ``key`` is set.  ``completions`` counts the completion requests; ``extra_tokens`` makes it
    report more completion tokens than it produced."""

    def __init__(self, sim_url: str, key: str | None = None) -> None:
        self.sim_url, self.key = sim_url, key
        self.completions = 0
        self.extra_tokens = 0
        self.bodies: list[dict[str, Any]] = []

    def routes(self) -> dict[str, Any]:
        return {"GET /v1/models": self.models, "POST /tokenize": self.tokenize,
                "POST /detokenize": self.detokenize, "POST /v1/completions": self.complete,
                "POST /pooling": self.pooling}

    async def _sim(self, path: str, body: Any) -> Any:
        async with aiohttp.ClientSession() as http, http.post(self.sim_url + path, json=body) as r:
            return await r.json()

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return None

    async def models(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(
            {"object": "list", "data": [{"id": "vllm-model", "object": "model", "owned_by": "vllm"}]})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        out = await self._sim("/tokenize", {"prompt": body["prompt"]})
        return self._refused(request) or web.json_response(
            {"count": out["count"], "max_model_len": 8192, "tokens": out["tokens"], "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        out = await self._sim("/detokenize", {"tokens": body["tokens"], "skip_special_tokens": False})
        return self._refused(request) or web.json_response({"prompt": out["text"]})

    async def complete(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        body = await request.json()
        self.completions += 1
        self.bodies.append(dict(body))
        assert "no_stop_trim" not in body and "rid" not in body  # vLLM would ignore them
        n = body.pop("n", 1)
        seed = body.get("seed")
        child = {**body, "no_stop_trim": body.pop("include_stop_str_in_output", False)}
        outs = [await self._sim("/v1/completions", {**child, "seed": None if seed is None else seed + i})
                for i in range(n)]
        choices = []
        for i, out in enumerate(outs):
            (choice,) = out["choices"]
            matched = choice.pop("matched_stop")
            choices.append({**choice, "index": i,
                            "stop_reason": matched if isinstance(matched, str) else None})
        usage = outs[0]["usage"]
        usage["completion_tokens"] = sum(o["usage"]["completion_tokens"] for o in outs)
        usage["completion_tokens"] += self.extra_tokens
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "model": "vllm-model",
                                  "choices": choices, "usage": usage})

    async def pooling(self, request: web.Request) -> web.Response:
        body = await request.json()
        scores = [item["embedding"][0] for item in await self._sim("/classify", {"text": body["input"]})]
        data = [{"index": i, "object": "pooling", "data": [[0.5, 0.5], [1 - s, s]]}
                for i, s in enumerate(scores)]
        return web.json_response({"object": "list", "data": data})


@asynccontextmanager
async def vllm(key: str | None = None) -> AsyncIterator[tuple[str, FakeVLLM, SimEngine]]:
    async with sim() as (sim_url, engine):
        fake = FakeVLLM(sim_url, key)
        async with serve(fake.routes()) as url:
            yield url, fake, engine


async def test_vllm_forks_go_out_as_n_requests_seeded_seed_plus_i() -> None:
    async with vllm() as (url, fake, _), OpenAIBackend(url) as backend:
        p = backend.profile
        assert (p.kind, p.forks, p.stop_field, p.tokenize) == ("vllm", "n", "stop_reason", "/tokenize")
        assert backend.batches and not p.abort_by_rid
        ids = await backend.tokenize(PROMPT)
        before = fake.completions
        warm = await backend.warm(ids)  # n prefills the prompt once: no warm-up is sent
        assert (warm.prompt_tokens, warm.cached_tokens, fake.completions) == (0, 0, before)
        forks = [req(ids, seed=s, stop=("\n\n",)) for s in (10, 99, 7)]
        other = req(await backend.tokenize(QUESTION), seed=3)
        before = fake.completions
        results = await backend.generate_batch([*forks, other])
        assert fake.completions - before == 2  # one n=3 request, one single
        for i, result in enumerate(results[:3]):
            same(result, await backend.generate(req(ids, seed=10 + i, stop=("\n\n",))))
        assert results[0].prompt_tokens == len(ids) and results[1].prompt_tokens == 0
        assert all(r.finish in ("stop", "eos", "length") for r in results)


async def test_vllm_stop_reasons_and_detokenize() -> None:
    async with vllm() as (url, fake, _), OpenAIBackend(url) as backend:
        ids = await backend.tokenize(PROMPT)
        stopped = await backend.generate(req(ids, stop=("\n\n",), seed=4))
        assert (stopped.finish, stopped.matched) == ("stop", "\n\n")
        assert stopped.text.endswith("\n\n")
        assert fake.bodies[-1]["include_stop_str_in_output"] is True
        ended = await backend.generate(req(ids, 2000, seed=4))
        assert (ended.finish, ended.matched) == ("eos", EOS)  # None from vLLM: the last id
        assert await backend.detokenize(ids[:5]) == await backend.detokenize(list(ids[:5]))


async def test_vllm_pooling_scores_the_newest_step() -> None:
    async with vllm() as (url, _, engine), OpenAIBackend(url) as backend:
        texts = [PROMPT + "Step 1 of 3: we now have 42.\n\n", PROMPT + "Step 1 of 3: 32.\n\n"]
        assert await backend.reward(texts) == pytest.approx(engine.reward(texts))


async def test_an_api_key_goes_out_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with vllm(key="sekret") as (url, _, _):
        with pytest.raises(BackendUnavailable, match=r"HTTP 401: Unauthorized.*--api-key-env VAR"):
            async with OpenAIBackend(url):
                pass
        async with OpenAIBackend(url, api_key="sekret") as backend:
            assert (await backend.generate(req(await backend.tokenize(PROMPT), 4))).completion_tokens == 4
        monkeypatch.setenv("TTC_TEST_KEY", "sekret")
        opts = BackendOptions(backend="openai", url=url, api_key_env="TTC_TEST_KEY")
        async with make_backend(opts) as backend:
            assert backend.info.model == "vllm-model"


async def test_more_tokens_than_allowed_is_a_protocol_violation() -> None:
    async with vllm() as (url, fake, _), OpenAIBackend(url) as backend:
        fake.extra_tokens = 1
        with pytest.raises(ProtocolViolation, match="returned 5 completion tokens but max_tokens was 4"):
            await backend.generate(req(await backend.tokenize(PROMPT), 4))


async def test_self_consistency_on_vllm_sends_one_request_per_step() -> None:
    plan = compile_file(str(REPO / "programs" / "self_consistency.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": QUESTION, "n": "8"})
    async with vllm() as (url, fake, _), OpenAIBackend(url) as backend:
        before = fake.completions
        result = await run_plan(plan, backend, values, RunOptions(seed=2))
    assert fake.completions - before == 1 and fake.bodies[-1]["n"] == 8
    assert result.value.value in TASK.problems[0].answers and result.usage.completion_tokens > 0


# --- a text-only server that cuts stop strings (llama-cpp-python's dialect, scripted) ------------


TOY_VOCAB = ["\n\n", "\n", " is", "Step", " 1", " 2", ".", "ab", "a", "b", " "]


def toy_tokens(text: str) -> list[int]:
    """Greedy longest-match over `TOY_VOCAB` (so "\\n" + "\\n" merges into "\\n\\n"); any
    other character is a token of its own (id 100 + its code point)."""
    ids = []
    while text:
        words = [w for w in TOY_VOCAB if text.startswith(w)]
        word = max(words, key=len) if words else text[0]
        ids.append(TOY_VOCAB.index(word) if words else 100 + ord(word))
        text = text[len(word):]
    return ids


def toy_text(ids: list[int]) -> str:
    return "".join(TOY_VOCAB[i] if i < 100 else chr(i - 100) for i in ids)


class FakeLlama:
    """llama-cpp-python's server as it behaves (text prompts only, ``/extras/tokenize``, no ids
    back, stop strings cut off and unnamed, token texts in logprobs), with scripted generations:
    each completion answers the next (generated pieces, ended by EOS?) of ``script``."""

    def __init__(self) -> None:
        self.script: list[tuple[list[str], bool]] = []
        self.prompts: list[str] = []

    def routes(self) -> dict[str, Any]:
        return {"GET /v1/models": answer({"data": [{"id": "toy.gguf", "owned_by": "me"}]}),
                "POST /extras/tokenize": self.tokenize, "POST /extras/detokenize": self.detokenize,
                "POST /v1/completions": self.complete}

    async def tokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"tokens": toy_tokens((await request.json())["input"])})

    async def detokenize(self, request: web.Request) -> web.Response:
        ids = (await request.json())["tokens"]
        return web.json_response({"text": toy_text(ids)})

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body["prompt"], str):
            return web.json_response({"error": {"message": "Input should be a valid string"}}, status=500)
        self.prompts.append(body["prompt"])
        pieces, eos = self.script.pop(0) if self.script else (["a"], False)
        whole, stops = "".join(pieces), body.get("stop") or []
        present = [s for s in stops if s in whole]
        text = whole[: whole.index(present[0])] if present else whole
        finish = "stop" if present or eos else "length"
        logprobs = None
        if body.get("logprobs") is not None:
            logprobs = {"tokens": pieces, "token_logprobs": [-0.5] * len(pieces),
                        "top_logprobs": [{p: -0.5} for p in pieces], "text_offset": [0] * len(pieces)}
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
        usage = {"prompt_tokens": len(toy_tokens(body["prompt"])), "completion_tokens": len(pieces)}
        return web.json_response({"choices": [choice], "usage": usage})


async def test_a_text_only_server_gets_checked_text_and_stops_are_recovered() -> None:
    fake = FakeLlama()
    async with serve(fake.routes()) as url, OpenAIBackend(url) as backend:
        p = backend.profile
        assert (p.kind, p.prompt_ids, p.token_ids, p.stop_field, p.forks) == (
            "llama-cpp-python", False, False, None, "serial")
        ids = await backend.tokenize("Step 1 is")
        fake.script = [(["Step", " 2", ".", "\n\n"], False),  # the step string ends it
                       (["Step", " 2", "."], True),  # end-of-sequence: nothing was cut
                       (["a", " 2", "."], False),  # the second stop string
                       (["ab", " 1"], False)]
        step = await backend.generate(req(ids, stop=("\n\n",)))
        assert (step.finish, step.matched, step.text) == ("stop", "\n\n", "Step 2.\n\n")
        assert step.completion_tokens == 4 and step.output_ids == toy_tokens("Step 2.\n\n")
        eos = await backend.generate(req([*ids, *step.output_ids], stop=("\n\n",)))
        assert (eos.finish, eos.matched, eos.text) == ("eos", None, "Step 2.")
        assert fake.prompts[-1] == "Step 1 isStep 2.\n\n"  # the text of exactly those ids
        second = await backend.generate(req(ids, stop=("\n\n", " 2.")))
        assert (second.finish, second.matched, second.text) == ("stop", " 2.", "a 2.")
        plain = await backend.generate(req(ids, 2))
        assert (plain.finish, plain.text) == ("length", "ab 1")


async def test_a_generation_merged_with_the_prompt_cannot_be_continued_exactly() -> None:
    fake = FakeLlama()
    async with serve(fake.routes()) as url, OpenAIBackend(url) as backend:
        ids = await backend.tokenize("a\n")
        fake.script = [(["\n", "b"], False)]  # "a\n" + "\nb" tokenizes as "a", "\n\n", "b"
        merged = await backend.generate(req(ids, 2))
        assert merged.output_ids == toy_tokens("\nb")  # the text's own ids
        with pytest.raises(BackendError, match="cannot be continued from its exact tokens") as caught:
            await backend.generate(req([*ids, *merged.output_ids], 2))
        assert "takes prompts as text only" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("pieces", "text", "stops", "whole", "matched"), [
    (["a", "b"], "ab", ("x",), "ab", None),
    (["a", "\n\n", "b"], "a", ("\n\n",), "a\n\nb", "\n\n"),
    (["a", ".\n", "\n"], "a.", ("\n\n", "."), "a.\n\n", "\n\n"),  # the first stop in list order
    (["1", "", "=", "\n\n"], "1∑=", ("\n\n",), "1∑=\n\n", "\n\n"),  # "∑" split over two tokens
])  # fmt: skip
def test_recover_stop_rebuilds_the_text_and_names_the_stop(
    pieces: list[str], text: str, stops: tuple[str, ...], whole: str, matched: str | None
) -> None:
    assert recover_stop("u", text, pieces, stops) == (whole, matched)


@pytest.mark.parametrize(("pieces", "text"), [(["a"], "b"), (["a", "zz"], "a")])
def test_recover_stop_refuses_pieces_that_do_not_fit(pieces: list[str], text: str) -> None:
    with pytest.raises(ProtocolViolation):
        recover_stop("u", text, pieces, ("\n",))


# --- streams --------------------------------------------------------------------------------------


class ScriptedStreams(FakeVLLM):
    """The fake vLLM, except that a streamed completion answers the events in ``events``."""

    def __init__(self, sim_url: str) -> None:
        super().__init__(sim_url)
        self.events: list[Any] = []

    async def complete(self, request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return await super().complete(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in self.events:
            data = event if isinstance(event, str) else json.dumps(event)
            await resp.write(f"data: {data}\n\n".encode())
        return resp


async def test_stream_error_events_and_early_ends() -> None:
    async with sim() as (sim_url, _):
        fake = ScriptedStreams(sim_url)
        async with serve(fake.routes()) as url, OpenAIBackend(url) as backend:
            ids = await backend.tokenize(PROMPT)
            chunk = {"choices": [{"index": 0, "text": "x", "token_ids": [5]}]}
            fake.events = [chunk, "[DONE]"]
            with pytest.raises(TransientBackendError, match="before the generation finished"):
                await backend.generate(req(ids, stream=True))
            fake.events = [chunk, {"error": {"message": "boom", "code": 400}}, "[DONE]"]
            with pytest.raises(BackendError, match="failed POST /v1/completions: boom"):
                await backend.generate(req(ids, stream=True))
            fake.events = [chunk, {"error": {"message": "busy", "code": 503}}, "[DONE]"]
            with pytest.raises(TransientBackendError, match="failed the request: busy"):
                await backend.generate(req(ids, stream=True))


class FakeRouter(FakeLlama):
    """sglang-router's /v1 as it behaves here (text prompts only, no tokenize route), answering
    the generated ``token_ids`` and the ``prompt_token_ids`` it tokenized, and naming the stop."""

    def routes(self) -> dict[str, Any]:
        return {"GET /v1/models": answer({"data": [{"id": "toy", "owned_by": "local"}]}),
                "POST /v1/completions": self.complete}

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body["prompt"], str):
            return web.json_response({"error": "prompt: data did not match"}, status=422)
        self.prompts.append(body["prompt"])
        pieces, _ = self.script.pop(0) if self.script else (["a"], False)
        ids = [toy_tokens(p)[0] for p in pieces]  # the model's own tokens, one per piece
        choice = {"index": 0, "text": "".join(pieces), "finish_reason": "length",
                  "matched_stop": None, "token_ids": ids,
                  "prompt_token_ids": toy_tokens(body["prompt"])}
        usage = {"prompt_tokens": len(choice["prompt_token_ids"]), "completion_tokens": len(ids)}
        return web.json_response({"choices": [choice], "usage": usage})


async def test_a_text_prompt_tokenized_otherwise_is_refused_from_the_answer() -> None:
    fake = FakeRouter()
    async with serve(fake.routes()) as url, OpenAIBackend(url) as backend:
        p = backend.profile
        assert (p.kind, p.prompt_ids, p.token_ids, p.tokenize) == ("sglang-router", False, True, None)
        ids = await backend.tokenize("a\n")  # from a completion's prompt_token_ids
        assert ids == toy_tokens("a\n")
        fake.script = [(["\n", "b"], False), (["a"], False)]
        first = await backend.generate(req(ids, 2))
        assert first.output_ids == [TOY_VOCAB.index("\n"), TOY_VOCAB.index("b")]
        sent = len(fake.prompts)
        with pytest.raises(BackendError, match="cannot be continued from its exact tokens"):
            await backend.generate(req([*ids, *first.output_ids], 2))
        assert fake.prompts[sent:] == ["a\n\nb"]  # one request, checked from its answer


# --- answers that are not JSON, and thinking tags ------------------------------------------------


PROXY_PAGE = b"<!doctype html><html><title>502 Bad Gateway</title><body>nginx</body></html>"
NOT_JSON = "with text/html, not JSON or an event stream (is a proxy in the way?): <!doctype html>"


async def proxy_page(request: web.Request) -> web.Response:
    return web.Response(body=PROXY_PAGE, content_type="text/html")


@asynccontextmanager
async def proxied(sim_url: str, page: Callable[[str, Any], bool]) -> AsyncIterator[str]:
    """A proxy in front of the simulator that answers its HTML page when ``page(path, body)``."""
    async def forward(request: web.Request) -> web.Response:
        raw = await request.read()
        if page(request.path, json.loads(raw) if raw else None):
            return await proxy_page(request)
        async with aiohttp.ClientSession() as http, http.request(
                request.method, sim_url + request.path, data=raw,
                headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    routes = ["GET /v1/models", "POST /tokenize", "POST /detokenize", "POST /v1/completions"]
    async with serve(dict.fromkeys(routes, forward)) as url:
        yield url


async def test_a_proxy_page_at_start_up_is_one_line() -> None:
    async with serve({"GET /v1/models": proxy_page}) as url:
        with pytest.raises(BackendUnavailable) as caught:
            async with OpenAIBackend(url):
                pass
    assert str(caught.value).startswith(
        f"the OpenAI-compatible server at {url} answered GET /v1/models {NOT_JSON}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("path", "what"), [
    ("/v1/completions", "POST /v1/completions"),
    ("/tokenize", "POST /tokenize"),
])  # fmt: skip
async def test_a_proxy_page_after_start_up_is_one_line(path: str, what: str) -> None:
    def page(asked: str, body: Any) -> bool:
        # Start-up's probes (one token, the text "Hello") pass; later requests get the page.
        return asked == path and body.get("max_tokens", 2) > 1 and body.get("prompt") != "Hello"

    async with sim() as (sim_url, _), proxied(sim_url, page) as url, OpenAIBackend(url) as backend:
        with pytest.raises(BackendError) as caught:
            await backend.generate(req(await backend.tokenize(PROMPT)))
    assert not isinstance(caught.value, TransientBackendError)
    assert str(caught.value).startswith(
        f"the OpenAI-compatible server at {url} answered {what} {NOT_JSON}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("task", "tags"), [
    ("math_reasoning.json", ("<think>", "</think>")),
    ("demo.json", None),
])  # fmt: skip
async def test_a_sglang_server_tells_its_thinking_tags(task: str, tags: Any) -> None:
    engine = SimEngine(load_task(REPO / "data" / "tasks" / task), SimConfig())
    async with running_server(engine=engine) as url, OpenAIBackend(url) as backend:
        assert backend.profile.kind == "sglang"
        assert await backend.think_tags() == tags


async def test_vllm_tells_no_thinking_tags_so_a_thinking_step_names_think_tags() -> None:
    plan = compile_source(THINKING, "t.ttc").plan
    async with vllm() as (url, _, _), OpenAIBackend(url) as backend:
        assert await backend.think_tags() is None
        with pytest.raises(NodeFailed) as caught:
            await run_plan(plan, backend, {"q": PROMPT}, RunOptions(seed=1))
    assert str(caught.value).startswith(
        "t.ttc:3:12: `think_max` needs the model's thinking tags, and the openai backend cannot "
        "tell them for model 'vllm-model'; pass --think-tags OPEN,CLOSE")
    async with vllm() as (url, _, _), OpenAIBackend(url) as backend:
        done = await run_plan(plan, backend, {"q": PROMPT},
                              RunOptions(seed=1, think_tags=("Step", "\n\n")))
    assert done.usage.thinking_tokens > 0


THINKING = """strategy s(q: text) {
    budget 2000 tokens
    return sample 1 from q with think_max = 40, max_tokens = 20
}"""
