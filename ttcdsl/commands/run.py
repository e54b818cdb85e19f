"""`ttc run FILE ...`: run a strategy once (or on every line of a dataset) and report.

Default output (rich, on the terminal): the answer, a per-node table of tokens, cached tokens,
requests and time, and the budget used.  `--json` prints the one JSON object of DESIGN §7
instead.  `--trace FILE` appends every backend request and response as JSON lines (in dataset
mode too, for every item).

Deadlines: `--timeout` covers the whole command, the backend's start-up and shutdown included (in
dataset mode: the whole dataset); `--item-timeout` limits each dataset item.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ttcdsl.args import bind_args, parse_assignments
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
from ttcdsl.errors import NodeFailed, RunError, UsageError
from ttcdsl.harness.dataset import DatasetSummary, Item, read_items, run_dataset
from ttcdsl.provenance import provenance
from ttcdsl.runtime.backends.factory import make_backend
from ttcdsl.runtime.executor import run_plan
from ttcdsl.runtime.values import Answer, Branches, RunResult, TraceRecord, result_to_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a strategy (once, or on every line of a JSONL dataset)")
    p.add_argument("file", metavar="FILE")
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--trace", metavar="FILE", help="append every request/response to FILE as JSON lines")
    p.add_argument("--sequential", action="store_true", help="use the sequential reference executor")
    d = p.add_argument_group("dataset mode")
    d.add_argument("--input", metavar="IN.jsonl", help="run once per line; fields fill parameters by name")
    d.add_argument("--output", metavar="OUT.jsonl", help="one result line per input line")
    d.add_argument("--resume", action="store_true", help="skip ids already in --output")
    d.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N input lines")
    add_item_timeout_option(d, "fail an item that takes longer (it is not written; --resume retries it); "
                               "--timeout limits the whole dataset run")
    add_items_option(d)
    p.set_defaults(func=run)


class _TraceFile:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.f: TextIO = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except ValueError:
            raise UsageError(f"--trace {path!r}: not a valid file name") from None
        except OSError as exc:
            raise UsageError(f"--trace {path}: cannot write it ({exc.strerror or exc})") from None
        self.enc = msgspec.json.Encoder()

        self.provenance: dict[str, Any] | None = None  # put on the next record written

    def __call__(self, record: TraceRecord) -> None:
        if self.provenance is not None:
            record.provenance, self.provenance = self.provenance, None
        try:
            self.f.write(self.enc.encode(record).decode() + "\n")
            self.f.flush()
        except OSError as exc:  # a full disk, say
            raise RunError(f"--trace {self.path}: cannot write a record ({exc.strerror or exc})") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()


def run(args: argparse.Namespace) -> int:
    if (args.input is None) != (args.output is None):
        raise UsageError("dataset mode needs both --input IN.jsonl and --output OUT.jsonl")
    if args.resume and args.input is None:
        raise UsageError("--resume only applies to dataset mode (--input/--output)")
    if args.limit is not None and args.input is None:
        raise UsageError("--limit only applies to dataset mode (--input/--output)")
    if args.item_timeout is not None and args.input is None:
        raise UsageError("--item-timeout only applies to dataset mode (--input/--output); "
                         "--timeout limits a single run")
    compiled = compile_file(args.file, args.strategy)
    plan = compiled.plan
    given = parse_assignments(args.arg)
    err = Console(stderr=True)
    trace = _TraceFile(args.trace) if args.trace else None
    try:
        if args.input is not None:
            with harness_flags():
                return _dataset(args, plan, read_items(args.input)[: args.limit], given, err, trace)
        values = bind_args(plan.strategy(), given)
        backend = make_backend(backend_options(args))
        opts = run_options(args, trace)
        if opts.seed is None:  # chosen here, so the provenance written first can name it
            opts = dataclasses.replace(opts, seed=random.SystemRandom().randrange(2**31))
        facts: dict[str, Any] = {}

        async def main() -> RunResult:
            starting = f"starting the {backend_options(args).resolved()} backend..."
            # The deadline covers start-up and shutdown too, not only the run itself.
            with err.status(starting, spinner="dots") as status, whole_deadline(args.timeout):
                async with backend:
                    facts.update(provenance(args.file, plan, given, backend.info, opts.seed))
                    if trace is not None:
                        trace.provenance = facts
                    status.update(f"running {plan.entry} on {backend.info.model}...")
                    return await run_plan(plan, backend, values, opts)

        try:
            result = anyio.run(main)
        except NodeFailed as exc:
            raise compiled.locate(exc) from None
    finally:
        if trace is not None:
            trace.close()
    warning = sim_warning(backend)
    if args.json:
        doc = result_to_json(result) | {"provenance": facts}
        if warning:
            doc["warnings"] = [warning]
        print(json.dumps(doc, ensure_ascii=False))
    else:
        show(Console(), result)
        if warning:
            err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    return 0


def sim_warning(backend: Any) -> str | None:
    """The simulator's once-per-run warning that prompts matched no question of its task."""
    from ttcdsl.runtime.backends.sim import SimBackend

    if not isinstance(backend, SimBackend) or not backend.stats.unrecognised:
        return None
    stats = backend.stats
    return (f"sim: {stats.unrecognised} of {stats.requests - stats.warm_requests} generation requests "
            "contained no question of the task (answered 'unknown'); check --sim-task and the prompt")


def show(console: Console, result: RunResult) -> None:
    value = result.value
    if isinstance(value, Answer):
        total = sum(value.votes.values())
        if value.value is None and value.excluded:
            console.print(f"[bold]answer:[/] [red]none[/] (no branch finished; {value.excluded} cut off "
                          "or open did not vote: `counting unfinished` counts them)")
        elif value.value is None:
            console.print("[bold]answer:[/] [red]none[/] (every branch abstained)")
        else:
            flag = "  [yellow](backed only by unfinished branches)[/]" if value.unfinished_only else ""
            console.print(
                f"[bold]answer:[/] [green]{escape(value.value)}[/]  agreement {value.agreement:.2f} "
                f"({value.support:g} of {total:g} votes){flag}"
            )
            others = [f"{escape(k)}: {v:g}" for k, v in value.votes.items() if k != value.value]
            if others:
                console.print("  other answers: " + ", ".join(others[:8]))
            if value.excluded:
                console.print(f"  {value.excluded} unfinished branch(es) did not vote")
    elif isinstance(value, Branches):
        console.print(f"[bold]{len(value.items)} branch{'es' if len(value.items) != 1 else ''}[/]")
        for b in value.items[:3]:
            score = f"score {b.score:.3f}, " if b.score is not None else ""
            console.print(f"[dim]--- {b.id} ({score}{b.finish_reason or 'open'}, {len(b.ids)} tokens)[/]")
            console.print(escape(b.text.strip()))
    else:
        console.print(f"[bold]result:[/] {escape(str(value))}")
    table = Table(title=None, show_edge=False, header_style="bold", pad_edge=False)
    for col in ("node", "op", "line", "tokens", "prompt", "cached", "req", "calls", "time s", "budget"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right", no_wrap=True)
    for n in result.nodes:
        table.add_row(
            f"n{n.id}", n.op, str(n.line), str(n.completion_tokens), str(n.prompt_tokens),
            str(n.cached_tokens), str(n.requests), str(n.calls), f"{n.wall_s:.2f}",
            str(n.budget) if n.budget is not None else "-",
        )
    console.print(table)
    u = result.usage
    used = _budget_used(u.completion_tokens, result)
    flag = "  [yellow](budget exhausted: partial result)[/]" if result.budget_exhausted else ""
    console.print(
        f"budget used: {used}{flag}; prompt {u.prompt_tokens} ({u.cached_tokens} cached), "
        f"{u.requests} requests, {result.wall_s:.2f} s, seed {result.seed}"
    )
    if u.thinking_tokens or u.injected_tokens:
        console.print(f"of which thinking {u.thinking_tokens}, answer {u.completion_tokens - u.thinking_tokens}; "
                      f"injected {u.injected_tokens} prompt tokens")


def _budget_used(tokens: int, result: RunResult) -> str:
    """`300 / 300 tokens (100%, --budget; the strategy's 16384)`: against the cap that binds."""
    cap = result.binding_budget
    if not cap:
        return f"{tokens} tokens"
    text = f"{tokens} / {cap} tokens ({100 * tokens / cap:.0f}%"
    if result.run_budget is not None and result.run_budget == cap:
        text += ", --budget" + (f"; the strategy's {result.budget}" if result.budget is not None else "")
    return text + ")"


def _dataset(args: argparse.Namespace, plan: Any, items: list[Item], given: dict[str, str],
             err: Console, trace: _TraceFile | None) -> int:
    backend = make_backend(backend_options(args))
    # --timeout is the whole run's (`whole_deadline`); each item gets --item-timeout.
    opts = dataclasses.replace(run_options(args, trace), timeout_s=args.item_timeout,
                               timeout_flag="--item-timeout")
    if opts.seed is None:
        opts = dataclasses.replace(opts, seed=0)
    with ProgressBar(err, plan.entry, len(items)) as bar:

        written = [0]  # finished lines of this run, for a whole-run timeout's message

        def on_item(summary: DatasetSummary, item: Item, result: RunResult | None) -> None:
            written[0] = summary.done
            if result is None:
                # One line per failed item, however narrow or unlike a terminal stderr is.
                line = " ".join(summary.errors[-1].split())
                err.print(f"[red]error:[/] {escape(line)}", soft_wrap=True, overflow="ignore", crop=False)
            acc = f"acc {summary.accuracy:.3f}" if summary.accuracy is not None else ""
            bar.update(completed=summary.skipped + summary.done + summary.failed, note=acc)

        async def main() -> DatasetSummary:
            with whole_deadline(args.timeout):
                async with backend:
                    return await run_dataset(
                        plan, backend, items, args.output, given=given, options=opts, resume=args.resume,
                        items_in_flight=args.items, on_item=on_item, input_path=args.input,
                        provenance=provenance(args.file, plan, given, backend.info, opts.seed),
                    )

        try:
            summary = anyio.run(main)
        except RunError as exc:
            raise RunError(f"{exc}; the {written[0]} item(s) finished before it are in "
                           f"{args.output} (--resume continues)") from None
    warning = sim_warning(backend)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    parts = [f"{summary.done} done", f"{summary.skipped} skipped (already in {args.output})" if summary.skipped else "",
             f"{summary.failed} failed" if summary.failed else ""]
    err.print(", ".join(p for p in parts if p) + f" in {summary.wall_s:.1f} s; {summary.completion_tokens} completion tokens")
    if summary.empty:
        err.print(f"[yellow]warning:[/] {summary.empty} of {summary.done} results gave no answer "
                  "(graded wrong where the input has an answer)")
    if summary.all_accuracy is not None:
        line = f"accuracy: {summary.all_correct}/{summary.all_graded} = {summary.all_accuracy:.3f}"
        if summary.prior_graded:
            line += f" over every line of {args.output}"
            if summary.accuracy is not None:
                line += f" (this run: {summary.correct}/{summary.graded} = {summary.accuracy:.3f})"
        print(line)
    if summary.failed:
        err.print(f"[yellow]{summary.failed} item(s) failed and were not written; rerun with --resume to retry them[/]")
        return 1
    return 0
