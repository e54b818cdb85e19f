"""`ttc serve`: launch a real SGLang server for a model and print its URL once it is ready.

    ttc serve --model PATH [--port N] [--host 127.0.0.1] [--cpu] [--python PY] [-- EXTRA...]

The command line is SGLang's own (``python -m sglang.launch_server``); arguments after ``--`` go
to it unchanged.  ``--cpu`` applies the recipe that runs stock ``sglang==0.5.23`` on a machine
without a GPU (`ttcdsl.launch.sglang_launch` says what it changes).  The process is run by
`ttcdsl.launch.ServerProcess`; this module is only the command line.

Start-up failures (no sglang in the chosen python, a missing model, a server that dies or never
becomes ready) end as one line saying what to fix.  SIGTERM stops the server like Ctrl-C does.
This command does not install SGLang: ``scripts/sglang_tier.sh setup`` builds the venv it looks
for by default.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from ttcdsl.commands._options import add_address_options, positive_int, positive_seconds
from ttcdsl.errors import BackendUnavailable, UsageError
from ttcdsl.launch import (
    CPU_MAX_TOTAL_TOKENS,
    default_python,
    free_port,
    sglang_home,
    sglang_launch,
)

__all__ = ["check_model", "check_sglang", "register"]


def check_sglang(python: str) -> None:
    """Raise unless ``python`` exists and can import sglang."""
    if not Path(python).exists():
        raise UsageError(f"--python {python} does not exist; pass the python of a venv with sglang")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('sglang') is None)"
    try:
        found = subprocess.run(
            [python, "-c", probe], capture_output=True, timeout=60,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        ).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run --python {python}: {exc}") from None
    if found != 0:
        raise BackendUnavailable(
            f"sglang is not installed for {python}; install it there "
            f"(`{python} -m pip install sglang==0.5.23`), pass --python of a venv that has it, "
            f"or run scripts/sglang_tier.sh setup (creates {sglang_home() / 'venv'})"
        )


def check_model(model: str, *, cpu: bool) -> None:
    """Raise unless ``model`` is a local model SGLang can load."""
    path = Path(model)
    if not path.exists():
        raise UsageError(
            f"model path {model} does not exist; pass --model a local model folder "
            "(config.json + weights)"
        )
    if cpu and path.suffix == ".gguf":
        raise UsageError(
            f"SGLang cannot load GGUF on CPU ({model}); convert it to a Hugging Face folder "
            "first (tests/sglang_tier/convert_gguf.py does this)"
        )


class _Terminated(Exception):
    """Raised in the main thread when ttc serve receives SIGTERM."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


# --- the sub-command --------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="launch a real SGLang server for a model",
        description="Launch `python -m sglang.launch_server` for a model and print its URL when "
        "it is ready.  Arguments after `--` are passed to SGLang unchanged.",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="local model folder")
    add_address_options(parser)
    parser.add_argument(
        "--cpu", action="store_true", help="run on CPU with the recipe for stock sglang==0.5.23"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="python with sglang installed (default: the test-tier venv if present, else this "
        "python)",
    )
    parser.add_argument(
        "--max-total-tokens",
        type=positive_int,
        metavar="N",
        help=f"KV cache size in tokens (default with --cpu: {CPU_MAX_TOTAL_TOKENS})",
    )
    parser.add_argument(
        "--ready-timeout", type=positive_seconds, default=600.0, metavar="S",
        help="seconds to wait for the server to become ready (default 600)",
    )
    parser.add_argument("--log", type=Path, metavar="FILE", help="write the server's output here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for SGLang")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    extra = list(args.extra)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        raise UsageError(f"put SGLang's own arguments after `--` (got {' '.join(extra)})")
    python = args.python or default_python()
    check_model(args.model, cpu=args.cpu)
    check_sglang(python)
    spec = sglang_launch(
        args.model, host=args.host, port=args.port or free_port(args.host), cpu=args.cpu,
        python=python, max_total_tokens=args.max_total_tokens, extra=extra,
    )
    server = spec.process(log=args.log, ready_timeout=args.ready_timeout)
    print(f"ttc serve: starting {' '.join(spec.argv)}", file=sys.stderr, flush=True)
    # SIGTERM (a supervisor, `kill`) stops the server like Ctrl-C does, never orphaning it.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start()
        server.wait_ready()
        print(spec.url, flush=True)
        print(f"ttc serve: SGLang is ready at {spec.url}; Ctrl-C stops it", file=sys.stderr,
              flush=True)
        status = server.wait()
    except (KeyboardInterrupt, _Terminated):
        print("ttc serve: stopping SGLang", file=sys.stderr, flush=True)
        return 130
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    if status != 0:
        raise BackendUnavailable(f"SGLang at {spec.url} exited with status {status}")
    return 0
