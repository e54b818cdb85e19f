"""The search tree of a run, rebuilt from its trace, and its SVG drawing.

Promises:

* `build_tree` needs only the run's records: every generation that grew a branch (its
  ``branch``, ``parent`` and ``step``) is one `TreeNode`; the ``score``, ``prune``,
  ``finish``, ``resample``, ``vote`` and ``result`` records decorate the nodes by branch id.  A failed
  attempt that was retried counts once (the attempt that succeeded wins).  A resampled copy is
  not a node of its own: it stands for the branch it copies (that branch is marked with its
  number of copies, or as dropped when it got none), and what grows from the copy hangs under
  the original.  Branches the trace never saw generated (a fork that got no tokens) are left
  out.
* Depth is the distance from the prompt: a branch from `sample` is at depth 1, each `expand`
  adds one.  A branch is *pruned* when a prune took it in and kept it not.
* `render_tree` draws one SVG, left to right (a column per depth, a row per leaf, a parent
  centred on its children; the roots hang from one prompt node per `sample` invocation): one
  ``<g class="branch">`` per node and no other, holding a circle (a diamond when the branch
  finished with stop/EOS) filled by score, marks for pruned, dropped, resampled (``×k``),
  cut-off, voting and returned branches (returned: when the strategy returns branches rather
  than an answer), and a ``<title>`` hover with the branch's lineage, scores, decisions, finish
  and text.  It draws no ``<rect>`` (those are the timeline's).  Model text is escaped, never
  interpreted.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from ttcdsl.runtime.values import TraceRecord

__all__ = ["TREE_CSS", "DepthRow", "Tree", "TreeNode", "build_tree", "depth_summary", "render_tree", "tree_section"]


@dataclass
class TreeNode:
    """One generated branch (one generation) and what the run decided about it."""

    id: str
    parent: str | None
    node: int
    step: int
    text: str
    finish: str | None
    tokens: int
    error: str | None = None
    score: float | None = None
    scores: list[tuple[int, float | None]] = field(default_factory=list)
    kept_by: list[int] = field(default_factory=list)
    pruned_by: int | None = None
    copies: int | None = None  # None: never resampled
    resampled_by: int | None = None
    value: str | None = None
    vote: str | None = None  # counted | other | uncounted | abstained
    votes: int = 0  # votes it cast (resampled copies of one branch each vote)
    returned: bool = False
    done: str | None = None  # why the branch finished (None: it stayed open)
    children: list[str] = field(default_factory=list)
    depth: int = 1

    @property
    def finished(self) -> bool:
        """Finished on its own (stop or EOS), as a complete answer."""
        return self.done in ("stop", "eos")

    @property
    def cut(self) -> bool:
        """Finished by a limit: max_tokens, the budget, or an abort."""
        return self.done is not None and not self.finished


@dataclass
class Tree:
    """The nodes of one run by branch id, its roots in order, and its answer if it voted."""

    nodes: dict[str, TreeNode]
    roots: list[str]
    answer: str | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def depths(self) -> int:
        return max((n.depth for n in self.nodes.values()), default=0)

    def full_text(self, bid: str) -> str:
        """The branch's whole text: its ancestors' generations and its own."""
        parts = []
        cur: str | None = bid
        while cur is not None and cur in self.nodes:
            parts.append(self.nodes[cur].text)
            cur = self.nodes[cur].parent
        return "".join(reversed(parts))


def _natural(bid: str) -> list[object]:
    """Sort key that orders ``n9.2`` before ``n9.10`` and ``@1`` before ``@2``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", bid)]


def _generations(records: Sequence[TraceRecord]) -> dict[str, TraceRecord]:
    chosen: dict[str, TraceRecord] = {}
    for r in records:
        if r.kind != "generate" or r.branch is None:
            continue
        old = chosen.get(r.branch)
        if old is None or old.error is not None:
            chosen[r.branch] = r
    return chosen


def build_tree(records: Sequence[TraceRecord]) -> Tree:
    """The search tree of one run (see the module doc)."""
    alias: dict[str, str] = {}
    for r in records:
        if r.kind == "resample" and r.kept and r.sources:
            for copy, source in zip(r.kept, r.sources):
                alias[copy] = source

    def canon(bid: str) -> str:
        seen = 0
        while bid in alias and seen < 10_000:
            bid, seen = alias[bid], seen + 1
        return bid

    nodes: dict[str, TreeNode] = {}
    for bid, r in _generations(records).items():
        parent = canon(r.parent) if r.parent is not None else None
        nodes[bid] = TreeNode(id=bid, parent=parent, node=r.node, step=r.step or 0, text=r.text or "",
                              finish=r.finish, tokens=r.completion_tokens, error=r.error)
    tree = Tree(nodes, [])
    for r in records:
        _decorate(tree, r, canon)
    _link(tree)
    return tree


def _decorate(tree: Tree, r: TraceRecord, canon: Callable[[str], str]) -> None:
    nodes = tree.nodes
    ids = [canon(b) for b in r.branches or []]
    if r.kind == "finish":
        for bid, reason in zip(ids, r.values or []):
            if bid in nodes:
                nodes[bid].done = reason or "stop"
    elif r.kind == "score" and r.scores is not None:
        for bid, score in zip(ids, r.scores):
            if bid in nodes:
                nodes[bid].score = score
                nodes[bid].scores.append((r.node, score))
    elif r.kind in ("prune", "resample"):
        kept = [canon(b) for b in r.kept or []]
        for bid in ids:
            if bid not in nodes:
                continue
            n = nodes[bid]
            count = kept.count(bid)
            if r.kind == "prune":
                if count:
                    n.kept_by.append(r.node)
                else:
                    n.pruned_by = r.node
            else:
                n.copies, n.resampled_by = count, r.node
    elif r.kind == "vote":
        tree.answer = r.answer
        voters = {canon(b) for b in r.voters or []}
        cast: dict[str, int] = {}
        for bid, value in zip(ids, r.values or [None] * len(ids)):
            if bid in nodes:
                n = nodes[bid]
                cast[bid] = cast.get(bid, 0) + 1
                n.value, n.votes = value, cast[bid]
                n.vote = ("counted" if bid in voters else "abstained" if value is None
                          else "other" if value != r.answer else "uncounted")
    elif r.kind == "result" and r.answer is None:
        # Branches returned (an answer's supporters already carry their vote marks).
        for bid in ids:
            if bid in nodes:
                nodes[bid].returned = True


def _link(tree: Tree) -> None:
    nodes = tree.nodes
    for bid in sorted(nodes, key=_natural):
        n = nodes[bid]
        if n.parent is not None and n.parent in nodes:
            nodes[n.parent].children.append(bid)
        else:
            n.parent = None
            tree.roots.append(bid)
    stack = [(r, 1) for r in tree.roots]
    while stack:
        bid, depth = stack.pop()
        nodes[bid].depth = depth
        stack.extend((c, depth + 1) for c in nodes[bid].children)


# ---- summary per depth ----


@dataclass
class DepthRow:
    depth: int
    made: int = 0
    pruned: int = 0
    dropped: int = 0
    resampled: int = 0
    finished: int = 0
    voted: int = 0
    steps: set[int] = field(default_factory=set)
    low: float | None = None
    high: float | None = None


def depth_summary(tree: Tree) -> list[DepthRow]:
    """Per depth: branches made, pruned, dropped by resampling, copied, finished, voting; the
    plan nodes that made them and the range of their scores."""
    rows = {d: DepthRow(d) for d in range(1, tree.depths() + 1)}
    for n in tree.nodes.values():
        row = rows[n.depth]
        row.made += 1
        row.pruned += n.pruned_by is not None
        row.dropped += n.copies == 0
        row.resampled += (n.copies or 0) > 1
        row.finished += n.finished
        row.voted += n.vote == "counted"
        row.steps.add(n.node)
        if n.score is not None:
            row.low = n.score if row.low is None else min(row.low, n.score)
            row.high = n.score if row.high is None else max(row.high, n.score)
    return [rows[d] for d in sorted(rows)]


# ---- drawing ----

COL_W, ROW_H, LEFT, TOP, RIGHT = 120, 16, 70, 44, 60
VIRIDIS = ((0.0, (68, 1, 84)), (0.5, (33, 145, 140)), (1.0, (253, 231, 37)))


def score_color(value: float | None, low: float, high: float) -> str:
    """A viridis-like colour for ``value`` between ``low`` and ``high``; grey when unscored."""
    if value is None:
        return "#ffffff"
    t = 0.5 if high <= low else min(1.0, max(0.0, (value - low) / (high - low)))
    for (t0, c0), (t1, c1) in pairwise(VIRIDIS):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#fde725"


def score_range(tree: Tree) -> tuple[float, float]:
    """0..1 when every score lies there (reward models, judges), else the scores' own range."""
    values = [v for n in tree.nodes.values() for _, v in n.scores if v is not None]
    if not values or (min(values) >= 0 and max(values) <= 1):
        return 0.0, 1.0
    return min(values), max(values)


def _layout(tree: Tree) -> dict[str, tuple[float, float]]:
    """(x, y) per node: x by depth; leaves on consecutive rows in order; parents centred."""
    pos: dict[str, tuple[float, float]] = {}
    row = 0
    # Post-order without recursion (a long `repeat` makes deep trees).
    stack: list[tuple[str, bool]] = [(r, False) for r in reversed(tree.roots)]
    while stack:
        bid, expanded = stack.pop()
        n = tree.nodes[bid]
        if n.children and not expanded:
            stack.append((bid, True))
            stack.extend((c, False) for c in reversed(n.children))
            continue
        if n.children:
            y = (pos[n.children[0]][1] + pos[n.children[-1]][1]) / 2
        else:
            y = TOP + row * ROW_H + ROW_H / 2
            row += 1
        pos[bid] = (LEFT + n.depth * COL_W, y)
    return pos


def _invocation(bid: str) -> str:
    """The step invocation that made a branch: its id less the fork index (``n18@2.5`` -> ``n18@2``)."""
    return bid.rsplit(".", 1)[0]


def _prompts(tree: Tree, pos: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, int]]:
    """One prompt per sample invocation that made roots: its key -> (row centred on its roots, node)."""
    groups: dict[str, list[float]] = {}
    nodes: dict[str, int] = {}
    for root in tree.roots:
        key = _invocation(root)
        groups.setdefault(key, []).append(pos[root][1])
        nodes[key] = tree.nodes[root].node
    return {k: ((min(ys) + max(ys)) / 2, nodes[k]) for k, ys in groups.items()}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    return text[:head] + " … " + text[-(limit - head):]


def hover(tree: Tree, n: TreeNode, labels: Mapping[int, str]) -> str:
    """The hover text of one node."""
    def lab(node: int) -> str:
        return labels.get(node) or f"n{node}"

    lines = [f"{n.id} · {lab(n.node)} · depth {n.depth}" + (f" · from {n.parent}" if n.parent else "")]
    if n.scores:
        history = ", ".join(f"{_fmt(v)} ({lab(node)})" for node, v in n.scores)
        lines.append(f"score {_fmt(n.score)}" + (f"; all: {history}" if len(n.scores) > 1 else f" ({lab(n.scores[0][0])})"))
    if n.pruned_by is not None:
        lines.append(f"pruned by {lab(n.pruned_by)}")
    elif n.kept_by:
        lines.append(f"kept by {lab(n.kept_by[-1])}")
    if n.copies is not None and n.resampled_by is not None:
        lines.append(f"dropped by {lab(n.resampled_by)}" if n.copies == 0
                     else f"resampled by {lab(n.resampled_by)}: {n.copies} cop{'y' if n.copies == 1 else 'ies'}")
    if n.vote is not None:
        said = "abstained (nothing to extract)" if n.vote == "abstained" else f"said {n.value!r}"
        if n.votes > 1:
            said += f" ({n.votes} votes: one per copy)"
        counted = {"counted": f", counted for the answer {tree.answer!r}", "other": ", outvoted",
                   "uncounted": ", not counted", "abstained": ""}[n.vote]
        lines.append(f"vote: {said}{counted}")
    if n.returned:
        lines.append("returned by the strategy")
    state = (f"finished ({n.done})" if n.finished else f"cut off ({n.done})" if n.cut
             else "open (its step ended, the branch could go on)")
    lines.append(f"{state} · {n.tokens} tokens" + (f" · error: {n.error}" if n.error else ""))
    lines.append(f"this step: {_clip(n.text, 600)}")
    if n.parent is not None:
        lines.append(f"whole branch: {_clip(tree.full_text(n.id), 1200)}")
    return "\n".join(lines)


def _shape(n: TreeNode, x: float, y: float, fill: str) -> str:
    if n.finished:
        r = 6.5
        return (f'<path class="dot" d="M{x:.1f},{y - r:.1f} L{x + r:.1f},{y:.1f} L{x:.1f},{y + r:.1f} '
                f'L{x - r:.1f},{y:.1f} Z" fill="{fill}"/>')
    return f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{fill}"/>'


def _marks(n: TreeNode, x: float, y: float) -> list[str]:
    out = []
    if n.vote is not None:
        out.append(f'<circle class="ring {n.vote}" cx="{x:.1f}" cy="{y:.1f}" r="9"/>')
    if n.returned:
        out.append(f'<circle class="ring returned" cx="{x:.1f}" cy="{y:.1f}" r="12"/>')
    if n.cut:
        out.append(f'<circle class="ring cutoff" cx="{x:.1f}" cy="{y:.1f}" r="7.5"/>')
    if n.pruned_by is not None or n.copies == 0:
        d = 4.0
        out.append(f'<path class="cross" d="M{x - d:.1f},{y - d:.1f} L{x + d:.1f},{y + d:.1f} '
                   f'M{x - d:.1f},{y + d:.1f} L{x + d:.1f},{y - d:.1f}"/>')
    if (n.copies or 0) > 1:
        out.append(f'<text class="copies" x="{x + 8:.1f}" y="{y - 6:.1f}">×{n.copies}</text>')
    if n.vote in ("counted", "other", "uncounted") and n.value is not None and not n.children:
        out.append(f'<text class="value" x="{x + 14:.1f}" y="{y + 4:.1f}">{html.escape(_clip(n.value, 16))}</text>')
    return out


def render_tree(tree: Tree, labels: Mapping[int, str], aria: str = "search tree") -> str:
    """One SVG of the tree (see the module doc)."""
    pos = _layout(tree)
    low, high = score_range(tree)
    leaves = sum(1 for n in tree.nodes.values() if not n.children)
    width = LEFT + tree.depths() * COL_W + RIGHT + 40
    height = TOP + max(leaves, 1) * ROW_H + 12
    parts = [f'<svg class="tree" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(aria)}">']
    prompts = _prompts(tree, pos)
    for key, (y, node) in prompts.items():
        what = f"the prompt of {labels.get(node) or f'n{node}'}" + (f" ({key})" if len(prompts) > 1 else "")
        parts.append(f'<circle class="prompt" cx="{LEFT:.1f}" cy="{y:.1f}" r="6"><title>{html.escape(what)}</title></circle>')
        parts.append(f'<text x="{LEFT - 10}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{html.escape(key if len(prompts) > 1 else "prompt")}</text>')
    for row in depth_summary(tree):
        col = LEFT + row.depth * COL_W
        parts.append(f'<text class="head" x="{col}" y="14" text-anchor="middle">depth {row.depth}</text>')
        cut = row.pruned + row.dropped
        parts.append(f'<text x="{col}" y="28" text-anchor="middle">{row.made} made'
                     + (f" · {cut} cut" if cut else "") + "</text>")
    for bid, (x, y) in pos.items():
        n = tree.nodes[bid]
        px, py = pos[n.parent] if n.parent is not None else (LEFT, prompts[_invocation(bid)][0])
        mid = (px + x) / 2
        edge = "edge cut" if n.pruned_by is not None or n.copies == 0 else "edge"
        parts.append(f'<path class="{edge}" d="M{px:.1f},{py:.1f} C{mid:.1f},{py:.1f} {mid:.1f},{y:.1f} {x:.1f},{y:.1f}"/>')
    for bid, (x, y) in pos.items():
        n = tree.nodes[bid]
        cls = ["branch"] + [c for c, on in (("pruned", n.pruned_by is not None), ("dropped", n.copies == 0),
                                            ("finished", n.finished), ("cutoff", n.cut), ("returned", n.returned),
                                            ("failed", n.error is not None)) if on]
        if n.vote is not None:
            cls.append(f"vote-{n.vote}")
        fill = score_color(n.score, low, high)
        votes = f' data-votes="{n.votes}"' if n.vote is not None else ""
        parts.append(f'<g class="{" ".join(cls)}" data-branch="{html.escape(bid)}" data-depth="{n.depth}"{votes}>'
                     f"<title>{html.escape(hover(tree, n, labels))}</title>"
                     + _shape(n, x, y, fill) + "".join(_marks(n, x, y)) + "</g>")
    parts.append("</svg>")
    return "\n".join(parts)


# ---- the page section ----

TREE_CSS = """
svg.tree text { font: 11px system-ui, sans-serif; fill: #555; }
svg.tree text.head { font-weight: 600; fill: #333; }
svg.tree .edge { fill: none; stroke: #9aa3ad; stroke-width: 1.2; }
svg.tree .edge.cut { stroke: #d0d4d9; stroke-dasharray: 3 3; }
svg.tree .prompt { fill: #333; }
svg.tree .dot { stroke: #333; stroke-width: 1; }
svg.tree g.pruned .dot, svg.tree g.dropped .dot { fill-opacity: 0.45; stroke: #999; }
svg.tree .cross { stroke: #d62728; stroke-width: 1.6; }
svg.tree .ring { fill: none; stroke-width: 2; }
svg.tree .ring.counted { stroke: #2ca02c; } svg.tree .ring.other { stroke: #ff7f0e; }
svg.tree .ring.uncounted { stroke: #2ca02c; stroke-dasharray: 2 2; }
svg.tree .ring.abstained { stroke: #999; stroke-dasharray: 2 2; }
svg.tree .ring.returned { stroke: #111; stroke-width: 2.5; }
svg.tree .ring.cutoff { stroke: #b07aa1; stroke-dasharray: 3 2; stroke-width: 1.5; }
svg.tree text.copies { fill: #1f5fa8; font-weight: 600; }
svg.tree text.value { fill: #222; font-family: ui-monospace, monospace; }
svg.tree g.branch:hover .dot { stroke: #000; stroke-width: 2.5; }
ul.depths { margin: 4px 0 10px; padding-left: 20px; }
.scale { display: inline-block; width: 120px; height: 10px; vertical-align: -1px; border: 1px solid #ccc;
         background: linear-gradient(to right, #440154, #21918c, #fde725); }
"""

_LEGEND = (
    "○ a branch (one generation), filled by its score; ◇ finished (stop/EOS); "
    "<span style='color:#b07aa1'>dashed ring</span> cut off by max_tokens, the budget or an abort; "
    "<span style='color:#d62728'>✕</span> pruned (or left out by resampling); ×k resampled into k copies; "
    "<span style='color:#2ca02c'>green ring</span> voted for the answer, "
    "<span style='color:#ff7f0e'>orange</span> for another value, grey dashed abstained; "
    "black ring: returned by the strategy. Hover a branch for its scores, decisions and text."
)


def _depth_line(row: DepthRow, labels: Mapping[int, str]) -> str:
    made_by = ", ".join(labels.get(s) or f"n{s}" for s in sorted(row.steps))
    parts = [f"{row.made} branch{'es' if row.made != 1 else ''} ({made_by})"]
    for count, what in ((row.pruned, "pruned"), (row.dropped, "dropped by resampling"),
                        (row.resampled, "copied by resampling"), (row.finished, "finished"),
                        (row.voted, "voted for the answer")):
        if count:
            parts.append(f"{count} {what}")
    if row.low is not None and row.high is not None:
        parts.append(f"scores {_fmt(row.low)} to {_fmt(row.high)}")
    return f"<li>depth {row.depth}: {html.escape('; '.join(parts))}</li>"


def tree_section(tree: Tree, labels: Mapping[int, str], run: int | None = None) -> str:
    """The HTML of one run's tree: a summary, the legend, a line per depth and the drawing."""
    head = f"Run {run}: search tree" if run is not None else "Search tree"
    if not tree.nodes:
        return f'<h2>{head}</h2><p class="sub">This run grew no branches.</p>'
    outcome = ""
    if tree.answer is not None:
        outcome = f"; answer {tree.answer!r}"
    returned = [b for b, n in tree.nodes.items() if n.returned]
    if returned and len(returned) <= 4:
        outcome += f"; returned {', '.join(returned)}"
    low, high = score_range(tree)
    summary = f"{len(tree)} branches over {tree.depths()} depth{'s' if tree.depths() != 1 else ''}{outcome}"
    return "\n".join([
        f"<h2>{head}</h2>",
        f'<p class="sub">{html.escape(summary)}. Score colour: {_fmt(low)} <i class="scale"></i> '
        f"{_fmt(high)}.</p>",
        f'<p class="sub">{_LEGEND}</p>',
        '<ul class="depths">' + "".join(_depth_line(r, labels) for r in depth_summary(tree)) + "</ul>",
        render_tree(tree, labels, f"search tree of run {run}" if run is not None else "search tree"),
    ])
