"""`ttc plan FILE [--strategy NAME] [--format text|json|dot] [--arg NAME=VALUE]...`"""

from __future__ import annotations

import argparse
import sys

from ttcdsl.args import parse_assignments
from ttcdsl.compiler import compile_file
from ttcdsl.plan import to_json
from ttcdsl.render import to_dot, to_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the plan graph with static token bounds per node")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--strategy", metavar="NAME", help="the entry strategy (default: the last one in FILE)")
    p.add_argument("--format", choices=("text", "json", "dot"), default="text")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value used for the static bounds (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Partial values are fine here: missing parameters keep their defaults (or stay unknown).
    plan = compile_file(args.file, args.strategy, parse_assignments(args.arg)).plan
    if args.format == "json":
        sys.stdout.write(to_json(plan).decode() + "\n")
    elif args.format == "dot":
        sys.stdout.write(to_dot(plan))
    else:
        sys.stdout.write(to_text(plan))
    return 0
