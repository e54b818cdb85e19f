"""SGLang's native wire format, as the simulator speaks it: parsing ``/generate`` bodies and
shaping responses exactly like ``sglang==0.5.23`` (the recorded exchanges in
``tests/fixtures/sim/`` are the reference).

No I/O: `parse_generate` turns a decoded JSON body into engine requests or raises
`ProtocolError` carrying the status and body SGLang would send; `output_json` renders an
`EngineOutput` as a response object, `StreamChunks` one item's chunks of a stream as encoded
events (keeping what consecutive cumulative chunks share).

Parsing follows SGLang: unknown ``sampling_params`` keys are a 400 with a plain-string error
(``{"error": "unknown field `bogus`, expected one of ..."}``), unknown top-level keys are ignored,
bad values are a 400 ``{"error": {"message": ...}}`` (for a stream: HTTP 200 with an error event),
``text``/``input_ids`` may be single or batched, ``sampling_params`` a dict or a batch-aligned
list, and ``n > 1`` expands prompt-major after one warm-up per prompt.  A batch answers a JSON
list in input order, or, streaming, interleaved chunks that carry their ``"index"``; a string
``rid`` names batch items ``{rid}_{i}``, a list names them one by one (its length must be the
batch size).  As on SGLang, ``/abort_request`` reaches every rid that *starts with* the given
one, so with a string rid aborting item ``x_1`` of a batch of more than ten also aborts
``x_10``...; rids of equal length (a list) avoid that.  Accepted but without
effect: ``top_p``, ``top_k``, ``min_p``, the penalties, ``regex``/``json_schema``/``ebnf``
(no constrained decoding), ``logit_bias``, ``stream_interval``, ``extra_key``/``cache_salt``.
Deviations, on purpose: ``sampling_params.seed`` is accepted as an alias of ``sampling_seed``;
with ``n > 1`` sample ``j`` of a seeded request uses a seed derived from (seed, j) (sample 0
uses the seed itself) so the samples differ; and when the request names a ``rid``, its
samples are named ``{rid}_{k}`` (SGLang uses fresh uuids) so ``/abort_request`` can reach them.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .engine import EngineOutput, EngineRequest, SimEngine, SimRequestError
from .tokenizer import tokenizer

__all__ = [
    "SAMPLING_KEYS",
    "GenerateCall",
    "Item",
    "ProtocolError",
    "StreamChunks",
    "error_body",
    "output_json",
    "parse_generate",
]

# api_types.py `SamplingParams` of sglang 0.5.23, in its order (the error message lists them).
SAMPLING_KEYS = (
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k",
    "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n",
    "json_schema", "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "no_stop_trim", "stream_interval", "logit_bias",
    "sampling_seed", "custom_params", "beam_width", "watermark", "choice",
)  # fmt: skip
_SIM_KEYS = ("seed",)
_INT64 = 2**63


class ProtocolError(Exception):
    """A request SGLang would refuse.  ``stage="contract"`` errors are always an HTTP error;
    ``stage="value"`` errors become an error event when the request streams."""

    def __init__(
        self, message: str, *, status: int = 400, plain: bool = False, stage: str = "value"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.plain = plain
        self.stage = stage

    def body(self) -> Any:
        return {"error": self.message} if self.plain else error_body(self.message)


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message}}


@dataclass
class Item:
    """One engine request of a ``/generate`` call and how to render it."""

    req: EngineRequest
    prompt_index: int
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False


@dataclass
class GenerateCall:
    """A parsed ``/generate`` body: the items in response order (prompt-major for ``n > 1``)."""

    items: list[Item]
    single: bool
    stream: bool
    n: int
    warmups: list[EngineRequest] = field(default_factory=list)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message)


def check_sampling_keys(raw: Any) -> None:
    """The JSON contract: unknown sampling keys are refused with SGLang's plain-string error."""
    dicts = raw if isinstance(raw, list) else [raw]
    for d in dicts:
        if not isinstance(d, dict):
            if d is None and not isinstance(raw, list):
                continue
            raise ProtocolError(
                "sampling_params must be an object or a list of objects", stage="contract"
            )
        for key in d:
            if key not in SAMPLING_KEYS and key not in _SIM_KEYS:
                expected = ", ".join(f"`{k}`" for k in SAMPLING_KEYS)
                raise ProtocolError(
                    f"unknown field `{key}`, expected one of {expected}",
                    plain=True,
                    stage="contract",
                )


def parse_generate(body: Any, engine: SimEngine) -> GenerateCall:
    """Validate and expand a ``/generate`` body (see the module doc)."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object", stage="contract")
    check_sampling_keys(body.get("sampling_params"))
    try:
        stream = _opt_bool(body.get("stream"), "stream", False)
    except ProtocolError as exc:
        exc.stage = "contract"
        raise
    try:
        return _parse(body, engine, stream)
    except ProtocolError as exc:
        exc.stage = "value"
        raise


def is_stream(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _parse(body: dict[str, Any], engine: SimEngine, stream: bool) -> GenerateCall:
    prompts, single = _prompts(body, engine)
    size = len(prompts)
    raw_sp = body.get("sampling_params")
    if isinstance(raw_sp, list):
        if len(raw_sp) != size:
            raise _bad(f"sampling_params has {len(raw_sp)} entries for a batch of {size} prompts")
        sps = [dict(d) for d in raw_sp]
    else:
        sps = [dict(raw_sp or {}) for _ in range(size)]
    ns = [_int_param(sp, "n", 1) for sp in sps]
    if any(n != ns[0] for n in ns):
        raise _bad("The parallel_sample_num should be the same for all samples in sample params.")
    n = ns[0] if ns[0] is not None else 1
    if n < 1:
        raise _bad(f"n must be at least 1, got {n}.")
    if n > 1:
        single = False
    return_logprob = _per_prompt(body, "return_logprob", size, False, _opt_bool)
    start_len = _per_prompt(body, "logprob_start_len", size, -1, _opt_int)
    top_num = _per_prompt(body, "top_logprobs_num", size, 0, _opt_int)
    text_in_lp = _opt_bool(body.get("return_text_in_logprobs"), "return_text_in_logprobs", False)
    rids = _rids(body.get("rid"), size, n, single)
    items: list[Item] = []
    warmups: list[EngineRequest] = []
    seen: set[str] = set()
    for i, (ids, sp) in enumerate(zip(prompts, sps)):
        engine_check(engine, ids)
        base = _engine_request(sp, ids, rid="", return_logprob=return_logprob[i],
                               start=start_len[i], top=top_num[i])  # fmt: skip
        if n > 1:
            warmups.append(
                EngineRequest(rid=uuid.uuid4().hex, input_ids=list(ids), max_new_tokens=0)
            )
        for j in range(n):
            rid = rids[i * n + j]
            if rid in seen or engine.in_flight(rid):
                raise _bad(f"Duplicate request ID detected: {rid}")
            seen.add(rid)
            seed = base.seed if j == 0 or base.seed is None else _fork_seed(base.seed, j)
            req = EngineRequest(**{**_fields(base), "rid": rid, "seed": seed})
            items.append(
                Item(
                    req=req,
                    prompt_index=i,
                    skip_special_tokens=_opt_bool(
                        sp.get("skip_special_tokens"), "skip_special_tokens", True
                    ),
                    no_stop_trim=_opt_bool(sp.get("no_stop_trim"), "no_stop_trim", False),
                    return_logprob=return_logprob[i],
                    top_logprobs_num=top_num[i] if return_logprob[i] else 0,
                    return_text_in_logprobs=text_in_lp,
                )
            )
    return GenerateCall(items=items, single=single, stream=stream, n=n, warmups=warmups)


def engine_check(engine: SimEngine, ids: Sequence[int]) -> None:
    try:
        engine.check_input(ids)
    except SimRequestError as exc:
        raise ProtocolError(exc.message, status=exc.status) from None


def _fields(req: EngineRequest) -> dict[str, Any]:
    return {f: getattr(req, f) for f in req.__struct_fields__}


def _fork_seed(seed: int, j: int) -> int:
    digest = hashlib.blake2b(repr((seed, j)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _prompts(body: dict[str, Any], engine: SimEngine) -> tuple[list[list[int]], bool]:
    text, input_ids = body.get("text"), body.get("input_ids")
    if text is None and input_ids is None:
        raise _bad("Either text, input_ids or input_embeds should be provided.")
    if text is not None:
        if isinstance(text, str):
            return [engine.tokenize(text)], True
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            return [engine.tokenize(t) for t in text], False
        raise _bad("text must be a string or a non-empty list of strings")
    if not isinstance(input_ids, list) or not input_ids:
        raise _bad("input_ids cannot be empty.")
    if _ints(input_ids):
        return [list(input_ids)], True
    if all(isinstance(row, list) and row and _ints(row) for row in input_ids):
        return [list(row) for row in input_ids], False
    raise _bad("input_ids must be a list of token ids or a list of such lists")


def _rids(rid: Any, size: int, n: int, single: bool) -> list[str]:
    total = size * n
    if rid is None:
        return [uuid.uuid4().hex for _ in range(total)]
    if isinstance(rid, str):
        if single:
            return [rid]
        return [f"{rid}_{k}" for k in range(total)]
    if isinstance(rid, list) and all(isinstance(r, str) for r in rid):
        if len(rid) != size:
            raise _bad(
                "The specified rids length mismatch with the batch_size for batch processing."
            )
        duplicates = [r for r in dict.fromkeys(rid) if rid.count(r) > 1]
        if duplicates:
            raise _bad(f"Duplicate request IDs detected within the request: {duplicates}")
        if n == 1:
            return list(rid)
        return [f"{rid[k // n]}_{k % n}" for k in range(total)]
    raise _bad("The rid should be a string or a list of strings.")


def _per_prompt(body: dict[str, Any], key: str, size: int, default: Any, conv: Any) -> list[Any]:
    value = body.get(key)
    if isinstance(value, list):
        if len(value) != size:
            raise _bad(f"{key} has {len(value)} entries for a batch of {size} prompts")
        return [conv(v, key, default) for v in value]
    return [conv(value, key, default)] * size


def _ints(values: list[Any]) -> bool:
    """Every item is an int, not a bool (checked in C: prompts can be long)."""
    return set(map(type, values)) <= {int}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_bool(value: Any, key: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"{key} must be a boolean, got {value!r}")
    return value


def _opt_int(value: Any, key: str, default: int) -> int:
    if value is None:
        return default
    if not _is_int(value):
        raise _bad(f"{key} must be an integer, got {value!r}")
    return int(value)


def _int_param(sp: dict[str, Any], key: str, default: int | None) -> int | None:
    value = sp.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise _bad(f"sampling_params.{key} must be an integer, got {value!r}")
    return int(value)


def _float_param(sp: dict[str, Any], key: str, default: float) -> float:
    value = sp.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"sampling_params.{key} must be a number, got {value!r}")
    return float(value)


def _strings(sp: dict[str, Any], key: str) -> tuple[str, ...]:
    value = sp.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise _bad(f"sampling_params.{key} must be a string or a list of strings, got {value!r}")


def _engine_request(
    sp: dict[str, Any], ids: list[int], *, rid: str, return_logprob: bool, start: int, top: int
) -> EngineRequest:
    # An explicit null means "up to the context length", like SGLang.
    uncapped = "max_new_tokens" in sp and sp["max_new_tokens"] is None
    max_new = None if uncapped else _int_param(sp, "max_new_tokens", 128)
    min_new = _int_param(sp, "min_new_tokens", 0) or 0
    temperature = _float_param(sp, "temperature", 1.0)
    top_p = _float_param(sp, "top_p", 1.0)
    top_k = _int_param(sp, "top_k", -1)
    min_p = _float_param(sp, "min_p", 0.0)
    rep = _float_param(sp, "repetition_penalty", 1.0)
    if not math.isfinite(temperature) or temperature < 0.0:
        raise _bad(f"temperature must be a non-negative finite number, got {_num(temperature)}.")
    if not 0.0 < top_p <= 1.0:
        raise _bad(f"top_p must be in (0, 1], got {_num(top_p)}.")
    if not 0.0 <= min_p <= 1.0:
        raise _bad(f"min_p must be in [0, 1], got {_num(min_p)}.")
    if top_k is not None and top_k != -1 and top_k < 1:
        raise _bad(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
    for key in ("frequency_penalty", "presence_penalty"):
        value = _float_param(sp, key, 0.0)
        if not -2.0 <= value <= 2.0:
            raise _bad(f"{key} must be in [-2, 2], got {_num(value)}.")
    if not 0.0 < rep <= 2.0:
        raise _bad(f"repetition_penalty must be in (0, 2], got {_num(rep)}.")
    if min_new < 0:
        raise _bad(f"min_new_tokens must be in [0, max_new_tokens], got {min_new}.")
    if max_new is not None:
        if max_new < 0:
            raise _bad(f"max_new_tokens must be at least 0, got {max_new}.")
        if min_new > max_new:
            raise _bad(f"min_new_tokens must be in [0, max_new_tokens({max_new})], got {min_new}.")
    seed = _int_param(sp, "sampling_seed", None)
    if seed is None:
        seed = _int_param(sp, "seed", None)
    if seed is not None and not -_INT64 <= seed < _INT64:
        raise _bad(f"sampling_seed must be a 64-bit integer, got {seed}.")
    stop_ids = sp.get("stop_token_ids")
    if stop_ids is not None and not (
        isinstance(stop_ids, list) and all(_is_int(t) for t in stop_ids)
    ):
        raise _bad(f"sampling_params.stop_token_ids must be a list of integers, got {stop_ids!r}")
    stop_regex = _strings(sp, "stop_regex")
    for pattern in stop_regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _bad(f"invalid stop_regex {pattern!r}: {exc}") from None
    if start < -1:
        raise _bad(f"logprob_start_len must be >= -1, got {start}")
    if top < 0:
        raise _bad(f"top_logprobs_num must be >= 0, got {top}")
    return EngineRequest(
        rid=rid,
        input_ids=list(ids),
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        stop=_strings(sp, "stop"),
        stop_regex=stop_regex,
        stop_token_ids=tuple(stop_ids or ()),
        ignore_eos=_opt_bool(sp.get("ignore_eos"), "ignore_eos", False),
        temperature=temperature,
        seed=seed,
        return_logprob=return_logprob,
        logprob_start_len=start,
        top_logprobs_num=top if return_logprob else 0,
    )


def _num(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


# ---------------------------------------------------------------- responses


def output_text(item: Item, out: EngineOutput, final: bool) -> str:
    """``text`` as SGLang returns it: special tokens skipped by default; at the finish, the
    matched stop string (or stop token) is trimmed unless ``no_stop_trim``."""
    ids = out.output_ids
    finish = out.finish if final else None
    matched = finish.get("matched") if finish and finish.get("type") == "stop" else None
    drop_last = isinstance(matched, int) and not item.no_stop_trim and bool(ids)
    text = _decoded(item, out, drop_last)
    if isinstance(matched, str) and not item.no_stop_trim and matched not in item.req.stop_regex:
        cut = text.find(matched)
        if cut >= 0:
            text = text[:cut]
    return text


def _decoded(item: Item, out: EngineOutput, drop_last: bool) -> str:
    """The output ids as text (without the last one if ``drop_last``), from the engine's running
    bytes when they cover every id (see `EngineOutput`), else from the ids."""
    ids = out.output_ids
    if out.plain_upto != len(ids) or (out.specials and not item.skip_special_tokens):
        kept = ids[:-1] if drop_last else ids
        return tokenizer.decode(kept, skip_special_tokens=item.skip_special_tokens)
    plain = out.plain_bytes
    if drop_last and not tokenizer.is_special(ids[-1]):
        plain = plain[: len(plain) - len(tokenizer.token_bytes(ids[-1]))]
    return plain.decode("utf-8", errors="replace")


def _triple(lp: float | None, token_id: int, with_text: bool) -> list[Any]:
    return [lp, token_id, tokenizer.token_text(token_id) if with_text else None]


class _Logprobs:
    """The logprob lists of one item's ``meta_info``, rendered once per token and kept across the
    chunks of a stream (each chunk carries them all: SGLang's cumulative streaming)."""

    __slots__ = ("input", "input_top", "output", "output_top", "text")

    def __init__(self, item: Item, out: EngineOutput) -> None:
        wt = self.text = item.return_text_in_logprobs
        self.input = [_triple(lp, t, wt) for lp, t in out.input_logprobs]
        self.output: list[list[Any]] = []
        self.input_top: list[Any] | None = None
        self.output_top: list[list[list[Any]]] = []
        if item.top_logprobs_num > 0:
            self.input_top = [
                None if row is None else [_triple(lp, t, wt) for t, lp in row]
                for row in out.input_top
            ]

    def update(self, out: EngineOutput) -> None:
        """Render the tokens added since the last call (a cut output is rendered again)."""
        if len(self.output) > len(out.output_logprobs):
            del self.output[:], self.output_top[:]
        wt = self.text
        done = len(self.output)
        ids = out.output_ids
        self.output += [
            _triple(lp, t, wt) for lp, t in zip(out.output_logprobs[done:], ids[done:])
        ]
        if self.input_top is not None:
            self.output_top += [
                [_triple(lp, t, wt) for t, lp in row] for row in out.output_top[done:]
            ]


def meta_info(
    item: Item,
    out: EngineOutput,
    *,
    final: bool,
    first: bool,
    stream: bool,
    logprobs: _Logprobs | None = None,
) -> dict[str, Any]:
    """``meta_info`` with SGLang's keys in SGLang's order (a stream stamps the send time on its
    first chunk only, a plain response on itself).  ``logprobs`` reuses lists rendered for the
    stream's earlier chunks."""
    meta: dict[str, Any] = {
        "id": out.rid,
        "finish_reason": out.finish if final else None,
        "prompt_tokens": out.prompt_tokens,
        "weight_version": "default",
        "num_retractions": 0,
    }
    if item.return_logprob:
        if logprobs is None:
            logprobs = _Logprobs(item, out)
        logprobs.update(out)
        meta["input_token_logprobs"] = logprobs.input
        meta["output_token_logprobs"] = logprobs.output
        meta["output_token_logprobs_length"] = len(out.output_logprobs)
        if logprobs.input_top is not None:
            meta["input_top_logprobs"] = logprobs.input_top
            meta["output_top_logprobs"] = logprobs.output_top
    meta["reasoning_tokens"] = 0
    meta["completion_tokens"] = out.completion_tokens
    meta["cached_tokens"] = out.cached_tokens
    if final:
        meta["weight_versions"] = [{"version": "default", "start": 0, "end": out.completion_tokens}]
    meta["cached_tokens_details"] = (
        {"device": out.cached_tokens, "host": 0} if out.cached_tokens else None
    )
    meta["dp_rank"] = None
    if final:
        meta["e2e_latency"] = out.e2e_latency
    if first or (final and not stream):
        meta["response_sent_to_client_ts"] = time.time()
    return meta


def output_json(
    item: Item,
    out: EngineOutput,
    *,
    final: bool,
    index: int | None = None,
    first: bool = False,
    stream: bool = False,
) -> dict[str, Any]:
    """One response object (``final``) or streaming chunk (``stream``; ``first`` for the first
    chunk of its item); ``index`` for batch streams."""
    obj: dict[str, Any] = {
        "text": output_text(item, out, final),
        "output_ids": out.output_ids,
        "meta_info": meta_info(item, out, final=final, first=first, stream=stream),
    }
    if index is not None:
        obj["index"] = index
    return obj


class StreamChunks:
    """Renders the chunks of one item of a stream as SSE events (``data: {...}``), keeping what
    the chunks share (the logprob lists) from one chunk to the next."""

    def __init__(self, item: Item, index: int | None) -> None:
        self.item = item
        self.index = index
        self._logprobs: _Logprobs | None = None
        self._first = True

    def event(self, out: EngineOutput, final: bool) -> bytes:
        item = self.item
        if item.return_logprob and self._logprobs is None:
            self._logprobs = _Logprobs(item, out)
        obj: dict[str, Any] = {
            "text": output_text(item, out, final),
            "output_ids": out.output_ids,
            "meta_info": meta_info(
                item, out, final=final, first=self._first, stream=True, logprobs=self._logprobs
            ),
        }
        if self.index is not None:
            obj["index"] = self.index
        self._first = False
        return b"data: " + msgspec.json.encode(obj) + b"\n\n"


def stream_error(message: str) -> dict[str, Any]:
    """The event SGLang sends when a streaming request fails validation."""
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": 400,
            "retryable": False,
        }
    }
