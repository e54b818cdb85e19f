"""`RecordingBackend`: wraps any backend and records what passed through it.

For tests and debugging: every request and result in order, the completion tokens the wrapped
backend reported in total (the ground truth a budget check compares against), and the most
requests that were ever in flight at once.  It changes nothing about the calls themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ttcdsl.runtime.backend import Backend, BackendInfo, GenRequest, GenResult, WarmResult

__all__ = ["RecordingBackend"]


@dataclass
class RecordingBackend:
    inner: Backend
    calls: list[tuple[GenRequest, GenResult]] = field(default_factory=list)
    warms: list[tuple[int, ...]] = field(default_factory=list)
    reported: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    async def __aenter__(self) -> RecordingBackend:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.__aexit__(*exc_info)

    @property
    def info(self) -> BackendInfo:
        return self.inner.info

    async def tokenize(self, text: str) -> list[int]:
        return await self.inner.tokenize(text)

    async def detokenize(self, ids: Sequence[int]) -> str:
        return await self.inner.detokenize(ids)

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        self.warms.append(tuple(input_ids))
        return await self.inner.warm(input_ids)

    async def reward(self, texts: Sequence[str]) -> list[float]:
        return await self.inner.reward(texts)

    async def generate(self, request: GenRequest) -> GenResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            result = await self.inner.generate(request)
        finally:
            self.in_flight -= 1
        self.reported += result.completion_tokens
        self.calls.append((request, result))
        return result
