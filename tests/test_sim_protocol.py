"""Parsing /generate bodies and shaping responses, without HTTP."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.runtime.sim import SimEngine, SimTask
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest
from ttcdsl.runtime.sim.protocol import (
    SAMPLING_KEYS,
    Item,
    ProtocolError,
    StreamChunks,
    meta_info,
    output_json,
    output_text,
    parse_generate,
)
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

ENGINE = SimEngine(SimTask.empty())


def parse(body: dict[str, Any]) -> Any:
    return parse_generate(body, ENGINE)


def error(body: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_generate(body, ENGINE)
    return info.value


def test_single_text_defaults_like_sglang() -> None:
    call = parse({"text": "hello"})
    assert call.single and not call.stream and call.n == 1 and call.warmups == []
    (item,) = call.items
    req = item.req
    assert req.input_ids == tokenizer.encode("hello")
    assert (req.max_new_tokens, req.temperature, req.seed, req.stop, req.ignore_eos) == (
        128,
        1.0,
        None,
        (),
        False,
    )
    assert item.skip_special_tokens and not item.no_stop_trim and not item.return_logprob
    assert len(req.rid) == 32  # a uuid4 hex, as SGLang


def test_null_means_default_and_max_new_tokens_null_means_uncapped() -> None:
    req = (
        parse(
            {
                "text": "x",
                "sampling_params": {"temperature": None, "top_k": None, "max_new_tokens": None},
            }
        )
        .items[0]
        .req
    )
    assert (req.temperature, req.max_new_tokens) == (1.0, None)


def test_batches_rids_and_per_prompt_options() -> None:
    call = parse(
        {
            "input_ids": [[5, 6], [7]],
            "rid": "job",
            "sampling_params": [{"max_new_tokens": 1}, {"max_new_tokens": 2}],
            "return_logprob": [True, False],
            "top_logprobs_num": 3,
        }
    )
    assert not call.single
    assert [i.req.rid for i in call.items] == ["job_0", "job_1"]
    assert [i.req.max_new_tokens for i in call.items] == [1, 2]
    assert [i.return_logprob for i in call.items] == [True, False]
    assert [i.top_logprobs_num for i in call.items] == [3, 0]
    assert [i.req.rid for i in parse({"text": ["a", "b"], "rid": ["x", "y"]}).items] == ["x", "y"]


def test_n_expands_prompt_major_with_one_warm_up_per_prompt() -> None:
    call = parse({"text": ["a", "b"], "sampling_params": {"n": 3, "seed": 11}, "rid": "r"})
    assert not call.single and call.n == 3
    assert [w.max_new_tokens for w in call.warmups] == [0, 0]
    assert [w.input_ids for w in call.warmups] == [tokenizer.encode("a"), tokenizer.encode("b")]
    assert [i.prompt_index for i in call.items] == [0, 0, 0, 1, 1, 1]
    assert [i.req.rid for i in call.items] == [f"r_{k}" for k in range(6)]
    seeds = [i.req.seed for i in call.items]
    assert seeds[0] == seeds[3] == 11 and len(set(seeds[:3])) == 3 and seeds[1:3] == seeds[4:6]
    single = parse({"text": "a", "sampling_params": {"n": 2}})
    assert not single.single and [i.req.seed for i in single.items] == [None, None]


@pytest.mark.parametrize(
    ("body", "message", "stage", "plain"),
    [
        (
            {"text": "x", "sampling_params": {"bogus": 1}},
            "unknown field `bogus`, expected one of `max_new_tokens`",
            "contract",
            True,
        ),
        (
            {"text": "x", "sampling_params": 3},
            "sampling_params must be an object or a list of objects",
            "contract",
            False,
        ),
        ("not an object", "the request body must be a JSON object", "contract", False),
        (
            {"sampling_params": {}},
            "Either text, input_ids or input_embeds should be provided.",
            "value",
            False,
        ),
        ({"input_ids": []}, "input_ids cannot be empty.", "value", False),
        (
            {"text": ["a"], "sampling_params": [{}, {}]},
            "sampling_params has 2 entries for a batch of 1 prompts",
            "value",
            False,
        ),
        (
            {"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 3}]},
            "The parallel_sample_num should be the same",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"temperature": -1}},
            "temperature must be a non-negative finite number, got -1.",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"presence_penalty": 3}},
            "presence_penalty must be in [-2, 2], got 3.",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"repetition_penalty": 0}},
            "repetition_penalty must be in (0, 2], got 0.",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"sampling_seed": 2**64}},
            "sampling_seed must be a 64-bit integer",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"stop": 5}},
            "sampling_params.stop must be a string or a list of strings",
            "value",
            False,
        ),
        (
            {"text": "x", "sampling_params": {"stop_token_ids": ["a"]}},
            "sampling_params.stop_token_ids must be a list of integers",
            "value",
            False,
        ),
        ({"text": "x", "stream": "yes"}, "stream must be a boolean", "contract", False),
        ({"text": "x", "logprob_start_len": -2}, "logprob_start_len must be >= -1", "value", False),
        ({"input_ids": [1, "a"]}, "input_ids must be a list of token ids", "value", False),
        (
            {"input_ids": [10**9]},
            "token id 1000000000 is out of vocabulary range [0, 6278)",
            "value",
            False,
        ),
    ],
)
def test_refusals(body: Any, message: str, stage: str, plain: bool) -> None:
    exc = error(body)
    assert exc.message.startswith(message), exc.message
    assert (exc.stage, exc.plain, exc.status) == (stage, plain, 400)
    assert exc.body() == ({"error": exc.message} if plain else {"error": {"message": exc.message}})


def test_every_sglang_sampling_key_and_the_seed_alias_are_accepted() -> None:
    sp = {key: None for key in SAMPLING_KEYS} | {"seed": 4}
    assert parse({"text": "x", "sampling_params": sp}).items[0].req.seed == 4


def _out(ids: list[int], finish: dict[str, Any] | None, **over: Any) -> EngineOutput:
    return EngineOutput(rid="r", prompt_tokens=3, output_ids=ids, finish=finish, **over)


def _item(**over: Any) -> Item:
    return Item(req=EngineRequest(rid="r", input_ids=[1, 2, 3]), prompt_index=0, **over)


def test_text_trims_the_matched_stop_unless_asked_not_to() -> None:
    ids = tokenizer.encode("a, b, c. d")
    out = _out(ids, {"type": "stop", "matched": " c"})
    assert output_text(_item(), out, final=True) == "a, b,"
    assert output_text(_item(no_stop_trim=True), out, final=True) == "a, b, c. d"
    assert output_text(_item(), out, final=False) == "a, b, c. d"  # streaming chunks are untrimmed
    eos = _out([*ids, EOS_ID], {"type": "stop", "matched": EOS_ID})
    assert output_text(_item(), eos, final=True) == "a, b, c. d"
    assert (
        output_text(_item(skip_special_tokens=False, no_stop_trim=True), eos, final=True)
        == "a, b, c. d<|im_end|>"
    )


def test_meta_info_keys_follow_sglang_order() -> None:
    out = _out(
        [5],
        {"type": "length", "length": 1},
        cached_tokens=2,
        output_logprobs=[-0.5],
        output_top=[[(5, -0.5)]],
    )
    meta = meta_info(
        _item(return_logprob=True, top_logprobs_num=1), out, final=True, first=False, stream=False
    )
    assert list(meta) == [
        "id", "finish_reason", "prompt_tokens", "weight_version", "num_retractions",
        "input_token_logprobs", "output_token_logprobs", "output_token_logprobs_length",
        "input_top_logprobs", "output_top_logprobs", "reasoning_tokens", "completion_tokens",
        "cached_tokens", "weight_versions", "cached_tokens_details", "dp_rank", "e2e_latency",
        "response_sent_to_client_ts",
    ]  # fmt: skip
    assert meta["output_token_logprobs"] == [[-0.5, 5, None]]
    assert meta["cached_tokens_details"] == {"device": 2, "host": 0}
    chunk = meta_info(_item(), _out([5], None), final=False, first=False, stream=True)
    assert (
        chunk["finish_reason"] is None
        and "e2e_latency" not in chunk
        and "weight_versions" not in chunk
    )
    assert "response_sent_to_client_ts" not in chunk
    assert "response_sent_to_client_ts" in meta_info(
        _item(), _out([5], None), final=False, first=True, stream=True
    )


def _with_running_bytes(ids: list[int], finish: dict[str, Any] | None) -> EngineOutput:
    """An output as the engine keeps it: the bytes of its non-special tokens alongside."""
    out = _out(list(ids), finish)
    for token_id in ids:
        if tokenizer.is_special(token_id):
            out.specials += 1
        else:
            out.plain_bytes += tokenizer.token_bytes(token_id)
    out.plain_upto = len(ids)
    return out


_TOKENS = st.sampled_from(
    [EOS_ID, 0, 1, *tokenizer.encode("Step 1 of 3: we now have 42."), *(3 + b for b in "é€".encode())]
)


@settings(max_examples=300)
@given(
    ids=st.lists(_TOKENS, min_size=1, max_size=12),
    skip=st.booleans(),
    keep=st.booleans(),
    finish=st.sampled_from(["none", "eos", "stop_id", "stop_str", "length"]),
)
def test_text_from_running_bytes_is_the_text_from_ids(
    ids: list[int], skip: bool, keep: bool, finish: str
) -> None:
    reason = {
        "none": None,
        "eos": {"type": "stop", "matched": EOS_ID},
        "stop_id": {"type": "stop", "matched": ids[-1]},  # a stop token id may be any token
        "stop_str": {"type": "stop", "matched": " of"},
        "length": {"type": "length", "length": len(ids)},
    }[finish]
    item = _item(skip_special_tokens=skip, no_stop_trim=keep)
    for final in (False, True):
        fast = output_text(item, _with_running_bytes(ids, reason), final)
        assert fast == output_text(item, _out(list(ids), reason), final)  # no running bytes


def test_stream_chunks_keep_logprob_lists_across_chunks() -> None:
    item = _item(return_logprob=True, top_logprobs_num=1, return_text_in_logprobs=True)
    chunks = StreamChunks(item, index=3)
    out = _out([], None)
    seen = []
    for step, token_id in enumerate(tokenizer.encode(" we now have")):
        out.output_ids.append(token_id)
        out.output_logprobs.append(-0.1 * (step + 1))
        out.output_top.append([(token_id, -0.1 * (step + 1))])
        seen.append(msgspec.json.decode(chunks.event(out, final=False)[len(b"data: "):]))
    whole = output_json(item, out, final=False, index=3, first=False, stream=True)
    last = seen[-1]
    assert last["index"] == 3 and "response_sent_to_client_ts" in seen[0]["meta_info"]
    for key in ("output_token_logprobs", "output_top_logprobs"):
        assert last["meta_info"][key] == whole["meta_info"][key]
        assert [len(c["meta_info"][key]) for c in seen] == [1, 2, 3]
    assert last["text"] == " we now have" and last["output_ids"] == out.output_ids
