"""Start-up checks of an OpenAI-compatible server, and the per-server routes the backend uses.

`describe` finds out, with a handful of cheap requests, what `Profile` says:

1. ``GET /v1/models``: the server answers at all (else one line naming the URL and what was
   tried), the API key is accepted, which model to name (``--model`` or the only one served),
   and who serves it (``owned_by``: vLLM says "vllm", SGLang "sglang", sglang-router "local",
   llama-cpp-python "me").
2. the tokenize route: ``/tokenize`` (vLLM, SGLang), ``/v1/tokenize`` (sglang-router with a
   tokenizer), ``/extras/tokenize`` (llama-cpp-python); a missing route is not an error.
3. a one-token greedy completion of a short prompt, given as token ids when the route told
   them (a server that refuses is a text-only server: the same completion again as text), with
   ``return_token_ids`` and ``logprobs: 0``: the answer shows whether generated ids come back,
   whether the matched stop is named (``matched_stop`` or ``stop_reason``) and whether logprobs
   list token texts.  Without a tokenize route the text completion's ``prompt_token_ids``, if
   any, are the ids a token-id completion is then tried with.

A successful answer that is neither JSON nor an event stream (a proxy's HTML page) is refused
at once with one line naming what was asked (a tokenize route answering so is a missing route).
`think_tags` asks a SGLang server or sglang-router for its reasoning parser later, when a
thinking budget needs it.

These completions generate a token or two before any run starts; they are not charged to any
budget.  A server with no way to tell which tokens it generated (no ``token_ids``, no tokenize
route) cannot run strategies exactly and is refused at start-up.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from ttcdsl.errors import BackendUnavailable
from ttcdsl.runtime.backends._http import (
    error_message,
    foreign_body,
    one_line,
    start_up_request,
    unexpected_content,
)
from ttcdsl.runtime.backends._openai_wire import ForkPolicy, Profile
from ttcdsl.runtime.backends._think import parser_of_info, tags_of_parser

__all__ = [
    "describe",
    "describe_reward",
    "detokenize_path",
    "is_missing",
    "reward_body",
    "reward_routes",
    "reward_scores",
    "think_tags",
    "tokenize_body",
]

_KINDS = {"vllm": "vllm", "sglang": "sglang", "local": "sglang-router", "me": "llama-cpp-python"}
_HOW_TO_START = "start one (README: OpenAI-compatible servers) or pass the right --url"
_PROBE_TEXT = "Hello"
_TOKENIZE_ROUTES = ("/tokenize", "/v1/tokenize", "/extras/tokenize")
_DETOKENIZE = {"/tokenize": "/detokenize", "/v1/tokenize": "/v1/detokenize",
               "/extras/tokenize": "/extras/detokenize"}
_REWARD_ROUTES: dict[str, tuple[str, ...]] = {
    "sglang": ("/classify", "/v1/embeddings"),
    "sglang-router": ("/v1/embeddings",),
    "vllm": ("/pooling", "/classify"),
    "llama-cpp-python": (),  # its /v1/embeddings serves an embedding model, not rewards
    "openai": ("/pooling", "/classify", "/v1/embeddings"),
}


class _Model(msgspec.Struct):
    id: str
    owned_by: str | None = None


class _Models(msgspec.Struct):
    data: list[_Model] = msgspec.field(default_factory=list)


class _Tokens(msgspec.Struct):
    tokens: list[int]


# --- what a server's routes look like ------------------------------------------------------------


def tokenize_body(path: str, model: str, text: str) -> dict[str, Any]:
    if path == "/extras/tokenize":
        return {"model": model, "input": text}
    return {"model": model, "prompt": text, "add_special_tokens": True}


def detokenize_path(tokenize_path: str) -> str:
    return _DETOKENIZE[tokenize_path]


def is_missing(status: int, raw: bytes) -> bool:
    """A route the server does not have (or a router without a tokenizer for it)."""
    return status in (404, 405, 501) or b"tokenizer_not_found" in raw


def reward_routes(kind: str) -> tuple[str, ...]:
    return _REWARD_ROUTES.get(kind, _REWARD_ROUTES["openai"])


def reward_body(path: str, kind: str, model: str, texts: list[str]) -> dict[str, Any]:
    if path == "/classify" and kind == "sglang":
        return {"text": texts}
    return {"model": model, "input": texts}


def reward_scores(path: str, kind: str, raw: Any, n: int) -> list[float] | None:
    """One score per text from a reward route's answer, or None when it holds none.

    SGLang ``/classify``: a list of ``{"embedding": [score]}``.  vLLM ``/classify``:
    ``data[].probs``, the probability of the last class.  vLLM ``/pooling``: ``data[].data``,
    the last row of a process reward model's per-step output, its last class (a one-number
    row: that number).  ``/v1/embeddings``: one-number embeddings."""
    rows: list[Any]
    if path == "/classify" and kind == "sglang":
        rows = [item.get("embedding") if isinstance(item, dict) else None for item in _listed(raw)]
        scores = [_one(row) for row in rows]
    else:
        items = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(items, list):
            return None
        items = sorted(items, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0)
        field = {"/classify": "probs", "/pooling": "data"}.get(path, "embedding")
        rows = [item.get(field) if isinstance(item, dict) else None for item in items]
        pick = _one if field == "embedding" else _last_class
        scores = [pick(row) for row in rows]
    if len(scores) != n or any(s is None for s in scores):
        return None
    return [float(s) for s in scores if s is not None]


def _listed(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else [raw]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one(row: Any) -> float | None:
    return float(row[0]) if isinstance(row, list) and len(row) == 1 and _number(row[0]) else None


def _last_class(row: Any) -> float | None:
    if isinstance(row, list) and row and isinstance(row[-1], list):
        row = row[-1]  # per-step rows: the newest step
    if _number(row):
        return float(row)
    if isinstance(row, list) and row and all(_number(v) for v in row):
        return float(row[-1])
    return None


# --- start-up ------------------------------------------------------------------------------------


async def _request(session: aiohttp.ClientSession, url: str, method: str, path: str,
                   body: Any = None, role: str = "", typed: bool = True) -> tuple[int, bytes]:
    """The status and body of one request; with ``typed``, a 200 answer that is no server's (a
    proxy's page: `foreign_body`) is `BackendUnavailable`."""
    status, raw, content_type = await start_up_request(
        session, method, url, path, server=f"an OpenAI-compatible {role}server", hint=_HOW_TO_START,
        body=body)
    if typed and status == 200 and foreign_body(content_type, raw):
        raise unexpected_content(f"the OpenAI-compatible {role}server", url, f"{method} {path}",
                                 content_type, raw, BackendUnavailable)
    return status, raw


def _refused(url: str, what: str, status: int, raw: bytes, role: str) -> BackendUnavailable:
    message = error_message(raw)
    if status in (401, 403):
        return BackendUnavailable(
            f"the {role}server at {url} refused {what} (HTTP {status}: {message}); pass its API "
            "key with --api-key-env VAR (the name of an environment variable holding it)"
        )
    if status == 503:
        return BackendUnavailable(
            f"the {role}server at {url} answered {what} with HTTP 503 ({message}): it is still "
            "starting or overloaded; wait until it is ready"
        )
    return BackendUnavailable(
        f"the {role}server at {url} does not look OpenAI-compatible ({what}: HTTP {status}: "
        f"{message}); {_HOW_TO_START}"
    )


async def _models(session: aiohttp.ClientSession, url: str, model: str | None, role: str
                  ) -> tuple[str, str]:
    """(model name, server kind) from ``GET /v1/models``; a reward server (``role``) may serve
    several models: the first is named."""
    status, raw = await _request(session, url, "GET", "/v1/models", role=role)
    if status != 200:
        raise _refused(url, "GET /v1/models", status, raw, role)
    try:
        models = msgspec.json.decode(raw, type=_Models).data
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackendUnavailable(
            f"the {role}server at {url} answered GET /v1/models with something that is not a "
            f"model list ({one_line(str(exc), 120)}); {_HOW_TO_START}"
        ) from None
    names = [m.id for m in models]
    if model is None:
        if len(models) != 1 and not (role and models):
            listed = ", ".join(names) if names else "none"
            raise BackendUnavailable(
                f"the {role}server at {url} serves {len(models)} models ({listed}); choose one "
                "with --model NAME"
            )
        chosen = models[0]
    else:
        found = [m for m in models if m.id == model]
        if not found and models:
            raise BackendUnavailable(
                f"the {role}server at {url} does not serve --model {model!r}; it serves "
                f"{', '.join(names)}"
            )
        chosen = found[0] if found else _Model(id=model)
    return chosen.id, _KINDS.get(chosen.owned_by or "", "openai")


async def _tokenize_route(session: aiohttp.ClientSession, url: str, model: str, kind: str
                          ) -> tuple[str | None, list[int] | None]:
    """The first tokenize route that answers, and the ids of the probe text from it."""
    order = list(_TOKENIZE_ROUTES)
    if kind == "llama-cpp-python":
        order.sort(key=lambda p: p != "/extras/tokenize")
    for path in order:
        status, raw = await _request(session, url, "POST", path,
                                     tokenize_body(path, model, _PROBE_TEXT), typed=False)
        if status in (401, 403):
            raise _refused(url, f"POST {path}", status, raw, "")
        if status != 200:
            continue
        try:
            return path, msgspec.json.decode(raw, type=_Tokens).tokens
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return None, None


async def _complete(session: aiohttp.ClientSession, url: str, model: str, prompt: Any
                    ) -> tuple[int, bytes, dict[str, Any] | None]:
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
            "return_token_ids": True, "logprobs": 0}
    status, raw = await _request(session, url, "POST", "/v1/completions", body)
    choice = None
    if status == 200:
        try:
            answer = msgspec.json.decode(raw)
            choice = answer["choices"][0]
        except (msgspec.DecodeError, KeyError, IndexError, TypeError):
            choice = None
    return status, raw, choice if isinstance(choice, dict) else None


async def describe(session: aiohttp.ClientSession, url: str, model: str | None,
                   forks: str | None, role: str = "") -> Profile:
    """What the server at ``url`` can do (module doc); `BackendUnavailable` when it cannot
    serve strategies."""
    name, kind = await _models(session, url, model, role)
    tokenize, ids = await _tokenize_route(session, url, name, kind)
    what = "POST /v1/completions of one test token"
    choice: dict[str, Any] | None = None
    prompt_ids = False
    if ids:
        status, raw, choice = await _complete(session, url, name, ids)
        prompt_ids = choice is not None
        if status in (401, 403):
            raise _refused(url, what, status, raw, role)
    if choice is None:
        status, raw, choice = await _complete(session, url, name, _PROBE_TEXT)
        if choice is None:
            raise _refused(url, what, status, raw, role)
        echoed = choice.get("prompt_token_ids")
        if tokenize is None and isinstance(echoed, list) and echoed and not ids:
            _, _, by_ids = await _complete(session, url, name, echoed)
            if by_ids is not None:
                prompt_ids, choice = True, by_ids
    token_ids = isinstance(choice.get("token_ids"), list)
    if not token_ids and tokenize is None:
        raise BackendUnavailable(
            f"the {role}server at {url} ({kind}) returns no generated token ids "
            "(return_token_ids) and has no tokenize route (tried POST "
            f"{', '.join(_TOKENIZE_ROUTES)}), so which tokens it generated cannot be known; the "
            "openai backend needs one of them (vLLM >= 0.10.2, SGLang, llama-cpp-python's server)"
        )
    if tokenize is None and not prompt_ids and not isinstance(choice.get("prompt_token_ids"), list):
        raise BackendUnavailable(
            f"the {role}server at {url} ({kind}) takes text prompts only and can tokenize none "
            "(no tokenize route, no prompt_token_ids), so prompts cannot be sent exactly"
        )
    stop_field = next((f for f in ("matched_stop", "stop_reason") if f in choice), None)
    logprobs = choice.get("logprobs")
    policy = _fork_policy(kind, token_ids, forks)
    return Profile(
        url=url, model=name, kind=kind, prompt_ids=prompt_ids, token_ids=token_ids,
        stop_field=stop_field,
        logprob_texts=isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list),
        tokenize=tokenize, forks=policy, stream_usage=kind != "llama-cpp-python",
        abort_by_rid=kind == "sglang",
    )


async def think_tags(session: aiohttp.ClientSession, server: Profile) -> tuple[str, str] | None:
    """The thinking tags of the reasoning parser a SGLang server or sglang-router names in its
    server info (``--reasoning-parser``); None when it names none, and for every other kind:
    vLLM and llama-cpp-python's server report no parser and no chat template."""
    if server.kind not in ("sglang", "sglang-router"):
        return None
    for path in ("/get_server_info", "/server_info"):
        status, raw = await _request(session, server.url, "GET", path, typed=False)
        if status == 200:
            return tags_of_parser(parser_of_info(raw))
    return None


def _fork_policy(kind: str, token_ids: bool, forced: str | None) -> ForkPolicy:
    if forced in ("warm", "serial"):
        return forced  # type: ignore[return-value]
    if forced == "n":
        # The samples of an n request are counted by their token ids.
        return "n" if token_ids else "warm"
    if kind == "vllm" and token_ids:
        return "n"
    return "serial" if kind == "llama-cpp-python" else "warm"


async def describe_reward(session: aiohttp.ClientSession, url: str) -> Profile:
    """A reward server: only its model and kind (it generates nothing)."""
    name, kind = await _models(session, url, None, "reward ")
    return Profile(
        url=url, model=name, kind=kind, prompt_ids=False, token_ids=False, stop_field=None,
        logprob_texts=False, tokenize=None, forks="warm", stream_usage=False, abort_by_rid=False,
    )
