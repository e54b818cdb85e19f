"""The engine: cached tokens as SGLang reports them, stop/length/EOS handling, counters,
abort, the batch-size limit, latency and faults."""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel
import pytest

from ttcdsl.runtime.sim import ConfigError, Faults, Latency, SimConfig, SimEngine, SimTask
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest, SimRequestError
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

pytestmark = pytest.mark.anyio

Q = "What is 17 + 25?"
PROMPT = f"You are a careful solver. Solve step by step.\nProblem: {Q}\n"
TASK = SimTask.from_dict(
    {
        "problems": [
            {
                "question": Q,
                "answer": "42",
                "answers": {"42": 0.45, "32": 0.35, "41": 0.2},
                "steps": [2, 4],
                "step_tokens": [16, 24],
            }
        ]
    }
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_serial = 0


def req(ids: list[int], **over: object) -> EngineRequest:
    global _serial
    _serial += 1
    fields: dict[str, object] = {
        "rid": f"r{_serial}",
        "input_ids": list(ids),
        "max_new_tokens": 500,
    }
    fields.update(over)
    return EngineRequest(**fields)  # type: ignore[arg-type]


IDS = tokenizer.encode(PROMPT)


# ---------------------------------------------------------------- cached tokens


async def test_the_same_prompt_twice_hits_all_but_its_last_token() -> None:
    engine = SimEngine(TASK)
    first = await engine.execute(req(IDS, max_new_tokens=4, temperature=0))
    second = await engine.execute(req(IDS, max_new_tokens=4, temperature=0))
    assert (first.cached_tokens, second.cached_tokens) == (0, len(IDS) - 1)
    stats = engine.stats
    assert stats.requests == 2
    assert stats.prompt_tokens == 2 * len(IDS)
    assert stats.cached_tokens == len(IDS) - 1
    assert stats.prefill_tokens == len(IDS) + 1


async def test_forks_after_a_warm_up_hit_the_whole_prefix() -> None:
    engine = SimEngine(TASK)
    warm = await engine.execute(req(IDS, max_new_tokens=0))
    assert warm.finish == {"type": "length", "length": 0} and warm.output_ids == []
    outs: list[EngineOutput] = []

    async def fork(seed: int) -> None:
        outs.append(await engine.execute(req(IDS, seed=seed, stop=("\n\n",))))

    async with anyio.create_task_group() as tg:
        for seed in range(4):
            tg.start_soon(fork, seed)
    assert [o.cached_tokens for o in outs] == [len(IDS) - 1] * 4
    assert engine.stats.prefill_tokens == len(IDS) + 4
    assert engine.stats.warm_requests == 1


async def test_a_different_last_token_hits_up_to_the_divergence() -> None:
    engine = SimEngine(TASK)
    await engine.execute(req(tokenizer.encode("Question one:"), max_new_tokens=1))
    out = await engine.execute(req(tokenizer.encode("Question two:"), max_new_tokens=1))
    assert out.cached_tokens == len(tokenizer.encode("Question"))


async def test_a_finished_branch_is_cached_for_its_continuation() -> None:
    engine = SimEngine(TASK)
    step = await engine.execute(req(IDS, seed=3, stop=("\n\n",)))
    assert step.finish == {"type": "stop", "matched": "\n\n"}
    branch = IDS + step.output_ids
    more = await engine.execute(req(branch, seed=4, stop=("\n\n",)))
    assert more.cached_tokens == len(branch) - 1


async def test_asking_for_prompt_logprobs_from_k_caps_the_reuse_at_k() -> None:
    engine = SimEngine(TASK)
    await engine.execute(req(IDS, max_new_tokens=0))
    out = await engine.execute(req(IDS, max_new_tokens=0, return_logprob=True, logprob_start_len=3))
    assert out.cached_tokens == 3
    assert [t for _, t in out.input_logprobs] == IDS[3:]
    assert out.input_logprobs[0][0] is None  # the boundary came from the cache
    assert all(lp is not None and lp < 0 for lp, _ in out.input_logprobs[1:])
    cold = SimEngine(TASK)
    out = await cold.execute(req(IDS, max_new_tokens=0, return_logprob=True, logprob_start_len=0))
    assert out.input_logprobs[0][0] is None and out.input_logprobs[1][0] is not None


async def test_eviction_beyond_capacity_shows_in_cached_tokens() -> None:
    engine = SimEngine(TASK, SimConfig(radix_capacity=len(IDS) + 5))
    await engine.execute(req(IDS, max_new_tokens=0))
    other = tokenizer.encode("An unrelated prompt that needs the whole cache for itself, and more.")
    await engine.execute(req(other, max_new_tokens=0))
    assert engine.stats.radix_tokens <= len(IDS) + 5
    out = await engine.execute(req(IDS, max_new_tokens=0))
    assert out.cached_tokens == 0


async def test_flush_empties_the_cache() -> None:
    engine = SimEngine(TASK)
    await engine.execute(req(IDS, max_new_tokens=0))
    assert engine.flush_cache()
    assert (await engine.execute(req(IDS, max_new_tokens=0))).cached_tokens == 0


# ---------------------------------------------------------------- finishing


async def test_a_stop_string_ends_the_request_and_its_tokens_are_kept() -> None:
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=1, stop=("\n\n",)))
    assert out.finish == {"type": "stop", "matched": "\n\n"}
    assert tokenizer.decode(out.output_ids).endswith(".\n\n")
    assert tokenizer.decode(out.output_ids).count("\n\n") == 1


async def test_the_first_stop_string_in_list_order_wins() -> None:
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=1, stop=("nothing like this", " we now", "Step")))
    assert out.finish == {"type": "stop", "matched": "Step"}
    assert len(out.output_ids) == 1


async def test_a_stop_regex_ends_the_request() -> None:
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=1, stop_regex=(r"have \d+",)))
    assert out.finish == {"type": "stop", "matched": r"have \d+"}
    assert tokenizer.decode(out.output_ids).endswith(
        " we now have " + tokenizer.token_text(out.output_ids[-1]).strip()
    )


async def test_max_new_tokens_is_exact() -> None:
    engine = SimEngine(TASK)
    for n in (1, 7, 30):
        out = await engine.execute(req(IDS, seed=2, max_new_tokens=n))
        assert out.finish == {"type": "length", "length": n}
        assert out.completion_tokens == n


async def test_the_end_of_sequence_token_finishes_with_its_id() -> None:
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=2, max_new_tokens=None))
    assert out.finish == {"type": "stop", "matched": EOS_ID}
    assert out.output_ids[-1] == EOS_ID and EOS_ID not in out.output_ids[:-1]
    assert tokenizer.decode(out.output_ids, skip_special_tokens=True).endswith(".")


async def test_ignore_eos_runs_on_to_the_length_limit() -> None:
    engine = SimEngine(TASK)
    full = await engine.execute(req(IDS, seed=2))
    out = await engine.execute(
        req(IDS, seed=2, ignore_eos=True, max_new_tokens=len(full.output_ids) + 40)
    )
    assert out.finish == {"type": "length", "length": len(full.output_ids) + 40}
    assert out.output_ids[: len(full.output_ids)] == full.output_ids


async def test_min_new_tokens_masks_the_end_of_sequence() -> None:
    engine = SimEngine(TASK)
    full = await engine.execute(req(IDS, seed=2))
    want = len(full.output_ids) + 10
    out = await engine.execute(req(IDS, seed=2, min_new_tokens=want))
    assert out.completion_tokens >= want
    assert EOS_ID not in out.output_ids[:want]
    assert out.finish == {"type": "stop", "matched": EOS_ID}


async def test_stop_token_ids_finish_with_the_id() -> None:
    engine = SimEngine(TASK)
    dot = tokenizer.piece_id(".")
    out = await engine.execute(req(IDS, seed=2, stop_token_ids=(dot,)))
    assert out.finish == {"type": "stop", "matched": dot}
    assert out.output_ids[-1] == dot


async def test_generation_is_capped_by_the_context_length() -> None:
    engine = SimEngine(TASK, SimConfig(context_length=len(IDS) + 5))
    out = await engine.execute(req(IDS, seed=2, max_new_tokens=100))
    assert out.completion_tokens == 5 and out.finish == {"type": "length", "length": 100}
    with pytest.raises(
        SimRequestError,
        match=r"The input \(\d+ tokens\) is longer than the model's context length \(\d+ tokens\)\.",
    ):
        await engine.execute(req(IDS + IDS, max_new_tokens=1))


async def test_bad_inputs_are_refused() -> None:
    engine = SimEngine(TASK)
    with pytest.raises(SimRequestError, match="input_ids cannot be empty"):
        await engine.execute(req([]))
    with pytest.raises(SimRequestError, match="out of vocabulary range"):
        await engine.execute(req([10**9]))


async def test_greedy_requests_are_reproducible_and_unseeded_ones_vary() -> None:
    engine = SimEngine(TASK)
    a = await engine.execute(req(IDS, temperature=0))
    b = await engine.execute(req(IDS, temperature=0, seed=99))
    assert a.output_ids == b.output_ids
    unseeded = {tuple((await engine.execute(req(IDS))).output_ids) for _ in range(8)}
    assert len(unseeded) > 1
    seeded = SimEngine(TASK, SimConfig(seed=5))
    again = SimEngine(TASK, SimConfig(seed=5))
    assert (await seeded.execute(req(IDS))).output_ids == (await again.execute(req(IDS))).output_ids


async def test_output_logprobs_line_up_with_the_tokens() -> None:
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=3, return_logprob=True, top_logprobs_num=3))
    assert len(out.output_logprobs) == len(out.output_top) == len(out.output_ids)
    for token, lp, top in zip(out.output_ids, out.output_logprobs, out.output_top):
        assert lp < 0 and len(top) == 3
        if token in dict(top):
            assert dict(top)[token] == lp


# ---------------------------------------------------------------- concurrency, abort, faults


async def test_abort_by_rid_prefix_returns_the_partial_output() -> None:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.01)))
    started = anyio.Event()
    results: dict[str, EngineOutput] = {}

    async def progress(out: EngineOutput) -> None:
        if len(out.output_ids) >= 3:
            started.set()

    async def run(rid: str) -> None:
        results[rid] = await engine.execute(
            req(IDS, rid=rid, seed=1, ignore_eos=True, max_new_tokens=10**4), progress
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "job-a-1")
        tg.start_soon(run, "job-b-1")
        await started.wait()
        assert engine.abort("job-a") == 1
        assert engine.abort("") == 0
        assert engine.abort("nothing") == 0
        assert not engine.flush_cache()  # refused while requests run
        assert engine.abort(abort_all=True) == 1
    for out in results.values():
        assert out.finish == {
            "type": "abort",
            "message": "Aborted",
            "status_code": None,
            "err_type": None,
        }
        assert 0 < out.completion_tokens < 10**4
    assert engine.stats.aborted == 2 and engine.stats.in_flight == 0


async def test_an_abort_while_a_request_waits_out_its_decode_keeps_a_prefix() -> None:
    # Nobody streams it, so the engine writes every token first and then waits once.
    long = req(IDS, rid="quiet", seed=4, ignore_eos=True, max_new_tokens=500)
    full = await SimEngine(TASK).execute(long)
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.01)))
    results: list[EngineOutput] = []

    async def run() -> None:
        results.append(await engine.execute(long))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()  # asleep for its 500 tokens
        assert engine.abort("quiet") == 1
    (out,) = results
    assert out.finish is not None and out.finish["type"] == "abort"
    assert 0 < out.completion_tokens < 500
    assert out.output_ids == full.output_ids[: out.completion_tokens]
    assert out.plain_upto == out.completion_tokens
    assert out.plain_bytes.decode() == tokenizer.decode(out.output_ids, skip_special_tokens=True)
    assert engine.stats.completion_tokens == out.completion_tokens


async def test_streamed_tokens_tick_on_one_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every stream sleeps until the next multiple of decode_s, one tick per token, so streams
    # that started apart still wake together.  (The clock is observed, not waited for.)
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.02)))
    deadlines: dict[str, list[float]] = {"a": [], "b": []}
    current: list[str] = []

    async def sleep_until(deadline: float) -> None:
        deadlines[current[-1]].append(deadline)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep_until", sleep_until)

    async def progress(out: EngineOutput) -> None:
        current.append(out.rid)

    started: dict[str, float] = {}
    for rid in ("a", "b"):
        current.append(rid)
        started[rid] = anyio.current_time()
        await engine.execute(req(IDS, rid=rid, seed=1, ignore_eos=True, max_new_tokens=6), progress)
    for rid, stamps in deadlines.items():
        ticks = [t / 0.02 for t in stamps]
        assert len(ticks) == 6
        assert all(abs(t - round(t)) < 1e-6 for t in ticks)  # on the shared grid
        assert [round(t) - round(ticks[0]) for t in ticks] == list(range(6))  # one per token
        assert 0 < ticks[0] - started[rid] / 0.02 <= 1  # the first is the next tick


async def test_cancelling_the_caller_aborts_and_cleans_up() -> None:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.01)))
    started = anyio.Event()

    async def progress(out: EngineOutput) -> None:
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            engine.execute, req(IDS, seed=1, ignore_eos=True, max_new_tokens=10**4), progress
        )
        await started.wait()
        tg.cancel_scope.cancel()
    stats = engine.stats
    assert (stats.in_flight, stats.running, stats.aborted) == (0, 0, 1)
    assert engine.flush_cache()


async def test_the_batch_limit_queues_requests() -> None:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.001, max_batch=2)))
    async with anyio.create_task_group() as tg:
        for seed in range(6):
            tg.start_soon(engine.execute, req(IDS, seed=seed, max_new_tokens=5))
    stats = engine.stats
    assert stats.max_running == 2
    assert stats.max_in_flight == 6
    assert stats.requests == 6 and stats.completion_tokens == 30


async def test_prefill_latency_delays_the_first_token() -> None:
    # A queued request waits for the prefill of the request ahead of it (batch of 1).
    engine = SimEngine(TASK, SimConfig(latency=Latency(prefill_s=0.001, max_batch=1)))
    order: list[str] = []

    async def run(name: str) -> None:
        await engine.execute(req(IDS, seed=1, max_new_tokens=2))
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(run, "second")
    assert order == ["first", "second"]
    assert engine.stats.max_running == 1


async def test_duplicate_rids_in_flight_are_refused() -> None:
    engine = SimEngine(TASK, SimConfig(latency=Latency(decode_s=0.01)))
    started = anyio.Event()

    async def progress(out: EngineOutput) -> None:
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            engine.execute,
            req(IDS, rid="same", seed=1, ignore_eos=True, max_new_tokens=10**4),
            progress,
        )
        await started.wait()
        with pytest.raises(SimRequestError, match="Duplicate request ID detected: same"):
            await engine.execute(req(IDS, rid="same"))
        engine.abort("same")


async def test_fault_draws_follow_the_rates_and_the_seed() -> None:
    config = SimConfig(faults=Faults(error_rate=0.2, reset_rate=0.1, stall_rate=0.05, seed=3))
    engine = SimEngine(TASK, config)
    seq: list[str | None] = [engine.draw_fault() for _ in range(4000)]
    again = SimEngine(TASK, config)
    assert [again.draw_fault() for _ in range(4000)] == seq
    other = SimEngine(
        TASK, SimConfig(faults=Faults(error_rate=0.2, reset_rate=0.1, stall_rate=0.05, seed=4))
    )
    assert [other.draw_fault() for _ in range(4000)] != seq
    for kind, rate in (("error", 0.2), ("reset", 0.1), ("stall", 0.05)):
        assert abs(seq.count(kind) / 4000 - rate) < 4 * math.sqrt(rate * (1 - rate) / 4000)
    assert engine.stats.faults == 4000 - seq.count(None)
    assert SimEngine(TASK).draw_fault() is None


def test_configuration_errors_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="latency decode_s must be a finite number >= 0, got -1"):
        Latency(decode_s=-1)
    with pytest.raises(ConfigError, match="latency max_batch must be >= 0"):
        Latency(max_batch=-2)
    with pytest.raises(
        ConfigError, match=r"faults error_rate must be a probability in \[0, 1\], got 2"
    ):
        Faults(error_rate=2)
    with pytest.raises(ConfigError, match="must be <= 1"):
        Faults(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(
        ConfigError, match="faults error_status must be an HTTP error status, got 200"
    ):
        Faults(error_status=200)
    with pytest.raises(ConfigError, match="radix_capacity must be >= 0 tokens"):
        SimConfig(radix_capacity=-1)
    with pytest.raises(ConfigError, match="context_length must be >= 2"):
        SimConfig(context_length=1)


async def test_rewards_are_counted() -> None:
    engine = SimEngine(TASK)
    scores = engine.reward(
        [
            PROMPT + "Step 1 of 2: we now have 42. Next.\n\n",
            PROMPT + "Step 1 of 2: we now have 32. Next.\n\n",
        ]
    )
    assert scores[0] > 0.5 > scores[1]
    assert engine.stats.reward_requests == 1


async def test_a_cold_burst_of_forks_misses_and_a_warm_up_fixes_it() -> None:
    # As on SGLang: forks sent together before their prefix is cached all prefill it.
    engine = SimEngine(TASK)
    cold: list[EngineOutput] = []

    async def fork(seed: int, into: list[EngineOutput]) -> None:
        into.append(await engine.execute(req(IDS, seed=seed, max_new_tokens=3)))

    async with anyio.create_task_group() as tg:
        for seed in range(4):
            tg.start_soon(fork, seed, cold)
    assert [o.cached_tokens for o in cold] == [0] * 4
    assert engine.stats.prefill_tokens == 4 * len(IDS)


async def test_output_logprobs_agree_with_prompt_logprobs_of_the_same_text() -> None:
    # Apart from the tokens where the sim made a choice, a token's logprob depends only on the
    # text: scoring a generated branch as a prompt gives back its logprobs.
    engine = SimEngine(TASK)
    out = await engine.execute(req(IDS, seed=9, return_logprob=True))
    again = await engine.execute(
        req(IDS + out.output_ids, max_new_tokens=0, return_logprob=True, logprob_start_len=len(IDS))
    )
    scored = [lp for lp, _ in again.input_logprobs]
    steps = tokenizer.decode(out.output_ids).count("Step ")
    differ = sum(a != b for a, b in zip(out.output_logprobs, scored))
    assert len(scored) == len(out.output_logprobs)
    assert differ == steps + 2  # the number of steps, each running answer, and the boundary
