"""Command-line options that several `ttc` commands take, each declared once.

    add_run_options(parser)      --strategy --arg --seed --concurrency --budget --timeout
                                 --allow-verifier --think-tags, and the backend group below
                                 (run, bench)
    add_backend_options(parser)  --backend --url --reward-url --sim-task --model --router
                                 --api-key-env --replay --record
    add_items_option(parser)     --items: dataset items in flight                (run, bench)
    add_item_timeout_option(...) --item-timeout: each dataset item's limit       (run, bench)
    add_address_options(parser)  --host --port of a server to start              (serve, sim serve)

Each flag has one help text and one validation, done by argparse while parsing (so a bad value
is a one-line usage error, status 2, before any work).  `run_options` and `backend_options` turn
the parsed namespace into the runtime's option structs; nothing past them sees a namespace.

`whole_deadline` is ``--timeout`` as both commands mean it: one limit over the whole command,
the backend's start-up and shutdown included; ``--item-timeout`` is each item's.

`harness_flags` rewords the harnesses' `HarnessError`s with these flags, so dataset mode and
`ttc bench` say ``--input data.jsonl: no such file`` where the harness says "the input file".
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio

from ttcdsl.errors import RunError, UsageError
from ttcdsl.harness import HarnessError
from ttcdsl.runtime.backends.factory import BACKENDS, BackendOptions
from ttcdsl.runtime.executor import DEFAULT_CONCURRENCY, RunOptions

__all__ = [
    "FLAGS",
    "add_address_options",
    "add_backend_options",
    "add_item_timeout_option",
    "add_items_option",
    "add_run_options",
    "backend_options",
    "harness_flags",
    "port_number",
    "positive_int",
    "positive_seconds",
    "run_options",
    "whole_deadline",
]

# --- value types (argparse `type=`): the one validation of each kind of value -----------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    if value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds (leave it out for no limit)")
    return value


def think_tags(text: str) -> tuple[str, str]:
    """``OPEN,CLOSE``: two non-empty tags split at the first comma after the first character."""
    open_, sep, close = text.partition(",")
    if not sep or not open_ or not close:
        raise argparse.ArgumentTypeError(f"expected OPEN,CLOSE (e.g. '<think>,</think>'), got {text!r}")
    return open_, close


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


# --- option groups -----------------------------------------------------------------------------


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Which backend a strategy runs on, and where it is."""
    g = parser.add_argument_group("backend")
    g.add_argument("--backend", choices=BACKENDS, help="default: local, or sglang when --url is given")
    g.add_argument("--url", help="server URL: SGLang or sglang-router (--backend sglang), any "
                   "OpenAI-compatible server (--backend openai), e.g. http://127.0.0.1:30000")
    g.add_argument("--reward-url", help="server with the reward model for `score ... with prm` (default: --url)")
    g.add_argument("--sim-task", metavar="FILE", help="task file for --backend sim")
    g.add_argument("--model", metavar="PATH.gguf|NAME",
                   help="--backend local: a GGUF file (default: SmolLM2-135M); --backend openai: "
                   "the model name to request (default: the server's only model)")
    g.add_argument("--router", action=argparse.BooleanOptionalAction, default=None,
                   help="treat --url as an sglang-router (default: detect)")
    g.add_argument("--api-key-env", metavar="VAR",
                   help="--backend openai: the environment variable holding the server's API key")
    g.add_argument("--replay", metavar="FILE", help="--backend replay: serve the exchanges recorded in FILE")
    g.add_argument("--record", metavar="FILE", help="write every backend exchange of the run to FILE (for --replay)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How a strategy runs: which one, its arguments, seed, limits; and its backend."""
    p = parser
    p.add_argument("--strategy", metavar="NAME", help="the strategy to run (default: the last one in FILE)")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="a strategy argument (repeatable)")
    p.add_argument("--seed", type=int, help="run seed: every request's seed derives from it")
    p.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
                   help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--budget", type=positive_int, help="an extra cap on the whole run's completion tokens")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="stop the whole command after this long, the backend's start-up included "
                   "(with a dataset, --item-timeout limits each item)")
    p.add_argument("--allow-verifier", action="store_true", help="allow verifier(\"module:function\") scorers to run Python")
    p.add_argument("--think-tags", type=think_tags, metavar="OPEN,CLOSE",
                   help="the model's thinking tags for `think_*` keys (default: what the backend reports)")
    add_backend_options(p)


def add_items_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument("--items", type=positive_int, default=8, help="dataset items in flight at once (default 8)")


def add_item_timeout_option(parser: argparse._ActionsContainer, help: str) -> None:
    parser.add_argument("--item-timeout", type=positive_seconds, metavar="SECONDS", help=help)


def add_address_options(parser: argparse.ArgumentParser, *, port: int = 30000) -> None:
    """Where a server started by this command listens."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=port,
                        help=f"port (default {port}; 0 picks a free one)")


# --- readers -----------------------------------------------------------------------------------


def backend_options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        backend=args.backend, url=args.url, reward_url=args.reward_url, sim_task=args.sim_task,
        model=args.model, router=args.router, api_key_env=args.api_key_env,
        replay=getattr(args, "replay", None), record=getattr(args, "record", None),
    )


def run_options(args: argparse.Namespace, trace: Any = None) -> RunOptions:
    return RunOptions(
        seed=args.seed, concurrency=args.concurrency, budget=args.budget, timeout_s=args.timeout,
        allow_verifier=args.allow_verifier, sequential=getattr(args, "sequential", False), trace=trace,
        think_tags=getattr(args, "think_tags", None),
    )


@contextlib.contextmanager
def whole_deadline(timeout: float | None, what: str = "run",
                   kept: Callable[[], str] | None = None) -> Iterator[None]:
    """``--timeout`` over everything inside (start-up, the run, the dataset or the sweep,
    shutdown): past it, a `RunError` saying the ``what`` timed out, then ``kept()`` (what was
    saved before it), if given."""
    try:
        with anyio.fail_after(timeout):
            yield
    except TimeoutError:
        if timeout is None:
            raise
        note = kept() if kept is not None else ""
        raise RunError(f"the {what} timed out after {timeout:g} s (raise --timeout){note}") from None


# --- the harnesses' messages in flag terms -----------------------------------------------------

# The flag that passes each harness role: every key of `ttcdsl.harness.WORDS` (a test checks).
FLAGS: Mapping[str, str] = {
    "input": "--input",
    "input_line": "--input line",
    "output": "--output",
    "resume": "--resume",
    "arg": "--arg",
    "sweep": "--sweep",
    "repeats": "--repeats",
    "json": "--json",
}


@contextlib.contextmanager
def harness_flags() -> Iterator[None]:
    """Re-raise a `HarnessError` from the block as a `UsageError` worded with `FLAGS`."""
    try:
        yield
    except HarnessError as exc:
        raise UsageError(exc.in_terms(FLAGS)) from None
