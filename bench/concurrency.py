"""Concurrent vs sequential executor on the simulator with its latency model (not a test).

    python bench/concurrency.py                         # defaults below
    python bench/concurrency.py --questions 4 --decode-ms 5 --max-batch 8

For each program (self-consistency and PRM beam search) and each of the first ``--questions``
problems of the task file, runs the strategy twice in this process with the same seed: once with
the concurrent executor and once with the sequential reference executor
(``RunOptions(sequential=True)``), each on a fresh simulator (a cold prefix cache, so both see the
same cache hits).  The simulator sleeps ``--prefill-ms`` per uncached prompt token and
``--decode-ms`` per generated token, and runs at most ``--max-batch`` requests at once, like a
serving engine that batches decode steps.  Prints wall times and the ratio side by side and checks
that both executors produced the same answer, tokens and requests (exit 1 if not).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from ttcdsl.args import bind_args
from ttcdsl.compiler import compile_file
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import Latency, SimConfig, load_task
from ttcdsl.runtime.values import RunResult, result_to_json

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("programs/self_consistency.ttc", "programs/beam_search.ttc")


def comparable(result: RunResult) -> dict[str, Any]:
    """Everything a run reports except wall times."""
    data = result_to_json(result)
    data.pop("wall_s")
    for node in data["nodes"]:
        node.pop("wall_s")
    return data


def diff(a: Any, b: Any, path: str = "") -> str | None:
    """The first place where two JSON-like values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = diff(a.get(k), b.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


async def timed(plan: Any, args: dict[str, Any], config: SimConfig, task: Any, opts: RunOptions) -> tuple[RunResult, float, int]:
    backend = SimBackend(task, config)
    async with backend:
        t0 = time.perf_counter()
        result = await run_plan(plan, backend, args, opts)
        wall = time.perf_counter() - t0
    return result, wall, backend.stats.max_running


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default=str(ROOT / "data/tasks/math.json"), help="simulator task file")
    ap.add_argument("--questions", type=int, default=2, help="problems per program (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--decode-ms", type=float, default=2.0, help="simulated ms per generated token")
    ap.add_argument("--prefill-ms", type=float, default=0.2, help="simulated ms per uncached prompt token")
    ap.add_argument("--max-batch", type=int, default=32, help="requests the simulator runs at once")
    ap.add_argument("--concurrency", type=int, default=32, help="executor requests in flight")
    a = ap.parse_args(argv)
    task = load_task(a.task)
    config = SimConfig(latency=Latency(prefill_s=a.prefill_ms / 1000, decode_s=a.decode_ms / 1000,
                                       max_batch=a.max_batch))
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(f"simulator latency: decode {a.decode_ms:g} ms/token, prefill {a.prefill_ms:g} ms/uncached "
                  f"token, batch limit {a.max_batch}; executor concurrency {a.concurrency}; seed {a.seed}")
    table = Table(header_style="bold", show_edge=False, pad_edge=False)
    for col in ("program", "problem", "requests", "tokens", "peak batch", "concurrent s", "sequential s",
                "speed-up", "identical"):
        table.add_column(col, justify="left" if col in ("program", "problem") else "right", no_wrap=True)
    totals = [0.0, 0.0]
    failures: list[str] = []
    for rel in PROGRAMS:
        plan = compile_file(ROOT / rel).plan
        for problem in task.problems[: a.questions]:
            args = bind_args(plan.strategy(), {"question": problem.question})
            conc, t_conc, peak = anyio.run(
                timed, plan, args, config, task, RunOptions(seed=a.seed, concurrency=a.concurrency))
            seq, t_seq, _ = anyio.run(
                timed, plan, args, config, task, RunOptions(seed=a.seed, concurrency=a.concurrency, sequential=True))
            d = diff(comparable(conc), comparable(seq))
            if d:
                failures.append(f"{plan.entry} {problem.id}: results differ at {d}")
            totals[0] += t_conc
            totals[1] += t_seq
            table.add_row(plan.entry, problem.id, str(conc.usage.requests), str(conc.usage.completion_tokens),
                          str(peak), f"{t_conc:.2f}", f"{t_seq:.2f}", f"{t_seq / t_conc:.1f}x",
                          "[green]yes[/]" if not d else "[red]NO[/]")
    table.add_section()
    table.add_row("total", "", "", "", "", f"{totals[0]:.2f}", f"{totals[1]:.2f}", f"{totals[1] / totals[0]:.1f}x", "")
    console.print(table)
    for f in failures:
        console.print(f"[red]{f}[/]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
