"""`ttc trace html` pages in a real browser: the system Chromium (Debian's `chromium` package,
which `.ci/run` installs) driven headless by Playwright, never a browser Playwright downloads.

A page must load from a file with no network request and no console error, show the search tree
of a known beam search (as many branch nodes as the trace has generated branches, 16 at depth 1)
on its first tab, and still render the request timeline (one bar per request) on the second.
Without Chromium or Playwright the tests skip and say which is missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttcdsl.cli import main
from ttcdsl.runtime.values import REQUEST_KINDS

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "demo.json")
BEAM = str(REPO / "programs" / "beam_search.ttc")
PF = str(REPO / "programs" / "particle_filter.ttc")
Q = "question=What is 17 + 25?"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no system Chromium: install it with `apt-get install -y chromium` (.ci/run does)")


Page = tuple[Path, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Page]:
    """The pages under test, made before the browser starts (Playwright's sync API keeps an
    event loop running in this thread, where `ttc run` could not start its own)."""
    return {"beam": _page_of(tmp_path_factory.mktemp("beam"), BEAM, "--arg", "depth=2"),
            "pf": _page_of(tmp_path_factory.mktemp("pf"), PF, "--arg", "depth=3")}


@pytest.fixture(scope="module")
def browser(pages: dict[str, Page]) -> Iterator[Any]:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the `test` extra has it)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def _page_of(tmp: Path, program: str, *args: str) -> Page:
    trace = tmp / "t.jsonl"
    assert main(["run", program, "--sim-task", TASK, "--arg", Q, *args, "--seed", "4", "--trace", str(trace)]) == 0
    page = tmp / "t.html"
    assert main(["trace", "html", str(trace), "-o", str(page)]) == 0
    return page, [json.loads(line) for line in trace.read_text().splitlines()]


class _Watch:
    """A page with its console errors, uncaught exceptions and requests recorded."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto(path.as_uri(), wait_until="load", timeout=30_000)

    def count(self, selector: str) -> int:
        n: int = self.page.locator(selector).count()
        return n

    def close(self) -> None:
        self.context.close()


def test_the_beam_search_page_loads_with_its_tree_and_its_timeline(browser: Any, pages: dict[str, Page]) -> None:
    path, records = pages["beam"]
    generated = {r["branch"] for r in records if r["kind"] == "generate" and "branch" in r}
    requests = [r for r in records if r["kind"] in REQUEST_KINDS]
    w = _Watch(browser, path)
    try:
        assert w.errors == []
        assert w.urls == [path.as_uri()]  # the page itself, and nothing else
        tree = w.page.locator("#panel-tree svg.tree")
        assert tree.is_visible() and not w.page.locator("#panel-requests").is_visible()
        box = tree.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 16 * 16
        assert w.count("svg.tree g.branch") == len(generated) >= 16 + 4 * 4
        assert w.count('svg.tree g.branch[data-depth="1"]') == 16
        # The last pass prunes 12 of 16; every earlier pass too: 3 passes in all.
        assert w.count("svg.tree g.branch.pruned") == 3 * 12
        assert w.count("svg.tree g.branch.returned") == 1
        hover = w.page.locator('svg.tree g.branch[data-depth="3"] > title').first.text_content() or ""
        assert "expand (line 9)" in hover and "whole branch: Step 1" in hover
        # The second tab: the request tables and the timeline, one bar per request.
        w.page.get_by_text("Requests and timeline").click()
        assert not tree.is_visible()
        timeline = w.page.locator('#panel-requests svg[aria-label="request timeline"]')
        assert timeline.is_visible() and timeline.locator("rect").count() == len(requests)
        assert w.count("#panel-requests table") == 3
        assert w.errors == []
    finally:
        w.close()


def test_a_particle_filter_page_shows_resampling_and_votes(browser: Any, pages: dict[str, Page]) -> None:
    path, records = pages["pf"]
    (vote,) = [r for r in records if r["kind"] == "vote"]
    w = _Watch(browser, path)
    try:
        assert w.errors == [] and w.urls == [path.as_uri()]
        # A branch resampled into copies votes once per copy.
        counted = w.page.locator("svg.tree g.branch.vote-counted")
        votes = [int(counted.nth(i).get_attribute("data-votes") or 0) for i in range(counted.count())]
        assert votes and sum(votes) == len(vote["voters"])
        # Some particles were copied (marked ×k), others left out (crossed).
        copied = w.page.locator("svg.tree text.copies").all_text_contents()
        assert copied and all(int(t.lstrip("×")) >= 2 for t in copied)
        assert w.count("svg.tree g.branch.dropped") >= 1
    finally:
        w.close()
