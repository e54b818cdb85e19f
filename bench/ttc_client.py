"""The benchmark's ttcdsl client: one workload run as ``ttc run`` runs it, timed from inside.

    python -m bench.ttc_client URL SPEC.json SEED

``SPEC.json`` is what `bench.workloads.spec` wrote.  The client compiles the spec's ``.ttc``
program and runs it on ``--backend sglang --url URL`` exactly as ``ttc run`` does
(`make_backend`, then `run_plan`; a dataset through `run_dataset`, ``ttc run --input --output``'s
engine, writing its JSONL output to a temporary file), with the spec's arguments, ``seed`` and
concurrency (``--concurrency``; ``--items`` for a dataset).  Where the program's budget could
cut a fork below the ``max_tokens`` the frontend sends, it is raised to the worst case
(`bench.workloads.plan_for`).

Only the workload is timed, inside ``async with backend`` (compiling, imports and the backend's
start-up checks are not): wall with ``time.perf_counter``, CPU of the process with
``time.process_time``.  Prints one JSON object: ``wall_s``, ``cpu_s``, ``answers``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.workloads import plan_for
from ttcdsl.args import bind_args
from ttcdsl.errors import TTCError
from ttcdsl.harness.dataset import Item, run_dataset
from ttcdsl.runtime.backends.factory import BackendOptions, make_backend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import Answer, RunResult


def answer_of(result: RunResult) -> Any:
    value = result.value
    if isinstance(value, Answer):
        return value.value
    return None  # beam search returns branches; the answer is not what is measured


def worst_case(spec: dict[str, Any]) -> int | None:
    if spec["kind"] in ("self_consistency", "dataset"):
        return int(spec["n"]) * int(spec["max_tokens"])
    return None


async def workload(url: str, spec: dict[str, Any], seed: int) -> dict[str, Any]:
    plan = plan_for(spec["program"], worst_case(spec))
    given = {k: str(v) for k, v in spec["args"].items()}
    options = RunOptions(seed=seed, concurrency=int(spec["concurrency"]))
    backend = make_backend(BackendOptions(backend="sglang", url=url))
    async with backend:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if spec["kind"] == "dataset":
            items = [Item(str(i), i + 1, {"id": str(i), "question": q})
                     for i, q in enumerate(spec["questions"])]
            with tempfile.TemporaryDirectory(prefix="ttc-bench-") as tmp:
                out = Path(tmp) / "out.jsonl"
                await run_dataset(plan, backend, items, out, given=given, options=options,
                                  items_in_flight=int(spec["threads"]))
                answers = [json.loads(line)["result"].get("value")
                           for line in out.read_text().splitlines()]
        else:
            answers = []
            for question in spec["questions"]:
                values = bind_args(plan.strategy(), {**given, "question": question})
                answers.append(answer_of(await run_plan(plan, backend, values, options)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "answers": answers}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.ttc_client URL SPEC.json SEED", file=sys.stderr)
        return 2
    url, spec_path, seed = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    try:
        report = anyio.run(workload, url, spec, int(seed))
    except TTCError as exc:
        print(f"ttcdsl client: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
