"""`RecordingBackend` (runtime/backends/recording.py): single, batched and streamed generations
are counted in flight while they run, answered ones recorded, failed ones handed to `failed`,
and a streamed one cancelled part-way to `cancelled` with the tokens it had reached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import pytest

from ttcdsl.errors import BackendError
from ttcdsl.runtime.backend import GenRequest, GenResult, Sampling
from ttcdsl.runtime.backends.recording import RecordingBackend, recording
from ttcdsl.runtime.backends.scripted import Script, ScriptedBackend


class _Both(ScriptedBackend):
    """A scripted model that also batches and streams; a stream of ``hang`` never ends after
    reporting 3 tokens, ``fail`` makes every generation raise."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(Script(fail="the model fell over") if fail else Script())
        self.hang = anyio.Event()

    @property
    def batches(self) -> bool:
        return True

    async def generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return [await self.generate(r) for r in requests]

    async def generate_stream(self, request: GenRequest, progress: Callable[[int], None]) -> GenResult:
        if request.rid == "hang":
            progress(3)
            await self.hang.wait()
        return await self.generate(request)


@dataclass
class _Watching(RecordingBackend):
    failures: list[tuple[list[str], str]] = field(default_factory=list)

    def failed(self, requests: Sequence[GenRequest], exc: Exception) -> None:
        self.failures.append(([r.rid for r in requests], str(exc)))


def req(rid: str) -> GenRequest:
    return GenRequest(rid=rid, input_ids=(1, 2, 3), sampling=Sampling(max_new_tokens=8, seed=1))


def test_answered_generations_of_every_kind_are_recorded_and_counted_in_flight() -> None:
    async def main() -> RecordingBackend:
        backend = recording(_Both())
        async with backend:
            await backend.generate(req("one"))
            await backend.generate_batch([req("b1"), req("b2"), req("b3")])  # type: ignore[attr-defined]
            await backend.generate_stream(req("s"), lambda tokens: None)  # type: ignore[attr-defined]
        return backend

    backend = anyio.run(main)
    assert [r.rid for r, _ in backend.calls] == ["one", "b1", "b2", "b3", "s"]
    assert backend.reported == sum(result.completion_tokens for _, result in backend.calls)
    assert (backend.in_flight, backend.max_in_flight, backend.aborted) == (0, 3, [])


def test_failures_go_to_failed_and_leave_nothing_in_flight() -> None:
    async def main() -> _Watching:
        backend = recording(_Both(fail=True), _Watching)
        async with backend:
            for call in (lambda: backend.generate(req("one")),
                         lambda: backend.generate_batch([req("b1"), req("b2")]),  # type: ignore[attr-defined]
                         lambda: backend.generate_stream(req("s"), lambda tokens: None)):  # type: ignore[attr-defined]
                with pytest.raises(BackendError, match="the model fell over"):
                    await call()
        return backend

    backend = anyio.run(main)
    assert [rids for rids, _ in backend.failures] == [["one"], ["b1", "b2"], ["s"]]
    assert (backend.calls, backend.in_flight, backend.aborted) == ([], 0, [])


def test_a_cancelled_stream_is_listed_with_its_tokens_and_a_cancelled_plain_request_is_not() -> None:
    async def main() -> RecordingBackend:
        inner = _Both()
        backend = recording(inner)
        async with backend:
            with anyio.move_on_after(0.05):
                await backend.generate_stream(req("hang"), lambda tokens: None)  # type: ignore[attr-defined]
            slow = recording(ScriptedBackend(Script(latency_s=5.0)))
            with anyio.move_on_after(0.05):
                await slow.generate(req("plain"))
            assert (slow.aborted, slow.in_flight) == ([], 0)
        return backend

    backend = anyio.run(main)
    assert [(r.rid, tokens) for r, tokens in backend.aborted] == [("hang", 3)]
    assert (backend.progress, backend.in_flight, backend.calls) == ({"hang": 3}, 0, [])
