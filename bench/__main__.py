"""``python -m bench``: ttcdsl against SGLang's own frontend (``sglang.lang``), side by side.

    python -m bench                       # the full suite (about 15 minutes on two cores)
    python -m bench --quick               # one repeat, smaller sizes (a few minutes)
    python -m bench --quick --no-frontend --json out.json   # ttcdsl's figures only

One ``ttc sim serve`` (`bench.simserver`: the same server plus a request log) runs in its own
process on a free port of 127.0.0.1 with the latency model on (``--latency``, default
0.2 ms prefill per uncached token, 2 ms decode per token, batch 32).  For every repeat and every
workload (`bench.workloads`), the ttcdsl client (`bench.ttc_client`) and the frontend client
(`bench/frontend.py`, run by the python of the real-SGLang tier's venv) run one after the
other, each in a fresh process, each after a ``/flush_cache`` and a reset of the server's log,
each timing only its workload.  After each run the server's log gives the generations, the
prefilled prompt tokens and the latency model's ideal (`bench.critical`).  Then, without the
server: the in-process overhead per request and the peak RSS at 10,000 branches
(`bench.inproc`, fresh processes) and the prefix-reuse ratio of every program
(`bench.prefix_reuse`).  Prints a table; ``--json OUT`` writes everything (bench/README.md
lists the keys).  Nothing here asserts anything about speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape

from bench.critical import summarize
from bench.procs import BenchError, SimServer, get_json, post, run_json
from bench.report import Run, client_summary, goals, paired_ratio, print_report, slope
from bench.workloads import (
    PROFILES,
    ROOT,
    Profile,
    Workload,
    math_problems,
    questions_of,
    scaling,
    spec,
)
from ttcdsl.commands.sim import parse_latency
from ttcdsl.errors import TTCError
from ttcdsl.runtime.sim import Latency
from ttcdsl.runtime.sim.tokenizer import tokenizer

CLIENTS = ("ttcdsl", "frontend")
SETUP_HINT = "scripts/sglang_tier.sh setup creates it, about 11 GB in 4-6 minutes"
RUN_TIMEOUT = 1800.0


# --- finding the frontend ----------------------------------------------------------------------


def frontend_python(args: argparse.Namespace, profile: Profile) -> tuple[str | None, str]:
    """The python that has ``sglang`` (the tier venv's), or None and a note saying why not."""
    if args.no_frontend:
        return None, "SGLang's frontend skipped (--no-frontend): ttcdsl's figures only"
    if args.frontend_python:
        path = Path(args.frontend_python)
        if not path.exists():
            raise BenchError(f"--frontend-python {path}: no such file")
        return str(path), f"SGLang's frontend from {path}"
    home = Path(os.environ.get("TTC_SGLANG_HOME", "~/.cache/ttcdsl/sglang")).expanduser()
    venv = home / "venv"
    if (venv / ".ttc-installed").exists() and (venv / "bin" / "python").exists():
        return str(venv / "bin" / "python"), f"SGLang's frontend from {venv}"
    missing = f"no SGLang venv at {venv} ({SETUP_HINT}; TTC_SGLANG_HOME moves it)"
    if profile.name == "full":
        raise BenchError(f"{missing}; or run with --quick or --no-frontend for ttcdsl's figures only")
    return None, f"SGLang's frontend skipped: {missing}"


# --- one run -----------------------------------------------------------------------------------


def flush(url: str, timeout: float = 60.0) -> None:
    """Empty the prefix cache (refused while requests still run: retry) and the request log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            post(url + "/flush_cache")
            break
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    post(url + "/bench/log/reset")


def one_run(client: str, workload: Workload, spec_path: Path, url: str, seed: int,
            python: str | None, latency: Latency,
            questions: list[str]) -> tuple[Run, dict[str, Any]]:
    flush(url)
    if client == "ttcdsl":
        argv = [sys.executable, "-m", "bench.ttc_client", url, str(spec_path), str(seed)]
    else:
        assert python is not None
        # -I: the script's folder (bench/) stays off sys.path in the other venv.
        argv = [python, "-I", str(ROOT / "bench" / "frontend.py"), url, str(spec_path)]
    out = run_json(argv, cwd=ROOT, timeout=RUN_TIMEOUT, what=f"the {client} client on {workload.label}")
    # Both clients run a workload's questions one after the other, except in a dataset.
    in_turn = () if workload.kind == "dataset" else questions
    side = summarize(get_json(url + "/bench/log"), tokenizer.decode, prefill_s=latency.prefill_s,
                     decode_s=latency.decode_s, max_batch=latency.max_batch, in_turn=in_turn)
    ideal = side.ideal
    run = Run(wall_s=out["wall_s"], cpu_s=out["cpu_s"], requests=side.requests,
              generations=side.generations, prefilled=side.prefilled, chain_s=ideal.chain_s,
              work_s=ideal.work_s, served_s=ideal.served_s, ideal_s=ideal.ideal_s,
              queued_s=ideal.queued_s)
    return run, out


def measured_workloads(profile: Profile) -> list[Workload]:
    """The profile's workloads, then the points of the scaling fit."""
    return [*profile.workloads, *(scaling(n) for n in profile.scaling)]


def measure(profile: Profile, repeats: int, url: str, questions: list[str], python: str | None,
            latency: Latency, folder: Path, console: Console) -> dict[str, dict[str, list[Run]]]:
    clients = CLIENTS if python else CLIENTS[:1]
    workloads = measured_workloads(profile)
    paths = {}
    for w in workloads:
        paths[w.name] = folder / f"{w.name}.json"
        paths[w.name].write_text(json.dumps(spec(w, questions[: w.questions])), encoding="utf-8")
    runs: dict[str, dict[str, list[Run]]] = {w.name: {c: [] for c in clients} for w in workloads}
    for repeat in range(repeats):
        for w in workloads:
            for client in clients:
                run, _ = one_run(client, w, paths[w.name], url, repeat + 1, python, latency,
                                 questions[: w.questions])
                runs[w.name][client].append(run)
                console.print(f"[dim]repeat {repeat + 1}/{repeats} {w.label:<40} {client:<8} "
                              f"wall {run.wall_s:6.2f} s  cpu {run.cpu_s:6.2f} s  "
                              f"{run.generations} generations[/]")
    return runs


# --- without the server ------------------------------------------------------------------------


def inproc(profile: Profile) -> tuple[dict[str, Any], dict[str, Any]]:
    def sub(*argv: str) -> dict[str, Any]:
        return run_json([sys.executable, "-m", "bench.inproc", *argv], cwd=ROOT,
                        timeout=RUN_TIMEOUT, what=f"bench.inproc {' '.join(argv)}")

    width, branch, depth = profile.beam
    overhead = {
        f"best_of_{profile.best_of}": sub("overhead", "best_of_n", str(profile.best_of)),
        f"beam_search_{width}x{branch}_d{depth}": sub("overhead", "beam_search", str(width),
                                                      str(branch), str(depth)),
    }
    return overhead, sub("rss", str(profile.rss_branches))


def prefix_reuse(profile: Profile, latency: Latency) -> dict[str, float]:
    """bench/prefix_reuse.py's simulator half, ttcdsl's side: prefilled / minimum per program."""
    from bench import prefix_reuse as pr

    programs = profile.prefix_programs or tuple(pr.PROGRAMS)
    out = {}
    for program in programs:
        ttc, _ = anyio.run(pr.on_sim, program, pr.SIM_QUESTION, latency, 1)
        if ttc.error:
            raise BenchError(f"prefix reuse of {program}: {ttc.error}")
        out[program] = ttc.ratio
    return out


# --- the report --------------------------------------------------------------------------------


def build(profile: Profile, repeats: int, runs: dict[str, dict[str, list[Run]]],
          frontend: dict[str, Any], latency: Latency, extra: dict[str, Any]) -> dict[str, Any]:
    workloads = {w.name: w for w in measured_workloads(profile)}
    has_fe = frontend["available"]
    report: dict[str, Any] = {
        "suite": "python -m bench", "profile": profile.name, "repeats": repeats,
        "latency": {"prefill_s": latency.prefill_s, "decode_s": latency.decode_s,
                    "max_batch": latency.max_batch},
        "frontend": frontend, "workloads": {},
    }
    for name, by_client in runs.items():
        report["workloads"][name] = {"label": workloads[name].label, **{
            c: client_summary(rs) for c, rs in by_client.items()}}
    for key, figure in (("wall_ratio_vs_sglang_frontend", "wall_s"),
                        ("cpu_per_generation_ratio_vs_sglang_frontend", "cpu_per_generation_ms"),
                        ("prefilled_tokens_ratio_vs_sglang_frontend", "prefilled_tokens")):
        report[key] = {name: paired_ratio(r["ttcdsl"], r["frontend"], figure)
                       for name, r in runs.items()} if has_fe else None
    for key in ("critical_path_ratio", "model_path_ratio", "schedule_ratio"):
        report[key] = {c: {name: report["workloads"][name][c][key]["median"] for name in runs}
                       for c in (CLIENTS if has_fe else CLIENTS[:1])}
    forks = list(profile.scaling)
    report["scaling_exponent"] = {"forks": forks}
    for c in CLIENTS if has_fe else CLIENTS[:1]:
        rows = [report["workloads"][scaling(n).name][c] for n in forks]
        report["scaling_exponent"][c] = {
            "wall": slope(forks, [r["wall_s"]["median"] for r in rows]),
            "cpu": slope(forks, [r["cpu_s"]["median"] for r in rows])}
    report.update(extra)
    report["goals"] = goals(report)
    return report


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def run_suite(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    repeats = args.repeats or profile.repeats
    latency = parse_latency(args.latency)
    python, note = frontend_python(args, profile)
    console.print(note)
    started = machine()
    with tempfile.TemporaryDirectory(prefix="ttc-bench-") as tmp:
        folder = Path(tmp)
        task, data = math_problems(profile.tasks, folder)
        server = SimServer([sys.executable, "-m", "bench.simserver", "--task", str(task),
                            "--latency", args.latency, "--seed", "1"], cwd=ROOT)
        url = server.start()
        try:
            runs = measure(profile, repeats, url, questions_of(data), python, latency, folder,
                           console)
        finally:
            server.stop()
    overhead, rss = inproc(profile)
    frontend = {"available": python is not None, "python": python, "note": note}
    extra = {
        "overhead_us_per_request": {k: v["us_per_request"] for k, v in overhead.items()},
        "overhead_detail": overhead,
        "prefix_reuse_ratio": prefix_reuse(profile, latency),
        "peak_rss_mb": rss["peak_rss_mb"], "peak_rss": rss,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**started, "load_average_after": list(os.getloadavg())},
    }
    return build(profile, repeats, runs, frontend, latency, extra)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="ttcdsl against SGLang's frontend, side by side")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one repeat, smaller sizes")
    size.add_argument("--smoke", action="store_true", help="the smallest sizes (for the tests)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON")
    parser.add_argument("--no-frontend", action="store_true", help="ttcdsl's figures only")
    parser.add_argument("--frontend-python", metavar="PATH",
                        help="a python with sglang (default: the real-SGLang tier's venv)")
    parser.add_argument("--latency", default="0.0002,0.002,32",
                        help="the server's PREFILL_S,DECODE_S,BATCH (default 0.0002,0.002,32)")
    parser.add_argument("--repeats", type=int, help="repeats (default: 3, --quick 1)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    console = Console(width=max(Console().width, 130))
    try:
        report = run_suite(args, console)
    except (BenchError, TTCError) as exc:
        console.print("[red]bench:[/] " + escape(str(exc).splitlines()[0]), highlight=False,
                      soft_wrap=True)
        return 1
    print_report(report, console)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
