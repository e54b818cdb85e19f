"""From measured runs to the suite's JSON report, its goals and its table.

One `Run` is one client process on one workload (its own wall and CPU, the server's counts for
it).  `client_summary` gives the median and range of each figure over the repeats;
`paired_ratio` divides ttcdsl's figure by the frontend's repeat by repeat (the two ran back to
back) and gives the median and range of those ratios; `slope` is the least-squares exponent of
``y ~ x**k``.  `goals` checks the issue's goals against what was measured, and says
"not measured" rather than guess.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["Run", "client_summary", "goals", "paired_ratio", "print_report", "slope", "stats"]


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    requests: int
    generations: int
    prefilled: int
    chain_s: float
    work_s: float
    served_s: float
    ideal_s: float
    queued_s: float = math.nan

    @property
    def critical_path_ratio(self) -> float:
        """Wall over the served critical path (`bench.critical`)."""
        return self.wall_s / self.served_s if self.served_s > 0 else math.nan

    @property
    def model_path_ratio(self) -> float:
        """Wall over the latency model's ideal."""
        return self.wall_s / self.ideal_s if self.ideal_s > 0 else math.nan

    @property
    def schedule_ratio(self) -> float:
        """Wall over the zero-overhead client's replay through the server's queue
        (`bench.critical`, ``queued_s``): what the client itself added."""
        return self.wall_s / self.queued_s if self.queued_s > 0 else math.nan

    @property
    def cpu_per_generation_ms(self) -> float:
        return 1000 * self.cpu_s / self.generations if self.generations else math.nan

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "critical_path_ratio": self.critical_path_ratio,
                "model_path_ratio": self.model_path_ratio, "schedule_ratio": self.schedule_ratio,
                "cpu_per_generation_ms": self.cpu_per_generation_ms}


FIGURES: dict[str, Callable[[Run], float]] = {
    "wall_s": lambda r: r.wall_s,
    "cpu_s": lambda r: r.cpu_s,
    "cpu_per_generation_ms": lambda r: r.cpu_per_generation_ms,
    "prefilled_tokens": lambda r: float(r.prefilled),
    "critical_path_ratio": lambda r: r.critical_path_ratio,
    "model_path_ratio": lambda r: r.model_path_ratio,
    "schedule_ratio": lambda r: r.schedule_ratio,
}


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def client_summary(runs: Sequence[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {name: stats([f(r) for r in runs]) for name, f in FIGURES.items()}
    out["generations"] = stats([float(r.generations) for r in runs])
    out["runs"] = [r.as_json() for r in runs]
    return out


def paired_ratio(ours: Sequence[Run], theirs: Sequence[Run], figure: str) -> dict[str, float]:
    f = FIGURES[figure]
    return stats([f(a) / f(b) for a, b in zip(ours, theirs, strict=True)])


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / den


# --- goals ---------------------------------------------------------------------------------------


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} us"


def _goal(goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"goal": goal, "measured": measured, "met": met}


def _worst(values: dict[str, Any] | None, key: str = "median") -> tuple[str, float] | None:
    if not values:
        return None
    name = max(values, key=lambda k: values[k][key] if isinstance(values[k], dict) else values[k])
    v = values[name]
    return name, (v[key] if isinstance(v, dict) else v)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, goal, limit in (
        ("wall_ratio_vs_sglang_frontend", "wall <= 0.8x the frontend's on every workload", 0.8),
        ("cpu_per_generation_ratio_vs_sglang_frontend",
         "client CPU per generation <= the frontend's", 1.0),
    ):
        worst = _worst(report.get(key))
        out.append(_goal(goal, "not measured (no frontend)" if worst is None else
                         f"worst {worst[1]:.2f}x ({worst[0]})",
                         None if worst is None else worst[1] <= limit))
    worst = _worst(report["critical_path_ratio"]["ttcdsl"])
    assert worst is not None
    queued = _worst(report.get("schedule_ratio", {}).get("ttcdsl"))
    added = "" if queued is None else (f"; over the same requests replayed through the server's "
                                       f"queue with no client time, worst {queued[1]:.2f} ({queued[0]})")
    out.append(_goal("critical-path ratio <= 1.10", f"worst {worst[1]:.2f} ({worst[0]}){added}",
                     worst[1] <= 1.10))
    overhead = report["overhead_us_per_request"]
    alone = {k: v["runtime_us_per_request"] for k, v in report["overhead_detail"].items()}
    instant = {k: v.get("instant_us_per_request") for k, v in report["overhead_detail"].items()}
    out.append(_goal("overhead < 50 us per request",
                     ", ".join(f"{k} {v:.0f} us ({_us(alone[k])} without the simulator, "
                               f"{_us(instant[k])} CPU on an instant backend)"
                               for k, v in overhead.items()),
                     all(v < 50 for v in overhead.values())))
    reuse = report["prefix_reuse_ratio"]
    worst = _worst(reuse)
    assert worst is not None
    out.append(_goal("prefix reuse 1.00 on every program",
                     f"worst {worst[1]:.2f} ({worst[0]}), {len(reuse)} programs",
                     round(worst[1], 2) <= 1.00))
    rss = report["peak_rss"]
    at_size = rss["branches"] == 10_000
    out.append(_goal("peak RSS < 500 MB at 10,000 branches",
                     f"{rss['peak_rss_mb']:.0f} MB at {rss['branches']} branches",
                     rss["peak_rss_mb"] < 500 if at_size else None))
    scaling = report["scaling_exponent"]["ttcdsl"]
    out.append(_goal("near-linear scaling (exponent <= 1.10 for wall and CPU)",
                     f"wall {scaling['wall']:.2f}, CPU {scaling['cpu']:.2f} "
                     f"({report['scaling_exponent']['forks'][0]}-"
                     f"{report['scaling_exponent']['forks'][-1]} forks)",
                     max(scaling["wall"], scaling["cpu"]) <= 1.10))
    return out


# --- the table -----------------------------------------------------------------------------------


def _ratio(values: dict[str, float] | None, spread: bool = True) -> str:
    if values is None:
        return "-"
    if not spread:
        return f"{values['median']:.2f}x"
    return f"{values['median']:.2f}x ({values['min']:.2f}-{values['max']:.2f})"


def _paths(summary: dict[str, Any]) -> str:
    return (f"{summary['critical_path_ratio']['median']:.2f}/"
            f"{summary['model_path_ratio']['median']:.2f}/"
            f"{summary['schedule_ratio']['median']:.2f}")


def print_report(report: dict[str, Any], console: Console) -> None:
    lat = report["latency"]
    console.print(f"[bold]ttcdsl vs SGLang's frontend[/] on `ttc sim serve --latency "
                  f"{lat['prefill_s']:g},{lat['decode_s']:g},{lat['max_batch']}`; "
                  f"{report['repeats']} interleaved repeat(s), medians (range); {report['date']}")
    if not report["frontend"]["available"]:
        console.print(f"[yellow]{report['frontend']['note']}[/]")
    table = Table(header_style="bold", show_edge=False, pad_edge=False)
    for col in ("workload", "wall s ttc", "wall s fe", "wall ttc/fe", "CPU/gen", "prefill",
                "path ttc", "path fe"):
        table.add_column(col, justify="left" if col == "workload" else "right", no_wrap=True)
    for name, w in report["workloads"].items():
        fe = w.get("frontend")
        table.add_row(
            w["label"], f"{w['ttcdsl']['wall_s']['median']:.2f}",
            f"{fe['wall_s']['median']:.2f}" if fe else "-",
            _ratio((report["wall_ratio_vs_sglang_frontend"] or {}).get(name)),
            _ratio((report["cpu_per_generation_ratio_vs_sglang_frontend"] or {}).get(name), False),
            _ratio((report["prefilled_tokens_ratio_vs_sglang_frontend"] or {}).get(name), False),
            _paths(w["ttcdsl"]), _paths(fe) if fe else "-",
        )
    console.print(table)
    console.print("[dim]wall ttc/fe, CPU/gen, prefill: ttcdsl / frontend, paired by repeat, "
                  "median (range); path: wall / served critical path, wall / latency-model "
                  "ideal, wall / replay through the server's queue with no client time "
                  "(bench/critical.py)[/]")
    scaling = report["scaling_exponent"]
    parts = [f"{who} wall {s['wall']:.2f}, CPU {s['cpu']:.2f}"
             for who, s in scaling.items() if who != "forks" and s]
    console.print(f"scaling exponent ({scaling['forks'][0]}->{scaling['forks'][-1]} forks): "
                  + "; ".join(parts))
    detail = report["overhead_detail"]
    console.print("in-process overhead per request: " + "; ".join(
        f"{k} {v['us_per_request']:.0f} us ({_us(v['runtime_us_per_request'])} without the "
        f"simulator's token loop, {_us(v.get('instant_us_per_request'))} CPU with an instant "
        f"backend, {v['requests']} requests)" for k, v in detail.items()))
    rss = report["peak_rss"]
    console.print(f"peak RSS at {rss['branches']} branches: {rss['peak_rss_mb']:.0f} MB "
                  f"({rss['base_rss_mb']:.0f} MB before the run)")
    console.print("prefix reuse (prefilled / minimum): " + ", ".join(
        f"{k} {v:.2f}" for k, v in report["prefix_reuse_ratio"].items()))
    for g in report["goals"]:
        mark = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]n/a[/]"}[g["met"]]
        console.print(f"goal: {g['goal']}: {g['measured']} - {mark}")
