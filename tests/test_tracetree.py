"""Branch lineage in traces and the search tree rebuilt from them (`ttcdsl.tracetree`): what the
runtime writes, how the tree reads it, how it is drawn, and the strategies of the library."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import pytest

from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.runtime.backends.sim import SimBackend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.sim import load_task
from ttcdsl.runtime.values import REQUEST_KINDS, Answer, Branches, TraceRecord
from ttcdsl.tracetree import build_tree, depth_summary, render_tree, score_color
from ttcdsl.traceview import Trace, render_html, split_runs

REPO = Path(__file__).resolve().parents[1]
TASK = load_task(REPO / "data" / "tasks" / "demo.json")
QUESTION = TASK.problems[0].question
PROGRAMS = REPO / "programs"


def traced(program: str | Path, args: dict[str, Any] | None = None, seed: int = 3,
           sequential: bool = False, source: str | None = None) -> tuple[Any, list[TraceRecord]]:
    plan = (compile_source(source, "inline.ttc") if source is not None else compile_file(str(program))).plan
    values = {p.name: p.default for p in plan.strategy().params}
    values.update({"question": QUESTION, **(args or {})})
    records: list[TraceRecord] = []

    async def main() -> Any:
        async with SimBackend(TASK) as backend:
            return await run_plan(plan, backend, values, RunOptions(seed=seed, sequential=sequential,
                                                                    trace=records.append, timeout_s=120))

    return anyio.run(main).value, records


def rec(kind: str, node: int = 1, **kw: Any) -> TraceRecord:
    return TraceRecord(kind=kind, node=node, **kw)


def gen(branch: str, parent: str | None = None, node: int = 1, **kw: Any) -> TraceRecord:
    return rec("generate", node, branch=branch, parent=parent, text=kw.pop("text", f"<{branch}>"), **kw)


# ---- what the runtime writes ----


def test_a_traced_beam_search_names_every_branch_and_decision() -> None:
    value, records = traced(PROGRAMS / "beam_search.ttc", {"depth": 2})
    plan = next(r for r in records if r.kind == "plan")
    assert records[0] is plan and plan.labels is not None
    assert {lab.op for lab in plan.labels.values()} >= {"sample", "score", "prune", "expand"}
    assert plan.labels[min(plan.labels)].source.startswith("beams = sample width * branch")
    gens = [r for r in records if r.kind == "generate"]
    assert gens and all(r.branch is not None for r in gens)
    ids = {r.branch for r in gens}
    # Every continuation names a parent the trace saw generated, one step further.
    step = {r.branch: r.step for r in gens}
    for r in gens:
        if r.parent is not None:
            assert r.parent in ids and r.step == (step[r.parent] or 0) + 1
    roots = [r for r in gens if r.parent is None]
    assert len(roots) == 16 and {r.step for r in roots} == {0}
    prunes = [r for r in records if r.kind == "prune"]
    assert len(prunes) == 3 and all(len(p.kept or []) == 4 and set(p.kept or []) <= set(p.branches or [])
                                    for p in prunes)
    scores = [r for r in records if r.kind == "score"]
    assert all(len(s.scores or []) == len(s.branches or []) for s in scores)
    (result,) = [r for r in records if r.kind == "result"]
    assert isinstance(value, Branches) and result.branches == [b.id for b in value.items]
    # Decisions are stamped in order with the requests: one run for `split_runs`.
    assert len(split_runs(records)) == 1


def test_a_vote_records_who_could_vote_what_they_said_and_who_counted() -> None:
    value, records = traced(PROGRAMS / "self_consistency.ttc", {"n": 8})
    assert isinstance(value, Answer)
    (vote,) = [r for r in records if r.kind == "vote"]
    assert vote.answer == value.value and len(vote.branches or []) == 8
    assert vote.voters == [b.id for b in value.branches]
    said = dict(zip(vote.branches or [], vote.values or []))
    assert all(said[b] == value.value for b in vote.voters or [])
    assert sum(v == value.value for v in said.values()) == len(vote.voters or [])


def test_the_sequential_and_concurrent_interpreters_trace_the_same_tree() -> None:
    def shape(records: list[TraceRecord]) -> set[tuple[Any, ...]]:
        tree = build_tree(records)
        return {(n.id, n.parent, n.depth, n.pruned_by, n.copies, n.vote) for n in tree.nodes.values()}

    for name in ("beam_search.ttc", "particle_filter.ttc"):
        _, a = traced(PROGRAMS / name, {"depth": 2}, seed=11)
        _, b = traced(PROGRAMS / name, {"depth": 2}, seed=11, sequential=True)
        assert shape(a) == shape(b), name


# ---- reading the tree ----


def test_lineage_depths_prunes_and_the_returned_branch() -> None:
    records = [
        gen("a"), gen("b"), gen("a.0", "a"), gen("a.1", "a"), gen("b.0", "b"),
        rec("score", branches=["a", "b"], scores=[0.9, 0.2]),
        rec("prune", 3, branches=["a.0", "a.1", "b.0"], kept=["a.0", "b.0"]),
        rec("finish", 2, branches=["a.0"], values=["stop"]),
        rec("result", 0, branches=["a.0"]),
    ]
    tree = build_tree(records)
    assert tree.roots == ["a", "b"] and len(tree) == 5
    assert [tree.nodes[b].depth for b in ("a", "a.0", "b.0")] == [1, 2, 2]
    assert tree.nodes["a.1"].pruned_by == 3 and tree.nodes["a.0"].kept_by == [3]
    assert tree.nodes["a"].score == 0.9 and tree.nodes["a.0"].score is None
    assert tree.nodes["a.0"].finished and tree.nodes["a.0"].returned and not tree.nodes["b.0"].finished
    assert tree.full_text("a.1") == "<a><a.1>"
    rows = depth_summary(tree)
    assert [(r.depth, r.made, r.pruned, r.finished) for r in rows] == [(1, 2, 0, 0), (2, 3, 1, 1)]


def test_a_retried_generation_is_one_node_and_keeps_the_attempt_that_succeeded() -> None:
    records = [gen("a", error="sim: simulated HTTP 503", text=""), gen("a", text="fine", attempt=2)]
    tree = build_tree(records)
    assert len(tree) == 1 and tree.nodes["a"].text == "fine" and tree.nodes["a"].error is None


def test_resampled_copies_stand_for_their_source() -> None:
    records = [
        gen("p0"), gen("p1"), gen("p2"),
        rec("resample", 4, branches=["p0", "p1", "p2"], kept=["r.0", "r.1", "r.2"], sources=["p0", "p0", "p2"]),
        gen("x.0", "r.0", node=5), gen("x.1", "r.1", node=5), gen("x.2", "r.2", node=5),
        rec("resample", 4, branches=["x.0", "x.1", "x.2"], kept=["s.0", "s.1", "s.2"], sources=["x.0", "x.1", "x.1"]),
        gen("y.0", "s.0", node=5), gen("y.1", "s.1", node=5), gen("y.2", "s.2", node=5),
        rec("vote", 6, branches=["y.0", "y.1", "y.2"], values=["42", "41", None], voters=["y.0"], answer="42"),
    ]
    tree = build_tree(records)
    assert len(tree) == 9
    assert tree.nodes["p0"].copies == 2 and tree.nodes["p1"].copies == 0 and tree.nodes["p2"].copies == 1
    assert tree.nodes["p0"].children == ["x.0", "x.1"] and tree.nodes["x.2"].parent == "p2"
    assert tree.nodes["y.2"].parent == "x.1" and tree.nodes["y.2"].depth == 3
    assert [tree.nodes[b].vote for b in ("y.0", "y.1", "y.2")] == ["counted", "other", "abstained"]
    assert tree.answer == "42"
    row = depth_summary(tree)[0]
    assert (row.dropped, row.resampled) == (1, 1)


def test_a_branch_that_said_the_answer_but_was_not_counted_is_marked_so() -> None:
    records = [gen("a"), gen("b"), rec("vote", 2, branches=["a", "b"], values=["7", "7"], voters=["a"], answer="7")]
    tree = build_tree(records)
    assert (tree.nodes["a"].vote, tree.nodes["b"].vote) == ("counted", "uncounted")


def test_a_trace_without_lineage_has_an_empty_tree_and_the_old_page() -> None:
    records = [rec("tokenize", t_end=0.001), rec("generate", rid="x", t_end=0.01, text="hi")]
    assert len(build_tree(records)) == 0
    page = render_html(Trace("t", split_runs(records)))
    assert 'id="tab-tree"' not in page and "<svg" in page


# ---- drawing ----


class _Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.groups: list[dict[str, str | None]] = []
        self.circles: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.titles: list[str] = []
        self._title: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "g" and "branch" in (a.get("class") or "").split():
            self.groups.append(a)
        if tag in ("circle", "path") and "dot" in (a.get("class") or "").split():
            self.circles.append(a)
        if tag == "title":
            self._title = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title is not None:
            self.titles.append("".join(self._title))
            self._title = None

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)


def test_the_drawing_has_one_group_per_branch_no_rect_and_escaped_text() -> None:
    records = [gen("a", text='<script>alert("x")</script>'), gen("a.0", "a", text="& more"), gen("b"),
               rec("score", branches=["a", "a.0", "b"], scores=[0.1, 0.7, 0.95])]
    tree = build_tree(records)
    svg = render_tree(tree, {1: "sample (line 3)"})
    page = _Svg()
    page.feed(svg)
    assert len(page.groups) == 3 and len(page.circles) == 3 and "rect" not in page.tags
    assert "<script>" not in svg and "script" not in page.tags
    hover = next(t for t in page.titles if t.startswith("a.0 "))
    assert "sample (line 3)" in hover and "from a" in hover and 'whole branch: <script>alert("x")</script>& more' in hover
    # Leaves on distinct rows; a parent between its children's rows.
    ys = {g["data-branch"]: float(c["cy"] or 0) for g, c in zip(page.groups, page.circles)}
    assert ys["a"] == ys["a.0"] < ys["b"]


def test_score_colours_span_the_scale_and_unscored_is_white() -> None:
    assert score_color(None, 0, 1) == "#ffffff"
    assert score_color(0.0, 0, 1) == "#440154" and score_color(1.0, 0, 1) == "#fde725"
    assert score_color(5.0, 0, 1) == "#fde725" and score_color(-3.0, -4.0, -2.0) == "#21918c"


# ---- the strategy library ----


@pytest.mark.parametrize(("program", "args"), [
    ("beam_search.ttc", {"depth": 3}),
    ("dvts.ttc", {"depth": 3}),
    ("particle_filter.ttc", {"depth": 3}),
    ("self_consistency.ttc", {"n": 6}),
])
def test_library_strategies_draw_a_node_per_generated_branch(program: str, args: dict[str, Any]) -> None:
    _, records = traced(PROGRAMS / program, args, seed=5)
    requests = [r for r in records if r.kind in REQUEST_KINDS]
    trace = Trace("t", [requests], {}, [[r for r in records if r.kind not in REQUEST_KINDS]])
    page = _Svg()
    page.feed(render_html(trace))
    generated = {r.branch for r in requests if r.kind == "generate" and r.branch is not None}
    assert len(page.groups) == len(generated)
    classes = [set((g.get("class") or "").split()) for g in page.groups]
    if program == "self_consistency.ttc":
        assert sum("vote-counted" in c for c in classes) >= 1
        assert all(int(g["data-depth"] or 0) == 1 for g in page.groups)
    if program in ("beam_search.ttc", "dvts.ttc"):
        assert sum("pruned" in c for c in classes) > 0 and sum("returned" in c for c in classes) == 1
    if program == "dvts.ttc":
        # One survivor per subtree at each depth: every prune keeps one child per root.
        tree = build_tree(records)
        for row in depth_summary(tree)[1:]:
            assert row.made - row.pruned <= 4
    if program == "particle_filter.ttc":
        tree = build_tree(records)
        # Each resampling hands out one copy per particle (8) among the particles it took in.
        resampled = [n for n in tree.nodes.values() if n.copies is not None]
        assert resampled and sum(n.copies or 0 for n in resampled) == 8 * 3
        assert sum("vote-counted" in c for c in classes) >= 1


def test_branches_made_inside_a_call_join_the_callers_tree() -> None:
    source = (
        "strategy inner(question: text) {\n"
        "    return sample 2 from question with step = \"\\n\\n\", max_tokens = 256\n"
        "}\n"
        "strategy outer(question: text) {\n"
        "    a = inner(question)\n"
        "    b = expand a by 2 with max_tokens = 16\n"
        "    return vote b on number\n"
        "}\n"
    )
    _, records = traced("", source=source)
    tree = build_tree(records)
    assert len(tree.roots) == 2 and all(b.startswith("c") and "/" in b for b in tree.roots)
    expanded = [n for n in tree.nodes.values() if n.depth == 2]
    assert all(n.parent in tree.roots for n in expanded)
    open_roots = sum(tree.nodes[r].done is None for r in tree.roots)
    assert open_roots and len(expanded) == 2 * open_roots


def test_copies_of_a_finished_branch_each_vote_and_each_sample_call_has_its_prompt() -> None:
    records = [
        gen("n3.0"), gen("n3.1"), gen("n5@0.0", node=5),
        rec("finish", 3, branches=["n3.0", "n3.1"], values=["stop", "eos"]),
        rec("resample", 4, branches=["n3.0", "n3.1"], kept=["r.0", "r.1", "r.2"], sources=["n3.0", "n3.0", "n3.1"]),
        rec("vote", 6, branches=["r.0", "r.1", "r.2"], values=["42", "42", "41"], voters=["r.0", "r.1"], answer="42"),
    ]
    tree = build_tree(records)
    a, b = tree.nodes["n3.0"], tree.nodes["n3.1"]
    assert (a.vote, a.votes, a.copies, b.vote, b.votes) == ("counted", 2, 2, "other", 1)
    svg = render_tree(tree, {3: "sample (line 2)", 5: "sample (line 7)"})
    page = _Svg()
    page.feed(svg)
    assert next(g for g in page.groups if g["data-branch"] == "n3.0")["data-votes"] == "2"
    assert svg.count('class="prompt"') == 2
    assert "the prompt of sample (line 7) (n5@0)" in page.titles
    assert any("2 votes: one per copy" in t for t in page.titles)
