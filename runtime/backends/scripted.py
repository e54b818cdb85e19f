"""A scripted backend for tests: no model, every behaviour under the test's control.

`ScriptedBackend` tokenizes one character per token (ids = code points) and answers each
generation from a `Script`: by default a deterministic pseudo-random text derived from the request
seed, honouring stop strings and ``max_new_tokens`` like a real server.  The script can also make
it misbehave on purpose — random finish reasons and token counts, latencies, transient failures,
permanent failures, or reporting more tokens than allowed — which is how the runtime's budget and
robustness properties are tested (`ttcdsl.testing.strategies.backend_behaviours()` draws such
scripts with hypothesis).

It records every request it received (`requests`) and the high-water mark of concurrent requests
(`max_in_flight`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from ttcdsl.errors import BackendError, TransientBackendError
from ttcdsl.runtime.backend import BackendInfo, GenRequest, GenResult, WarmResult

__all__ = ["Script", "ScriptedBackend"]

EOS_ID = 0
_WORDS = ("step", "so", "we", "get", "the", "answer", "is", "7", "12", "and", "then", "42", ".", "\n\n", "\n")


@dataclass(frozen=True)
class Script:
    """How the scripted model behaves.

    ``text``: a function (request, seed) -> the full text the model "wants" to write; by default
    words drawn from a small vocabulary, ending in "The answer is N.".  ``latency_s``: a sleep per
    request.  ``transient_every``: every k-th request fails transiently first (0 = never; a
    retry of a request that failed gets through).
    ``chaos``: a seeded source of random misbehaviour — per request it may cut the text anywhere,
    claim any finish reason and any token count up to ``max_new_tokens``.  ``overreport``: report
    one token more than allowed (a protocol violation the runtime must catch).  ``fail``: every
    generation fails permanently with this message.  ``latency_s < 0``: answer without handing
    control to the event loop at all (a backend whose answers are already there).
    """

    text: Callable[[GenRequest, int], str] | None = None
    latency_s: float = 0.0
    transient_every: int = 0
    chaos: int | None = None
    overreport: bool = False
    fail: str | None = None
    reward_bias: float = 0.0


def _default_text(request: GenRequest, seed: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 30))]
    return " ".join(words) + f" The answer is {rng.choice(['7', '12', '42'])}."


@dataclass
class ScriptedBackend:
    script: Script = field(default_factory=Script)
    requests: list[GenRequest] = field(default_factory=list)
    # ("warm" | "generate", input ids) in the order they arrived.
    events: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    # Completion tokens this backend reported in total (the ground truth for budget checks).
    reported: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    # The thinking tags the scripted "model" reports (`ThinkingBackend`); None: it has none.
    tags: tuple[str, str] | None = None
    _count: int = 0
    _failed: set[str] = field(default_factory=set)

    async def __aenter__(self) -> ScriptedBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="scripted", model="scripted", has_reward=True)

    async def think_tags(self) -> tuple[str, str] | None:
        return self.tags

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids if i != EOS_ID)

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        self.events.append(("warm", tuple(input_ids)))
        return WarmResult(prompt_tokens=len(input_ids), cached_tokens=max(0, len(input_ids) - 1))

    async def reward(self, texts: Sequence[str]) -> list[float]:
        out = []
        for t in texts:
            h = hashlib.blake2b(t.encode(), digest_size=4).digest()
            out.append(min(1.0, int.from_bytes(h, "big") / 2**32 + self.script.reward_bias))
        return out

    async def generate(self, request: GenRequest) -> GenResult:
        self._count += 1
        self.requests.append(request)
        self.events.append(("generate", request.input_ids))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            result = await self._generate(request, self._count)
            self.reported += result.completion_tokens
            return result
        finally:
            self.in_flight -= 1

    async def _generate(self, request: GenRequest, count: int) -> GenResult:
        s = self.script
        if s.latency_s > 0:
            await anyio.sleep(s.latency_s)
        elif s.latency_s == 0:
            await anyio.lowlevel.checkpoint()
        if s.fail is not None:
            raise BackendError(s.fail)
        if s.transient_every and count % s.transient_every == 1 and request.rid not in self._failed:
            self._failed.add(request.rid)  # a retry of the same request gets through
            raise TransientBackendError("scripted transient failure (connection reset)")
        seed = request.sampling.seed if request.sampling.seed is not None else count
        full = (s.text or _default_text)(request, seed)
        limit = request.sampling.max_new_tokens
        # Tokens come out one character at a time, then EOS; the first of (a stop string
        # completed, EOS, the token limit) ends the generation.  The text keeps a matched stop.
        stop_at: tuple[int, str] | None = None
        for stop in request.sampling.stop:
            pos = full.find(stop)
            if pos >= 0 and (stop_at is None or pos + len(stop) < stop_at[0]):
                stop_at = (pos + len(stop), stop)
        finish: str
        matched: str | int | None
        if stop_at is not None and stop_at[0] <= limit:
            text, finish, matched = full[: stop_at[0]], "stop", stop_at[1]
            ids = [ord(c) for c in text]
        elif stop_at is None and len(full) + 1 <= limit:
            text, finish, matched = full, "eos", EOS_ID
            ids = [ord(c) for c in text] + [EOS_ID]
        else:
            text, finish, matched = full[:limit], "length", None
            ids = [ord(c) for c in text]
        completion = len(ids)
        if s.chaos is not None:
            rng = random.Random(hash((s.chaos, seed, count)))
            cut_at = rng.randint(0, min(len(text), limit))
            text = text[:cut_at]
            ids = [ord(c) for c in text]
            finish = rng.choice(["stop", "eos", "length", "abort"])
            matched = rng.choice(list(request.sampling.stop) or ["x"]) if finish == "stop" else (EOS_ID if finish == "eos" else None)
            completion = rng.randint(len(ids), max(len(ids), limit)) if limit else 0
        if s.overreport:
            completion = limit + 1
        return GenResult(
            text=text,
            output_ids=ids,
            finish=finish,  # type: ignore[arg-type]
            completion_tokens=completion,
            prompt_tokens=len(request.input_ids),
            cached_tokens=0,
            matched=matched,
            logprobs=[-0.5] * len(ids) if request.logprobs else None,
            top_logprobs=[{" Yes": -0.3, " No": -1.4}] * max(1, len(ids)) if request.top_logprobs else None,
        )
