"""The benchmark's SGLang-frontend client: the same workloads written in ``sglang.lang``.

    $TTC_SGLANG_HOME/venv/bin/python bench/frontend.py URL SPEC.json

Run by the python of the real-SGLang tier's venv (it has ``sglang``; it has no ttcdsl, so this
file imports only the standard library, ``requests`` and ``sglang``).  ``SPEC.json`` is what
`bench.workloads` writes for one run (the prompt template, counts and sampling settings, all
read from the ``.ttc`` program the ttcdsl client runs).  The programs are written the way the
frontend is meant to be used, and as fast as it allows:

* ``self_consistency``: ``s += prompt``, ``s.fork(n)``, one ``gen`` per fork (each fork runs in
  its own executor thread, so all n are in flight at once), ``join``, majority vote on the last
  number of each chain, in Python.
* ``dataset``: the same function over every question with ``run_batch(..., num_threads=T)``.
* ``beam_search``: fork ``width * branch`` first steps (``gen`` with ``stop`` at the step
  separator), score every beam with the server's reward model, keep the best ``width``, then up
  to ``depth`` rounds of forking each open beam ``branch`` times.  The frontend has no reward
  primitive, so scoring is what a frontend user writes: one plain ``POST /classify`` with the
  texts of the beams (``requests``).  A beam whose step did not end at the separator (EOS or
  ``max_tokens``) is finished and passes through, keeping its score, as in ttcdsl.

The workload alone (not the imports or ``RuntimeEndpoint`` start-up) is timed: wall with
``time.perf_counter``, CPU of the whole process (every thread) with ``time.process_time``.
Prints one JSON object: ``wall_s``, ``cpu_s``, ``answers``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from typing import Any

import requests
import sglang as sgl

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in ``text`` without thousands separators or a trailing ``.0``."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def majority(chains: list[str]) -> str | None:
    votes = Counter(v for v in map(last_number, chains) if v is not None)
    return votes.most_common(1)[0][0] if votes else None


def make_programs(spec: dict[str, Any], url: str) -> dict[str, Any]:
    """The ``@sgl.function`` programs for ``spec`` (its prompt text is baked in, as a user
    would write it, so ``run_batch``'s prefix tracing sees the constant part)."""
    head, _, tail = spec["prompt"].partition("{question}")
    max_tokens, temperature = spec["max_tokens"], spec["temperature"]

    @sgl.function
    def self_consistency(s: Any, question: str, forks: int) -> None:
        # (`forks`, not `n`: SglFunction.run takes `n` itself, a sampling parameter.)
        s += head + question + tail
        group = s.fork(forks)
        group += sgl.gen("chain", max_tokens=max_tokens, temperature=temperature)
        group.join()
        s["answer"] = majority(s["chain"])

    step = spec.get("step")

    def grow(beams: list[Any], count: int) -> list[tuple[Any, Any]]:
        """Fork each beam ``count`` times and write one step in every fork (concurrently)."""
        groups = [beam.fork(count) for beam in beams]
        for group in groups:
            group += sgl.gen("step", max_tokens=max_tokens, temperature=temperature, stop=step)
        return [(group, fork) for group in groups for fork in group.states]

    def settle(fork: Any) -> tuple[Any, bool]:
        """Wait for the fork's step; put the separator back if the step ended there."""
        reason = fork.get_meta_info("step")["finish_reason"]
        open_step = reason.get("type") == "stop" and reason.get("matched") == step
        if open_step:
            fork += step
        return fork, not open_step

    def scores(texts: list[str]) -> list[float]:
        resp = requests.post(url + "/classify", json={"text": texts}, timeout=600)
        resp.raise_for_status()
        return [float(item["embedding"][0]) for item in resp.json()]

    @sgl.function
    def beam_search(s: Any, question: str, width: int, branch: int, depth: int) -> None:
        s += head + question + tail
        pool = [(s, False, 0.0)]
        count = width * branch
        groups: list[Any] = []
        for _ in range(depth + 1):
            grown = grow([beam for beam, done, _ in pool if not done], count)
            groups += [g for g, _ in grown]
            fresh = [settle(fork) for _, fork in grown]
            new_scores = scores([fork.text() for fork, _ in fresh])
            pool = [p for p in pool if p[1]] + [(f, d, sc) for (f, d), sc in zip(fresh, new_scores)]
            pool = sorted(pool, key=lambda p: p[2], reverse=True)[:width]
            count = branch
            if all(done for _, done, _ in pool):
                break
        best = pool[0][0]
        s["answer"] = last_number(best.text())
        for group in {id(g): g for g in groups}.values():
            for state in group.states:
                state.stream_executor.end()

    return {"self_consistency": self_consistency, "beam_search": beam_search}


def run(spec: dict[str, Any], programs: dict[str, Any]) -> list[Any]:
    kind = spec["kind"]
    questions = spec["questions"]
    if kind == "self_consistency":
        return [programs[kind].run(question=q, forks=spec["n"])["answer"] for q in questions]
    if kind == "dataset":
        states = programs["self_consistency"].run_batch(
            [{"question": q, "forks": spec["n"]} for q in questions], num_threads=spec["threads"])
        return [state["answer"] for state in states]
    if kind == "beam_search":
        return [programs[kind].run(question=q, width=spec["width"], branch=spec["branch"],
                                   depth=spec["depth"])["answer"] for q in questions]
    raise SystemExit(f"frontend: unknown workload kind {kind!r}")


def main(url: str, spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    sgl.set_default_backend(sgl.RuntimeEndpoint(url))
    programs = make_programs(spec, url)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    answers = run(spec, programs)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "answers": answers}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python bench/frontend.py URL SPEC.json")
    main(sys.argv[1], sys.argv[2])
