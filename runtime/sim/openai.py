"""OpenAI-style ``/v1/completions`` on top of the simulator, shaped like SGLang 0.5.23's.

Supported: ``prompt`` (text, list of texts, token ids or lists of them), ``max_tokens``
(default 16), ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs`` (top-k
alternatives per token), ``stream`` with ``stream_options.include_usage``, and SGLang's extras
(``top_k``, ``min_p``, ``min_tokens``, ``ignore_eos``, ``no_stop_trim``, ``stop_token_ids``,
``skip_special_tokens``, ``repetition_penalty``, ``rid``).  The ``model`` name is not checked
(SGLang does not either).  ``echo`` is refused.  Chat completions are not simulated.
"""

from __future__ import annotations

import time
import uuid
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

__all__ = ["CompletionCall", "CompletionStream", "completion_json", "parse_completion"]

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
    return CompletionCall(call, model, body.get("stream") is True, include_usage, logprobs)


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
    if full:
        usage.update(prompt_tokens_details=None, reasoning_tokens=0, completion_tokens_details=None)
    else:
        usage["reasoning_tokens"] = 0
    return usage


def completion_json(call: CompletionCall, outs: list[EngineOutput]) -> dict[str, Any]:
    choices = []
    for index, (item, out) in enumerate(zip(call.generate.items, outs)):
        reason, matched = _finish(out)
        choices.append(
            {
                "index": index,
                "text": output_text(item, out, True),
                "logprobs": _logprobs(item, out, 0, call.logprobs),
                "finish_reason": reason,
                "matched_stop": matched,
            }
        )
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

    def chunk(self, index: int, item: Item, out: EngineOutput, final: bool) -> dict[str, Any]:
        text = output_text(item, out, final)
        done = self._sent_text.get(index, 0)
        start = self._sent_ids.get(index, 0)
        self._sent_text[index] = len(text)
        self._sent_ids[index] = len(out.output_ids)
        reason, matched = _finish(out) if final else (None, None)
        return {
            "id": self.call.id,
            "object": "text_completion",
            "created": self.call.created,
            "model": self.call.model,
            "choices": [
                {
                    "index": index,
                    "text": text[done:],
                    "logprobs": _logprobs(item, out, start, self.call.logprobs),
                    "finish_reason": reason,
                    "matched_stop": matched,
                }
            ],
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
