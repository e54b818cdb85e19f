"""`SimBackend`: the simulator as an in-process `Backend` (no HTTP, no server).

    async with SimBackend(load_task("data/tasks/demo.json")) as backend:
        ids = await backend.tokenize(prompt)
        await backend.warm(ids)
        result = await backend.generate(GenRequest(rid="r1", input_ids=tuple(ids),
                                        sampling=Sampling(max_new_tokens=256, seed=7)))

It follows every convention of `ttcdsl.runtime.backend`: ``text`` is the decoded new tokens
including a matched stop string, ``finish`` is ``"eos"`` with ``matched=<token id>`` at the
end-of-sequence token, ``"stop"`` with the string, ``"length"``, or ``"abort"``; cancelling the
awaiting task stops the generation.  It runs on a `SimEngine`, the same engine class the HTTP
server (`ttcdsl.runtime.sim.server`) uses, so both answer identically; pass ``engine=`` to share
one engine (and its radix cache and counters) with a server.  Faults from `SimConfig.faults`
surface as `TransientBackendError` (errors and resets) or a hang (stalls).

The simulator package imports nothing from ttcdsl; this adapter is where its errors meet
ttcdsl's: a refused request becomes `BackendError`, and `usage_errors` / `load_task` turn the
simulator's `SimError` (a bad task file, configuration value or address) into the one-line
`UsageError` the command line prints.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ttcdsl.errors import BackendError, ProtocolViolation, TransientBackendError, UsageError
from ttcdsl.runtime.backend import BackendInfo, FinishKind, GenRequest, GenResult, WarmResult
from ttcdsl.runtime.sim import SimError, SimRequestError
from ttcdsl.runtime.sim import load_task as _load_task
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest, SimConfig, SimEngine, SimStats
from ttcdsl.runtime.sim.task import SimTask

__all__ = ["SimBackend", "load_task", "usage_errors"]


@contextmanager
def usage_errors() -> Iterator[None]:
    """Re-raise the simulator's `SimError` raised inside the block as a `UsageError` with the
    same text (what the command line shows the user, as one line)."""
    try:
        yield
    except SimError as exc:
        raise UsageError(str(exc)) from None


def load_task(path: str | Path) -> SimTask:
    """`ttcdsl.runtime.sim.load_task`, with its `TaskError` as a `UsageError`."""
    with usage_errors():
        return _load_task(path)


def _text(engine: SimEngine, out: EngineOutput) -> str:
    """The output ids as text, special tokens skipped: the engine's running bytes of the
    output's plain tokens when they cover every id (see `EngineOutput`), else a decode."""
    if out.plain_upto == len(out.output_ids):
        return out.plain_bytes.decode("utf-8", errors="replace")
    return engine.detokenize(out.output_ids, skip_special_tokens=True)


class SimBackend:
    """The in-process simulator backend (see the module doc)."""

    def __init__(
        self,
        task: SimTask | None = None,
        config: SimConfig | None = None,
        *,
        engine: SimEngine | None = None,
    ) -> None:
        if engine is not None and (task is not None or config is not None):
            raise ValueError("pass either an engine or a task and config, not both")
        self.engine = engine if engine is not None else SimEngine(task, config)
        self._serial = 0

    async def __aenter__(self) -> SimBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="sim", model=self.engine.config.model, url=None, has_reward=True,
                           engine="ttcdsl-sim (in-process)")

    @property
    def stats(self) -> SimStats:
        """The engine's counters (prefilled and cached tokens, requests, in flight...)."""
        return self.engine.stats

    async def think_tags(self) -> tuple[str, str] | None:
        """The task's thinking tags: ``<think>``/``</think>`` when it has reasoning problems (the
        in-process face of the server's ``"reasoning_parser": "deepseek-r1"``)."""
        tags: tuple[str, str] | None = getattr(self.engine.task, "think_tags", None)
        return tags

    async def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    async def detokenize(self, ids: Sequence[int]) -> str:
        try:
            return self.engine.detokenize(ids)
        except ValueError as exc:
            raise BackendError(f"sim: {exc}") from None

    def _rid(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self._serial}"

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        req = EngineRequest(rid=self._rid("warm"), input_ids=list(input_ids), max_new_tokens=0)
        out = await self._run(req)
        return WarmResult(prompt_tokens=out.prompt_tokens, cached_tokens=out.cached_tokens)

    async def generate(self, request: GenRequest) -> GenResult:
        return await self._generate(request, None)

    async def generate_stream(self, request: GenRequest, progress: Callable[[int], None]) -> GenResult:
        """`generate`, token by token as the server streams, telling ``progress`` how many
        tokens are out so far."""

        async def each(out: EngineOutput) -> None:
            progress(len(out.output_ids))

        return await self._generate(request, each)

    async def _generate(self, request: GenRequest,
                        on_progress: Callable[[EngineOutput], Awaitable[None]] | None) -> GenResult:
        s = request.sampling
        if s.max_new_tokens < 0:
            raise BackendError(f"sim: max_new_tokens must be >= 0, got {s.max_new_tokens}")
        fault = self.engine.draw_fault()
        if fault == "error":
            status = self.engine.config.faults.error_status
            raise TransientBackendError(f"sim: simulated HTTP {status} for request {request.rid}")
        if fault == "reset":
            raise TransientBackendError(
                f"sim: simulated connection reset for request {request.rid}"
            )
        if fault == "stall":
            await self.engine.stall()
        rid = request.rid if not self.engine.in_flight(request.rid) else self._rid(request.rid)
        req = EngineRequest(
            rid=rid,
            input_ids=list(request.input_ids),
            max_new_tokens=s.max_new_tokens,
            stop=s.stop,
            temperature=s.temperature,
            seed=s.seed,
            return_logprob=request.logprobs or request.top_logprobs > 0,
            top_logprobs_num=request.top_logprobs,
        )
        out = await self._run(req, on_progress)
        if out.completion_tokens > s.max_new_tokens:
            raise ProtocolViolation(
                f"sim returned {out.completion_tokens} tokens for max_new_tokens={s.max_new_tokens}"
            )
        finish = out.finish or {}
        matched = finish.get("matched")
        kind: FinishKind = "abort"
        if finish.get("type") == "stop":
            kind = "eos" if isinstance(matched, int) else "stop"
        elif finish.get("type") == "length":
            kind = "length"
        tok = self.engine.tokenizer
        top = None
        if request.top_logprobs > 0:
            top = [{tok.token_text(i): lp for i, lp in row} for row in out.output_top]
        return GenResult(
            text=_text(self.engine, out),
            output_ids=out.output_ids,
            finish=kind,
            completion_tokens=out.completion_tokens,
            prompt_tokens=out.prompt_tokens,
            cached_tokens=out.cached_tokens,
            matched=matched if kind in ("stop", "eos") else None,
            logprobs=list(out.output_logprobs) if request.logprobs else None,
            top_logprobs=top,
        )

    async def _run(self, req: EngineRequest,
                   on_progress: Callable[[EngineOutput], Awaitable[None]] | None = None) -> EngineOutput:
        try:
            return await self.engine.execute(req, on_progress)
        except SimRequestError as exc:
            raise BackendError(f"sim: {exc.message}") from None

    async def reward(self, texts: Sequence[str]) -> list[float]:
        return self.engine.reward(texts)
