"""`ttc run` against a scripted misbehaving SGLang-shaped server (tests/misbehaving.py, on
127.0.0.1, stopped by each test): stalls on every route including start-up, a proxy's HTML,
redirect loops, impossible token counts.  Every case ends in exit 1 with one error line (located
at the step when a step failed) within its deadline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from misbehaving import serving

from ttcdsl.cli import main

REPO = Path(__file__).resolve().parents[1]
TASK = str(REPO / "data" / "tasks" / "math.json")
SC = str(REPO / "programs" / "self_consistency.ttc")
STEP = f"{SC}:8:14: error: sample"


def meta(**changes: Any) -> Any:
    def tamper(body: Any) -> Any:
        for item in body if isinstance(body, list) else [body]:
            item["meta_info"].update(changes)
        return body

    return tamper


def run(url: str, *extra: str) -> list[str]:
    return ["run", SC, "--url", url, "--arg", "question=What is 17 + 25?", "--arg", "n=2", *extra]


@pytest.mark.parametrize("route", ["/health", "/model_info", "/generate"])
def test_a_stall_on_any_route_ends_at_the_timeout(
    capsys: pytest.CaptureFixture[str], route: str
) -> None:
    with serving({route: "stall"}, TASK) as url:
        t0 = time.monotonic()
        assert main(run(url, "--timeout", "1")) == 1
        assert time.monotonic() - t0 < 3
    assert capsys.readouterr().err == "ttc: error: the run timed out after 1 s (raise --timeout)\n"


@pytest.mark.parametrize(("script", "start"), [
    ({"/generate": "html"},
     f"{STEP} failed: SGLang server at <URL> answered POST /generate with text/html, not JSON or an "
     "event stream (is a proxy in the way?): <!doctype html>"),
    ({"/model_info": "html"}, "ttc: error: the server at <URL> sent a model info SGLang would not send"),
    ({"/health": "redirect"},
     "ttc: error: cannot reach a SGLang server at <URL> (tried GET /health: redirects that never end "
     "(<URL>/health -> ...); give the final URL)"),
    ({"/generate": "redirect"},
     f"{STEP} failed: SGLang at <URL> answered POST /generate with redirects that never end "
     "(<URL>/generate -> ...); give the final URL"),
    ({"/generate": meta(prompt_tokens=-5)},
     f"{STEP}: the backend broke the protocol: it reported -5 prompt tokens of which 0 cached "
     "(expected 0 <= cached <= prompt)"),
    ({"/generate": meta(cached_tokens=10**6)},
     f"{STEP}: the backend broke the protocol: it reported"),
    ({"/generate": meta(completion_tokens=10**12)}, f"{STEP}: the backend broke the protocol:"),
])
def test_a_misbehaving_server_is_one_clear_error(
    capsys: pytest.CaptureFixture[str], script: dict[str, Any], start: str
) -> None:
    with serving(script, TASK) as url:
        assert main(run(url, "--timeout", "20")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0].startswith(start.replace("<URL>", url)), err
