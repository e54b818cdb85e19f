"""Strategy arguments from the command line (`--arg NAME=VALUE`), from dataset lines, and for
the static bounds of `ttc plan --arg`.

Values are converted to the parameter's declared type; every mistake is one `UsageError` naming
the parameter and what it expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ttcdsl import plan as P
from ttcdsl.errors import UsageError

__all__ = ["bind_args", "bind_known", "convert", "parse_assignments"]


def parse_assignments(items: Iterable[str], flag: str = "--arg") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def convert(param: P.ParamSpec, value: Any, where: str = "--arg") -> Any:
    """Convert a string (CLI) or a JSON value (dataset) to the parameter's type."""
    t = param.type
    try:
        if t == "text":
            if isinstance(value, (dict, list)):
                raise ValueError
            return value if isinstance(value, str) else str(value)
        if t == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if t == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise UsageError(f"{where} {param.name}={_shown(value)}: expected a finite float")
        return number
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where} {param.name}={_shown(value)}: expected {'an' if t == 'int' else 'a'} {t}") from None


def _shown(value: Any) -> str:
    """A value as an error quotes it: never thousands of characters."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**100 else "<a huge int>"
    return text if len(text) <= 80 else text[:77] + "..."


def bind_args(strategy: P.StrategyPlan, given: Mapping[str, Any], where: str = "--arg") -> dict[str, Any]:
    """Values for every parameter: given ones converted, defaults filled in, missing ones named."""
    _reject_unknown(strategy, given)
    out: dict[str, Any] = {}
    for p in strategy.params:
        if p.name in given:
            out[p.name] = convert(p, given[p.name], where)
        elif not p.required:
            out[p.name] = p.default
        else:
            raise UsageError(f"strategy '{strategy.name}' needs {p.name} ({p.type}): pass {where} {p.name}=VALUE")
    return out


def bind_known(strategy: P.StrategyPlan, given: Mapping[str, Any], where: str = "--arg") -> dict[str, Any]:
    """The given values converted, and nothing else: for the static bounds, where a parameter
    without a value keeps its default (or stays unknown)."""
    _reject_unknown(strategy, given)
    params = {p.name: p for p in strategy.params}
    return {k: convert(params[k], v, where) for k, v in given.items()}


def _reject_unknown(strategy: P.StrategyPlan, given: Mapping[str, Any]) -> None:
    names = [p.name for p in strategy.params]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise UsageError(
            f"strategy '{strategy.name}' has no parameter {unknown[0]!r} "
            f"(its parameters: {', '.join(names) or 'none'})"
        )
