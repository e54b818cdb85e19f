"""`ttc trace show FILE` and `ttc trace html FILE -o OUT.html`: read a `ttc run --trace` file.

``show`` prints a summary, per-node and per-kind tables (requests, retries, errors, tokens,
latency p50/p95/max) and the slowest requests.  ``html`` writes one self-contained HTML file:
the search tree of each run (when the trace has branch lineage, as `ttc run --trace` writes)
and, on a second tab, the same tables and a request timeline.  Nodes are labelled with their
step and line from the trace itself; ``--program FILE.ttc`` (the program that wrote the trace)
does it for older traces.  Rendering lives in `ttcdsl.traceview` and `ttcdsl.tracetree`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ttcdsl import plan as P
from ttcdsl.commands._options import positive_int
from ttcdsl.compiler import compile_file
from ttcdsl.errors import UsageError
from ttcdsl.traceview import load_trace, render_html, render_tables, trees

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="summarise a request trace written by `ttc run --trace`")
    tsub = p.add_subparsers(dest="trace_command", metavar="show|html", parser_class=type(p))
    tsub.required = True
    show = tsub.add_parser("show", help="print per-node, per-kind and slowest-request tables")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--top", type=positive_int, default=10, help="how many slowest requests to list (default 10)")
    show.add_argument("--program", metavar="FILE.ttc",
                      help="the program that wrote the trace: labels nodes (traces name them themselves)")
    show.set_defaults(func=run_show)
    page = tsub.add_parser("html", help="write a self-contained HTML page: search tree and request timeline")
    page.add_argument("file", metavar="FILE")
    page.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the HTML file to write")
    page.add_argument("--top", type=positive_int, default=20, help="how many slowest requests to list (default 20)")
    page.add_argument("--program", metavar="FILE.ttc",
                      help="the program that wrote the trace: labels nodes (traces name them themselves)")
    page.set_defaults(func=run_html)


def node_labels(program: str | None) -> dict[int, str] | None:
    """``{node id: "sample (line 8)"}`` for every step of every strategy in ``program`` (None
    without one: the trace's own labels are used)."""
    if program is None:
        return None
    plan = compile_file(program).plan
    several = len(plan.strategies) > 1
    labels: dict[int, str] = {}
    for s in plan.strategies.values():
        for n in s.nodes:
            if isinstance(n, P.STEP_NODES):
                where = f"{s.name}:{n.span.line}" if several else f"line {n.span.line}"
                labels[n.id] = f"{n.__class__.__name__.lower()} ({where})"
    return labels


def run_show(args: argparse.Namespace) -> int:
    trace = load_trace(args.file, node_labels(args.program))
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    for part in render_tables(trace, args.top):
        console.print(part)
        console.print()
    return 0


def run_html(args: argparse.Namespace) -> int:
    trace = load_trace(args.file, node_labels(args.program))
    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist")
    try:
        out.write_text(render_html(trace, args.top), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"-o {out}: cannot write it ({exc})") from None
    branches = sum(len(t) for t in trees(trace))
    tree = f", {branches} branches in the search tree" if branches else ""
    Console(stderr=True).print(f"wrote {out} ({len(trace.records)} requests, {len(trace.runs)} run(s){tree})")
    return 0
