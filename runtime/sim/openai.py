"""OpenAI-style ``/v1/completions`` and ``/v1/embeddings`` on top of the simulator, shaped like
SGLang 0.5.23's.

Completions support: ``prompt`` (text, list of texts, token ids or lists of them), ``max_tokens``
(default 16), ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs`` (top-k
alternatives per token), ``stream`` with ``stream_options.include_usage``, and SGLang's extras
(``top_k``, ``min_p``, ``min_tokens``, ``ignore_eos``, ``no_stop_trim``, ``stop_token_ids``,
``skip_special_tokens``, ``repetition_penalty``, ``rid``, ``return_token_ids``: each choice then
carries its output ``token_ids`` (all of them, stop tokens included; a stream sends the new ones
per chunk) and its ``prompt_token_ids`` (a stream: in the choice's first chunk)).  The ``model``
name is not checked (SGLang does not either).  ``echo`` is refused.  Chat completions are not
simulated.  ``usage.prompt_tokens_details`` is ``{"cached_tokens": N}`` when the engine's
``cache_report`` is on (SGLang's ``--enable-cache-report``), else null (omitted in a stream's
usage chunk); like ``prompt_tokens``, it counts each prompt once for ``n > 1``.

Embeddings (`embedding_inputs`, `embeddings_json`): ``input`` as a text, a list of texts, token
ids or a list of such lists; each "embedding" is the one-number reward score ``/classify`` gives
the same text (the simulator is its own reward model, as a router in front of SGLang reward
workers would serve it), ``encoding_format`` ``float`` or ``base64`` (little-endian float32),
``model`` answered as the server's model name, ``usage`` counts the prompt tokens.  Bad input is
a 400 with SGLang's OpenAI-style error object and its messages.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import EngineOutput, SimEngine
from .protocol import (
    GenerateCall,
    Item,
    ProtocolError,
    output_text,
    parse_generate,
)
from .tokenizer import tokenizer

__all__ = [
    "CompletionCall",
    "CompletionStream",
    "EmbeddingInput",
    "completion_json",
    "embedding_inputs",
    "embeddings_json",
    "openai_error",
    "parse_completion",
]

_EXTRAS = {
    "top_k": "top_k",
    "min_p": "min_p",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "no_stop_trim": "no_stop_trim",
    "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
    "repetition_penalty": "repetition_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "top_p": "top_p",
    "temperature": "temperature",
    "stop": "stop",
    "n": "n",
    "seed": "sampling_seed",
}


@dataclass
class CompletionCall:
    generate: GenerateCall
    model: str
    stream: bool
    include_usage: bool
    logprobs: int | None
    return_token_ids: bool = False
    cache_report: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))


def parse_completion(body: Any, engine: SimEngine) -> CompletionCall:
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    if body.get("echo"):
        raise ProtocolError("echo is not supported by the simulator")
    prompt = body.get("prompt")
    gen: dict[str, Any] = {}
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and isinstance(prompt[0], str)
    ):
        gen["text"] = prompt
    elif isinstance(prompt, list) and prompt:
        gen["input_ids"] = prompt
    else:
        raise ProtocolError("prompt must be a string, a list of strings or token ids")
    sp: dict[str, Any] = {"max_new_tokens": body.get("max_tokens", 16)}
    for key, target in _EXTRAS.items():
        if body.get(key) is not None:
            sp[target] = body[key]
    logprobs = body.get("logprobs")
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0
    ):
        raise ProtocolError(f"logprobs must be a non-negative integer, got {logprobs!r}")
    gen["sampling_params"] = sp
    gen["return_logprob"] = logprobs is not None
    gen["top_logprobs_num"] = logprobs or 0
    gen["return_text_in_logprobs"] = True
    if isinstance(body.get("rid"), str):
        gen["rid"] = body["rid"]
    call = parse_generate(gen, engine)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    model = body["model"] if isinstance(body.get("model"), str) else engine.config.model
    return CompletionCall(
        call, model, body.get("stream") is True, include_usage, logprobs,
        return_token_ids=body.get("return_token_ids") is True,
        cache_report=engine.config.cache_report,
    )


def _finish(out: EngineOutput) -> tuple[str | None, Any]:
    finish = out.finish
    if finish is None:
        return None, None
    kind = finish.get("type")
    if kind == "stop":
        return "stop", finish.get("matched")
    return ("length" if kind == "length" else "abort"), None


def _logprobs(item: Item, out: EngineOutput, start: int, top: int | None) -> dict[str, Any] | None:
    if top is None:
        return None
    ids = out.output_ids[start:]
    rows = out.output_top[start:] if top > 0 else [[] for _ in ids]
    return {
        "text_offset": [-1] * len(ids),
        "token_logprobs": list(out.output_logprobs[start:]),
        "tokens": [tokenizer.token_text(t) for t in ids],
        "top_logprobs": [{tokenizer.token_text(t): lp for t, lp in row} for row in rows],
    }


def _usage(call: CompletionCall, outs: list[EngineOutput], *, full: bool) -> dict[str, Any]:
    n = call.generate.n
    prompt = sum(out.prompt_tokens for out in outs[::n])
    completion = sum(out.completion_tokens for out in outs)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    details = None
    if call.cache_report:
        details = {"cached_tokens": sum(out.cached_tokens for out in outs[::n])}
    if full:
        usage.update(prompt_tokens_details=details, reasoning_tokens=0, completion_tokens_details=None)
    else:
        if details is not None:
            usage["prompt_tokens_details"] = details
        usage["reasoning_tokens"] = 0
    return usage


def completion_json(call: CompletionCall, outs: list[EngineOutput]) -> dict[str, Any]:
    choices = []
    for index, (item, out) in enumerate(zip(call.generate.items, outs)):
        reason, matched = _finish(out)
        choice = {
            "index": index,
            "text": output_text(item, out, True),
            "logprobs": _logprobs(item, out, 0, call.logprobs),
            "finish_reason": reason,
            "matched_stop": matched,
        }
        if call.return_token_ids:
            choice.update(token_ids=list(out.output_ids), prompt_token_ids=list(item.req.input_ids))
        choices.append(choice)
    end = max((out.completion_tokens for out in outs), default=0)
    return {
        "id": call.id,
        "object": "text_completion",
        "created": call.created,
        "model": call.model,
        "choices": choices,
        "usage": _usage(call, outs, full=True),
        "metadata": {
            "weight_version": "default",
            "weight_versions": [{"version": "default", "start": 0, "end": end}],
        },
    }


class CompletionStream:
    """Renders streaming chunks: each carries the new text since the previous chunk."""

    def __init__(self, call: CompletionCall) -> None:
        self.call = call
        self._sent_text: dict[int, int] = {}
        self._sent_ids: dict[int, int] = {}
        self._sent_prompt: set[int] = set()

    def chunk(self, index: int, item: Item, out: EngineOutput, final: bool) -> dict[str, Any]:
        text = output_text(item, out, final)
        done = self._sent_text.get(index, 0)
        start = self._sent_ids.get(index, 0)
        self._sent_text[index] = len(text)
        self._sent_ids[index] = len(out.output_ids)
        reason, matched = _finish(out) if final else (None, None)
        choice = {
            "index": index,
            "text": text[done:],
            "logprobs": _logprobs(item, out, start, self.call.logprobs),
            "finish_reason": reason,
            "matched_stop": matched,
        }
        if self.call.return_token_ids:
            choice["token_ids"] = list(out.output_ids[start:])
            if index not in self._sent_prompt:
                self._sent_prompt.add(index)
                choice["prompt_token_ids"] = list(item.req.input_ids)
        return {
            "id": self.call.id,
            "object": "text_completion",
            "created": self.call.created,
            "model": self.call.model,
            "choices": [choice],
            "usage": None,
        }

    def usage_chunk(self, outs: list[EngineOutput]) -> dict[str, Any]:
        return {
            "id": self.call.id,
            "object": "text_completion",
            "created": self.call.created,
            "model": self.call.model,
            "choices": [],
            "usage": _usage(self.call, outs, full=False),
        }


# ---------------------------------------------------------------- /v1/embeddings


@dataclass
class EmbeddingInput:
    """What a ``/v1/embeddings`` body asks to score: the texts and their prompt token counts."""

    texts: list[str]
    prompt_tokens: list[int]
    base64: bool = False


def openai_error(message: str, status: int = 400) -> dict[str, Any]:
    """SGLang's OpenAI-style error object (``serving_base.create_error_response``)."""
    return {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": status,
    }


def embedding_inputs(body: Any, engine: SimEngine) -> EmbeddingInput:
    """Validate an embeddings body like SGLang's ``OpenAIServingEmbedding``; raises
    `ProtocolError` (answered as `openai_error` of its message)."""
    if not isinstance(body, dict) or "input" not in body:
        raise _embedding_error("input is required: a string, a list of strings or token ids")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _embedding_error(f"encoding_format must be either 'float' or 'base64', got {fmt!r}")
    problem = _input_problem(body["input"])
    if problem is not None:
        raise _embedding_error(problem)
    value = body["input"]
    if isinstance(value, str):
        value = [value]
    if isinstance(value[0], str):
        return EmbeddingInput(value, [len(engine.tokenize(t)) for t in value], fmt == "base64")
    rows = [value] if isinstance(value[0], int) else value
    try:
        texts = [engine.detokenize(row) for row in rows]
    except ValueError as exc:
        raise _embedding_error(str(exc)) from None
    return EmbeddingInput(texts, [len(row) for row in rows], fmt == "base64")


def _input_problem(value: Any) -> str | None:
    """SGLang's message for an input it refuses, or None (``_validate_request``, plus the shape
    checks its request model makes)."""
    if not value:
        return "Input cannot be empty"
    if isinstance(value, str):
        return None if value.strip() else "Input cannot be empty or whitespace only"
    if not isinstance(value, list):
        return "input must be a string, a list of strings or token ids"
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return "All items in input list must be strings"
            if not item.strip():
                return f"Input at index {i} cannot be empty or whitespace only"
        return None
    if isinstance(first, int) and not isinstance(first, bool):
        for i, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool):
                return "All items in input list must be integers"
            if item < 0:
                return f"Token ID at index {i} must be non-negative"
        return None
    rows_ok = all(
        isinstance(row, list) and row and all(isinstance(t, int) and t >= 0 for t in row)
        for row in value
    )
    return None if rows_ok else "input must be a string, a list of strings or token ids"


def _embedding_error(message: str) -> ProtocolError:
    return ProtocolError(message)  # the route renders it with `openai_error`


def embeddings_json(
    engine: SimEngine, inputs: EmbeddingInput, scores: Sequence[float]
) -> dict[str, Any]:
    """The response: one one-number "embedding" per input, in input order."""
    data = [
        {"embedding": _encode(score, inputs.base64), "index": i, "object": "embedding"}
        for i, score in enumerate(scores)
    ]
    prompt = sum(inputs.prompt_tokens)
    return {
        "data": data,
        "model": engine.config.model,
        "object": "list",
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": prompt,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        },
    }


def _encode(score: float, as_base64: bool) -> list[float] | str:
    if not as_base64:
        return [score]
    return base64.b64encode(struct.pack("<1f", score)).decode("ascii")
