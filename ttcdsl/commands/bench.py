"""`ttc bench FILE --input IN.jsonl --sweep NAME=V1,V2,...`: token-matched accuracy curves.

Runs FILE (and every ``--compare`` program) over a graded dataset for each value of the swept
parameter, ``--repeats`` times with different seeds, and prints one table row per point:
accuracy with its 95% interval over items, the paired difference from the point's baseline
(interval and sign-test p-value), compute per question on the chosen x axis (``--x``: completion
tokens by default; ± is the standard error over repeats), requests per question, the share of
prompt tokens served from the prefix cache, the share of samples truncated and the wall time; a
second table gives the standard metrics (single-sample accuracy, pass@k, majority@k, ties,
abstentions, mean and p90 tokens).  ``--plot OUT.png`` draws accuracy against the x axis (log
scale) with interval bands, one line per program; ``--json OUT.json`` writes every number.  The
engine is `ttcdsl.harness.curves`; this module only parses flags and renders.

Deadlines, as in `ttc run`'s dataset mode: ``--timeout`` limits the whole bench (the backend's
start-up, every point and repeat, shutdown), ``--item-timeout`` each item's run; either one
passing stops the bench with one line (the passes already finished stay in ``--json``).

Every user mistake (unknown parameter, a value of the wrong type, a dataset without answers,
matplotlib missing for ``--plot``) is reported before any request is sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import anyio
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ttcdsl.args import parse_assignments
from ttcdsl.commands._options import (
    add_item_timeout_option,
    add_items_option,
    add_run_options,
    backend_options,
    harness_flags,
    positive_int,
    run_options,
    whole_deadline,
)
from ttcdsl.commands._progress import ProgressBar
from ttcdsl.compiler import compile_file
from ttcdsl.errors import UsageError
from ttcdsl.harness.curves import (
    BenchProgram,
    BenchReport,
    Point,
    PointResult,
    baseline_of,
    bench_points,
    check_dataset,
    load_passes,
    repeat_seed,
    run_bench,
)
from ttcdsl.harness.dataset import read_items
from ttcdsl.harness.metrics import X_AXES
from ttcdsl.provenance import provenance
from ttcdsl.runtime.backends.factory import make_backend

__all__ = ["parse_sweep", "plot_report", "register", "render_metrics", "render_table"]

PLOT_HINT = "pip install 'ttcdsl[plot]'"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="token-matched accuracy curves: sweep a parameter over a graded dataset",
        description="Run strategies over a JSONL dataset with answers for each value of a swept "
                    "parameter and report accuracy against completion tokens per question.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--input", required=True, metavar="IN.jsonl",
                   help="the dataset: one JSON object per line with \"answer\"; fields fill parameters by name")
    p.add_argument("--sweep", metavar="NAME=V1,V2,...", help="the parameter to sweep and its values (e.g. n=1,4,16)")
    p.add_argument("--compare", action="extend", nargs="+", default=[], metavar="FILE2[:STRATEGY]",
                   help="more programs to run on the same dataset and sweep")
    p.add_argument("--repeats", type=positive_int, default=1, help="passes per point with different seeds (default 1)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N dataset items")
    add_items_option(p)
    p.add_argument("--x", choices=list(X_AXES), default="completion", dest="x_axis",
                   help="compute on the x axis: completion tokens (default), completion + reward/judge "
                        "tokens (scored), uncached prefill + decode tokens (prefill), or wall seconds (wall)")
    p.add_argument("--plot", metavar="OUT.png", help="draw the token-matched accuracy curve (needs matplotlib)")
    p.add_argument("--json", metavar="OUT.json",
                   help="write every number as JSON ('-' for stdout); a file is rewritten after every pass")
    p.add_argument("--resume", action="store_true",
                   help="keep the passes already in --json OUT.json (same items and seed) and run the rest")
    add_item_timeout_option(p, "stop the bench when one item's run takes longer (--timeout limits the "
                               "whole bench)")
    add_run_options(p)
    p.set_defaults(func=bench)


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``NAME=V1,V2,...`` -> (NAME, [V1, V2, ...]); one `UsageError` for a malformed sweep."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"--sweep {text!r}: expected NAME=V1,V2,... (e.g. --sweep n=1,4,16)")
    parts = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in parts):
        raise UsageError(f"--sweep {text!r}: expected a comma-separated list of values after '{name}='")
    seen: set[str] = set()
    for v in parts:
        if v in seen:
            raise UsageError(f"--sweep {name}: value {v!r} is listed twice")
        seen.add(v)
    return name, parts


def _programs(args: argparse.Namespace) -> list[BenchProgram]:
    specs: list[tuple[str, str | None]] = [(args.file, args.strategy)]
    for spec in args.compare:
        path, sep, name = spec.rpartition(":")
        if sep and name.isidentifier() and not Path(spec).exists():
            specs.append((path, name))
        else:
            specs.append((spec, None))
    compiled = [(path, compile_file(path, name).plan) for path, name in specs]
    names = [plan.entry for _, plan in compiled]
    out: list[BenchProgram] = []
    for path, plan in compiled:
        label = plan.entry if names.count(plan.entry) == 1 else f"{Path(path).stem}:{plan.entry}"
        if any(p.label == label for p in out):
            raise UsageError(f"--compare {path}: strategy '{plan.entry}' of {path} is already in the benchmark")
        out.append(BenchProgram(label, plan, path))
    return out


def _check_writable(flag: str, path: str | None) -> None:
    if path is None or path == "-":
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from None
    return plt


def bench(args: argparse.Namespace) -> int:
    with harness_flags():
        return _bench(args)


def _bench(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    sweep, values = parse_sweep(args.sweep) if args.sweep else (None, [])
    _check_writable("--plot", args.plot)
    _check_writable("--json", args.json)
    if args.plot:
        _pyplot()  # no matplotlib: say so before any request
    programs = _programs(args)
    given = parse_assignments(args.arg)
    points, notes = bench_points(programs, sweep, values, given)
    items = read_items(args.input)
    if args.limit is not None:
        items = items[: args.limit]
    check_dataset(points, items, given, sweep, args.input)
    # --timeout is the whole bench's (`whole_deadline`); each item's run gets --item-timeout.
    opts = dataclasses.replace(run_options(args), timeout_s=args.item_timeout, timeout_flag="--item-timeout")
    if opts.seed is None:
        opts = dataclasses.replace(opts, seed=0)
    done = _earlier_passes(args, items)
    for note in notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    backend = make_backend(backend_options(args))
    report = BenchReport(sweep=sweep, dataset=args.input, items=len(items), repeats=args.repeats,
                         seed=opts.seed or 0, results=[], notes=notes, x_axis=args.x_axis)
    kept = sum((pt.program.label, pt.text, repeat_seed(opts.seed or 0, r)) in done
               for pt in points for r in range(args.repeats))
    if kept:
        err.print(f"resuming {args.json}: {kept} pass(es) already there are kept")
    total = (len(points) * args.repeats - kept) * len(items)
    with ProgressBar(err, "starting", total, transient=True) as bar:

        def on_point(point: Point, repeat: int) -> None:
            rep = f" (repeat {repeat + 1}/{args.repeats})" if args.repeats > 1 else ""
            bar.update(description=point.describe(sweep) + rep)

        def on_item(point: Point, repeat: int) -> None:
            bar.advance()

        saved = [0]  # passes in --json OUT.json, for a whole-bench timeout's message

        def on_pass(results: list[PointResult]) -> None:
            _save(args.json, dataclasses.replace(report, results=results))
            saved[0] = sum(len(r.repeats) for r in results)

        def kept_note() -> str:
            if not args.json or args.json == "-":
                return ""
            return f"; the {saved[0]} finished pass(es) are in {args.json} (--resume continues)"

        async def main() -> list[PointResult]:
            with whole_deadline(args.timeout, "bench", kept_note):
                async with backend:
                    report.provenance = {"programs": [
                        provenance(p.file, p.plan, given, backend.info, report.seed) for p in programs]}
                    return await run_bench(
                        points, backend, items, sweep=sweep, given=given, options=opts, repeats=args.repeats,
                        items_in_flight=args.items, on_point=on_point, on_item=on_item, on_pass=on_pass,
                        done=done,
                    )

        t0 = time.monotonic()
        report.results = anyio.run(main)
        report.wall_s = time.monotonic() - t0
    _report(args, report, err)
    return 0


def _earlier_passes(args: argparse.Namespace, items: list[Any]) -> dict[Any, Any]:
    """With --resume, the passes of --json OUT.json to keep (none when it does not exist yet)."""
    if not args.resume:
        return {}
    if not args.json or args.json == "-":
        raise UsageError("--resume needs --json OUT.json: the file it continues")
    path = Path(args.json)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--json {path}: cannot resume from it ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--json {path}: cannot resume from it (not a ttc bench JSON)")
    return load_passes(data, items)


def _save(path: str | None, report: BenchReport) -> None:
    """The report so far, written atomically (a killed bench leaves the last complete file)."""
    if not path or path == "-":
        return
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)


def _report(args: argparse.Namespace, report: BenchReport, err: Console) -> None:
    out = Console(stderr=args.json == "-")  # `--json -` keeps stdout pure JSON
    if not out.is_terminal:
        out = Console(stderr=args.json == "-", width=160)  # a pipe or file: no 80-column squeeze
    out.print(render_table(report))
    out.print(render_metrics(report))
    runs = sum(len(r.repeats) for r in report.results) * report.items
    err.print(f"{runs} strategy runs in {report.wall_s:.1f} s")
    for r in report.results:
        empty = sum(o.abstained for rep in r.repeats for o in rep.outcomes.values())
        if empty:
            err.print(f"[yellow]warning:[/] {escape(r.point.describe(report.sweep))}: {empty} of "
                      f"{sum(len(rep.outcomes) for rep in r.repeats)} runs gave no answer (graded wrong)")
    if args.json:
        if args.json == "-":
            print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        else:
            _save(args.json, report)
            err.print(f"wrote {args.json}")
    if args.plot:
        plot_report(report, args.plot, _pyplot())
        err.print(f"wrote {args.plot}")


def _pm(mean: float, se: float | None, fmt: str) -> str:
    return format(mean, fmt) + (f" ± {format(se, fmt)}" if se is not None else "")


_X_COLUMNS = {"completion": "tokens/q", "scored": "scored tok/q", "prefill": "prefill+dec/q", "wall": "wall s/q"}


def _ci(r: PointResult) -> str:
    ci = r.accuracy_ci()
    return f"{r.accuracy[0]:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{r.accuracy[0]:.3f}"


def _diff(c: dict[str, Any] | None) -> str:
    if c is None:
        return "[dim]baseline[/]"
    if c["diff"] is None:
        return "[dim]-[/]"
    lo, hi = c["diff_ci95"]
    return f"{c['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}] p={c['p_value']:.2g}"


def _x(r: PointResult, axis: str) -> str:
    fmt = ".2f" if axis == "wall" else ".0f"
    if axis == "completion":
        return _pm(*r.tokens_per_item, fmt)
    return format(r.x(axis), fmt)


def render_table(report: BenchReport) -> Table:
    """One row per point: the numbers of `BenchReport.to_json` a reader compares first."""
    reps = f"{report.repeats} repeat{'s' if report.repeats != 1 else ''}"
    table = Table(
        title=f"{escape(report.dataset)}: {report.items} items × {reps}, seed {report.seed}",
        header_style="bold", show_edge=False, pad_edge=False,
        caption="accuracy: 95% Wilson interval over items; Δ: paired bootstrap interval, sign-test p"
                + ("" if report.repeats > 1 else "; ± needs --repeats 2 or more"),
    )
    table.add_column("program", no_wrap=True)
    if report.sweep is not None:
        table.add_column(escape(report.sweep), justify="right", no_wrap=True, min_width=3)
    columns = ("accuracy", "Δ vs baseline", _X_COLUMNS[report.x_axis], "req/q", "cached", "budget cut", "wall s")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    by_point = {c["point"]: c for c in report.comparisons()}
    previous = None
    for r in report.results:
        label = r.point.program.label
        row = [escape(label) if label != previous else ""]
        previous = label
        if report.sweep is not None:
            row.append(escape(r.point.text) if r.point.text is not None else "[dim]-[/]")
        comparison = by_point.get(r.point.describe(report.sweep))
        if comparison is None and baseline_of(r, report.results) is not None:
            comparison = {"diff": None}
        row += [
            _ci(r), _diff(comparison), _x(r, report.x_axis), f"{r.requests_per_item:.1f}",
            f"{100 * r.cached_share:.0f}%", f"{100 * r.cut_share:.0f}%", f"{r.wall_s:.2f}",
        ]
        table.add_row(*row)
    return table


def _share(v: float | None) -> str:
    return "[dim]-[/]" if v is None else f"{v:.3f}"


def render_metrics(report: BenchReport) -> Table:
    """The standard metrics of every point (`PointResult.metrics`), one row each."""
    table = Table(title="metrics per configuration (means over items)", header_style="bold", box=box.SIMPLE,
                  show_edge=False, pad_edge=False)
    for col in ("program", "single", "pass@k", "maj@k", "ties", "abstain", "tokens mean", "p90"):
        table.add_column(col, justify="left" if col == "program" else "right", no_wrap=True)
    for r in report.results:
        m = r.metrics()
        if not m:
            continue
        table.add_row(
            escape(r.point.describe(report.sweep)), _share(m["single_sample_accuracy"]), _share(m["pass_at_k"]),
            _share(m["majority_at_k"]), _share(m["tie_rate"]), _share(m["abstention_rate"]),
            f"{m['tokens_mean']:.0f}", f"{m['tokens_p90']:.0f}",
        )
    return table


def plot_report(report: BenchReport, path: str, plt: Any = None) -> None:
    """Accuracy against mean compute per question on the report's x axis (log x), one line per
    program, points labelled with the sweep value; a shaded band is the 95% interval over items,
    error bars the standard error over repeats."""
    plt = plt or _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=150)
    groups: dict[str, list[PointResult]] = {}
    for r in report.results:
        groups.setdefault(r.point.program.label, []).append(r)
    markers = "osD^vP*X"
    lows, highs = [], []
    for i, (label, rows) in enumerate(groups.items()):
        rows = sorted(rows, key=lambda r: r.x(report.x_axis))
        xs = [r.x(report.x_axis) for r in rows]
        ys = [r.accuracy[0] for r in rows]
        es = [r.accuracy[1] or 0.0 for r in rows]
        cis = [r.accuracy_ci() or (y, y) for r, y in zip(rows, ys)]
        lows += [lo for lo, _ in cis]
        highs += [hi for _, hi in cis]
        # Later programs draw smaller markers, so a point hidden under another stays visible.
        line = ax.errorbar(xs, ys, yerr=es if any(es) else None, marker=markers[i % len(markers)],
                           markersize=max(4.0, 8.5 - 1.5 * i), linewidth=1.8, capsize=3, label=label,
                           zorder=3 + i)
        colour = line.lines[0].get_color()
        if len(xs) > 1:
            ax.fill_between(xs, [lo for lo, _ in cis], [hi for _, hi in cis], color=colour, alpha=0.15,
                            linewidth=0, zorder=1)
        else:
            ax.vlines(xs, [cis[0][0]], [cis[0][1]], colors=colour, alpha=0.35, linewidth=6, zorder=1)
        for r, x, y in zip(rows, xs, ys):
            if r.point.text is None:
                continue
            ax.annotate(f"{report.sweep}={r.point.text}", (x, y), textcoords="offset points", xytext=(6, -12),
                        fontsize=8, color="0.25")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(f"{X_AXES[report.x_axis]} (mean, log scale)")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    lo, hi = min(lows), max(highs)
    pad = max(0.05, (hi - lo) * 0.12)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi + pad < 1.0 else 1.02)
    ax.margins(x=0.08)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)
    reps = f"{report.repeats} repeats, bars ±1 s.e." if report.repeats > 1 else "1 repeat"
    reps += "; bands 95% over items"
    ax.set_title(f"Token-matched accuracy: {Path(report.dataset).name} ({report.items} items, {reps})",
                 fontsize=11)
    ax.legend(loc="lower right", frameon=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
