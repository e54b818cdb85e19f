"""Prefix reuse: prompt tokens the server prefilled against the least its radix cache allows
(not a test).

    python bench/prefix_reuse.py                  # every program on the simulator, then on a
                                                  # real SGLang if the test-tier venv exists
    python bench/prefix_reuse.py --no-sglang      # simulator only
    python bench/prefix_reuse.py --programs self_consistency beam_search

For each program in ``programs/`` it runs the strategy twice, each time against a fresh server
with an empty prefix cache, through `SGLangBackend` over HTTP:

* ``ttc``: the executor as shipped: a prefill-only warm-up of each forked prompt, then the forks
  at once; continuations sent as the exact token ids of prompt + branch.
* ``naive``: the same executor and requests with the warm-up removed, so the forks of a prompt
  arrive together at a cold cache (what a client that simply fires its forks does).

Prefilled tokens are read from the run's trace (what ``ttc run --trace`` writes): the sum over
generate and warm-up requests of ``prompt_tokens - cached_tokens`` as the server reported them.
The minimum is computed from the requests themselves (`minimum_prefill`): every distinct token
prefix of the requests' inputs once, except prefixes the server produced by decoding an earlier
request's output, plus the last input token of every request (SGLang always recomputes it, to
have logits).  A ratio of 1.00 means nothing was prefilled twice.

The simulator (``ttc sim serve``'s engine, on a free port of 127.0.0.1, latency model on so a
burst of forks really overlaps) runs every program with its defaults on a question of
``data/tasks/demo.json``; its PRM serves ``score with prm``.  The real server is SGLang 0.5.23
with SmolLM2-135M-Instruct on CPU, launched like ``ttc serve --cpu`` from
``${TTC_SGLANG_HOME:-~/.cache/ttcdsl/sglang}`` (tests/sglang_tier/README.md sets it up); it has
no reward model, so programs scoring with ``prm`` are skipped there, and the others run with
small arguments and a token cap so the whole table takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from rich.console import Console
from rich.table import Table

from ttcdsl import plan as P
from ttcdsl.args import bind_args
from ttcdsl.compiler import compile_file
from ttcdsl.errors import TTCError
from ttcdsl.launch import free_port, sglang_home, sglang_launch
from ttcdsl.runtime.backend import GenRequest, WarmResult
from ttcdsl.runtime.backends.recording import RecordingBackend
from ttcdsl.runtime.backends.sglang import SGLangBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import Latency, SimConfig, load_task
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.values import TraceRecord

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted(p.stem for p in (ROOT / "programs").glob("*.ttc"))
SIM_QUESTION = "What is 17 + 25?"
REAL_QUESTION = "What is 2 + 3?"
# Small arguments for the real server on CPU (decode runs ~25-45 tokens/s there).
REAL_ARGS: dict[str, dict[str, str]] = {
    "self_consistency": {"n": "8"},
    "adaptive_vote": {"k": "4", "rounds": "2"},
    "refine": {"rounds": "1"},
}


# --- the minimum --------------------------------------------------------------------------------


def minimum_prefill(inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> int:
    """The fewest prompt tokens a radix-cached server can prefill for these requests, in any
    order: one recomputed last token per request, plus every distinct proper prefix of an input
    (a trie node) that no request has as its whole input (that request's last token computes
    it) and that is not a decoded position of some request (a server caches prompt + output but
    the final output token, whose KV was never computed).  ``outputs[i]`` is what request i
    generated (empty for a warm-up)."""
    children: list[dict[int, int]] = [{}]
    proper: set[int] = set()
    whole: set[int] = set()
    decoded: set[int] = set()

    def walk(tokens: Sequence[int]) -> list[int]:
        node, path = 0, []
        for token in tokens:
            nxt = children[node].get(token)
            if nxt is None:
                nxt = len(children)
                children[node][token] = nxt
                children.append({})
            node = nxt
            path.append(node)
        return path

    for ids, out in zip(inputs, outputs, strict=True):
        path = walk([*ids, *out])
        proper.update(path[: len(ids) - 1])
        if ids:
            whole.add(path[len(ids) - 1])
        decoded.update(path[len(ids): len(ids) + len(out) - 1])
    return len(inputs) + len(proper - whole - decoded)


# --- one measured run ---------------------------------------------------------------------------


class NoWarmUp(RecordingBackend):
    """The naive client: records like `RecordingBackend` but never sends the prefix warm-up."""

    async def warm(self, input_ids: Sequence[int]) -> WarmResult:
        return WarmResult(prompt_tokens=0, cached_tokens=0)


@dataclass
class Measured:
    requests: int = 0
    prefilled: int = 0
    minimum: int = 0
    failed_attempts: int = 0
    error: str | None = None
    trace: list[TraceRecord] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.prefilled / self.minimum if self.minimum else float("nan")


async def measure(plan: P.Plan, values: dict[str, Any], url: str, *, warm_up: bool, seed: int,
                  budget: int | None) -> Measured:
    """Run ``plan`` once against the server at ``url`` and count its prefill."""
    out = Measured()
    recording = (RecordingBackend if warm_up else NoWarmUp)(SGLangBackend(url))
    options = RunOptions(seed=seed, budget=budget, trace=out.trace.append)
    try:
        async with recording:
            await run_plan(plan, recording, values, options)
    except TTCError as exc:
        out.error = str(exc).splitlines()[0]
        return out
    # (The naive client's skipped warm-ups still appear in the trace, with nothing prefilled.)
    kinds = ("generate", "warm") if warm_up else ("generate",)
    served = [r for r in out.trace if r.kind in kinds]
    out.failed_attempts = sum(1 for r in served if r.error is not None)
    done = [r for r in served if r.error is None]
    out.requests = len(done)
    out.prefilled = sum(r.prompt_tokens - r.cached_tokens for r in done)
    inputs = [list(w) for w in recording.warms] + [list(q.input_ids) for q, _ in recording.calls]
    outputs: list[list[int]] = [[] for _ in recording.warms]
    outputs += [list(r.output_ids) for _, r in recording.calls]
    out.minimum = minimum_prefill(inputs, outputs)
    return out


def needs_prm(plan: P.Plan) -> bool:
    return any(
        isinstance(node, P.Score) and node.scorer.kind == "prm"
        for strategy in plan.strategies.values()
        for node in strategy.nodes
    )


# --- servers ------------------------------------------------------------------------------------


async def on_sim(program: str, question: str, latency: Latency, seed: int) -> tuple[Measured, Measured]:
    task = load_task(ROOT / "data" / "tasks" / "demo.json")
    plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": question})
    runs = []
    for warm_up in (True, False):
        async with running_server(task, SimConfig(latency=latency)) as url:
            runs.append(await measure(plan, values, url, warm_up=warm_up, seed=seed, budget=None))
    return runs[0], runs[1]


async def flush(url: str, timeout: float = 120.0) -> None:
    """Empty the server's prefix cache (SGLang refuses while requests still run: retry)."""
    with anyio.fail_after(timeout):
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.post(url + "/flush_cache") as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
                await anyio.sleep(0.5)


async def on_real(url: str, program: str, question: str, seed: int,
                  budget: int) -> tuple[Measured, Measured]:
    plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
    given = {"question": question, **REAL_ARGS.get(program, {})}
    values = bind_args(plan.strategy(), given)
    runs = []
    for warm_up in (True, False):
        await flush(url)
        runs.append(await measure(plan, values, url, warm_up=warm_up, seed=seed, budget=budget))
    return runs[0], runs[1]


async def warm_engine(url: str) -> None:
    """SGLang's first requests on CPU are slow (shape warm-up); get them out of the way."""
    async with SGLangBackend(url) as backend:
        from ttcdsl.runtime.backend import Sampling

        ids = await backend.tokenize("Say hello.")
        await backend.generate(GenRequest(rid="bench-warm", input_ids=tuple(ids),
                                          sampling=Sampling(max_new_tokens=8, temperature=0.0)))


# --- the table ----------------------------------------------------------------------------------


def row(table: Table, program: str, server: str, ttc: Measured, naive: Measured) -> None:
    def cells(m: Measured) -> list[str]:
        if m.error:
            return ["-", "-", "-", "[red]failed[/]"]
        retried = f" ({m.failed_attempts} retried)" if m.failed_attempts else ""
        return [f"{m.requests}{retried}", str(m.prefilled), str(m.minimum), f"{m.ratio:.2f}"]

    table.add_row(program, server, *cells(ttc), *cells(naive))


def below_minimum(program: str, runs: Sequence[Measured], console: Console) -> bool:
    """A run that prefilled less than the minimum means the bound or the server's
    ``cached_tokens`` is wrong: say so (the script then exits 1)."""
    bad = False
    for name, m in zip(("ttc", "naive"), runs):
        if not m.error and m.prefilled < m.minimum:
            console.print(f"[red]{program} ({name}): prefilled {m.prefilled} < minimum "
                          f"{m.minimum}: the bound or the server's cached_tokens is wrong[/]")
            bad = True
    return bad


def new_table(title: str) -> Table:
    table = Table(title=title, header_style="bold", show_edge=False, pad_edge=False)
    table.add_column("program", no_wrap=True)
    table.add_column("server")
    for who in ("ttc", "naive"):
        for col in ("requests", "prefilled", "min", "ratio"):
            table.add_column(f"{who}\n{col}", justify="right", no_wrap=True)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--programs", nargs="+", choices=PROGRAMS, default=PROGRAMS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sim-question", default=SIM_QUESTION)
    parser.add_argument("--real-question", default=REAL_QUESTION)
    parser.add_argument("--prefill-ms", type=float, default=0.2,
                        help="simulator: ms per uncached prompt token (default 0.2)")
    parser.add_argument("--decode-ms", type=float, default=2.0,
                        help="simulator: ms per generated token (default 2)")
    parser.add_argument("--no-sglang", action="store_true", help="skip the real SGLang server")
    parser.add_argument("--sglang-url", help="use this running SGLang server instead of launching one")
    parser.add_argument("--real-budget", type=int, default=640,
                        help="real server: completion-token cap per run (default 640)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    failed = False

    latency = Latency(prefill_s=args.prefill_ms / 1000, decode_s=args.decode_ms / 1000)
    table = new_table(f"simulator ({args.sim_question!r}, seed {args.seed}, prefill "
                      f"{args.prefill_ms} ms/token, decode {args.decode_ms} ms/token)")
    for program in args.programs:
        ttc, naive = anyio.run(on_sim, program, args.sim_question, latency, args.seed)
        failed |= bool(ttc.error or naive.error) | below_minimum(program, (ttc, naive), console)
        row(table, program, "sim", ttc, naive)
        for m in (ttc, naive):
            if m.error:
                console.print(f"[red]{program}:[/] {m.error}")
    console.print(table)

    if args.no_sglang:
        return int(failed)
    home = sglang_home()
    model = home / "models" / "SmolLM2-135M-Instruct"
    python = home / "venv" / "bin" / "python"
    if args.sglang_url is None and not (python.exists() and model.exists()):
        console.print(f"real SGLang skipped: no venv/model under {home} "
                      "(scripts/sglang_tier.sh setup creates them)")
        return int(failed)
    with tempfile.TemporaryDirectory(prefix="ttc-bench-") as tmp:
        server = None
        url = args.sglang_url
        if url is None:
            spec = sglang_launch(str(model), port=free_port(), cpu=True, python=str(python))
            server = spec.process(log=Path(tmp) / "sglang.log")
            console.print(f"starting SGLang at {spec.url} (about 30-60 s)...")
            server.start()
            url = spec.url
        try:
            if server is not None:
                server.wait_ready(600.0)
            anyio.run(warm_engine, url)
            table = new_table(f"real SGLang, SmolLM2-135M on CPU ({args.real_question!r}, "
                              f"seed {args.seed}, at most {args.real_budget} completion tokens "
                              "per run)")
            for program in args.programs:
                plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
                if needs_prm(plan):
                    console.print(f"{program}: skipped on the real server (needs a reward model)")
                    continue
                ttc, naive = anyio.run(on_real, url, program, args.real_question, args.seed,
                                       args.real_budget)
                failed |= bool(ttc.error or naive.error) | below_minimum(program, (ttc, naive),
                                                                         console)
                row(table, program, "sglang", ttc, naive)
                for m in (ttc, naive):
                    if m.error:
                        console.print(f"[red]{program}:[/] {m.error}")
            console.print(table)
        finally:
            if server is not None:
                server.stop()
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
