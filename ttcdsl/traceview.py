"""Reading and rendering request traces (the JSON lines `ttc run --trace FILE` appends).

Promises:

* `load_trace` reads every line as a `TraceRecord`; a line that is not one is a `UsageError`
  naming the file and the line number (never skipped).  An empty trace is an error too.
* A trace file may hold several runs (``--trace`` appends).  Times are seconds since each run
  started and records are written as requests finish, so within a run ``t_end`` never goes
  down; `split_runs` starts a new run wherever it does.
* Requests (`REQUEST_KINDS`) and decisions (plan labels, finish, score, prune, resample, vote,
  result) are kept apart: every table, count and the timeline are about requests only; the
  decisions rebuild each run's search tree (`ttcdsl.tracetree`).  Node labels come from the
  trace's own ``plan`` record unless the caller passes some (``--program``).
* `node_stats`, `kind_stats` and `slowest` summarise requests (any kind: generate, warm,
  reward, tokenize; failed attempts included, counted as errors; an attempt above 1 counts as a
  retry); latency is ``t_end - t_start``; percentiles interpolate linearly between ranks.
* `render_tables` gives rich tables for the terminal; `render_html` one self-contained HTML page
  (inline CSS, no scripts, no external assets) with the same tables and, per run, an SVG
  timeline: one ``<rect>`` per request and no other rect, placed on the lowest free lane (so the
  lane count is the peak concurrency), coloured by node, with a hover title giving the kind,
  rid, branch, times, token counts and a snippet of the text.  When the trace has branch lineage the
  page has two tabs (CSS only): the search tree of each run first, the requests second.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rich.markup import escape
from rich.table import Table

from ttcdsl.errors import UsageError
from ttcdsl.runtime.values import REQUEST_KINDS, NodeLabel, TraceRecord
from ttcdsl.tracetree import TREE_CSS, Tree, build_tree, depth_summary, tree_section

__all__ = [
    "MIN_SPAN",
    "Stats",
    "Trace",
    "assign_lanes",
    "format_labels",
    "kind_stats",
    "load_trace",
    "node_stats",
    "percentile",
    "render_html",
    "render_tables",
    "slowest",
    "split_runs",
    "trees",
]

_DECODER = msgspec.json.Decoder(TraceRecord)
MIN_SPAN = 1e-9  # seconds: the least time a request occupies its lane
# Tableau-like colours: distinct, readable on white, and colour-blind tolerable.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
           "#9c755f", "#e15759", "#bab0ac")


@dataclass
class Trace:
    """The requests of one trace file split into runs, each run's decisions (same order), and
    node labels."""

    path: str
    runs: list[list[TraceRecord]]
    labels: dict[int, str] = field(default_factory=dict)
    decisions: list[list[TraceRecord]] = field(default_factory=list)

    @property
    def records(self) -> list[TraceRecord]:
        return [r for run in self.runs for r in run]

    def label(self, node: int) -> str:
        return self.labels.get(node, "")


def load_trace(path: str | Path, labels: Mapping[int, str] | None = None) -> Trace:
    p = Path(path)
    try:
        if p.exists() and not p.is_file():
            raise UsageError(f"{p}: not a regular file; expected a trace file (JSON lines)")
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p}: no such trace file") from None
    except OSError as exc:
        raise UsageError(f"{p}: cannot read it ({exc})") from None
    records: list[TraceRecord] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_DECODER.decode(line))
        except msgspec.ValidationError as exc:
            raise UsageError(f"{p}:{lineno}: not a trace record: {exc}") from None
        except msgspec.DecodeError as exc:
            raise UsageError(f"{p}:{lineno}: not valid JSON ({exc})") from None
    if not records:
        raise UsageError(f"{p}: no trace records (write one with `ttc run ... --trace {p}`)")
    runs = [run for run in split_runs(records) if any(r.kind in REQUEST_KINDS for r in run)]
    requests = [[r for r in run if r.kind in REQUEST_KINDS] for run in runs]
    decisions = [[r for r in run if r.kind not in REQUEST_KINDS] for run in runs]
    if not runs:
        raise UsageError(f"{p}: no requests in the trace (only decisions)")
    if labels is None:
        labels = next((format_labels(r.labels) for run in decisions for r in run
                       if r.kind == "plan" and r.labels), {})
    return Trace(str(p), requests, dict(labels), decisions)


def format_labels(labels: Mapping[int, NodeLabel]) -> dict[int, str]:
    """``{node id: "sample (line 8)"}``, or ``"sample (name:8)"`` when several strategies."""
    several = len({lab.strategy for lab in labels.values()}) > 1
    return {node: f"{lab.op} ({lab.strategy}:{lab.line})" if several else f"{lab.op} (line {lab.line})"
            for node, lab in labels.items()}


def split_runs(records: Sequence[TraceRecord]) -> list[list[TraceRecord]]:
    runs: list[list[TraceRecord]] = []
    last = math.inf
    for r in records:
        if r.t_end < last - 1e-9 or not runs:
            runs.append([])
        runs[-1].append(r)
        last = r.t_end
    return runs


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _latency(r: TraceRecord) -> float:
    return max(0.0, r.t_end - r.t_start)


@dataclass
class Stats:
    """Totals and latency percentiles for a group of requests."""

    key: str
    requests: int = 0
    retries: int = 0
    errors: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, r: TraceRecord) -> None:
        self.requests += 1
        self.retries += int(r.attempt > 1)
        self.errors += int(r.error is not None)
        self.completion_tokens += r.completion_tokens
        self.prompt_tokens += r.prompt_tokens
        self.cached_tokens += r.cached_tokens
        self.latencies.append(_latency(r))

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    @property
    def max(self) -> float:
        return max(self.latencies)


def _group(records: Iterable[TraceRecord], key: Callable[[TraceRecord], str]) -> list[Stats]:
    groups: dict[str, Stats] = {}
    for r in records:
        k = key(r)
        groups.setdefault(k, Stats(k)).add(r)
    return list(groups.values())


def node_stats(trace: Trace) -> list[Stats]:
    out = _group(trace.records, lambda r: str(r.node))
    return sorted(out, key=lambda s: int(s.key))


def kind_stats(trace: Trace) -> list[Stats]:
    order = {"tokenize": 0, "warm": 1, "generate": 2, "reward": 3}
    return sorted(_group(trace.records, lambda r: r.kind), key=lambda s: (order.get(s.key, 9), s.key))


def slowest(trace: Trace, k: int = 10) -> list[tuple[int, TraceRecord]]:
    """The ``k`` slowest requests with their run number (1-based)."""
    rows = [(i + 1, r) for i, run in enumerate(trace.runs) for r in run]
    return sorted(rows, key=lambda t: -_latency(t[1]))[:k]


def fmt_s(seconds: float) -> str:
    """A duration in the unit that reads best: ``0.42 ms``, ``87.1 ms``, ``2.31 s``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def snippet(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _summary(trace: Trace) -> str:
    records = trace.records
    span = sum(max(r.t_end for r in run) for run in trace.runs)
    runs = f"{len(trace.runs)} run{'s' if len(trace.runs) != 1 else ''}"
    comp = sum(r.completion_tokens for r in records)
    prompt = sum(r.prompt_tokens for r in records)
    cached = sum(r.cached_tokens for r in records)
    share = f" ({100 * cached / prompt:.0f}% cached)" if prompt else ""
    return (f"{len(records)} requests in {runs}, {fmt_s(span)} of wall time; {comp} completion tokens, "
            f"{prompt} prompt tokens{share}")


def _stats_rows(trace: Trace, stats: Sequence[Stats], by_node: bool) -> list[list[str]]:
    rows = []
    for s in stats:
        head = [f"n{s.key}", trace.label(int(s.key))] if by_node else [s.key]
        rows.append([
            *head, str(s.requests), str(s.retries), str(s.errors), str(s.completion_tokens),
            str(s.prompt_tokens), str(s.cached_tokens), fmt_s(s.p50), fmt_s(s.p95), fmt_s(s.max),
        ])
    return rows


_STAT_COLS = ("requests", "retries", "errors", "completion", "prompt", "cached", "p50", "p95", "max")
_SLOW_COLS = ("run", "node", "kind", "rid", "start", "latency", "tokens", "finish", "text")


def _slow_rows(trace: Trace, k: int) -> list[list[str]]:
    return [
        [str(run), f"n{r.node}", r.kind, r.rid or "-", f"{r.t_start:.3f}", fmt_s(_latency(r)),
         str(r.completion_tokens), r.finish or (f"error: {r.error}" if r.error else "-"), snippet(r.text)]
        for run, r in slowest(trace, k)
    ]


def render_tables(trace: Trace, top: int = 10) -> list[object]:
    """Rich renderables for `ttc trace show`: a summary line, then per node, per kind, the search
    tree per depth (when the trace has lineage) and the slowest requests."""
    def table(title: str, cols: Sequence[str], rows: list[list[str]], left: int) -> Table:
        t = Table(title=title, title_justify="left", header_style="bold", show_edge=False, pad_edge=False)
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i < left or c in ("finish", "text", "rid") else "right",
                         no_wrap=True, overflow="ellipsis", max_width=60 if c == "text" else None)
        for row in rows:
            t.add_row(*(escape(x) for x in row))
        return t

    labelled = any(trace.labels.values())
    node_cols = ("node", "op", *_STAT_COLS) if labelled else ("node", *_STAT_COLS)
    node_rows = _stats_rows(trace, node_stats(trace), True)
    if not labelled:
        node_rows = [[r[0], *r[2:]] for r in node_rows]
    out: list[object] = [
        f"[bold]{escape(trace.path)}[/]: {escape(_summary(trace))}",
        table("per node", node_cols, node_rows, 2 if labelled else 1),
        table("per kind", ("kind", *_STAT_COLS), _stats_rows(trace, kind_stats(trace), False), 1),
    ]
    rows = _tree_rows(trace)
    if rows:
        out.append(table("search tree per depth", _TREE_COLS, rows, 3))
    out.append(table(f"slowest {min(top, len(trace.records))} requests", _SLOW_COLS, _slow_rows(trace, top), 3))
    return out


_TREE_COLS = ("run", "depth", "made by", "branches", "pruned", "dropped", "copied", "finished", "voted",
              "min score", "max score")


def _tree_rows(trace: Trace) -> list[list[str]]:
    rows = []
    for run, (tree, decisions) in enumerate(zip(trees(trace), trace.decisions), 1):
        labels = _run_labels(trace, decisions)
        for r in depth_summary(tree):
            made_by = ", ".join(labels.get(s) or f"n{s}" for s in sorted(r.steps))
            rows.append([str(run), str(r.depth), made_by, *(str(x) for x in (
                r.made, r.pruned, r.dropped, r.resampled, r.finished, r.voted)),
                "-" if r.low is None else f"{r.low:.3g}", "-" if r.high is None else f"{r.high:.3g}"])
    return rows


# ---- HTML ----

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
p.sub { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { background: #f5f5f7; font-weight: 600; }
td.l, th.l { text-align: left; }
td.text { max-width: 520px; overflow: hidden; text-overflow: ellipsis; color: #555; font-family: ui-monospace, monospace; font-size: 12px; }
.legend span { display: inline-block; margin: 0 14px 4px 0; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px; border-radius: 2px; }
svg { background: #fcfcfd; border: 1px solid #e3e3e3; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
svg .grid { stroke: #e6e6e6; } svg .axis { stroke: #999; }
svg rect { stroke: #fff; stroke-width: 0.5; }
svg rect.aux { fill-opacity: 0.45; }
svg rect.err { stroke: #d62728; stroke-width: 1.5; }
svg rect:hover { stroke: #000; stroke-width: 1; }
"""


def _cells(row: Sequence[str], left: int, text_col: int | None = None) -> str:
    out = []
    for i, c in enumerate(row):
        cls = ' class="text"' if i == text_col else (' class="l"' if i < left else "")
        out.append(f"<td{cls}>{html.escape(c)}</td>")
    return "<tr>" + "".join(out) + "</tr>"


def _html_table(cols: Sequence[str], rows: list[list[str]], left: int, text_col: int | None = None) -> str:
    head = "".join(f'<th class="l">{html.escape(c)}</th>' if i < left or i == text_col else f"<th>{html.escape(c)}</th>"
                   for i, c in enumerate(cols))
    body = "\n".join(_cells(r, left, text_col) for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def assign_lanes(records: Sequence[TraceRecord]) -> list[int]:
    """A lane per record: the lowest lane free at its start (greedy interval partitioning, which
    uses exactly as many lanes as the peak number of overlapping requests).  A request occupies
    ``[t_start, t_end)``, at least ``MIN_SPAN`` long, so instant requests at one time (drawn a
    pixel wide) get lanes of their own."""
    order = sorted(range(len(records)), key=lambda i: (records[i].t_start, records[i].t_end))
    ends: list[float] = []
    lanes = [0] * len(records)
    for i in order:
        r = records[i]
        end = max(r.t_end, r.t_start + MIN_SPAN)
        lane = next((j for j, e in enumerate(ends) if e <= r.t_start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        lanes[i] = lane
    return lanes


def _nice_step(span: float, target: int = 8) -> float:
    raw = span / target if span > 0 else 1.0
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def _tick_label(t: float, step: float) -> str:
    if step < 1:
        digits = max(0, -math.floor(math.log10(step * 1000) + 1e-9))
        return f"{t * 1000:.{digits}f} ms"
    return f"{t:g} s"


def _hover(r: TraceRecord, label: str) -> str:
    lines = [f"{r.kind} · n{r.node}" + (f" {label}" if label else "")]
    if r.rid:
        lines.append(f"rid {r.rid}" + (f" (attempt {r.attempt})" if r.attempt > 1 else ""))
    if r.branch:
        lines.append(f"branch {r.branch}" + (f" (from {r.parent})" if r.parent else "") + f", step {(r.step or 0) + 1}")
    lines.append(f"{r.t_start:.4f} → {r.t_end:.4f} s ({fmt_s(_latency(r))})")
    tokens = [f"input {r.input_tokens}"]
    if r.max_new_tokens is not None:
        tokens.append(f"max_new {r.max_new_tokens}")
    tokens += [f"completion {r.completion_tokens}", f"prompt {r.prompt_tokens}", f"cached {r.cached_tokens}"]
    lines.append(", ".join(tokens))
    if r.finish:
        lines.append(f"finish: {r.finish}")
    if r.error:
        lines.append(f"error: {r.error}")
    if r.text:
        text = r.text if len(r.text) <= 240 else r.text[:160] + " … " + r.text[-60:]
        lines.append(f"text: {text}")
    return "\n".join(lines)


def _timeline(run: Sequence[TraceRecord], colors: Mapping[int, str], labels: Mapping[int, str]) -> str:
    lanes = assign_lanes(run)
    n_lanes = max(lanes) + 1
    t0 = min(0.0, *(r.t_start for r in run))
    t1 = max(r.t_end for r in run)
    span = max(t1 - t0, 1e-6)
    left, right, top, row, gap = 58, 16, 24, 12, 3
    width = 1100
    plot_w = width - left - right
    height = top + n_lanes * (row + gap) + 8
    x = lambda t: left + (t - t0) / span * plot_w  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="request timeline">']
    step = _nice_step(span)
    k = 0
    while k * step <= span + 1e-12:
        t = t0 + k * step
        xs = x(t)
        parts.append(f'<line class="grid" x1="{xs:.1f}" y1="{top - 4}" x2="{xs:.1f}" y2="{height - 6}"/>')
        parts.append(f'<text x="{xs:.1f}" y="{top - 8}" text-anchor="middle">{html.escape(_tick_label(t, step))}</text>')
        k += 1
    for lane in range(n_lanes):
        if n_lanes <= 40 or lane % 5 == 0:
            y = top + lane * (row + gap) + row - 2
            parts.append(f'<text x="{left - 6}" y="{y}" text-anchor="end">lane {lane + 1}</text>')
    for r, lane in zip(run, lanes):
        xs, xe = x(r.t_start), x(r.t_end)
        w = max(xe - xs, 1.0)
        y = top + lane * (row + gap)
        cls = [c for c, on in (("aux", r.kind != "generate"), ("err", r.error is not None)) if on]
        cls_attr = f' class="{" ".join(cls)}"' if cls else ""
        title = html.escape(_hover(r, labels.get(r.node, "")))
        parts.append(f'<rect x="{xs:.2f}" y="{y}" width="{w:.2f}" height="{row}" fill="{colors[r.node]}"'
                     f'{cls_attr}><title>{title}</title></rect>')
    parts.append("</svg>")
    return "\n".join(parts)


_TABS_CSS = """
input.tab { position: absolute; opacity: 0; pointer-events: none; }
label.tab { display: inline-block; padding: 6px 16px; margin: 8px 4px 0 0; border: 1px solid #d5d5dc;
            border-bottom: none; border-radius: 6px 6px 0 0; background: #f5f5f7; cursor: pointer; }
input.tab:checked + label.tab { background: #fff; font-weight: 600; position: relative; top: 1px; }
input.tab:focus-visible + label.tab { outline: 2px solid #4e79a7; }
section.panel { display: none; border-top: 1px solid #d5d5dc; padding-top: 4px; }
#tab-tree:checked ~ #panel-tree, #tab-requests:checked ~ #panel-requests { display: block; }
"""


def _requests_part(trace: Trace, top: int) -> list[str]:
    """Per-node, per-kind and slowest tables, then a timeline per run."""
    nodes = sorted({r.node for r in trace.records})
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(nodes)}
    labelled = any(trace.labels.values())
    node_rows = _stats_rows(trace, node_stats(trace), True)
    if not labelled:
        node_rows = [[r[0], *r[2:]] for r in node_rows]
    node_cols = ("node", "op", *_STAT_COLS) if labelled else ("node", *_STAT_COLS)
    legend = "".join(
        f'<span><i style="background:{colors[n]}"></i>n{n}{html.escape(" " + trace.label(n)) if trace.label(n) else ""}</span>'
        for n in nodes
    )
    out = [
        "<h2>Per node</h2>", _html_table(node_cols, node_rows, 2 if labelled else 1),
        "<h2>Per kind</h2>", _html_table(("kind", *_STAT_COLS), _stats_rows(trace, kind_stats(trace), False), 1),
        f"<h2>Slowest {min(top, len(trace.records))} requests</h2>",
        _html_table(_SLOW_COLS, _slow_rows(trace, top), 4, text_col=len(_SLOW_COLS) - 1),
        "<h2>Timeline</h2>",
        '<p class="sub">One bar per request from start to end, on the lowest free lane (lanes = requests '
        "in flight); colour = node; faded = tokenize, warm-up and reward calls; red outline = a failed "
        "attempt. Hover a bar for its details.</p>",
        f'<div class="legend">{legend}</div>',
    ]
    for i, run in enumerate(trace.runs, 1):
        if len(trace.runs) > 1:
            wall = max(r.t_end for r in run)
            out.append(f"<h2>Run {i}: {len(run)} requests, {html.escape(fmt_s(wall))}</h2>")
        out.append(_timeline(run, colors, trace.labels))
    return out


def trees(trace: Trace) -> list[Tree]:
    """The search tree of each run (empty where a run traced no lineage)."""
    return [build_tree([*requests, *decisions]) for requests, decisions in
            zip(trace.runs, trace.decisions or [[] for _ in trace.runs])]


def _run_labels(trace: Trace, decisions: Sequence[TraceRecord]) -> Mapping[int, str]:
    plan = next((r.labels for r in decisions if r.kind == "plan" and r.labels), None)
    return trace.labels if plan is None or trace.labels else format_labels(plan)


def render_html(trace: Trace, top: int = 20) -> str:
    """The whole page: summary; the search tree of each run when the trace has lineage (first
    tab); per-node, per-kind and slowest tables and a timeline per run (second tab, or the whole
    page without lineage)."""
    title = html.escape(Path(trace.path).name)
    forest = trees(trace)
    lineage = any(len(t) for t in forest)
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ttc trace: {title}</title>",
        f"<style>{_CSS}{_TABS_CSS + TREE_CSS if lineage else ''}</style></head><body>",
        f"<h1>ttc trace: {title}</h1>", f'<p class="sub">{html.escape(_summary(trace))}</p>',
    ]
    if not lineage:
        out += _requests_part(trace, top)
    else:
        several = len(trace.runs) > 1
        out += [
            '<input class="tab" type="radio" name="tab" id="tab-tree" checked>',
            '<label class="tab" for="tab-tree">Search tree</label>',
            '<input class="tab" type="radio" name="tab" id="tab-requests">',
            '<label class="tab" for="tab-requests">Requests and timeline</label>',
            '<section class="panel" id="panel-tree">',
            *(tree_section(tree, _run_labels(trace, decisions), i if several else None)
              for i, (tree, decisions) in enumerate(zip(forest, trace.decisions), 1)),
            "</section>",
            '<section class="panel" id="panel-requests">', *_requests_part(trace, top), "</section>",
        ]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
