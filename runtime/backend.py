"""The contract between the runtime and a model backend.

A backend turns one `GenRequest` into one `GenResult`, tokenizes prompts, warms a prefix into its
cache, and (optionally) scores text with a reward model.  It knows nothing of plans, budgets or
branches: the runtime reserves tokens *before* a request (``max_new_tokens`` is the reservation),
decides which requests share a prefix, and orders the warm-up before the forks.  Backends never
import the runtime.

Conventions every backend follows:

* ``GenRequest.input_ids`` is the exact token sequence to continue: the prompt's ids (from
  `Backend.tokenize`) followed by every token already generated on the branch.  Sending ids, not
  text, means re-tokenisation can never change a shared prefix.
* The returned ``text`` is the decoded new tokens *including* a matched stop string (SGLang's
  ``no_stop_trim``), and ``output_ids`` include the stop tokens, so a branch's text and ids stay in
  step.  ``finish="stop"`` with ``matched=<the string>`` for a stop string, ``finish="eos"`` with
  ``matched=<token id>`` for an end-of-sequence token, ``finish="length"`` when
  ``max_new_tokens`` ran out, ``finish="abort"`` when the server aborted the request.
* ``completion_tokens`` must never exceed ``max_new_tokens``: a backend that sees its model do so
  raises `ProtocolViolation`; the runtime checks it again.
* ``GenRequest.stream`` asks for the tokens as they come (a step that decides mid-generation);
  without it a backend should use its cheapest path (one non-streamed response).  Either way the
  result is the same `GenResult`.
* Cancelling the awaiting task must stop the generation on the server (close the stream or the
  connection, abort by rid) and must not leak the request.
* A backend that can send several generations in one round trip also implements
  `BatchBackend.generate_batch`; the runtime uses it for the forks of a step.
* A backend that streams also implements `StreamingBackend.generate_stream`, which reports the
  tokens generated so far as they come, so a request cancelled mid-way (an anytime vote that
  stopped) is charged what the server really spent on it.
* A backend that can tell a reasoning model's thinking delimiters (from the server's reasoning
  parser or the model's chat template) implements `ThinkingBackend.think_tags`; the runtime's
  thinking budgets use them unless the run gives its own (``--think-tags``).
* Transient failures raise `TransientBackendError` (the runtime retries with backoff); anything
  else raises `BackendError` with a message a user can act on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import anyio
import msgspec

__all__ = [
    "Backend",
    "BackendInfo",
    "BatchBackend",
    "FinishKind",
    "GenRequest",
    "GenResult",
    "Sampling",
    "StreamingBackend",
    "ThinkingBackend",
    "WarmResult",
    "first_failure",
]

FinishKind = Literal["stop", "eos", "length", "abort"]


class Sampling(msgspec.Struct, frozen=True, omit_defaults=True):
    """Sampling parameters of one request.  ``stop`` strings end the generation (the matched string
    is reported in ``GenResult.matched``); whether that ends the *branch* or only a step is the
    runtime's business."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class GenRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One generation: continue ``input_ids`` (prompt ids + branch ids so far)."""

    rid: str
    input_ids: tuple[int, ...]
    sampling: Sampling
    # Report the logprob of every generated token.
    logprobs: bool = False
    # Report the top-k alternatives (decoded text -> logprob) at every generated position.
    top_logprobs: int = 0
    # Stream the generation (only for requests that need a decision mid-generation).
    stream: bool = False


class GenResult(msgspec.Struct, omit_defaults=True):
    """What came back for one `GenRequest`."""

    text: str
    output_ids: list[int]
    finish: FinishKind
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int = 0
    matched: str | int | None = None
    # One logprob per output token when `GenRequest.logprobs` was set.
    logprobs: list[float] | None = None
    # Per output position: decoded token text -> logprob, when `top_logprobs` > 0.
    top_logprobs: list[dict[str, float]] | None = None


class WarmResult(msgspec.Struct, frozen=True):
    """Outcome of prefilling a prefix with no generation (``max_new_tokens: 0``)."""

    prompt_tokens: int
    cached_tokens: int


class BackendInfo(msgspec.Struct, frozen=True):
    """Describes a backend for result headers and traces."""

    name: str
    model: str
    url: str | None = None
    # True when `reward` works (a reward model is reachable).
    has_reward: bool = False
    # The serving engine and its version as it reports them (e.g. "sglang 0.5.23" from
    # /server_info); None when unknown.  Results record it (`ttcdsl.provenance`).
    engine: str | None = None


@runtime_checkable
class Backend(Protocol):
    """An async context manager owning its connections (or its model); see the module doc."""

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    @property
    def info(self) -> BackendInfo: ...

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as the model would see it as a prompt (special tokens
        such as BOS included if the model adds them)."""
        ...

    async def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        ...

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        """Prefill ``input_ids`` into the prefix cache without generating."""
        ...

    async def generate(self, request: GenRequest) -> GenResult:
        """Run one generation to completion (or until cancelled)."""
        ...

    async def reward(self, texts: Sequence[str]) -> list[float]:
        """Reward-model scores, one per text (each text is the prompt plus the branch so far; the
        score judges its newest step).  Backends without a reward model raise `BackendError`
        saying which flag provides one."""
        ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A `Backend` that can send several generations in one round trip."""

    @property
    def batches(self) -> bool:
        """Whether `generate_batch` sends one round trip right now (e.g. not through a router
        that rejects batches); when False the runtime sends the requests one by one."""
        ...

    async def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Run the requests as one batch; results in request order.  A failure of the batch
        raises as `generate` would (the caller retries the whole batch)."""
        ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A `Backend` that can tell, while a generation streams, how far it has got."""

    async def generate_stream(self, request: GenRequest, progress: Callable[[int], None]) -> GenResult:
        """`generate`, streamed, calling ``progress(n)`` with the completion tokens generated so
        far after each chunk."""
        ...


@runtime_checkable
class ThinkingBackend(Backend, Protocol):
    """A `Backend` that knows whether its model thinks, and with which tags."""

    async def think_tags(self) -> tuple[str, str] | None:
        """The model's (opening, closing) thinking tags, e.g. ``("<think>", "</think>")``; None
        when the model has none as far as the backend can tell."""
        ...


def first_failure(group: BaseException) -> BaseException:
    """The first real error inside an anyio task group's exception group (not the cancellation
    of its siblings that it caused)."""
    while isinstance(group, BaseExceptionGroup):
        inner = [e for e in group.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        group = (inner or list(group.exceptions))[0]
    return group
