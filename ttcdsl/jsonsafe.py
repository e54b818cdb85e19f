"""JSON from files users hand us, decoded without ever raising anything but `BadJSON`.

`json.loads` also raises `RecursionError` (arrays nested thousands deep) and a bare `ValueError`
(an integer thousands of digits long, past Python's int-string limit); `loads` turns every such
case into `BadJSON`, whose ``reason`` reads well after ``FILE:LINE:``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["BadJSON", "loads"]


class BadJSON(ValueError):
    """Text that is not usable JSON; ``column`` is 1-based when known."""

    def __init__(self, reason: str, column: int | None = None) -> None:
        super().__init__(reason if column is None else f"{reason} at column {column}")
        self.reason = reason
        self.column = column


def loads(text: str | bytes) -> Any:
    """`json.loads`, with every failure as `BadJSON`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadJSON(exc.msg, exc.colno) from None
    except RecursionError:
        raise BadJSON("nested too deeply") from None
    except UnicodeDecodeError:
        raise BadJSON("not UTF-8 text") from None
    except ValueError as exc:  # Python's int-string limit
        limit = sys.get_int_max_str_digits()
        raise BadJSON(f"a number with more than {limit} digits" if "digits" in str(exc)
                      else "not valid JSON") from None
