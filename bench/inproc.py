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
  That wall includes the simulator writing every token: ``sim_decode_s`` is the time the engine
  spent in its token loop during the run, and ``runtime_us_per_request`` =
  (wall - sim_decode_s) / requests is what is left: the executor, budgets, the in-process
  backend and the engine's bookkeeping (admission, prefix cache).  ``instant_us_per_request``
  runs the same plan on `Instant`, a backend that answers every request at once with a fixed
  short text: CPU time per request of the runtime alone (executor, steps, budgets, client).
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
from ttcdsl.runtime.backend import BackendInfo, GenRequest, GenResult, WarmResult
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import SimConfig, SimEngine, load_task

TASK = ROOT / "data" / "tasks" / "math.json"
QUESTION = "What is 494 + 876?"


def timed_engine(task: Any) -> tuple[SimEngine, list[float] | None]:
    """An engine that adds up the seconds it spends writing tokens (`SimEngine._decode`).  With
    the latency model off and no streaming callback that loop never yields to the event loop,
    so the sum is the simulator's own work and nothing else.  None if the engine has no such
    method any more."""
    engine = SimEngine(task, SimConfig())
    decode = getattr(engine, "_decode", None)
    if decode is None:
        return engine, None
    spent = [0.0]

    async def timed(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await decode(*args)
        finally:
            spent[0] += time.perf_counter() - t0

    engine._decode = timed  # type: ignore[method-assign, assignment]
    return engine, spent


class Instant:
    """A backend with no model: every generation is the same short answer, at once."""

    info = BackendInfo(name="instant", model="instant")

    async def __aenter__(self) -> Instant:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def tokenize(self, text: str) -> list[int]:
        return [1, 2, 3, 4]

    async def detokenize(self, ids: Any) -> str:
        return ""

    async def warm(self, ids: Any) -> WarmResult:
        return WarmResult(prompt_tokens=len(ids), cached_tokens=0)

    async def generate(self, request: GenRequest) -> GenResult:
        step = "\n\n" if "\n\n" in request.sampling.stop else None
        return GenResult(text=" The answer is 4.\n\n", output_ids=[5, 6, 7],
                         finish="stop" if step else "eos", matched=step or 0, completion_tokens=3,
                         prompt_tokens=len(request.input_ids), cached_tokens=len(request.input_ids) - 1)

    async def reward(self, texts: Any) -> list[float]:
        return [0.5] * len(texts)


async def _instant_cpu_per_request(plan: Any, values: dict[str, Any]) -> float:
    t0 = time.process_time()
    result = await run_plan(plan, Instant(), values, RunOptions(seed=1))
    return 1e6 * (time.process_time() - t0) / result.usage.requests


async def overhead(program: str, args: dict[str, int], worst_case: int | None) -> dict[str, Any]:
    task = load_task(TASK)
    plan = plan_for(program, worst_case)
    values = bind_args(plan.strategy(), {"question": QUESTION, **{k: str(v) for k, v in args.items()}})
    engine, spent = timed_engine(task)
    async with SimBackend(engine=engine) as backend:
        t0 = time.perf_counter()
        result = await run_plan(plan, backend, values, RunOptions(seed=1))
        wall = time.perf_counter() - t0
    requests = result.usage.requests
    decode_s = None if spent is None else spent[0]
    instant = min([await _instant_cpu_per_request(plan, values) for _ in range(3)])
    return {"program": program, "args": args, "wall_s": wall, "requests": requests,
            "completion_tokens": result.usage.completion_tokens, "sim_decode_s": decode_s,
            "us_per_request": 1e6 * wall / requests,
            "runtime_us_per_request": None if decode_s is None else 1e6 * (wall - decode_s) / requests,
            "instant_us_per_request": instant}


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
