"""`ttc test FILE.ttc`: property-test a strategy without writing Python.

Runs the strategy on generated cases (simulated tasks and adversarial scripted models, see
`ttcdsl.testing.cases`), checks every invariant of `ttcdsl.testing.check_invariants` and the
file's `expect` statements, and prints one summary line (exit 0) or the shrunk counterexample
with the files and commands that reproduce it (exit 1).  With `--sim-task FILE` or `--replay
FILE` it checks that one run instead (what a reproduction's second command does).
"""

from __future__ import annotations

import argparse

from ttcdsl.args import parse_assignments
from ttcdsl.commands._options import positive_int

CHOICES = ("sim", "scripted")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="property-test a strategy: invariants and `expect`s on generated cases")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--strategy", metavar="NAME", help="the strategy to test (default: the last one in FILE)")
    p.add_argument("--examples", type=positive_int, default=30, help="cases to try (default 30)")
    p.add_argument("--seed", type=int, default=0, help="which cases are drawn (default 0); with "
                   "--sim-task/--replay: the run seed")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a fixed strategy argument (repeatable); the question is generated")
    p.add_argument("--backends", default="sim,scripted", metavar="LIST",
                   help="which cases: sim, scripted or both (default sim,scripted)")
    p.add_argument("--out", default="ttc-test-failure", metavar="DIR",
                   help="where a counterexample's files go (default ./ttc-test-failure)")
    p.add_argument("--allow-verifier", action="store_true", help="allow verifier(\"module:function\") scorers")
    one = p.add_argument_group("check one run")
    one.add_argument("--sim-task", metavar="FILE", help="check the run on this task file only")
    one.add_argument("--replay", metavar="FILE", help="check the run replayed from this --record file only")
    # accepted so that a reproduction's `ttc run` flags can be pasted as they are
    one.add_argument("--backend", choices=("sim", "replay"), help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ttcdsl.compiler import compile_file
    from ttcdsl.errors import UsageError
    from ttcdsl.testing import cases

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends or any(b not in CHOICES for b in backends):
        raise UsageError(f"--backends {args.backends!r}: expected sim, scripted or sim,scripted")
    if args.sim_task is not None and args.replay is not None:
        raise UsageError("--sim-task and --replay each check one run: give one of them")
    plan = compile_file(args.file, args.strategy).plan
    given = parse_assignments(args.arg)
    if args.sim_task is not None or args.replay is not None:
        problems = cases.check_one(plan, given, seed=args.seed, sim_task=args.sim_task, replay=args.replay,
                                   allow_verifier=args.allow_verifier)
        for line in problems:
            print(f"- {line}")
        print(f"{'FAILED' if problems else 'ok'}: {plan.entry}: {len(problems)} violation(s) in one run")
        return 1 if problems else 0
    report = cases.explore(plan, args.file, given, examples=args.examples, seed=args.seed, out=args.out,
                           backends=backends, allow_verifier=args.allow_verifier)
    if report.ok:
        print(f"ok: {report.strategy}: {report.examples} cases ({report.simulated} simulated, {report.scripted} "
              f"adversarial), every invariant and {report.expects} expect(s) held")
        return 0
    assert report.case is not None
    print(f"FAILED: {report.strategy}: a counterexample after {report.examples} cases (shrunk):")
    print(f"  case: {report.case.describe()}")
    for line in report.problems:
        print(f"  - {line}")
    print("  written: " + ", ".join(report.files))
    print(f"  run it:   {report.commands[0]}")
    print(f"  check it: {report.commands[1]}")
    return 1
