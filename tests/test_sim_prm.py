"""What ``prm_noise`` means, measured (the AUC of step scores between right and wrong
trajectories, as documented in the README and `ttcdsl.runtime.sim.model`), and ``prm_bias``: a
reward model that systematically prefers chosen wrong answers."""

from __future__ import annotations

import bisect
import math

import pytest

from ttcdsl.runtime.sim import SimTask, TaskError
from ttcdsl.runtime.sim.model import continuation, prm_score
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

Q = "What is 17 + 25?"
PROMPT = f"Q: {Q}\n"
# The documented AUC for each noise: Phi(4 / (8 * noise * sqrt 2)), the jitter aside.
DOCUMENTED = {0.05: 1.0, 0.15: 0.99, 0.3: 0.88, 0.6: 0.72, 1.0: 0.64}


def _task(noise: float, bias: dict[str, object] | None = None) -> SimTask:
    problem: dict[str, object] = {
        "question": Q, "answer": "42", "answers": {"42": 0.5, "32": 0.3, "41": 0.2},
        "steps": [2, 3], "step_tokens": [14, 16], "prm_noise": noise,
    }
    if bias is not None:
        problem["prm_bias"] = bias
    return SimTask.from_dict({"problems": [problem]})


def _scores(task: SimTask, n: int) -> dict[str, list[float]]:
    """PRM scores of ``n`` complete samples, by final answer."""
    out: dict[str, list[float]] = {}
    for seed in range(n):
        ids = []
        for tok in continuation(task, PROMPT, seed):
            if tok.id == EOS_ID:
                break
            ids.append(tok.id)
        text = tokenizer.decode(ids)
        answer = text.rsplit("The answer is ", 1)[1].rstrip(".")
        out.setdefault(answer, []).append(prm_score(task, PROMPT + text))
    return out


def _auc(high: list[float], low: list[float]) -> float:
    """P(a score from ``high`` > one from ``low``), ties counted half."""
    low = sorted(low)
    total = 0.0
    for s in high:
        lo, hi = bisect.bisect_left(low, s), bisect.bisect_right(low, s)
        total += lo + 0.5 * (hi - lo)
    return total / (len(high) * len(low))


@pytest.mark.parametrize("noise", sorted(DOCUMENTED))
def test_the_auc_of_right_against_wrong_is_what_the_docs_say(noise: float) -> None:
    scores = _scores(_task(noise), 800)
    auc = _auc(scores["42"], scores["32"] + scores["41"])
    analytic = 0.5 * (1 + math.erf(4 / (8 * noise * math.sqrt(2)) / math.sqrt(2)))
    assert abs(auc - DOCUMENTED[noise]) < 0.03 and abs(auc - analytic) < 0.03, (auc, analytic)


def test_a_biased_prm_prefers_the_favoured_wrong_answer_and_only_it() -> None:
    scores = _scores(_task(0.1, {"favoured": ["32"], "strength": 3}), 600)
    assert _auc(scores["42"], scores["32"]) < 0.05  # the favoured wrong answer now wins
    assert _auc(scores["42"], scores["41"]) > 0.99  # the other wrong answer still loses
    level = _scores(_task(0.1, {"favoured": ["32"], "strength": 2}), 600)
    assert 0.3 < _auc(level["42"], level["32"]) < 0.7  # strength 2: level with right ones


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ({"favoured": ["42"]}, "'42' is not a wrong answer"),
        ({"favoured": ["7"]}, "'7' is not a wrong answer"),
        ({"favoured": []}, "non-empty list of wrong answers"),
        ({"favoured": ["32"], "strength": 0}, r"strength must be a number in \(0, 10\]"),
        ({"favoured": ["32"], "weight": 1}, 'unknown key "weight"'),
        ("32", "must be an object"),
    ],
)
def test_a_bad_prm_bias_is_a_one_line_task_error(bias: object, message: str) -> None:
    with pytest.raises(TaskError, match=message) as info:
        _task(0.1, bias)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
