"""Record a run's backend traffic to a file, and serve it again without the model.

`ttc run --record FILE` wraps whatever backend the run uses (`RecordToFile`, a
`RecordingBackend`): every exchange is appended to FILE as one JSON line, after a header line
with the backend's `BackendInfo` (name, model, url, ...).  `--backend replay --replay FILE`
(`ReplayBackend`) answers each request with what was recorded for it, byte for byte.

Exchanges are keyed by what was asked, never by request ids or timing: a generation by its input
token ids, its sampling parameters (seed included) and the logprobs it asked for; a prompt's
tokenization by its text; a warm-up by its ids; a reward call by its texts.  Identical requests
are answered in the order they were recorded; a failure (a transient error the run retried) is
replayed as the same failure, and a streamed request the recorded run cancelled is cancelled
again (it reports the tokens it had then and waits to be cancelled).  A request that was never
recorded (or asked more often than recorded) fails with a `BackendError` naming it, so a changed
program, argument or seed shows at its first difference.  Tokenizations, warm-ups and reward
calls asked more often than recorded repeat the last answer (they are pure functions).

The replay reports the recorded model and facts (`info`), with the name ``replay`` (the recorded
backend's name after a colon), so results made from a replay say where the traffic came from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec

from ttcdsl.errors import BackendError, TransientBackendError, UsageError
from ttcdsl.runtime.backend import Backend, BackendInfo, GenRequest, GenResult, WarmResult
from ttcdsl.runtime.backends.recording import RecordingBackend, recording

__all__ = ["FORMAT", "RecordToFile", "ReplayBackend", "record_to", "request_key"]

FORMAT = "ttc-record/1"
# How long a replayed request that was cancelled when recorded waits to be cancelled again.
ABORT_WAIT_S = 30.0

_enc = msgspec.json.Encoder()


def request_key(request: GenRequest) -> str:
    """What a generation is keyed by: everything it asked for except its id and streaming."""
    return _enc.encode([list(request.input_ids), request.sampling, request.logprobs, request.top_logprobs]).decode()


def _describe(request: GenRequest) -> str:
    s = request.sampling
    tail = ", ".join(str(i) for i in request.input_ids[-6:])
    return (f"generate of {len(request.input_ids)} input tokens (ending {tail}), max_new_tokens="
            f"{s.max_new_tokens}, temperature={s.temperature:g}, seed={s.seed}")


@dataclass
class RecordToFile(RecordingBackend):
    """A `RecordingBackend` that also appends every exchange to a file (see the module doc).
    Built by `record_to`, which keeps the wrapped backend's batching and streaming."""

    path: str = ""
    _file: TextIO | None = field(default=None, repr=False)

    async def __aenter__(self) -> RecordToFile:
        await self.inner.__aenter__()
        if self._file is None:
            try:
                self._file = Path(self.path).open("w", encoding="utf-8")  # noqa: SIM115 (closed in __aexit__)
            except OSError as exc:
                await self.inner.__aexit__(None, None, None)
                raise UsageError(f"--record {self.path}: cannot write it ({exc})") from None
            self._write({"format": FORMAT, "info": msgspec.to_builtins(self.inner.info)})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.inner.__aexit__(*exc_info)
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(_enc.encode(entry).decode() + "\n")
            self._file.flush()

    async def tokenize(self, text: str) -> list[int]:
        ids = await self.inner.tokenize(text)
        self._write({"op": "tokenize", "text": text, "ids": ids})
        return ids

    async def detokenize(self, ids: Sequence[int]) -> str:
        text = await self.inner.detokenize(ids)
        self._write({"op": "detokenize", "ids": list(ids), "text": text})
        return text

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        result = await super().warm(input_ids)
        self._write({"op": "warm", "ids": list(input_ids), "result": result})
        return result

    async def think_tags(self) -> tuple[str, str] | None:
        tags = await super().think_tags()
        self._write({"op": "think_tags", "tags": list(tags) if tags is not None else None})
        return tags

    async def reward(self, texts: Sequence[str]) -> list[float]:
        scores = await self.inner.reward(texts)
        self._write({"op": "reward", "texts": list(texts), "scores": scores})
        return scores

    def record(self, request: GenRequest, result: GenResult) -> None:
        super().record(request, result)
        self._write({"op": "generate", "key": request_key(request), "result": result})

    def failed(self, requests: Sequence[GenRequest], exc: Exception) -> None:
        transient = isinstance(exc, TransientBackendError)
        for request in requests:
            self._write({"op": "generate", "key": request_key(request), "error": str(exc), "transient": transient})

    def cancelled(self, request: GenRequest, tokens: int) -> None:
        super().cancelled(request, tokens)
        self._write({"op": "generate", "key": request_key(request), "aborted": tokens})


def record_to(inner: Backend, path: str) -> RecordingBackend:
    """``inner`` wrapped so that every exchange of the run is appended to ``path``."""
    return recording(inner, RecordToFile, path=path)


class _Gen(msgspec.Struct):
    key: str
    result: GenResult | None = None
    error: str | None = None
    transient: bool = False
    aborted: int | None = None


class ReplayBackend:
    """Serves a file written by `--record` (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.recorded_info, self._gens, self._pure = _load(self.path)
        self.generations = sum(len(q) for q in self._gens.values())

    async def __aenter__(self) -> ReplayBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @property
    def info(self) -> BackendInfo:
        return msgspec.structs.replace(self.recorded_info, name=f"replay:{self.recorded_info.name}")

    def _pure_answer(self, op: str, key: str, what: str) -> Any:
        answers = self._pure.get((op, key))
        if not answers:
            raise BackendError(f"replay {self.path}: {what} was not recorded ({self._hint()})")
        return answers.popleft() if len(answers) > 1 else answers[0]

    def _hint(self) -> str:
        return "was the recording made with the same program, arguments, --seed and backend?"

    async def tokenize(self, text: str) -> list[int]:
        shown = text if len(text) <= 60 else text[:57] + "..."
        return list(self._pure_answer("tokenize", text, f"the tokenization of {shown!r}"))

    async def detokenize(self, ids: Sequence[int]) -> str:
        return str(self._pure_answer("detokenize", _enc.encode(list(ids)).decode(), f"the text of {len(ids)} token ids"))

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        key = _enc.encode(list(input_ids)).decode()
        return msgspec.convert(self._pure_answer("warm", key, f"a warm-up of {len(input_ids)} tokens"), WarmResult)

    async def think_tags(self) -> tuple[str, str] | None:
        """The thinking tags the recorded backend gave (None when the recording never asked)."""
        if ("think_tags", "") not in self._pure:
            return None
        tags = self._pure_answer("think_tags", "", "the thinking tags")
        return (str(tags[0]), str(tags[1])) if tags is not None else None

    async def reward(self, texts: Sequence[str]) -> list[float]:
        key = _enc.encode(list(texts)).decode()
        return list(self._pure_answer("reward", key, f"a reward call on {len(texts)} texts"))

    def _next(self, request: GenRequest) -> _Gen:
        queue = self._gens.get(request_key(request))
        if not queue:
            seen = "asked more often than recorded" if queue is not None else "not recorded"
            raise BackendError(f"replay {self.path}: request {seen}: {_describe(request)} ({self._hint()})")
        return queue.popleft()

    async def generate(self, request: GenRequest) -> GenResult:
        return await self.generate_stream(request, _ignore)

    async def generate_stream(self, request: GenRequest, progress: Callable[[int], None]) -> GenResult:
        entry = self._next(request)
        await anyio.lowlevel.checkpoint()
        if entry.error is not None:
            raise (TransientBackendError if entry.transient else BackendError)(entry.error)
        if entry.aborted is not None:
            progress(entry.aborted)
            await anyio.sleep(ABORT_WAIT_S)
            raise BackendError(f"replay {self.path}: {_describe(request)} was cancelled in the recording, "
                               f"but this run waited {ABORT_WAIT_S:g} s for it")
        assert entry.result is not None
        progress(entry.result.completion_tokens)
        return msgspec.structs.replace(entry.result, output_ids=list(entry.result.output_ids))


def _ignore(tokens: int) -> None:
    return None


def _load(path: str) -> tuple[BackendInfo, dict[str, deque[_Gen]], dict[tuple[str, str], deque[Any]]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--replay {path}: no such file (write one with `ttc run --record {path}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--replay {path}: cannot read it ({exc})") from None
    try:
        header = msgspec.json.decode(lines[0]) if lines else {}
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"the first line is not a {FORMAT} header")
        info = msgspec.convert(header["info"], BackendInfo)
        gens: dict[str, deque[_Gen]] = {}
        pure: dict[tuple[str, str], deque[Any]] = {}
        for line in lines[1:]:
            entry = msgspec.json.decode(line)
            op = entry["op"]
            if op == "generate":
                gen = msgspec.convert(entry, _Gen)
                gens.setdefault(gen.key, deque()).append(gen)
            elif op == "tokenize":
                pure.setdefault((op, entry["text"]), deque()).append(entry["ids"])
            elif op == "detokenize":
                pure.setdefault((op, _enc.encode(entry["ids"]).decode()), deque()).append(entry["text"])
            elif op == "warm":
                pure.setdefault((op, _enc.encode(entry["ids"]).decode()), deque()).append(entry["result"])
            elif op == "reward":
                pure.setdefault((op, _enc.encode(entry["texts"]).decode()), deque()).append(entry["scores"])
            elif op == "think_tags":
                pure.setdefault((op, ""), deque()).append(entry["tags"])
            else:
                raise ValueError(f"unknown op {op!r}")
    except (ValueError, KeyError, TypeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UsageError(f"--replay {path}: not a recording made by `ttc run --record` ({exc})") from None
    return info, gens, pure
