"""In-process measurements: the runtime's cost per request, and peak memory at 10,000 branches.

    python -m bench.inproc overhead best_of_n 1000      # prints one JSON object
    python -m bench.inproc overhead beam_search 16 4 20
    python -m bench.inproc rss 10000

Both run a real program with the concurrent executor on the in-process simulator
(`SimBackend` on a `SimEngine`, no HTTP, latency model off, so nothing ever sleeps) and the
problems of ``data/tasks/math.json``; program budgets are raised to the static worst case so
they do not end the run early (node budgets stay).

* ``overhead``: ``wall_s`` of `run_plan` and ``requests`` (the run's backend requests: warm-ups,
  generations, reward calls); ``us_per_request`` = wall / requests, the figure the suite reports.
  That wall includes the simulator writing every token; ``engine_s`` is how long the engine
  alone takes for the same requests (replayed one after another on a fresh engine, same ids and
  seeds), and ``runtime_us_per_request`` = (wall - engine_s) / requests is what is left for the
  runtime (executor, budgets, backend adapter).
* ``rss``: self-consistency with ``n`` = 10000 forks (16 requests in flight, ``ttc run``'s
  default) in this fresh process;
  ``peak_rss_mb`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` after the run, ``base_rss_mb`` the
  same before it (imports and the task loaded).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import anyio

from bench.workloads import BEAM, BEST_OF_N, ROOT, SC, plan_for
from ttcdsl.args import bind_args
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import SimConfig, SimEngine, load_task
from ttcdsl.runtime.sim.engine import EngineOutput, EngineRequest

try:  # where SimBackend is moving to
    from ttcdsl.runtime.backends.sim import SimBackend
except ImportError:  # where it was
    from ttcdsl.runtime.sim import SimBackend

TASK = ROOT / "data" / "tasks" / "math.json"
QUESTION = "What is 494 + 876?"


def recording_engine(task: Any) -> tuple[SimEngine, list[EngineRequest]]:
    """An engine that keeps every request it executed (for the replay)."""
    engine = SimEngine(task, SimConfig())
    seen: list[EngineRequest] = []
    execute = engine.execute

    async def recorded(req: EngineRequest, on_progress: Any = None) -> EngineOutput:
        seen.append(req)
        return await execute(req, on_progress)

    engine.execute = recorded  # type: ignore[method-assign]
    return engine, seen


async def replay(task: Any, requests: list[EngineRequest]) -> float:
    """Seconds a fresh engine takes to execute ``requests`` one after another."""
    engine = SimEngine(task, SimConfig())
    t0 = time.perf_counter()
    for req in requests:
        await engine.execute(req)
    return time.perf_counter() - t0


async def overhead(program: str, args: dict[str, int], worst_case: int | None) -> dict[str, Any]:
    task = load_task(TASK)
    plan = plan_for(program, worst_case)
    values = bind_args(plan.strategy(), {"question": QUESTION, **{k: str(v) for k, v in args.items()}})
    engine, seen = recording_engine(task)
    async with SimBackend(engine=engine) as backend:
        t0 = time.perf_counter()
        result = await run_plan(plan, backend, values, RunOptions(seed=1))
        wall = time.perf_counter() - t0
    engine_s = await replay(task, seen)
    requests = result.usage.requests
    return {"program": program, "args": args, "wall_s": wall, "requests": requests,
            "engine_requests": len(seen), "engine_s": engine_s,
            "us_per_request": 1e6 * wall / requests,
            "runtime_us_per_request": 1e6 * (wall - engine_s) / requests}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def rss(branches: int) -> dict[str, Any]:
    task = load_task(TASK)
    plan = plan_for(SC, branches * 512)
    values = bind_args(plan.strategy(), {"question": QUESTION, "n": str(branches)})
    base = _rss_mb()
    async with SimBackend(task, SimConfig()) as backend:
        t0 = time.perf_counter()
        result = await run_plan(plan, backend, values, RunOptions(seed=1))
        wall = time.perf_counter() - t0
    return {"branches": branches, "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
            "wall_s": wall, "requests": result.usage.requests}


def main(argv: list[str]) -> int:
    usage = ("usage: python -m bench.inproc overhead best_of_n N | "
             "overhead beam_search WIDTH BRANCH DEPTH | rss BRANCHES")
    if argv[:1] == ["overhead"]:
        kind, numbers = argv[:2], argv[2:]
    else:
        kind, numbers = argv[:1], argv[1:]
    try:
        sizes = [int(x) for x in numbers]
    except ValueError:
        sizes = []
    match kind, sizes:
        case ["overhead", "best_of_n"], [n]:
            report = anyio.run(overhead, BEST_OF_N, {"n": n}, n * 512)
        case ["overhead", "beam_search"], [width, branch, depth]:
            args = {"width": width, "branch": branch, "depth": depth}
            report = anyio.run(overhead, BEAM, args, width * branch * 256 * (depth + 1))
        case ["rss"], [n]:
            report = anyio.run(rss, n)
        case _:
            print(usage, file=sys.stderr)
            return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
