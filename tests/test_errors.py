"""`ttcdsl.errors`: how an error with a place in the source is shown, word for word, for check
errors and for nodes that fail at run time alike."""

from __future__ import annotations

from ttcdsl.errors import CheckError, NodeFailed, RunError, TTCError
from ttcdsl.span import Span

SOURCE = "strategy s(q: text) {\n    return sample 2 from q\n}\n"
SPAN = Span("s.ttc", 2, 12, 2, 27)


def test_a_failed_node_renders_like_a_check_error_at_the_same_place() -> None:
    failed = NodeFailed("sample failed: model exploded", SPAN, SOURCE)
    assert failed.render() == (
        "s.ttc:2:12: error: sample failed: model exploded\n"
        "        return sample 2 from q\n"
        "               ^^^^^^^^^^^^^^^"
    )
    checked = CheckError("sample failed: model exploded", SPAN, SOURCE)
    assert failed.render() == checked.render()


def test_a_failed_node_is_one_line_as_a_string_and_without_its_source() -> None:
    failed = NodeFailed("division by zero in 1 / 0", SPAN)
    assert str(failed) == "s.ttc:2:12: division by zero in 1 / 0"
    assert failed.render() == "s.ttc:2:12: error: division by zero in 1 / 0"
    assert failed.message == "division by zero in 1 / 0"
    assert isinstance(failed, RunError) and isinstance(failed, TTCError)


def test_a_failed_node_without_a_place_says_only_its_message() -> None:
    failed = NodeFailed("strategy ended without a value")
    assert (str(failed), failed.render()) == ("strategy ended without a value", "error: strategy ended without a value")


def test_a_span_past_the_end_of_the_source_shows_only_the_head_line() -> None:
    failed = NodeFailed("lost", Span("s.ttc", 9, 1, 9, 2), SOURCE)
    assert failed.render() == "s.ttc:9:1: error: lost"
