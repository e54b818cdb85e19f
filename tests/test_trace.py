"""`ttc trace show|html` and `ttcdsl.traceview`: loading, run splitting, statistics, lanes, the
rich tables and the self-contained HTML page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttcdsl.cli import main
from ttcdsl.commands.trace import node_labels
from ttcdsl.errors import UsageError
from ttcdsl.runtime.values import REQUEST_KINDS, TraceRecord
from ttcdsl.traceview import (
    MIN_SPAN,
    Trace,
    assign_lanes,
    kind_stats,
    load_trace,
    node_stats,
    percentile,
    render_html,
    slowest,
    split_runs,
)

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "demo.json")
SC = str(REPO / "programs" / "self_consistency.ttc")
BEAM = str(REPO / "programs" / "beam_search.ttc")
Q = "question=What is 17 + 25?"


@pytest.fixture(scope="module")
def beam_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "beam.jsonl"
    assert main(["run", BEAM, "--sim-task", TASK, "--arg", Q, "--arg", "depth=2", "--seed", "4", "--json",
                 "--trace", str(path)]) == 0
    return path


def _rec(node: int, start: float, end: float, **kw: object) -> TraceRecord:
    return TraceRecord(kind=str(kw.pop("kind", "generate")), node=node, t_start=start, t_end=end, **kw)  # type: ignore[arg-type]


def _requests(path: Path) -> list[dict[str, object]]:
    """The request records of a trace file (its other lines are the run's decisions)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["kind"] in REQUEST_KINDS]


def _write(path: Path, records: list[TraceRecord]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    return path


# ---- loading ----


def test_a_malformed_line_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = msgspec.json.encode(_rec(1, 0.0, 0.1)).decode()
    path.write_text(f"{good}\n\n{good}\nnot json at all\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}:4: not valid JSON"):
        load_trace(path)
    path.write_text(f'{good}\n{{"node": 3, "t_start": 0}}\n')
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}:2: not a trace record: .*kind"):
        load_trace(path)
    path.write_text('{"kind": "generate", "node": "seven"}\n')
    with pytest.raises(UsageError, match=r":1: not a trace record: Expected `int`"):
        load_trace(path)


def test_an_empty_or_missing_trace_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="no trace records"):
        load_trace(empty)
    with pytest.raises(UsageError, match="no such trace file"):
        load_trace(tmp_path / "nope.jsonl")


def test_appended_runs_are_split_where_end_times_go_back() -> None:
    first = [_rec(1, 0.0, 0.01), _rec(1, 0.0, 0.5), _rec(2, 0.5, 0.9)]
    second = [_rec(1, 0.0, 0.02), _rec(2, 0.01, 0.3)]
    assert split_runs(first + second) == [first, second]


def test_two_real_runs_appended_to_one_file_are_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.jsonl"
    for seed in ("1", "2"):
        assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=3", "--seed", seed, "--json",
                     "--trace", str(path)]) == 0
    capsys.readouterr()
    trace = load_trace(path)
    # Each run: tokenize, warm-up, three forks.
    assert [len(run) for run in trace.runs] == [5, 5]


# ---- statistics ----


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0


@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=40), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_within_range(xs: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert min(xs) <= percentile(xs, lo) <= percentile(xs, hi) <= max(xs)


def test_stats_count_requests_retries_errors_and_tokens_per_node_and_kind() -> None:
    records = [
        _rec(3, 0.0, 0.001, kind="tokenize", input_tokens=10),
        _rec(3, 0.001, 0.002, kind="warm", prompt_tokens=10),
        _rec(3, 0.002, 0.2, rid="a", completion_tokens=40, prompt_tokens=10, cached_tokens=9),
        _rec(3, 0.002, 0.05, rid="b", error="sim: simulated HTTP 503"),
        _rec(3, 0.25, 0.4, rid="b", attempt=2, completion_tokens=20, prompt_tokens=10, cached_tokens=9),
        _rec(5, 0.4, 0.41, kind="reward"),
    ]
    trace = Trace("t", split_runs(records))
    by_node = {s.key: s for s in node_stats(trace)}
    n3 = by_node["3"]
    assert (n3.requests, n3.retries, n3.errors) == (5, 1, 1)
    assert (n3.completion_tokens, n3.prompt_tokens, n3.cached_tokens) == (60, 30, 18)
    assert n3.max == pytest.approx(0.198)
    assert [s.key for s in kind_stats(trace)] == ["tokenize", "warm", "generate", "reward"]
    gen = next(s for s in kind_stats(trace) if s.key == "generate")
    assert gen.requests == 3 and gen.errors == 1
    assert [r.rid for _, r in slowest(trace, 2)] == ["a", "b"]


# ---- lanes ----

intervals = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 20)).map(lambda t: (t[0] / 10, (t[0] + t[1]) / 10)),
    min_size=1, max_size=30,
)


@given(intervals)
def test_lanes_never_overlap_and_match_peak_concurrency(spans: list[tuple[float, float]]) -> None:
    records = [_rec(1, s, e) for s, e in spans]
    lanes = assign_lanes(records)
    # A request occupies [start, end), at least an instant: instant ones at one time overlap.
    occupied = [(s, max(e, s + MIN_SPAN)) for s, e in spans]
    for i, (s1, e1) in enumerate(occupied):
        for j, (s2, e2) in enumerate(occupied[:i]):
            if lanes[i] == lanes[j]:
                assert e1 <= s2 or e2 <= s1  # same lane: no overlap
    peak = max(sum(1 for s, e in occupied if s <= t < e) for t, _ in occupied)
    assert max(lanes) + 1 == peak


# ---- the command line ----


def test_show_prints_node_kind_and_slowest_tables(beam_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "show", str(beam_trace), "--program", BEAM, "--top", "3"]) == 0
    out = capsys.readouterr().out
    records = _requests(beam_trace)
    assert f"{len(records)} requests in 1 run" in out
    for title in ("per node", "per kind", "slowest 3 requests"):
        assert title in out
    labels = node_labels(BEAM)
    for node in {r["node"] for r in records}:
        assert re.search(rf"^n{node} +│ {re.escape(labels[node])} +│", out, re.M)
    assert {labels[r["node"]].split()[0] for r in records} == {"sample", "score", "expand"}
    for kind in ("tokenize", "warm", "generate", "reward"):
        assert re.search(rf"^{kind} +│ +{sum(r['kind'] == kind for r in records)} +│", out, re.M)
    slow = out[out.index("slowest 3 requests"):]
    assert len([line for line in slow.splitlines() if line.startswith("1 ")]) == 3


def test_show_reports_a_malformed_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"kind": "generate", "node": 1}\n[1, 2]\n')
    assert main(["trace", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ttc: error: {path}:2: not a trace record") and err.count("\n") == 1


class _Page(HTMLParser):
    """Collects what the tests check: tags, rects inside svgs, their titles, tables."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[dict[str, str | None]] = []
        self.stack: list[str] = []
        self.rects = 0
        self.rect_titles: list[str] = []
        self._title: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.append(dict(attrs))
        if tag == "rect":
            assert "svg" in self.stack
            self.rects += 1
        if tag == "title" and self.stack and self.stack[-1] == "rect":
            self._title = []
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop() != tag:
            pass
        if tag == "title" and self._title is not None:
            self.rect_titles.append("".join(self._title))
            self._title = None

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)


def test_html_is_self_contained_with_one_rect_per_request(beam_trace: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.html"
    assert main(["trace", "html", str(beam_trace), "-o", str(out), "--program", BEAM]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    text = out.read_text()
    page = _Page()
    page.feed(text)
    records = _requests(beam_trace)
    assert page.rects == len(records)
    # The timeline, and the search tree on the first tab.
    assert page.tags.count("svg") == 2 and page.tags.count("table") == 3
    # No external assets and no scripts: nothing to fetch.
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert not any(k in ("src", "href") for a in page.attrs for k in a)
    assert "@import" not in text and "url(" not in text
    gens = [t for t in page.rect_titles if t.startswith("generate")]
    assert len(gens) == sum(r["kind"] == "generate" for r in records)
    longest = max(records, key=lambda r: r.get("completion_tokens", 0))
    hover = next(t for t in page.rect_titles if f"rid {longest['rid']}" in t)
    assert f"completion {longest['completion_tokens']}" in hover and "text: Step " in hover
    assert all(label in text for label in node_labels(BEAM).values() if label.startswith(("sample", "expand")))


def test_html_draws_a_timeline_per_run_and_marks_failed_attempts(tmp_path: Path) -> None:
    records = [
        _rec(1, 0.0, 0.05, rid="b", error="sim: simulated HTTP 503"),
        _rec(1, 0.0, 0.2, rid="a", completion_tokens=5, text="<b>&\"quoted\"</b>"),
        _rec(2, 0.0, 0.1, rid="c"),
        _rec(2, 0.05, 0.3, rid="d"),
    ]
    trace = load_trace(_write(tmp_path / "t.jsonl", records))
    assert len(trace.runs) == 2
    page = _Page()
    html = render_html(trace)
    page.feed(html)
    assert page.tags.count("svg") == 2 and page.rects == 4
    assert "Run 1: 2 requests" in html and "Run 2: 2 requests" in html
    assert html.count('class="err"') == 1
    assert any("error: sim: simulated HTTP 503" in t for t in page.rect_titles)
    # Text from the model is escaped, never interpreted.
    assert "<b>&" not in html and any('text: <b>&"quoted"</b>' in t for t in page.rect_titles)


def test_html_to_a_missing_folder_is_a_one_line_error(beam_trace: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "html", str(beam_trace), "-o", str(tmp_path / "no" / "t.html")]) == 2
    err = capsys.readouterr().err
    assert "folder" in err and err.count("\n") == 1


# ---- lineage: labels from the trace, the tree tab ----


def test_show_labels_nodes_from_the_trace_itself_and_tabulates_the_tree(
        beam_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "show", str(beam_trace)]) == 0
    out = capsys.readouterr().out
    labels = node_labels(BEAM)
    assert labels is not None
    for node in {r["node"] for r in _requests(beam_trace)}:
        assert re.search(rf"^n{node} +│ {re.escape(labels[node])} +│", out, re.M)
    tree = out[out.index("search tree per depth"):out.index("slowest")]
    # depth 1 from sample, depths 2 and 3 from expand; 16 branches each, 12 of them pruned.
    assert re.search(r"^1 +│ 1 +│ sample \(line 5\) +│ +16 │ +12 │", tree, re.M)
    assert len(re.findall(r"^1 +│ [23] +│ expand \(line 9\) +│ +16 │ +12 │", tree, re.M)) == 2


def test_html_of_two_runs_draws_a_tree_per_run_on_the_first_tab(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.jsonl"
    for seed in ("1", "2"):
        assert main(["run", SC, "--sim-task", TASK, "--arg", Q, "--arg", "n=3", "--seed", seed, "--json",
                     "--trace", str(path)]) == 0
    out = tmp_path / "t.html"
    assert main(["trace", "html", str(path), "-o", str(out)]) == 0
    assert "6 branches in the search tree" in capsys.readouterr().err.replace("\n", " ")
    text = out.read_text()
    page = _Page()
    page.feed(text)
    assert "Run 1: search tree" in text and "Run 2: search tree" in text
    assert text.count('<svg class="tree"') == 2 and text.count('class="branch') == 6
    # Two timelines on the second tab, still one rect per request and no script.
    assert page.tags.count("svg") == 4 and page.rects == len(_requests(path))
    assert "script" not in page.tags and text.index('id="panel-tree"') < text.index('id="panel-requests"')
    radios = [a for a in page.attrs if a.get("type") == "radio"]
    assert [a["id"] for a in radios] == ["tab-tree", "tab-requests"] and "checked" in radios[0]


def test_a_trace_of_decisions_only_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [TraceRecord(kind="plan", node=0), TraceRecord(kind="result", node=0)])
    with pytest.raises(UsageError, match="no requests in the trace"):
        load_trace(path)
