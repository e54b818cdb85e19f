"""`ttc plan FILE [--strategy NAME] [--format text|json|dot] [--arg NAME=VALUE]...`"""

from __future__ import annotations

import argparse
import sys

from ttcdsl.args import convert, parse_assignments
from ttcdsl.bounds import annotate
from ttcdsl.compiler import compile_file
from ttcdsl.errors import UsageError
from ttcdsl.lower import to_json
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
    plan = compile_file(args.file, args.strategy).plan
    given = parse_assignments(args.arg)
    if given:
        # Partial values are fine here: missing parameters keep their defaults (or stay unknown).
        entry = plan.strategy()
        params = {p.name: p for p in entry.params}
        unknown = [k for k in given if k not in params]
        if unknown:
            raise UsageError(f"strategy '{entry.name}' has no parameter {unknown[0]!r} (its parameters: {', '.join(params)})")
        values = {k: convert(params[k], v) for k, v in given.items()}
        plan = annotate(plan, values)  # only the static bounds depend on the values
    if args.format == "json":
        sys.stdout.write(to_json(plan).decode() + "\n")
    elif args.format == "dot":
        sys.stdout.write(to_dot(plan))
    else:
        sys.stdout.write(to_text(plan))
    return 0
