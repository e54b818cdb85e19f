"""The `ttc` command line: one sub-command per module in `ttcdsl.commands`.

One error path.  Every mistake a user can make (a bad program, argument, input file, or a dead
server) ends as one line on stderr, ``ttc: error: ...`` or the located form with the source line
and a caret, and exit status 1 (2 for bad usage); Ctrl-C and SIGTERM end within a second with one
line (`commands._guard`).  Anything else is a bug in ttc: one line saying so and where to report
it, the traceback only under ``--debug``.  Never a Python traceback otherwise.

Start-up is cheap: only the sub-command being run is imported (``ttc --help`` imports none of
them, so neither the parser nor the runtime); `SUMMARIES` holds the one-line help of each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

__all__ = ["SUMMARIES", "build_parser", "main"]

# Modules in ttcdsl.commands, each with `register(subparsers)` that adds its parser and sets
# `func` (a callable taking the parsed namespace and returning an exit status), and the help
# line each gives its parser (tests/test_robust_cli.py checks that they agree).
SUMMARIES: dict[str, str] = {
    "check": "check .ttc files for errors and budget warnings",
    "plan": "show the plan graph with static token bounds per node",
    "fmt": "format .ttc files in the canonical layout",
    "run": "run a strategy (once, or on every line of a JSONL dataset)",
    "test": "property-test a strategy: invariants and `expect`s on generated cases",
    "sim": "the deterministic simulator (an SGLang-compatible fake model)",
    "serve": "launch a real SGLang server for a model",
    "bench": "token-matched accuracy curves: sweep a parameter over a graded dataset",
    "trace": "summarise a request trace written by `ttc run --trace`",
}
COMMANDS = tuple(SUMMARIES)

# Commands that run a server until stopped: they handle their own signals and shutdown.
_SERVERS = frozenset({"serve", "sim"})

REPORT = "please report it (with the command line) to the ttcdsl maintainers"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own message, but in our one-line form.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    """`ttc --version`: ttcdsl's version and the Python it runs on."""
    from ttcdsl import __version__

    return f"ttc (ttcdsl) {__version__}, Python {sys.version.split()[0]}"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, only that sub-command is built in full and the others
    are listed by their summary (``only=""``: none is built)."""
    parser = _Parser(
        prog="ttc",
        description="ttcdsl: declarative test-time compute strategies with hard token budgets.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, summary in SUMMARIES.items():
        if only is None or name == only:
            importlib.import_module(f"ttcdsl.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line, if any (the first word not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUMMARIES else None
    return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM before the command's own guard was up."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(words)
    debug = "--debug" in (words[: words.index(command)] if command else words)
    if argv is None and threading.current_thread() is threading.main_thread():
        # Until the command's guard takes over, SIGTERM ends the process like Ctrl-C does (one
        # line), not silently by the default action while the command is still importing.
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(words, hard=argv is None)
    except _Terminated:
        print("ttc: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:  # Ctrl-C before the guard was up (while importing, say)
        print("ttc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"ttc: internal error ({type(exc).__name__}: {_one_line(exc)}); {REPORT}; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return 70


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C, signal or deadline that ``exc`` was raised while handling, if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__ or cause.__cause__
    return None


def _main(words: list[str], *, hard: bool) -> int:
    args = build_parser(_command_in(words) or "").parse_args(words)
    # Imported once the words parsed: `ttc --help` and usage errors need neither.
    from ttcdsl.commands._guard import Interrupted, Overdue, guard
    from ttcdsl.errors import CheckErrors, NodeFailed, SourceError, TTCError, UsageError

    # `ttc run --timeout` and `ttc bench --timeout` limit the whole command: the commands keep
    # that deadline themselves, and the guard is the backstop for work that never yields.
    timeout = args.timeout if args.command in ("run", "bench") else None
    try:
        if args.command in _SERVERS:
            status = args.func(args)
        else:
            with guard(timeout, hard=hard) as fired:
                try:
                    status = args.func(args)
                except Exception as exc:
                    # An interruption can surface as another error raised while the event loop
                    # unwinds (anyio's cancel scopes, another task's): it is the interruption.
                    raise _interruption(exc) or fired.what or exc from None
    except UsageError as exc:
        print(f"ttc: error: {str(exc).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    except (SourceError, CheckErrors) as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except TTCError as exc:
        # A node that failed at run time is shown at its .ttc line, as `ttc check` shows errors.
        located = isinstance(exc, NodeFailed) and exc.span is not None
        print(exc.render() if located else f"ttc: error: {exc}", file=sys.stderr)
        return 1
    except Overdue as exc:
        what = "bench" if args.command == "bench" else "run"
        print(f"ttc: error: the {what} timed out after {exc.timeout:g} s (raise --timeout)",
              file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"ttc: {exc.word}", file=sys.stderr)
        return exc.status
    except _Terminated:
        raise
    except KeyboardInterrupt:
        print("ttc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`ttc ... | head`): not an error.  Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
