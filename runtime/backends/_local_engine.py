"""The llama.cpp side of the local backend: one model, one KV sequence, a blocking token loop.

`LlamaEngine` owns a `llama_cpp.Llama` created with ``logits_all=False`` and drives generation
itself: it evaluates the prompt, reads only the last position's logits
(``llama_get_logits_ith(ctx, -1)``), samples with `_local_sampling`, evaluates the chosen token,
and repeats.  That keeps generation as fast as llama.cpp's own loop while giving exact
per-token logprobs and seeded, reproducible sampling.

Prefix reuse: llama.cpp keeps the KV cache of the last sequence it evaluated.  A new request
keeps the longest common prefix of that sequence and its own ``input_ids`` (at most
``len(input_ids) - 1`` tokens, since the last prompt token must be evaluated to get logits, as in
SGLang), drops the rest of the cache, and evaluates only the new suffix; the kept length is the
request's ``cached_tokens``.

Every method that touches the model blocks and takes `LlamaEngine.lock`; callers run them in a
worker thread.  A job checks its cancel flag (and the engine's closing flag) before every token,
so an abandoned generation stops within one token.  Nothing here knows about anyio.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ttcdsl.errors import BackendError
from ttcdsl.runtime.backend import FinishKind, Sampling
from ttcdsl.runtime.backends._local_sampling import (
    choose_token,
    log_softmax,
    make_rng,
    top_alternatives,
)

__all__ = ["Job", "LlamaEngine", "Outcome", "as_ids", "common_prefix_len"]


def as_ids(ids: Sequence[int]) -> np.ndarray:
    """Token ids as a 1-d int64 array (the form the prefix matching works on)."""
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-d integer arrays."""
    m = min(a.shape[0], b.shape[0])
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


@dataclass
class Job:
    """One request as the engine sees it (``max_new_tokens == 0`` is a prefill-only warm-up)."""

    input_ids: Sequence[int]
    sampling: Sampling
    logprobs: bool = False
    top_logprobs: int = 0
    # Set from the event loop when the awaiting task is cancelled.
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    """What a `Job` produced; ``kv_ids`` is what the KV cache holds afterwards."""

    output_ids: list[int]
    text: str
    finish: FinishKind
    matched: str | int | None
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[float] | None
    top_logprobs: list[dict[str, float]] | None
    kv_ids: np.ndarray


# Model loading patches a module-level function of llama_cpp (below): one load at a time.
_LOAD_LOCK = threading.Lock()


@contextmanager
def _without_extra_buffer_types(lib: Any) -> Iterator[None]:
    """Load models without llama.cpp's "extra buffer types" (weight repacking for AMX and other
    CPU kernels).  On CPUs with Intel AMX the repacked path of the pinned llama.cpp crashes with a
    segmentation fault at the first decode; plain CPU buffers work everywhere and give the same
    tokens.  `llama_cpp.Llama` offers no argument for it, so the default model parameters it
    starts from are wrapped for the duration of the load."""
    low = lib.llama_cpp
    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    with _LOAD_LOCK:
        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = original


class LlamaEngine:
    """A loaded GGUF model with one KV sequence; see the module doc.  Not thread-safe except
    through `lock`, which every model-touching method takes."""

    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int, n_batch: int) -> None:
        import llama_cpp  # imported here: the caller has checked that it is installed

        self._lib: Any = llama_cpp
        self.lock = threading.Lock()
        self.closing = threading.Event()
        with _without_extra_buffer_types(llama_cpp):
            self._llm: Any = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=False,
                verbose=False,
            )
        self.n_ctx: int = int(self._llm.n_ctx())
        self.n_vocab: int = int(self._llm.n_vocab())
        self._vocab = self._llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._adds_bos = bool(self._llm._model.add_bos_token())
        self._bos = int(self._llm.token_bos())
        # Running totals, for `LocalBackend.stats` (written under `lock`).
        self.requests = 0
        self.prefilled_tokens = 0  # prompt tokens evaluated (not reused from the KV cache)
        self.reused_tokens = 0  # prompt tokens reused from the KV cache
        self.generated_tokens = 0  # tokens sampled, including those of cancelled requests

    # -- tokens ------------------------------------------------------------------------------

    def chat_template(self) -> str | None:
        """The GGUF metadata's ``tokenizer.chat_template`` (None without one)."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    def tokenize(self, text: str) -> list[int]:
        """Prompt ids: BOS if the model adds one, special tokens (chat markers) parsed.  Reads
        only the vocabulary, so it is safe beside a running generation."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens such as BOS/EOS render as nothing)."""
        self.check_ids(ids)
        raw = b"".join(self._piece(t) for t in ids)
        # A model that prepends BOS also prepends a space to the first word (SentencePiece):
        # drop it so detokenize(tokenize(text)) == text.  Models without BOS keep every byte.
        if self._adds_bos and ids and ids[0] == self._bos and raw.startswith(b" "):
            raw = raw[1:]
        return raw.decode("utf-8", errors="replace")

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (memoised); special tokens are empty."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:  # the buffer was too small: -n is the size needed
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise `BackendError` unless every id is in the vocabulary (llama.cpp would crash)."""
        if len(ids) == 0:
            return
        arr = np.asarray(ids, dtype=np.int64)
        bad = arr[(arr < 0) | (arr >= self.n_vocab)]
        if bad.size:
            raise BackendError(
                f"token id {int(bad[0])} is outside the local model's vocabulary (0..{self.n_vocab - 1})"
            )

    def _is_eog(self, token: int) -> bool:
        is_eog = getattr(self._lib, "llama_vocab_is_eog", None) or self._lib.llama_token_is_eog
        return bool(is_eog(self._vocab, token))

    # -- KV cache ------------------------------------------------------------------------------

    def kv_ids(self) -> np.ndarray:
        """A copy of the token ids the KV cache currently holds."""
        return np.array(self._llm.input_ids[: self._llm.n_tokens], dtype=np.int64)

    def _prefill(self, ids: Sequence[int]) -> int:
        """Make the KV cache hold exactly ``ids`` and the logits be those of its last position;
        returns how many leading tokens were reused instead of evaluated."""
        llm = self._llm
        have = int(llm.n_tokens)
        want = as_ids(ids)
        reuse = min(common_prefix_len(llm.input_ids[:have], want), len(ids) - 1)
        if reuse < have and not llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llm._ctx.kv_cache_clear()  # this model cannot drop a suffix; start over
            reuse = 0
        llm.n_tokens = reuse
        self._eval(list(ids[reuse:]))
        return reuse

    def _eval(self, ids: list[int]) -> None:
        try:
            self._llm.eval(ids)
        except RuntimeError as exc:  # llama_decode failed (e.g. no KV slot)
            self._reset()
            raise BackendError(f"llama.cpp could not evaluate {len(ids)} tokens: {exc}") from exc

    def _last_logits(self) -> np.ndarray:
        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _reset(self) -> None:
        self._llm.n_tokens = 0
        self._llm._ctx.kv_cache_clear()

    # -- generation ------------------------------------------------------------------------------

    def run(self, job: Job) -> Outcome:
        """Prefill ``job.input_ids`` (reusing the cached prefix) and generate (see module doc)."""
        with self.lock:
            return self._run(job)

    def _run(self, job: Job) -> Outcome:
        n_in = len(job.input_ids)
        if n_in == 0:
            raise BackendError("cannot generate from an empty prompt (0 input tokens)")
        if n_in >= self.n_ctx and (job.sampling.max_new_tokens > 0 or n_in > self.n_ctx):
            raise BackendError(
                f"the input ({n_in} tokens) does not fit the local model's context of {self.n_ctx} "
                "tokens (LocalBackend(n_ctx=...) sets it)"
            )
        self.check_ids(job.input_ids)
        if job.cancel.is_set() or self.closing.is_set():
            return self._outcome(job, [], "abort", None, 0, None, None)
        cached = self._prefill(job.input_ids)
        self.requests += 1
        self.prefilled_tokens += n_in - cached
        self.reused_tokens += cached
        if job.sampling.max_new_tokens <= 0:
            return self._outcome(job, [], "length", None, cached, None, None)
        return self._decode(job, cached)

    def _decode(self, job: Job, cached: int) -> Outcome:
        rng = make_rng(job.sampling.seed)
        want_lp = job.logprobs or job.top_logprobs > 0
        out: list[int] = []
        lps: list[float] | None = [] if job.logprobs else None
        tops: list[dict[str, float]] | None = [] if job.top_logprobs > 0 else None
        raw = bytearray()
        text_len = 0  # length of the decodable text so far (stop strings are searched after it)
        longest_stop = max((len(s) for s in job.sampling.stop), default=0)
        finish: FinishKind = "length"
        matched: str | int | None = None
        logits = self._last_logits()
        while True:
            if job.cancel.is_set() or self.closing.is_set():
                finish = "abort"
                break
            token = choose_token(
                logits,
                rng,
                temperature=job.sampling.temperature,
                top_p=job.sampling.top_p,
                top_k=job.sampling.top_k,
                min_p=job.sampling.min_p,
            )
            out.append(token)
            self.generated_tokens += 1
            if want_lp:
                lp = log_softmax(logits)
                if lps is not None:
                    lps.append(float(lp[token]))
                if tops is not None:
                    tops.append(self._top_dict(lp, job.top_logprobs))
            if self._is_eog(token):
                finish, matched = "eos", token
                break
            if job.sampling.stop:
                raw += self._piece(token)
                text = raw.decode("utf-8", errors="ignore")
                hit = _first_stop(text, job.sampling.stop, max(0, text_len - longest_stop + 1))
                text_len = len(text)
                if hit is not None:
                    finish, matched = "stop", hit
                    break
            if len(out) >= job.sampling.max_new_tokens:
                break
            if self._llm.n_tokens >= self.n_ctx:
                break  # the context is full: "length" with fewer tokens than allowed
            self._eval([token])
            logits = self._last_logits()
        return self._outcome(job, out, finish, matched, cached, lps, tops)

    def _top_dict(self, lp: np.ndarray, k: int) -> dict[str, float]:
        top: dict[str, float] = {}
        for tok, value in top_alternatives(lp, k):
            top.setdefault(self._piece(tok).decode("utf-8", errors="replace"), value)
        return top

    def _outcome(
        self,
        job: Job,
        out: list[int],
        finish: FinishKind,
        matched: str | int | None,
        cached: int,
        lps: list[float] | None,
        tops: list[dict[str, float]] | None,
    ) -> Outcome:
        text = b"".join(self._piece(t) for t in out).decode("utf-8", errors="replace")
        return Outcome(
            output_ids=out,
            text=text,
            finish=finish,
            matched=matched,
            prompt_tokens=len(job.input_ids),
            cached_tokens=cached,
            logprobs=lps,
            top_logprobs=tops,
            kv_ids=self.kv_ids(),
        )

    def close(self) -> None:
        """Stop any running job (at its next token) and free the model."""
        self.closing.set()
        with self.lock:
            self._llm.close()


def _first_stop(text: str, stops: Sequence[str], start: int) -> str | None:
    """The stop string occurring earliest in ``text[start:]`` (ties: the longer one)."""
    best: tuple[int, int, str] | None = None
    for s in stops:
        if not s:
            continue
        pos = text.find(s, start)
        if pos >= 0 and (best is None or (pos, -len(s)) < (best[0], best[1])):
            best = (pos, -len(s), s)
    return None if best is None else best[2]
