"""Human views of a plan: `text` (a table of nodes with bounds and budgets) and Graphviz `dot`.

Pure functions from a `Plan` to a string; the CLI prints them.
"""

from __future__ import annotations

import json

from ttcdsl import plan as P
from ttcdsl.vocabulary import DEFAULT_AGGREGATION, DEFAULT_PRUNE_GROUP, DEFAULT_RESAMPLE_METHOD

__all__ = ["describe", "to_dot", "to_text"]


def describe(nodes: dict[int, P.Node], ref: P.Ref | None) -> str:
    """A short source-like rendering of the expression at `ref`."""
    if ref is None:
        return "-"
    n = nodes[ref.node]

    def d(r: P.Ref | None) -> str:
        return describe(nodes, r)

    match n:
        case P.Const():
            return json.dumps(n.value) if isinstance(n.value, (str, list)) else str(n.value).lower() if isinstance(n.value, bool) else str(n.value)
        case P.Param() | P.Var():
            return n.name
        case P.Prompt():
            text = "".join(p if isinstance(p, str) else "{" + d(p) + "}" for p in n.parts)
            return json.dumps(text if len(text) <= 40 else text[:37] + "...")
        case P.ListOf():
            return "[" + ", ".join(d(i) for i in n.items) + "]"
        case P.Arith() | P.Compare() | P.Logic():
            return f"{d(n.left)} {n.operator} {d(n.right)}"
        case P.Union():
            return f"{d(n.left)} + {d(n.right)}"
        case P.Not():
            return f"not {d(n.operand)}"
        case P.Neg():
            return f"-{d(n.operand)}"
        case P.Builtin():
            return f"{n.name}({', '.join(d(a) for a in n.args)})"
        case _:
            return f"n{n.id}"


def _params(nodes: dict[int, P.Node], n: P.Node) -> str:
    def d(r: P.Ref | None) -> str:
        return describe(nodes, r)

    match n:
        case P.Sample():
            head = f"{d(n.count)} from {d(n.prompt)}"
        case P.Expand():
            head = f"{d(n.branches)} by {d(n.count)}" + (f" after {d(n.inject)}" if n.inject is not None else "")
        case P.Score():
            head = f"{d(n.branches)} with {n.scorer.kind}" + (f" agg {n.agg}" if n.agg != DEFAULT_AGGREGATION else "")
        case P.Prune():
            head = f"{d(n.branches)} keep {d(n.keep)} by {n.by}" + (f" per {n.per}" if n.per != DEFAULT_PRUNE_GROUP else "")
        case P.Vote():
            head = f"{d(n.branches)} on {n.on}" + (f" {json.dumps(n.pattern)}" if n.pattern else "") + (" weighted" if n.weighted else "")
            if n.until is not None:
                head += f" until {n.until} >= {d(n.threshold)} after {d(n.min_votes)}"
        case P.Resample():
            head = d(n.branches) + (f" to {d(n.count)}" if n.count is not None else "")
            head += f" by softmax {d(n.temperature)}" if n.temperature is not None else " by weight"
            head += f" {n.method}" if n.method != DEFAULT_RESAMPLE_METHOD else ""
        case P.Call():
            head = f"{n.strategy.name}(" + ", ".join(f"{k}={d(v)}" for k, v in n.args.items()) + ")"
        case _:
            head = ""
    if isinstance(n, (P.Sample, P.Expand)):
        settings = {k: getattr(n.settings, k) for k in n.settings.__struct_fields__ if getattr(n.settings, k) is not None}
        if settings:
            head += " with " + ", ".join(f"{k}={d(v)}" for k, v in settings.items())
    return head


def _fmt(x: int | None) -> str:
    return "∞" if x is None else str(x)


def to_text(plan: P.Plan) -> str:
    lines: list[str] = []
    order = [plan.entry] + [n for n in plan.strategies if n != plan.entry]
    for name in order:
        s = plan.strategies[name]
        nodes = {n.id: n for n in s.nodes}
        budget = f"budget {s.budget}" if s.budget is not None else "no budget of its own"
        if s.budget_expr is not None:
            budget = f"budget {describe(nodes, s.budget_expr)} per call"
        lines.append(
            f"strategy {s.name}  ({s.span.file}:{s.span.line})  {budget}, worst case {_fmt(s.worst)} tokens"
            + ("  [entry]" if name == plan.entry else "")
        )
        rows = [("node", "op", "line", "inputs / parameters", "worst/call", "calls", "worst total", "budget")]
        for n in s.nodes:
            if not isinstance(n, P.Step):
                continue
            bound = n.bound if isinstance(n, P.Budgeted) else None
            budget_n = n.budget if isinstance(n, P.Budgeted) else None
            rows.append((
                f"n{n.id}",
                n.op,
                str(n.span.line),
                _params(nodes, n),
                _fmt(bound.per_call) if bound else "0",
                _fmt(bound.calls) if bound else "-",
                _fmt(bound.total) if bound else "0",
                str(budget_n) if budget_n is not None else "-",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(plan: P.Plan) -> str:
    """Graphviz: one cluster per strategy, one box per node, edges from inputs to users."""
    out = ["digraph plan {", "  rankdir=TB;", '  node [shape=box, fontname="monospace", fontsize=10];']
    for s in plan.strategies.values():
        out.append(f'  subgraph "cluster_{s.name}" {{')
        out.append(f'    label="{_dot_escape(s.name)} (budget {s.budget if s.budget is not None else "-"}, worst {_fmt(s.worst)})";')
        nodes = {n.id: n for n in s.nodes}
        for n in s.nodes:
            label = f"n{n.id} {type(n).__name__.lower()} (line {n.span.line})"
            if isinstance(n, P.Step):
                label += "\\n" + _dot_escape(_params(nodes, n))
                if isinstance(n, P.Budgeted) and n.bound is not None:
                    label += f"\\nworst {_fmt(n.bound.per_call)} x {_fmt(n.bound.calls)}"
                if isinstance(n, P.Budgeted) and n.budget is not None:
                    label += f"\\nbudget {n.budget}"
                style = ', style="filled", fillcolor="#e8f0fe"'
            else:
                label += "\\n" + _dot_escape(describe(nodes, P.Ref(n.id)))
                style = ""
            out.append(f'    n{n.id} [label="{label}"{style}];')
        for n in s.nodes:
            for r in P.refs(n):
                out.append(f"    n{r.node} -> n{n.id};")
            if isinstance(n, P.Call):
                out.append(f'    n{n.id} -> "cluster_{n.strategy.name}_entry" [style=dashed];')
        out.append(f'    "cluster_{s.name}_entry" [shape=point, label=""];')
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
