"""Build a backend from command-line style options, importing only the one asked for.

Defaults: `--backend local` when no `--url` is given, `sglang` when one is, `sim` when only
`--sim-task` is given.  ``model`` is a GGUF path for `local` and a model name for `openai`;
``api_key_env`` names the environment variable holding the `openai` server's API key (read
here, so a missing variable is a usage error before anything starts).  ``replay`` is the file
`--backend replay` serves; ``record`` wraps whichever backend is made so that every exchange is
written to that file (`ttcdsl.runtime.backends.replay`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ttcdsl.errors import UsageError
from ttcdsl.runtime.backend import Backend

__all__ = ["BACKENDS", "BackendOptions", "make_backend"]

BACKENDS = ("local", "sglang", "sim", "openai", "replay")


@dataclass(frozen=True)
class BackendOptions:
    backend: str | None = None
    url: str | None = None
    reward_url: str | None = None
    sim_task: str | None = None
    model: str | None = None
    router: bool | None = None
    api_key_env: str | None = None
    timeout_s: float = 300.0
    replay: str | None = None
    record: str | None = None

    def resolved(self) -> str:
        if self.backend is not None:
            return self.backend
        if self.replay is not None:
            return "replay"
        if self.url is not None:
            return "sglang"
        if self.sim_task is not None:
            return "sim"
        return "local"


def make_backend(opts: BackendOptions) -> Backend:
    backend = _make(opts)
    if opts.record is not None:
        from ttcdsl.runtime.backends.replay import record_to

        return record_to(backend, opts.record)
    return backend


def _make(opts: BackendOptions) -> Backend:
    kind = opts.resolved()
    if kind not in BACKENDS:
        raise UsageError(f"unknown backend {kind!r}; expected one of {', '.join(BACKENDS)}")
    if opts.api_key_env is not None and kind != "openai":
        raise UsageError("--api-key-env is for --backend openai")
    if (kind == "replay") != (opts.replay is not None):
        raise UsageError("--backend replay and --replay FILE go together (FILE: a `ttc run --record` file)")
    if kind == "replay":
        from ttcdsl.runtime.backends.replay import ReplayBackend

        return ReplayBackend(opts.replay)  # type: ignore[arg-type]
    if kind == "sim":
        if opts.sim_task is None:
            raise UsageError("--backend sim needs --sim-task FILE (a task file: see data/tasks/)")
        from ttcdsl.runtime.backends.sim import SimBackend, load_task

        return SimBackend(load_task(opts.sim_task))
    if kind == "sglang":
        if opts.url is None:
            raise UsageError(
                "--backend sglang needs --url URL of a running server "
                "(start one with `ttc serve --model PATH` or `ttc sim serve --task FILE`)"
            )
        from ttcdsl.runtime.backends.sglang import SGLangBackend

        return SGLangBackend(opts.url, reward_url=opts.reward_url, router=opts.router, timeout=opts.timeout_s,
                             engine_version=True)
    if kind == "openai":
        return _openai(opts)
    if opts.url is not None:
        raise UsageError("--url is for --backend sglang; the local backend runs the model in-process")
    from ttcdsl.runtime.backends.local import LocalBackend

    return LocalBackend(opts.model)


def _openai(opts: BackendOptions) -> Backend:
    if opts.url is None:
        raise UsageError(
            "--backend openai needs --url URL of a server with /v1/completions (vLLM, SGLang, "
            "sglang-router, llama-cpp-python's server: see the README)"
        )
    if opts.router:
        raise UsageError("--router is for --backend sglang; the openai backend detects a router")
    key = None
    if opts.api_key_env is not None:
        key = os.environ.get(opts.api_key_env)
        if not key:
            raise UsageError(
                f"--api-key-env {opts.api_key_env}: that environment variable is not set "
                "(it should hold the server's API key)"
            )
    from ttcdsl.runtime.backends.openai import OpenAIBackend

    return OpenAIBackend(opts.url, model=opts.model, api_key=key, reward_url=opts.reward_url,
                         timeout=opts.timeout_s)
