"""SGLang's own frontend language (``sglang.lang``, unchanged) driven against a server URL.

Run with the tier venv's python (it has ``sglang``): ``python frontend_sim.py URL``.  It uses the
frontend the way its users do (``sgl.set_default_backend(sgl.RuntimeEndpoint(url))``, an
``@sgl.function`` with ``s += ...``, ``sgl.gen`` with ``stop`` and ``max_tokens``, ``s.fork``,
``sgl.select``, ``run_batch`` and a streamed run) and prints one JSON object with what came back,
for tests/sglang_tier/test_frontend_sim.py to check.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import sglang as sgl

PROMPT = 'Problem: {question}\nSolve it step by step and end with "The answer is X."\n'
CHOICES = [" 42.", " 32.", " 7."]


@sgl.function
def solve(s: Any, question: str) -> None:
    """Greedy: the worked steps up to the answer line, then the answer itself."""
    s += PROMPT.format(question=question)
    s += sgl.gen("work", max_tokens=400, temperature=0, stop="The answer is")
    s += "The answer is" + sgl.gen("answer", max_tokens=8, temperature=0, stop=".")


@sgl.function
def first_steps(s: Any, question: str) -> None:
    """Three sampled first steps of one prompt, forked, and a short capped generation."""
    s += PROMPT.format(question=question)
    forks = s.fork(3)
    for fork in forks:
        fork += sgl.gen("step", max_tokens=80, temperature=1.0, stop="\n\n")
    forks.join()
    s["steps"] = [fork["step"] for fork in forks]
    s["step_meta"] = [fork.get_meta_info("step") for fork in forks]
    s += sgl.gen("capped", max_tokens=5, temperature=1.0)


@sgl.function
def count(s: Any) -> None:
    """A greedy continuation without stop strings (streamed and not)."""
    s += "Count on: 1, 2, 3,"
    s += sgl.gen("more", max_tokens=12, temperature=0)


@sgl.function
def pick(s: Any, question: str) -> None:
    """Choose the answer among fixed choices (the default, length-normalised method)."""
    s += PROMPT.format(question=question) + "The answer is"
    s += sgl.select("answer", choices=CHOICES)


def main(url: str) -> None:
    sgl.set_default_backend(sgl.RuntimeEndpoint(url))
    out: dict[str, Any] = {}

    state = solve.run(question="What is 17 + 25?")
    out["solve"] = {
        "work": state["work"],
        "answer": state["answer"],
        "text": state.text(),
        "work_meta": state.get_meta_info("work"),
        "answer_meta": state.get_meta_info("answer"),
    }

    state = first_steps.run(question="What is 17 + 25?")
    out["forks"] = {
        "steps": state["steps"],
        "step_meta": state["step_meta"],
        "capped": state["capped"],
        "capped_meta": state.get_meta_info("capped"),
    }

    state = pick.run(question="What is 17 + 25?")
    out["select"] = {"answer": state["answer"], "meta": state.get_meta_info("answer"),
                     "text": state.text()}

    questions = ["What is 17 + 25?", "What is 38 + 47?", "What is 144 / 12?"]
    states = solve.run_batch([{"question": q} for q in questions], num_threads=3)
    out["batch"] = [{"question": q, "answer": s["answer"], "work": s["work"]}
                    for q, s in zip(questions, states, strict=True)]

    streamed = count.run(stream=True)
    pieces = list(streamed.text_iter())
    out["stream"] = {"pieces": pieces, "text": streamed.text(), "plain": count.run().text()}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
