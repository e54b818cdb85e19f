"""The `ttc` command line: one sub-command per module in `ttcdsl.commands`.

Every user mistake (a bad program, argument, input file, or a dead server) ends as one clear
message on stderr and exit status 1 (2 for bad usage); never a Python traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ttcdsl.errors import CheckErrors, NodeFailed, SourceError, TTCError, UsageError

__all__ = ["main"]

# Modules in ttcdsl.commands, each with `register(subparsers)` that adds its parser and sets
# `func` (a callable taking the parsed namespace and returning an exit status).
COMMANDS = ("check", "plan", "fmt", "run", "test", "sim", "serve", "bench", "trace")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own message, but in our one-line form.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    """`ttc --version`: ttcdsl's version and the Python it runs on."""
    from ttcdsl import __version__

    return f"ttc (ttcdsl) {__version__}, Python {sys.version.split()[0]}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ttc",
        description="ttcdsl: declarative test-time compute strategies with hard token budgets.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"ttcdsl.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except UsageError as exc:
        print(f"ttc: error: {exc}", file=sys.stderr)
        return 2
    except (SourceError, CheckErrors) as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except TTCError as exc:
        # A node that failed at run time is shown at its .ttc line, as `ttc check` shows errors.
        located = isinstance(exc, NodeFailed) and exc.span is not None
        print(exc.render() if located else f"ttc: error: {exc}", file=sys.stderr)
        return 1
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
