"""The engine's two writers agree: a request nobody streams (written a run of tokens at a time by
`ttcdsl.runtime.sim.bulk`) gets exactly what the same request streamed token by token gets:
ids, finish reason, logprobs and top logprobs, prompt logprobs, cached tokens, running bytes,
and the engine's counters."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.runtime.sim import SimConfig, SimEngine, load_task, model
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest
from ttcdsl.runtime.sim.rand import uniform, uniforms
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

TASKS = [load_task(p) for p in sorted((Path(__file__).parents[1] / "data" / "tasks").glob("*.json"))]
# Stop strings: one-token, multi-token, ones that end inside a token ("ans" in " answer",
# "e t" across two), and the sim's own structure.
# Some span two runs of the writer (a step's end and the next step, a sentence after the end
# of the sequence).
STOPS = ["\n\n", "\n", ".", " the", "answer is", "Step 2", "e t", "ans", "1", "we now", " of",
         "</think>", "}", " Yes", "xyz", ".\n", "\n\nStep", ". Now", ". Next", ". Here"]


def _prompt(question: str, kind: int) -> str:
    return [
        f"Solve the problem step by step.\nProblem: {question}\n",
        f"Q: {question}\nA:",
        f"Problem: {question}\nStep 1 of 3: we now have 12. Next we add.\n\n"
        "Is this correct? Answer yes or no.\n",
        f"Problem: {question}\nSo the answer is \\boxed{{",
        "Tell me a story about a dragon.",
        question,
        f"Problem: {question}\n<think>\n",
    ][kind]


async def _noop(out: EngineOutput) -> None:
    return None


def _fields(out: EngineOutput) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.structs.asdict(out)
    fields.pop("e2e_latency")
    fields["rid"] = fields["rid"].split(":")[0]
    return fields


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, list[int], dict[str, Any]]:
    """A task (by index), an input (a prompt, maybe with the start of a real sample after it)
    and the request's parameters, aimed at the sample's own tokens (its seed, stop strings and
    stop ids taken from what follows the cut, ``min_new_tokens`` next to a stop id)."""
    t = draw(st.integers(0, len(TASKS) - 1))
    task = TASKS[t]
    problem = draw(st.sampled_from(task.problems))
    ids = tokenizer.encode(_prompt(problem.question, draw(st.integers(0, 6))))
    seed = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    rest: list[int] = []
    if draw(st.booleans()):
        sample = _run(task, [_request("sample", ids, max_new_tokens=300, seed=seed,
                                      temperature=0.0 if seed is None else 0.8)], False)[0]
        cut = draw(st.integers(0, len(sample.output_ids)))
        ids, rest = ids + sample.output_ids[:cut], sample.output_ids[cut:]
    if draw(st.booleans()):
        seed = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    rest_text = tokenizer.decode(rest)
    stops = draw(st.lists(st.sampled_from(STOPS), max_size=3))
    for _ in range(draw(st.integers(0, 2)) if rest_text else 0):
        a = draw(st.integers(0, len(rest_text) - 1))
        stops.append(rest_text[a : a + draw(st.integers(1, 12))])
    stop_ids = draw(st.lists(st.sampled_from(rest[:80]), max_size=2)) if rest else []
    if stops and draw(st.booleans()):  # a stop id that completes a stop string
        last = tokenizer.encode(draw(st.sampled_from(stops)))
        stop_ids += last[-1:]
    if len(stops) > 1 and draw(st.booleans()):  # two stop strings that end together
        stops.append(stops[-1][-3:])
        stops = draw(st.permutations(stops))
    min_new = draw(st.sampled_from([0, 0, 1, 5, 40, 200]))
    if rest and draw(st.booleans()):  # the boundary of min_new_tokens at a stop id or the EOS
        where = [i for i, tok in enumerate(rest) if tok in stop_ids] + [len(rest) - 1]
        min_new = max(0, draw(st.sampled_from(where)) + draw(st.integers(-1, 1)))
    params: dict[str, Any] = {
        "max_new_tokens": draw(st.one_of(st.none(), st.integers(1, 400))),
        "min_new_tokens": min_new,
        "stop": tuple(stops),
        "stop_regex": (r"we \w+ the",) if draw(st.integers(0, 9)) == 0 else (),
        "stop_token_ids": tuple(stop_ids),
        "ignore_eos": draw(st.booleans()),
        "temperature": 0.0 if seed is None else 0.8,
        "seed": seed if draw(st.integers(0, 4)) else None,
        "return_logprob": draw(st.booleans()),
        "logprob_start_len": draw(st.sampled_from([-1, -1, 0, 3])),
        "top_logprobs_num": draw(st.sampled_from([0, 0, 1, 3, 6])),
    }
    return t, ids, params


def _request(rid: str, ids: list[int], **params: Any) -> EngineRequest:
    return EngineRequest(rid=rid, input_ids=list(ids), **params)


def _run(task: Any, requests: list[EngineRequest], stream: bool,
         engine: SimEngine | None = None) -> list[EngineOutput]:
    """Run ``requests`` one after the other on ``engine`` (a fresh one by default)."""
    eng = engine if engine is not None else SimEngine(task, SimConfig(seed=3))

    async def main() -> list[EngineOutput]:
        return [await eng.execute(r, _noop if stream else None) for r in requests]

    return anyio.run(main)


@settings(max_examples=max(300, settings.default.max_examples))
@given(cases())
def test_bulk_and_token_by_token_writers_agree(case: tuple[int, list[int], dict[str, Any]]) -> None:
    t, ids, params = case
    task = TASKS[t]
    # Twice each: the second run hits the prefix cache and the engine's input cache.
    requests = [_request("warm:0", ids[:-1] or ids, max_new_tokens=0),
                _request("r:1", ids, **params), _request("r:2", ids, **params)]
    engines = {mode: SimEngine(task, SimConfig(seed=3)) for mode in ("bulk", "stream")}
    bulk = _run(task, requests, False, engines["bulk"])
    streamed = _run(task, requests, True, engines["stream"])
    for a, b in zip(bulk, streamed, strict=True):
        assert _fields(a) == _fields(b)
        assert a.plain_upto == len(a.output_ids)
        text = tokenizer.decode(a.output_ids, skip_special_tokens=True)
        assert a.plain_bytes.decode("utf-8", errors="replace") == text
    assert msgspec.structs.asdict(engines["bulk"].stats) == msgspec.structs.asdict(
        engines["stream"].stats
    )


def _agree(task: Any, ids: list[int], **params: Any) -> EngineOutput:
    requests = [_request("r:1", ids, **params)]
    bulk, streamed = _run(task, requests, False)[0], _run(task, requests, True)[0]
    assert _fields(bulk) == _fields(streamed)
    return bulk


def test_ties_at_one_token_go_as_sglang_orders_them() -> None:
    """Two stop strings complete at the same token: the first listed wins; a stop string and a
    stop id at the same token: the string wins."""
    task = TASKS[0]
    ids = tokenizer.encode(_prompt(task.problems[0].question, 0))
    blank = tokenizer.piece_id("\n\n")
    for stops in ((".\n\n", "\n\n"), ("\n\n", ".\n\n")):
        out = _agree(task, ids, stop=stops, seed=4)
        assert out.finish == {"type": "stop", "matched": stops[0]}
    out = _agree(task, ids, stop=("\n\n",), stop_token_ids=(blank,), seed=4)
    assert out.finish == {"type": "stop", "matched": "\n\n"}
    assert out.output_ids[-1] == blank


def test_min_new_tokens_masks_the_end_only_before_the_limit() -> None:
    task = TASKS[0]
    ids = tokenizer.encode(_prompt(task.problems[0].question, 0))
    whole = _agree(task, ids, seed=4, max_new_tokens=None)
    n = len(whole.output_ids) - 1  # tokens before the end-of-sequence token
    at_limit = _agree(task, ids, seed=4, max_new_tokens=None, min_new_tokens=n)
    assert at_limit.output_ids == whole.output_ids
    past = _agree(task, ids, seed=4, max_new_tokens=n + 30, min_new_tokens=n + 1,
                  return_logprob=True, top_logprobs_num=2)
    assert past.output_ids[:n] == whole.output_ids[:n]
    assert past.output_ids[n] != whole.output_ids[n]
    # The sim writes on with a filler sentence, which ends the sequence again.
    assert past.finish == {"type": "stop", "matched": EOS_ID}
    assert n + 1 < len(past.output_ids) < n + 30


def test_a_stop_string_across_two_runs_is_found_where_it_ends() -> None:
    """Across the end of a step, and across the end of the sequence (``ignore_eos``: the
    special token adds no text, so the string runs from the answer into the next sentence)."""
    task = TASKS[0]
    ids = tokenizer.encode(_prompt(task.problems[0].question, 0))
    out = _agree(task, ids, stop=("\n\nStep 2",), seed=4)
    assert out.finish == {"type": "stop", "matched": "\n\nStep 2"}
    assert tokenizer.decode(out.output_ids).endswith(".\n\nStep 2")
    whole = _agree(task, ids, seed=4, ignore_eos=True, max_new_tokens=300)
    eos = whole.output_ids.index(EOS_ID)
    before = tokenizer.decode(whole.output_ids[:eos])
    after = tokenizer.decode(whole.output_ids[eos + 1 : eos + 3])
    stop = before[-4:] + after
    out = _agree(task, ids, seed=4, ignore_eos=True, max_new_tokens=300, stop=(stop,))
    assert out.finish == {"type": "stop", "matched": stop}
    assert out.output_ids == whole.output_ids[: eos + 3]
    assert out.specials == 1


@given(st.integers(0, 2**63), st.text(max_size=8), st.integers(-300, 300), st.integers(0, 400))
def test_a_series_of_draws_is_the_same_draws(seed: int, label: str, k: int, i: int) -> None:
    assert uniforms(seed, label, k)(i) == uniform(seed, label, k, i)
    assert uniforms(seed)(i) == uniform(seed, i)


VALUES = sorted({a for task in TASKS for p in task.problems for a in p.answers})


@given(st.integers(1, 12), st.integers(1, 12), st.one_of(st.sampled_from(VALUES), st.text(min_size=1)),
       st.integers(0, 80), st.integers(0, 2**40))
def test_step_ids_built_from_parts_are_the_tokenization_of_the_step(
    k: int, steps: int, value: str, length: int, seed: int
) -> None:
    """The writer builds a step's ids from cached parts; they are exactly ``encode`` of its text
    (the text splits into pieces where the parts meet)."""
    text, ids = model._render(k, (steps, value, 1.0), length, seed)
    assert ids == tokenizer.encode(text)
    assert model._render(k, (steps, value, 1.0), length, seed, text=False) == ("", ids)


@given(st.integers(0, 2**40))
def test_sentences_after_the_end_are_the_tokenization_of_their_text(seed: int) -> None:
    for run in islice(model._tail_runs(seed), 3):
        assert run.ids[-1] == EOS_ID and run.prev == EOS_ID
        assert tokenizer.encode(tokenizer.decode(run.ids[:-1])) == run.ids[:-1]
