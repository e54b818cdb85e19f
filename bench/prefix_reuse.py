"""Prefix reuse: prompt tokens the server prefilled against the least its radix cache allows
(not a test).

    python bench/prefix_reuse.py                  # every program on the simulator, then on a
                                                  # real SGLang if the test-tier venv exists
    python bench/prefix_reuse.py --no-sglang      # simulator only
    python bench/prefix_reuse.py --programs self_consistency beam_search
    python bench/prefix_reuse.py --openai --router --llama   # also the openai backend: on the
                                                  # simulator's /v1, through sglang-router, on
                                                  # llama-cpp-python's server, on SGLang's /v1

For each program in ``programs/`` it runs the strategy twice, each time against a fresh server
with an empty prefix cache, through `SGLangBackend` over HTTP (with ``--openai``, also through
`OpenAIBackend` on the simulator's ``/v1/completions`` with its cache report on, and on the
real server's, launched with ``--enable-cache-report``):

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

``--router`` starts two ``ttc sim serve --enable-cache-report`` workers (the same latency model)
behind a real sglang-router and runs every program through `OpenAIBackend` at the router, the
workers' caches flushed before each run.  ``--llama`` starts llama-cpp-python's server (tests/fixtures/servers/llama_cpp_server.py, the
SmolLM2 GGUF of the local backend), a fresh one per program, and runs the same small programs
through `OpenAIBackend`.  That
server reports no cached tokens, so prefilled tokens are read from the launcher's counter of the
prompt tokens it evaluated (``GET /ttc/prefill``) before and after each run.  It runs one request
at a time in one KV sequence and the backend sends it no warm-ups (`Profile.forks` "serial"), so
only the ``ttc`` run is made: the naive client would send the very same requests.  Its minimum
drops the recomputed last token per request: when a request's whole prompt is exactly what the
server last evaluated (after a one-token or immediately-ended generation) it samples from the
logits it kept and prefills nothing.
Programs that ``score with prm`` get their scores from a simulator's PRM (it scores any text).
``--llama-cache`` starts it with ``--cache true`` (a RAM cache of whole states, restored by
longest prefix).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
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
from ttcdsl.launch import (
    ServerGroup,
    ServerProcess,
    free_port,
    router_argv,
    router_env,
    sglang_home,
    sglang_launch,
    sim_argv,
)
from ttcdsl.runtime.backend import Backend, GenRequest, WarmResult
from ttcdsl.runtime.backends.openai import OpenAIBackend
from ttcdsl.runtime.backends.recording import RecordingBackend
from ttcdsl.runtime.backends.sglang import SGLangBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import Latency, SimConfig, load_task
from ttcdsl.runtime.sim.server import running_server
from ttcdsl.runtime.values import TraceRecord

ROOT = Path(__file__).resolve().parent.parent
LLAMA_LAUNCHER = ROOT / "tests" / "fixtures" / "servers" / "llama_cpp_server.py"
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


def minimum_prefill(inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], *,
                    recompute_last: bool = True) -> int:
    """The fewest prompt tokens a radix-cached server can prefill for these requests, in any
    order: one recomputed last token per request, plus every distinct proper prefix of an input
    (a trie node) that no request has as its whole input (that request's last token computes
    it) and that is not a decoded position of some request (a server caches prompt + output but
    the final output token, whose KV was never computed).  ``outputs[i]`` is what request i
    generated (empty for a warm-up).  ``recompute_last=False`` is for a server that samples
    straight from the logits it kept when a request's whole input is what it last computed
    (llama-cpp-python): then every distinct input prefix once, decoded positions aside."""
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
    if not recompute_last:
        return len((proper | whole) - decoded)
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


Counter = Callable[[], Awaitable[int]]


def llama_counter(url: str) -> Counter:
    """Prompt tokens llama-cpp-python's server evaluated so far (the launcher's counter)."""
    async def read() -> int:
        async with aiohttp.ClientSession() as session, session.get(url + "/ttc/prefill") as resp:
            return int((await resp.json())["prefilled_tokens"])
    return read


def sim_counter(urls: Sequence[str]) -> Counter:
    """Prompt tokens the simulators at ``urls`` prefilled so far (their ``/sim/stats``)."""
    async def read() -> int:
        async with aiohttp.ClientSession() as session:
            total = 0
            for url in urls:
                async with session.get(url + "/sim/stats") as resp:
                    total += int((await resp.json())["prefill_tokens"])
            return total
    return read


async def measure(plan: P.Plan, values: dict[str, Any], url: str, *, warm_up: bool, seed: int,
                  budget: int | None, openai: bool = False, counter: Counter | None = None,
                  recompute_last: bool = True, reward_url: str | None = None) -> Measured:
    """Run ``plan`` once against the server at ``url`` and count its prefill: from the trace, or
    with ``counter`` from the server's own count before and after (everything it prefilled,
    tokenizing completions included).  ``openai``: through `OpenAIBackend`."""
    out = Measured()
    inner: Backend = OpenAIBackend(url, reward_url=reward_url) if openai else SGLangBackend(url)
    recording = (RecordingBackend if warm_up else NoWarmUp)(inner)
    # Programs with a thinking budget need tags; the servers measured here report none.
    options = RunOptions(seed=seed, budget=budget, trace=out.trace.append, think_tags=("<think>", "</think>"))
    try:
        async with recording:
            before = await counter() if counter else 0
            await run_plan(plan, recording, values, options)
            after = await counter() if counter else 0
            sends_warms = not isinstance(inner, OpenAIBackend) or inner.profile.forks == "warm"
    except TTCError as exc:
        out.error = str(exc).splitlines()[0]
        return out
    # (The naive client's skipped warm-ups still appear in the trace, with nothing prefilled.)
    kinds = ("generate", "warm") if warm_up and sends_warms else ("generate",)
    served = [r for r in out.trace if r.kind in kinds]
    out.failed_attempts = sum(1 for r in served if r.error is not None)
    done = [r for r in served if r.error is None]
    out.requests = len(done)
    out.prefilled = after - before if counter else sum(r.prompt_tokens - r.cached_tokens for r in done)
    warms = recording.warms if sends_warms else []
    inputs = [list(w) for w in warms] + [list(q.input_ids) for q, _ in recording.calls]
    outputs: list[list[int]] = [[] for _ in warms]
    outputs += [list(r.output_ids) for _, r in recording.calls]
    out.minimum = minimum_prefill(inputs, outputs, recompute_last=recompute_last)
    return out


def needs_prm(plan: P.Plan) -> bool:
    return any(
        isinstance(node, P.Score) and node.scorer.kind == "prm"
        for strategy in plan.strategies.values()
        for node in strategy.nodes
    )


# --- servers ------------------------------------------------------------------------------------


async def on_sim(program: str, question: str, latency: Latency, seed: int,
                 openai: bool = False) -> tuple[Measured, Measured]:
    task = load_task(ROOT / "data" / "tasks" / "demo.json")
    plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": question})
    runs = []
    for warm_up in (True, False):
        async with running_server(task, SimConfig(latency=latency, cache_report=openai)) as url:
            runs.append(await measure(plan, values, url, warm_up=warm_up, seed=seed, budget=None,
                                      openai=openai))
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


async def on_real(url: str, program: str, question: str, seed: int, budget: int,
                  openai: bool = False, flushed: Sequence[str] = ()) -> tuple[Measured, Measured]:
    """Both runs against the running server at ``url``, its cache emptied before each; with
    ``flushed`` (simulator workers behind a router) theirs, and their counters give the
    prefill."""
    plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
    given = {"question": question, **REAL_ARGS.get(program, {})}
    values = bind_args(plan.strategy(), given)
    runs = []
    for warm_up in (True, False):
        for server in flushed or (url,):
            await flush(server)
        counter = sim_counter(flushed) if flushed else None
        runs.append(await measure(plan, values, url, warm_up=warm_up, seed=seed, budget=budget,
                                  openai=openai, counter=counter))
    return runs[0], runs[1]


def router_table(args: argparse.Namespace, latency: str, console: Console) -> bool:
    """``--router``: the openai backend through a real sglang-router in front of two simulator
    workers (reporting cached tokens), each run on emptied caches; True when a run failed."""
    failed = False
    with tempfile.TemporaryDirectory(prefix="ttc-bench-router-") as tmp, \
            ServerGroup(Path(tmp)) as group:
        workers = []
        for name in ("w1", "w2"):
            port = free_port()
            argv = [*sim_argv(port, ROOT / "data" / "tasks" / "demo.json", latency=latency),
                    "--enable-cache-report"]
            workers.append(group.launch(name, argv, f"http://127.0.0.1:{port}"))
        for worker in workers:
            worker.wait_ready()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        group.start("router", router_argv(port, [w.url for w in workers]), url,
                    ready="/readiness", env=router_env())
        table = new_table(f"sglang-router (cache_aware) in front of two simulators "
                          f"({args.sim_question!r}, seed {args.seed}, latency {latency})")
        for program in args.programs:
            ttc, naive = anyio.run(on_real, url, program, args.sim_question, args.seed, 10**9,
                                   True, [w.url for w in workers])
            failed |= bool(ttc.error or naive.error) | below_minimum(program, (ttc, naive), console)
            row(table, program, "router /v1", ttc, naive)
            for m in (ttc, naive):
                if m.error:
                    console.print(f"[red]{program}:[/] {m.error}")
        console.print(table)
    return failed


async def on_llama(url: str, reward_url: str, program: str, question: str, seed: int,
                   budget: int) -> Measured:
    plan = compile_file(str(ROOT / "programs" / f"{program}.ttc"), None).plan
    values = bind_args(plan.strategy(), {"question": question, **REAL_ARGS.get(program, {})})
    return await measure(plan, values, url, warm_up=True, seed=seed, budget=budget, openai=True,
                         counter=llama_counter(url), recompute_last=False, reward_url=reward_url)


def llama_server(args: argparse.Namespace, log: Path) -> ServerProcess:
    """llama-cpp-python's server (not started) through the launcher that counts its prefill."""
    from ttcdsl.runtime.backends.local import default_model_path

    port = free_port()
    argv = [sys.executable, str(LLAMA_LAUNCHER), "--model", str(default_model_path()),
            "--port", str(port), "--n_ctx", "4096", "--n_threads", "1",
            "--interrupt_requests", "False", "--cache", str(args.llama_cache)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}", name="llama-cpp-python", log=log,
                         health="/ttc/prefill", ready_timeout=120)


def llama_table(args: argparse.Namespace, console: Console) -> bool:
    """The llama-cpp-python rows (``--llama``), each program on a fresh server (its KV and its
    RAM cache empty); True when a run failed."""
    failed = False
    cache = " with --cache true" if args.llama_cache else ""
    table = new_table(f"llama-cpp-python's server{cache}, SmolLM2-135M Q4_1 "
                      f"({args.real_question!r}, seed {args.seed}, at most "
                      f"{args.real_budget} completion tokens per run; no naive run)")
    with tempfile.TemporaryDirectory(prefix="ttc-bench-llama-") as tmp, \
            ServerGroup(Path(tmp)) as group:
        port = free_port()  # the simulator's PRM scores any text: the reward model here
        prm = group.start("prm", sim_argv(port), f"http://127.0.0.1:{port}")
        for program in args.programs:
            with llama_server(args, Path(tmp) / f"{program}.log") as server:
                server.wait_ready()
                ttc = anyio.run(on_llama, server.url, prm.url, program, args.real_question,
                                args.seed, args.real_budget)
            failed |= bool(ttc.error) | below_minimum(program, (ttc,), console)
            row(table, program, "llama.cpp", ttc, Measured(error="same requests"))
            if ttc.error:
                console.print(f"[red]{program}:[/] {ttc.error}")
    console.print(table)
    return failed


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
        if m.error == "same requests":
            return ["-", "-", "-", "-"]
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
    parser.add_argument("--openai", action="store_true",
                        help="also the openai backend on the simulator's /v1/completions")
    parser.add_argument("--llama", action="store_true",
                        help="also the openai backend on llama-cpp-python's server")
    parser.add_argument("--router", action="store_true",
                        help="also the openai backend through sglang-router on two simulators")
    parser.add_argument("--llama-cache", action="store_true",
                        help="start llama-cpp-python's server with --cache true")
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
        for openai in (False, True) if args.openai else (False,):
            ttc, naive = anyio.run(on_sim, program, args.sim_question, latency, args.seed, openai)
            failed |= bool(ttc.error or naive.error) | below_minimum(program, (ttc, naive), console)
            row(table, program, "sim /v1" if openai else "sim", ttc, naive)
            for m in (ttc, naive):
                if m.error:
                    console.print(f"[red]{program}:[/] {m.error}")
    console.print(table)
    if args.router:
        failed |= router_table(args, f"{args.prefill_ms / 1000:g},{args.decode_ms / 1000:g}", console)
    if args.llama:
        failed |= llama_table(args, console)

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
            # The OpenAI routes report cached tokens only with --enable-cache-report.
            extra = ("--enable-cache-report",) if args.openai else ()
            spec = sglang_launch(str(model), port=free_port(), cpu=True, python=str(python),
                                 extra=extra)
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
                for openai in (False, True) if args.openai else (False,):
                    ttc, naive = anyio.run(on_real, url, program, args.real_question, args.seed,
                                           args.real_budget, openai)
                    failed |= bool(ttc.error or naive.error) | below_minimum(
                        program, (ttc, naive), console)
                    row(table, program, "sglang /v1" if openai else "sglang", ttc, naive)
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
