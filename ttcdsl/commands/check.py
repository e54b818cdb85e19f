"""`ttc check FILE...`: parse and check programs; exit 1 if any has an error."""

from __future__ import annotations

import argparse
import sys

from ttcdsl.compiler import compile_file
from ttcdsl.errors import CheckErrors, TTCSyntaxError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check .ttc files for errors and budget warnings")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, no warnings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            compiled = compile_file(file)
        except (TTCSyntaxError, CheckErrors) as exc:
            print(exc.render(), file=sys.stderr)
            failed += 1
            continue
        except UsageError as exc:
            print(f"ttc: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if not args.quiet:
            for w in compiled.warnings:
                print(w.render(), file=sys.stderr)
    if not args.quiet and failed == 0:
        n = len(args.files)
        print(f"ok: {n} file{'s' if n != 1 else ''} checked", file=sys.stderr)
    return 1 if failed else 0
