"""Multi-worker serving through a real sglang-router (0.3.2) in front of `ttc sim serve` workers.

Each test starts two simulator workers, a real router with ``--policy cache_aware`` in front of
them, and a third simulator that only serves the PRM (``--reward-url`` points at it directly).
Programs run through the ``ttc`` command line, as a user would run them, with ``--trace``; the
workers' ``/sim/stats`` counters and the router's request log show where the requests went.

What the tests pin down:

* routing: the router's cache-aware tree keys requests by their text (``input_ids`` joined by
  spaces); forks are sent after a warm-up of their exact prefix, so they match it completely and
  land on the worker that prefilled it, and every fork is served from the cache except its last
  prompt token.  The backend detects the router and never posts ``/abort_request``.
* rewards through the router: without ``--reward-url`` the backend asks the router's
  ``/v1/embeddings`` (it has no ``/classify``), which forwards to a worker's ``/v1/embeddings``;
  the scores are the ones the PRM server's ``/classify`` gives the same texts.
* failover: SIGKILL of the worker serving a run.  Plain requests it held have no answer started,
  so the router retries them on its own; streams it was serving are cut mid-response (the router
  ends its chunked body early), the backend reports a lost connection
  (`TransientBackendError`) and the executor retries.  The router's own retries (5 per request)
  find the dead worker refusing connections until its circuit breaker opens (10 failures), then
  route to the survivor; the run completes.  The survivor starts cold, so the prefixes that
  lived on the dead worker are prefilled again.  The router's health check (every 60 s) plays
  no part.  With a single request in flight the breaker does not open within one request's
  retries and the router answers HTTP 500 ``call_upstream_request_error``; the backend takes
  that as transient in router mode, so the next attempts open the breaker and the run still
  completes.  Start-up through a router whose ``/get_model_info`` worker is dead fails (the
  router proxies that route to one worker, without failover, until its health check drops the
  worker) with a message naming the router's error.

Skipped when ``sglang_router`` is not installed (``pip install sglang-router==0.3.2``, part of
the ``test`` extra).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ttcdsl.errors import BackendUnavailable
from ttcdsl.launch import (
    TTC,
    ServerGroup,
    ServerProcess,
    free_port,
    get_json,
    router_argv,
    router_env,
    sim_argv,
)
from ttcdsl.runtime.backends.sglang import SGLangBackend

pytest.importorskip(
    "sglang_router",
    reason="sglang-router is not installed: pip install sglang-router==0.3.2 (in the `test` extra)",
)

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "data" / "tasks" / "demo.json"
BEAM = REPO / "programs" / "beam_search.ttc"
# A demo question whose beam steps are short next to its prompt, so every continuation shares
# more than the router's cache_threshold (0.3) of its text with its parent's request.
QUESTION = "What is 144 / 12?"
# Seconds per uncached prompt token, per generated token: a fork of ~16-32 tokens takes
# 0.2-0.4 s, the whole run a few seconds, long enough to kill a worker in the middle.
SLOW = "0.0005,0.01"


@dataclass
class Cluster:
    router: ServerProcess
    workers: list[ServerProcess]
    reward: ServerProcess
    tmp: Path

    def stats(self) -> dict[str, dict[str, int]]:
        """``/sim/stats`` of every worker still alive, by URL."""
        return {w.url: get_json(w.url + "/sim/stats") for w in self.workers if w.alive()}

    def run_argv(self, trace: Path, *args: str) -> list[str]:
        return [
            *TTC, "run", str(BEAM), "--url", self.router.url, "--reward-url", self.reward.url,
            "--arg", f"question={QUESTION}", "--arg", "depth=3", "--seed", "1",
            "--json", "--trace", str(trace), *args,
        ]


MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """``make_cluster(latency=None, workers=2)``: simulator workers (plus one PRM server) and a
    real router in front of the workers; all stopped when the test ends, pass or fail."""
    with ServerGroup(tmp_path / "logs") as group:

        def make(latency: str | None = None, workers: int = 2) -> Cluster:
            names = [(f"w{i + 1}", latency) for i in range(workers)] + [("prm", None)]
            sims = []
            for name, lat in names:
                port = free_port()
                sims.append(group.launch(name, sim_argv(port, TASK, latency=lat),
                                         f"http://127.0.0.1:{port}"))
            for sim in sims:
                sim.wait_ready()
            *serving, reward = sims
            port = free_port()
            router = group.start(
                "router", router_argv(port, [w.url for w in serving]), f"http://127.0.0.1:{port}",
                ready="/readiness", env=router_env(),
            )
            _wait_healthy(router.url, len(serving))
            return Cluster(router=router, workers=serving, reward=reward, tmp=tmp_path)

        yield make


def _wait_healthy(url: str, count: int, timeout: float = 30.0) -> None:
    """Until the router lists ``count`` healthy workers (it registers them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = get_json(url + "/workers").get("workers", [])
        if sum(1 for w in listed if w.get("is_healthy")) >= count:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"sglang-router at {url} lists {listed} after {timeout:g} s", pytrace=False)
        time.sleep(0.1)  # polling the router's state, not waiting for an effect


def _read_trace(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finished(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], out: str,
              err: str) -> dict[str, Any]:
    assert proc.returncode == 0, f"ttc run failed ({proc.returncode}):\n{err[-3000:]}"
    result: dict[str, Any] = json.loads(out)
    assert result["result"]["branches"], result
    return result


def _router_log(cluster: Cluster) -> str:
    """The router's log without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", cluster.router.log.read_text(errors="replace"))


def test_forks_land_on_the_worker_that_prefilled_their_prefix(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    trace = cluster.tmp / "trace.jsonl"
    done = subprocess.run(cluster.run_argv(trace), capture_output=True, text=True, timeout=120)
    _finished(done, done.stdout, done.stderr)
    records = _read_trace(trace)
    generates = [r for r in records if r["kind"] == "generate"]
    warms = [r for r in records if r["kind"] == "warm"]
    assert len(warms) == 1 and not any("error" in r for r in records)
    prompt_len = warms[0]["input_tokens"]
    forks = [r for r in generates if r["node"] == warms[0]["node"]]
    assert len(forks) == 16  # width * branch
    # Every fork of the warmed prompt recomputed only its last prompt token.
    assert [r.get("cached_tokens", 0) for r in forks] == [prompt_len - 1] * len(forks)

    stats = cluster.stats()
    # The least a server can recompute: the last token of every request whose prefix it
    # holds.  Forks follow the warm-up, continuations follow their parent (whose prompt and
    # output the worker cached when the parent finished).
    lower_bound = sum(r["input_tokens"] - 1 for r in generates)
    cached = sum(s["cached_tokens"] for s in stats.values())
    assert cached >= lower_bound
    assert cached == sum(r.get("cached_tokens", 0) for r in generates + warms)
    # One worker prefilled the prompt and served every fork and continuation; the other saw at
    # most the tokenize fallback (the router has no tokenizer: a prefill-only /generate of the
    # prompt's text, routed by that text rather than by token ids).
    serving = max(stats.values(), key=lambda s: s["requests"])
    assert serving["warm_requests"] >= 1
    assert serving["requests"] >= 1 + len(generates)
    tokenizes = sum(1 for r in records if r["kind"] == "tokenize")
    assert sum(s["requests"] for s in stats.values()) - serving["requests"] <= tokenizes

    # Router mode was detected, and nothing was posted to /abort_request through it.
    assert _detects_router(cluster.router.url) is True
    assert _detects_router(cluster.workers[0].url) is False
    log = _router_log(cluster)
    assert "uri=/generate" in log and "/abort_request" not in log


def test_prm_scores_go_through_the_routers_embeddings_route(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    trace = cluster.tmp / "trace.jsonl"
    argv = cluster.run_argv(trace, "--arg", "depth=1")
    at = argv.index("--reward-url")
    del argv[at : at + 2]  # rewards through the router too
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    result = _finished(done, done.stdout, done.stderr)

    rewards = [r for r in _read_trace(trace) if r["kind"] == "reward"]
    assert rewards and not any("error" in r for r in rewards)
    stats = cluster.stats()
    assert sum(s["reward_requests"] for s in stats.values()) == len(rewards)
    assert get_json(cluster.reward.url + "/sim/stats")["reward_requests"] == 0
    log = _router_log(cluster)
    assert "uri=/v1/embeddings" in log and "/classify" not in log
    # Each returned branch carries the score the PRM gives its text directly.
    branches = result["result"]["branches"]
    texts = [_prompt(QUESTION) + b["text"] for b in branches]
    direct = _post_json(cluster.reward.url + "/classify", {"text": texts})
    assert [b["score"] for b in branches] == pytest.approx([d["embedding"][0] for d in direct])


def _prompt(question: str) -> str:
    """The beam-search program's prompt for ``question`` (programs/beam_search.ttc)."""
    return f"{question}\nSolve step by step; separate steps with a blank line.\n"


def _post_json(url: str, body: Any) -> Any:
    async def post() -> Any:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    return anyio.run(post)


def test_a_worker_killed_with_forks_in_flight_fails_over_and_the_run_completes(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(latency=SLOW)
    trace = cluster.tmp / "trace.jsonl"
    done, out, err = _run_and_kill(cluster, cluster.run_argv(trace), in_flight=4)
    _finished(done, out, err)

    records = _read_trace(trace)
    # Plain (non-streamed) requests the dead worker held had no answer started, so the router
    # retries them upstream itself; a request whose answer was under way fails at the client.
    # Either way every fork of the run finished, and each failed attempt was retried under the
    # same request id until one succeeded.
    failed = [r for r in records if "error" in r]
    succeeded = {r["rid"] for r in records if r["kind"] == "generate" and "error" not in r}
    assert len(succeeded) == len({r["rid"] for r in records if r["kind"] == "generate"})
    for r in failed:
        assert r["kind"] == "generate" and "SGLang" in r["error"], r
        assert r["rid"] in succeeded, r
    # The survivor took over; the backend never tried /abort_request for the cut streams.
    (survivor,) = cluster.stats().values()
    assert survivor["requests"] > 0
    assert "/abort_request" not in _router_log(cluster)


def test_a_worker_killed_under_a_lone_request_fails_over_and_the_run_completes(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(latency=SLOW)
    trace = cluster.tmp / "trace.jsonl"
    argv = cluster.run_argv(trace, "--arg", "width=1", "--arg", "branch=1", "--arg", "depth=6")
    done, out, err = _run_and_kill(cluster, argv, in_flight=1)
    _finished(done, out, err)


def test_start_up_through_a_router_whose_worker_died_names_the_routers_error(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(workers=1)
    cluster.workers[0].kill()
    with pytest.raises(BackendUnavailable) as failed:
        _detects_router(cluster.router.url)
    assert "does not look like SGLang" not in str(failed.value)
    assert "failed to describe its model" in str(failed.value) and "/workers" in str(failed.value)


def _run_and_kill(cluster: Cluster, argv: list[str],
                  in_flight: int) -> tuple[subprocess.Popen[str], str, str]:
    """Run ``argv``; SIGKILL the worker serving it once it has ``in_flight`` generations
    running; return the finished process and its output."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            _busy_worker(cluster, run, in_flight).kill()
            out, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    return run, out, err


def _busy_worker(cluster: Cluster, run: subprocess.Popen[str], in_flight: int,
                 timeout: float = 60.0) -> ServerProcess:
    """The worker with ``in_flight`` generations running (beyond the run's tokenize request)."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in cluster.workers:
            stats = get_json(worker.url + "/sim/stats")
            if stats["in_flight"] >= in_flight and stats["requests"] >= 2:
                return worker
        if run.poll() is not None:
            pytest.fail("the run ended before any worker had forks in flight", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"no worker had forks in flight after {timeout:g} s", pytrace=False)
        time.sleep(0.02)  # polling the workers' counters


def _detects_router(url: str) -> bool:
    async def detect() -> bool:
        async with SGLangBackend(url) as backend:
            return backend.router

    return anyio.run(detect)
