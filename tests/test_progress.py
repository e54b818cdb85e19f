"""The progress bar of long commands (`ttcdsl.commands._progress`): drawn on a terminal with
counts, note and ETA; nothing at all when the console is a pipe or a file."""

from __future__ import annotations

import io

from rich.console import Console

from ttcdsl.commands._progress import ProgressBar


def test_on_a_terminal_the_bar_shows_counts_the_note_and_an_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with ProgressBar(console, "self_consistency", 4) as bar:
        assert bar.shown
        bar.advance()
        bar.update(completed=2, note="acc 0.500")
        bar._progress.refresh()
    text = out.getvalue()
    assert "self_consistency" in text and "2/4" in text and "acc 0.500" in text and "eta" in text


def test_labels_are_plain_text_not_markup() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with ProgressBar(console, "start", 2, transient=True) as bar:
        bar.update(description="sc n=[4]")
        bar.advance(2)
        bar._progress.refresh()
    assert "sc n=[4]" in out.getvalue() and "2/2" in out.getvalue()


def test_off_a_terminal_nothing_is_drawn() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with ProgressBar(console, "items", 3) as bar:
        assert not bar.shown
        bar.advance()
        bar.update(completed=3, description="done", note="acc 1.000")
        console.print("a message")
    assert out.getvalue() == "a message\n"


def test_off_a_terminal_a_plain_line_every_few_seconds(monkeypatch: object) -> None:
    import ttcdsl.commands._progress as progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])  # type: ignore[attr-defined]
    with ProgressBar(console, "items", 10) as bar:
        bar.advance()
        assert out.getvalue() == ""  # not yet: less than PLAIN_EVERY_S since the start
        clock[0] += progress.PLAIN_EVERY_S
        bar.update(completed=4, note="acc 0.750")
        clock[0] += 1
        bar.advance()  # too soon for another line
    assert out.getvalue() == "items: 4/10 acc 0.750 5 s\n"
