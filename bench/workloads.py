"""The suite's workloads, and the one spec both clients run from.

A `Workload` names a program of ``programs/``, its arguments, the questions and how many
requests a client keeps in flight.  `spec` reads the prompt template and the sampling settings
(``max_tokens``, ``temperature``, the ``step`` separator) out of the compiled ``.ttc`` program,
so the frontend program (`bench/frontend.py`) sends the same prompts with the same settings as
the ttcdsl run by construction, not by copying.

`Profile` holds the sizes of one invocation: ``FULL`` (what ``python -m bench`` measures, the
issue's workloads), ``QUICK`` (``--quick``: one repeat, smaller) and ``SMOKE`` (``--smoke``: the
smallest sizes, for tests/test_bench_suite.py).  `math_problems` writes the simulator task file
and dataset for the largest workload (``data/make_sim_math.py``'s problems; its first 30 are
``data/tasks/math.json``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ttcdsl import plan as P
from ttcdsl.compiler import compile_file

__all__ = ["FULL", "PROFILES", "QUICK", "ROOT", "SMOKE", "Profile", "Workload", "beam", "dataset",
           "math_problems", "plan_for", "questions_of", "sampling", "sc", "scaling", "spec"]

ROOT = Path(__file__).resolve().parent.parent
SC = "programs/self_consistency.ttc"
BEAM = "programs/beam_search.ttc"
BEST_OF_N = "programs/best_of_n.ttc"


@dataclass(frozen=True)
class Workload:
    """One measured workload.  ``concurrency``: requests in flight (ttcdsl ``--concurrency``;
    the frontend has one thread per fork, so every fork of a step is in flight); ``threads``:
    questions in flight (ttcdsl's dataset ``--items``, the frontend's ``run_batch``
    ``num_threads``)."""

    name: str
    label: str
    kind: str  # self_consistency | beam_search | dataset
    program: str
    args: dict[str, int]
    questions: int = 1
    concurrency: int = 16
    threads: int = 1


def sc(n: int, questions: int = 1) -> Workload:
    return Workload(f"self_consistency_{n}", f"self-consistency, {n} forks", "self_consistency",
                    SC, {"n": n}, questions=questions, concurrency=n)


def scaling(n: int) -> Workload:
    """A point of the scaling fit: self-consistency with ``n`` forks on one question."""
    return Workload(f"scaling_sc_{n}", f"self-consistency, {n} forks, 1 question",
                    "self_consistency", SC, {"n": n}, concurrency=n)


def beam(width: int, branch: int, depth: int, questions: int = 1) -> Workload:
    return Workload(f"beam_search_{width}x{branch}_d{depth}",
                    f"beam search {width}x{branch}, depth {depth} (PRM)", "beam_search", BEAM,
                    {"width": width, "branch": branch, "depth": depth}, questions=questions,
                    concurrency=width * branch)


def dataset(questions: int, samples: int, threads: int) -> Workload:
    return Workload(f"dataset_{questions}x{samples}",
                    f"{questions} questions x {samples} samples, concurrent", "dataset", SC,
                    {"n": samples}, questions=questions, concurrency=threads * samples,
                    threads=threads)


@dataclass(frozen=True)
class Profile:
    name: str
    repeats: int
    workloads: tuple[Workload, ...]
    scaling: tuple[int, ...]  # fork counts of the scaling fit (`scaling`)
    best_of: int  # in-process overhead: best-of-N ...
    beam: tuple[int, int, int]  # ... and a (width, branch, depth) beam search
    rss_branches: int
    prefix_programs: tuple[str, ...] | None = None  # None: every program
    tasks: int = field(default=50)


FULL = Profile("full", 3, (sc(16, 4), sc(64, 4), beam(4, 4, 6, 4), dataset(50, 8, 8)),
               (16, 64, 256, 1024), 1000, (16, 4, 20), 10_000)
QUICK = Profile("quick", 1, (sc(16, 2), sc(64, 2), beam(4, 4, 3, 2), dataset(16, 8, 8)),
                (16, 64, 256), 300, (16, 4, 5), 2_000)
SMOKE = Profile("smoke", 1, (sc(4), beam(2, 2, 1), dataset(3, 2, 2)), (2, 4), 8, (2, 2, 2),
                50, ("self_consistency",), tasks=4)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}


# --- reading the program -------------------------------------------------------------------------


def _const(nodes: dict[int, P.Node], ref: P.Ref | None) -> Any:
    if ref is None:
        return None
    node = nodes[ref.node]
    if not isinstance(node, P.Const):
        raise ValueError(f"expected a constant setting, found {type(node).__name__} (node {ref.node})")
    return node.value


def _template(strategy: P.StrategyPlan, nodes: dict[int, P.Node], ref: P.Ref) -> str:
    """The prompt a step samples from, with ``{param}`` where a parameter is interpolated."""
    node = nodes[ref.node]
    if isinstance(node, P.Var):
        bound = {s.name: s.value for s in strategy.body if isinstance(s, P.Bind)}
        node = nodes[bound[node.name].node]
    if not isinstance(node, P.Prompt):
        raise ValueError(f"expected a prompt, found {type(node).__name__} (node {node.id})")
    parts = []
    for part in node.parts:
        if isinstance(part, str):
            parts.append(part)
        else:
            param = nodes[part.node]
            if not isinstance(param, P.Param):
                raise ValueError(f"prompt interpolates {type(param).__name__}, not a parameter")
            parts.append("{" + param.name + "}")
    return "".join(parts)


def _settings(nodes: dict[int, P.Node], s: P.Settings) -> dict[str, Any]:
    temperature = _const(nodes, s.temperature)
    return {"max_tokens": _const(nodes, s.max_tokens) or 128,
            "temperature": 1.0 if temperature is None else float(temperature),
            "step": _const(nodes, s.step)}


def sampling(program: str) -> dict[str, Any]:
    """The prompt template and the sampling settings of ``program``'s steps; they must be the
    same for every ``sample``/``expand`` of the program (true of the programs benchmarked)."""
    strategy = compile_file(str(ROOT / program)).plan.strategy()
    nodes = {n.id: n for n in strategy.nodes}
    samples = [n for n in strategy.nodes if isinstance(n, P.Sample)]
    steps = [n for n in strategy.nodes if isinstance(n, (P.Sample, P.Expand))]
    if len(samples) != 1:
        raise ValueError(f"{program}: expected one sample step, found {len(samples)}")
    found = [_settings(nodes, n.settings) for n in steps]
    if any(f != found[0] for f in found):
        raise ValueError(f"{program}: its steps sample with different settings: {found}")
    return {"prompt": _template(strategy, nodes, samples[0].prompt), **found[0]}


def spec(workload: Workload, questions: list[str]) -> dict[str, Any]:
    """What both clients are told to run (written to JSON for the frontend)."""
    return {"workload": workload.name, "kind": workload.kind, "program": workload.program,
            "args": workload.args, "questions": questions, "concurrency": workload.concurrency,
            "threads": workload.threads, **workload.args, **sampling(workload.program)}


def plan_for(program: str, worst_case: int | None = None) -> P.Plan:
    """The compiled program; with ``worst_case``, its strategy budget is raised to that many
    tokens if it is lower, so no request is cut below the ``max_tokens`` the frontend sends
    (the frontend has no budgets)."""
    plan = compile_file(str(ROOT / program)).plan
    strategy = plan.strategy()
    if worst_case is None or strategy.budget is None or strategy.budget >= worst_case:
        return plan
    raised = msgspec.structs.replace(strategy, budget=worst_case)
    return msgspec.structs.replace(plan, strategies={**plan.strategies, plan.entry: raised})


def math_problems(n: int, folder: Path) -> tuple[Path, Path]:
    """Write ``n`` simulated math problems (task file, JSONL dataset) into ``folder``."""
    path = ROOT / "data" / "make_sim_math.py"
    loaded = importlib.util.spec_from_file_location("_bench_make_sim_math", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    task, data = folder / "math.json", folder / "math.jsonl"
    with contextlib.redirect_stderr(io.StringIO()):  # its "wrote ..." line
        module.main(["--n", str(n), "--task", str(task), "--data", str(data)])
    return task, data


def questions_of(data: Path) -> list[str]:
    return [json.loads(line)["question"] for line in data.read_text().splitlines() if line.strip()]
