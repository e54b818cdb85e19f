"""``ttc sim``: the deterministic simulator.

    ttc sim serve [--host 127.0.0.1] [--port 30000] [--task FILE]
                  [--latency PREFILL,DECODE[,BATCH]] [--faults KEY=VALUE,...]
                  [--radix-capacity TOKENS] [--context-length TOKENS] [--seed N] [--model NAME]
    ttc sim check FILE...

``serve`` speaks SGLang's HTTP protocol (see `ttcdsl.runtime.sim.server`) until Ctrl-C or
SIGTERM.  ``--latency`` gives seconds per uncached prompt token, seconds per generated token and
the number of requests running at once (e.g. ``0.0002,0.02,8``; also
``prefill=0.0002,decode=0.02,batch=8``).  ``--faults`` takes ``error=P``, ``reset=P``,
``stall=P``, ``stall_s=SECONDS``, ``status=HTTP_STATUS`` and ``seed=N`` (e.g.
``error=0.1,status=503,seed=1``).  Without ``--task`` every prompt gets generic text.
``check`` validates task files and prints a one-line summary of each.  The simulator's own
errors (`ttcdsl.runtime.sim.errors`) are shown as one-line usage errors with their text.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from ttcdsl.commands._options import add_address_options
from ttcdsl.errors import UsageError

__all__ = ["parse_faults", "parse_latency", "register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="the deterministic simulator (an SGLang-compatible fake model)",
        description="The deterministic simulator: serve it over SGLang's HTTP API, or check task files.",
    )
    sub = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", parser_class=type(parser))
    sub.required = True

    serve = sub.add_parser("serve", help="serve the simulator over SGLang's HTTP protocol")
    add_address_options(serve)
    serve.add_argument(
        "--task", metavar="FILE", help="task file (JSON, see DESIGN §6); default: no problems"
    )
    serve.add_argument(
        "--latency", metavar="SPEC", help="PREFILL_S,DECODE_S[,BATCH] (default: instant)"
    )
    serve.add_argument(
        "--faults", metavar="SPEC", help="error=P,reset=P,stall=P,stall_s=S,status=N,seed=N"
    )
    serve.add_argument(
        "--radix-capacity", type=int, metavar="TOKENS", help="prefix cache size before LRU eviction"
    )
    serve.add_argument(
        "--context-length", type=int, metavar="TOKENS", help="longest input+output (default 8192)"
    )
    serve.add_argument("--seed", type=int, help="seed for choosing the seeds of unseeded requests")
    serve.add_argument("--model", help="model name to report (default ttc-sim)")
    serve.add_argument(
        "--enable-cache-report", action="store_true",
        help="report cached prompt tokens in /v1 usage (as SGLang's flag of that name)",
    )
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate task files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check)


def parse_latency(spec: str) -> Any:
    """``PREFILL,DECODE[,BATCH]`` or ``prefill=..,decode=..,batch=..`` -> `Latency`."""
    from ttcdsl.runtime.backends.sim import usage_errors
    from ttcdsl.runtime.sim import Latency

    names = {"prefill": "prefill_s", "decode": "decode_s", "batch": "max_batch"}
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    values: dict[str, Any] = {}
    try:
        if parts and all("=" in p for p in parts):
            for part in parts:
                key, _, value = part.partition("=")
                if key.strip() not in names:
                    raise UsageError(
                        f"--latency: unknown key {key.strip()!r} (expected prefill, decode, batch)"
                    )
                field = names[key.strip()]
                values[field] = int(value) if field == "max_batch" else float(value)
        elif 2 <= len(parts) <= 3:
            values["prefill_s"], values["decode_s"] = float(parts[0]), float(parts[1])
            if len(parts) == 3:
                values["max_batch"] = int(parts[2])
        else:
            raise UsageError(f"--latency expects PREFILL_S,DECODE_S[,BATCH], got {spec!r}")
    except ValueError:
        raise UsageError(f"--latency: not a number in {spec!r}") from None
    with usage_errors():
        return Latency(**values)


def parse_faults(spec: str) -> Any:
    """``error=P,reset=P,stall=P,stall_s=S,status=N,seed=N`` -> `Faults`."""
    from ttcdsl.runtime.backends.sim import usage_errors
    from ttcdsl.runtime.sim import Faults

    names = {
        "error": ("error_rate", float),
        "reset": ("reset_rate", float),
        "stall": ("stall_rate", float),
        "stall_s": ("stall_s", float),
        "status": ("error_status", int),
        "seed": ("seed", int),
    }
    values: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise UsageError(
                f"--faults: expected KEY=VALUE with KEY in {', '.join(names)}, got {part!r}"
            )
        field, conv = names[key]
        try:
            values[field] = conv(value)
        except ValueError:
            raise UsageError(f"--faults: {key}={value!r} is not a number") from None
    with usage_errors():
        return Faults(**values)


def _serve(args: argparse.Namespace) -> int:
    from ttcdsl.runtime.backends.sim import usage_errors

    with usage_errors():
        return _serve_sim(args)


def _serve_sim(args: argparse.Namespace) -> int:
    from ttcdsl.runtime.sim import SimConfig, SimTask, load_task
    from ttcdsl.runtime.sim.server import serve

    task = load_task(args.task) if args.task else SimTask.empty()
    options: dict[str, Any] = {}
    if args.latency:
        options["latency"] = parse_latency(args.latency)
    if args.faults:
        options["faults"] = parse_faults(args.faults)
    if args.radix_capacity is not None:
        options["radix_capacity"] = args.radix_capacity
    if args.context_length is not None:
        options["context_length"] = args.context_length
    if args.seed is not None:
        options["seed"] = args.seed
    if args.model:
        options["model"] = args.model
    if args.enable_cache_report:
        options["cache_report"] = True
    config = SimConfig(**options)
    console = Console(stderr=True, highlight=False)
    what = (
        f"{task.source} ({len(task.problems)} problems)"
        if task.problems
        else "no task (generic text)"
    )

    def announce(url: str) -> None:
        console.print(
            f"ttc sim: serving {what} at {url} (Ctrl-C to stop)", markup=False, soft_wrap=True
        )

    serve(task, config, host=args.host, port=args.port, announce=announce)
    console.print("ttc sim: stopped", markup=False)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ttcdsl.runtime.backends.sim import load_task

    console = Console(highlight=False)
    for path in args.files:
        task = load_task(path)
        console.print(f"{path}: {len(task.problems)} problems OK", markup=False)
    return 0
