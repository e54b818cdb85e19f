"""Write the simulator's math benchmark: a task file and the matching dataset.

    python data/make_sim_math.py                  # 30 problems, seed 0
    python data/make_sim_math.py --n 60 --seed 3 --task /tmp/m.json --data /tmp/m.jsonl
    python data/make_sim_math.py --reasoning --task data/tasks/math_reasoning.json
    python data/make_sim_math.py --prm-bias 3 --task data/tasks/math_biased.json

Outputs (byte-for-byte the same for a given ``--n`` and ``--seed``):

* ``data/tasks/math.json``: a simulator task file (DESIGN §6).  Each problem has a correct
  answer, a probability ``p`` in [0.2, 0.8] that one complete sample ends with it, and several
  plausible wrong answers (carry and borrow slips, off-by-one, a dropped factor, a misplaced
  decimal point) sharing the rest.  Harder problems (low ``p``) get more and longer steps and a
  noisier process reward model (``prm_noise``).
* ``data/sim_math.jsonl``: one ``{"id", "question", "answer"}`` line per problem, the input of
  ``ttc run --input`` and ``ttc bench --input``.

``--reasoning`` also gives every problem a thinking curve (the same problems and answers, so
the dataset is unchanged): accuracy rises from ``0.4 p`` with no thinking to a peak of
``min(0.95, p + 0.25)`` at ``300 + 900 (1 - p)`` thinking tokens (harder problems need longer),
then falls by 0.25 by three times that length (overthinking); a branch closes its thinking on
its own between 0.3 and 1.3 times the peak length.

``--prm-bias S`` makes the reward model favour each problem's most likely wrong answer with
strength ``S`` (a reward-hacked PRM; see the task format), again on the same problems.

About one problem in five is a *trap*: one wrong answer is more likely than the right one (a
systematic mistake), so majority voting converges on the wrong answer there and self-consistency
plateaus below 100%, as it does on real models.  On every other problem the right answer is the
plurality, so voting over more samples helps.  Uses only the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["generate", "main"]

HERE = Path(__file__).parent
TRAP_SHARE = 0.2

# A problem template: draws operands and returns (question, answer, plausible wrong answers).
Template = Callable[[random.Random], tuple[str, int | float, list[int | float]]]


def _add(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    a, b = r.randint(100, 899), r.randint(100, 899)
    s = a + b
    return f"What is {a} + {b}?", s, [s - 10, s + 10, s - 100, s + 1, s - 1, s + 100]


def _sub(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    a = r.randint(300, 999)
    b = r.randint(101, a - 50)
    d = a - b
    return f"What is {a} - {b}?", d, [d + 10, d - 10, d + 100, d + 1, d - 1, d - 100]


def _mul(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    a, b = r.randint(12, 99), r.randint(12, 49)
    p = a * b
    tens = a * (b // 10) * 10
    return f"What is {a} * {b}?", p, [tens, p + a, p - a, p + 10, p - 10, p + 100]


def _div(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    q, b = r.randint(12, 99), r.randint(3, 19)
    a = q * b
    return f"What is {a} / {b}?", q, [q + 1, q - 1, q + 10, q - 10, q * 10, q + 2]


def _percent(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    pct = r.choice([5, 12, 15, 25, 35, 40, 65, 75])
    base = r.randrange(40, 960, 20)
    v = pct * base / 100
    return (f"What is {pct}% of {base}?", _num(v),
            [_num(v * 10), _num(v / 10), _num(base - v), _num(v + pct), _num(v - 1), _num(v + 5)])


def _trays(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    trays, per, sold = r.randint(6, 24), r.randint(6, 18), r.randint(5, 40)
    total = trays * per - sold
    return (f"A baker fills {trays} trays with {per} rolls each and sells {sold} rolls. How many rolls are left?",
            total, [trays * per, total + 10, total - 10, total + per, total - per, total + 1])


def _train(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    speed, hours, extra = r.randint(40, 120), r.randint(2, 9), r.randint(10, 90)
    d = speed * hours + extra
    return (f"A train runs {hours} hours at {speed} km/h and then {extra} km more. How far does it go in km?",
            d, [speed * hours, d + speed, d - speed, d + 10, d - 10, d + 100])


def _ages(r: random.Random) -> tuple[str, int | float, list[int | float]]:
    kid, gap, years = r.randint(4, 15), r.randint(20, 40), r.randint(3, 12)
    s = 2 * kid + gap + 2 * years
    return (f"Sam is {kid} and his mother is {gap} years older. What is the sum of their ages in {years} years?",
            s, [s - years, s - 2 * years, kid + gap + years, s + years, s + 1, s - 1])


TEMPLATES: tuple[Template, ...] = (_add, _sub, _mul, _div, _percent, _trays, _train, _ages)


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(v, 2)


def _text(v: int | float) -> str:
    return str(_num(v))


def _spread(r: random.Random, mass: float, k: int, cap: float) -> list[float]:
    """``k`` shares of ``mass``, each below ``cap`` (rejection sampling; ``k * cap > mass``)."""
    for _ in range(10_000):
        w = [r.uniform(0.3, 1.0) for _ in range(k)]
        total = sum(w)
        shares = [mass * x / total for x in w]
        if max(shares) < cap:
            return shares
    return [mass / k] * k


def _problem(r: random.Random, index: int, trap: bool) -> dict[str, object]:
    template = TEMPLATES[index % len(TEMPLATES)]
    question, answer, wrong = template(r)
    right = _text(answer)
    pool = list(dict.fromkeys(_text(w) for w in wrong if w > 0 and _text(w) != right))
    r.shuffle(pool)
    p = round(r.uniform(0.2, 0.8), 2)
    if trap:
        # A systematic mistake: the first wrong answer beats the right one.
        p = min(p, 0.4)
        k = min(len(pool) - 1, 3)
        top = round(r.uniform(p + 0.05, min(1 - p - 0.04 * k, p + 0.3)), 2)
        rest = _spread(r, 1 - p - top, k, top)
        shares = [top, *rest]
    else:
        # The right answer is the plurality: enough wrong answers that none reaches p.
        k = min(len(pool), max(2, math.ceil((1 - p) / (0.85 * p)) + 1))
        shares = _spread(r, 1 - p, k, 0.9 * p)
    answers = {right: p}
    for w, share in zip(pool, shares):
        answers[w] = round(share, 4)
    answers[right] = round(1 - sum(v for k2, v in answers.items() if k2 != right), 4)
    hard = 1 - p  # 0.2..0.8
    lo = 1 + round(5 * hard)
    return {
        "id": f"m{index + 1:02d}",
        "question": question,
        "answer": right,
        "answers": answers,
        "steps": [lo, lo + 2 + round(2 * hard)],
        "step_tokens": [16 + round(10 * hard), 36 + round(40 * hard)],
        "prm_noise": round(r.uniform(0.05, 0.15 + 0.3 * hard), 2),
    }


def _thinking(problem: dict[str, object]) -> dict[str, object]:
    """A thinking curve for ``problem`` (module doc), a function of its answer probability."""
    answers = problem["answers"]
    assert isinstance(answers, dict)
    p = float(answers[problem["answer"]])
    peak_t = 300 + round(900 * (1 - p))
    peak = round(min(0.95, p + 0.25), 2)
    start = round(0.4 * p, 2)
    curve = [[0, start], [peak_t // 3, round(start + 0.6 * (peak - start), 2)], [peak_t, peak],
             [3 * peak_t, round(max(0.05, peak - 0.25), 2)]]
    return {"curve": curve, "natural": [round(0.3 * peak_t), round(1.3 * peak_t)]}


def generate(n: int = 30, seed: int = 0) -> list[dict[str, object]]:
    """``n`` problems; every ``round(1 / TRAP_SHARE)``-th one (offset by the seed) is a trap."""
    r = random.Random(seed)
    every = round(1 / TRAP_SHARE)
    out: list[dict[str, object]] = []
    questions: set[str] = set()
    i = 0
    while len(out) < n:
        p = _problem(r, i, trap=(i + seed) % every == every - 1)
        i += 1
        if p["question"] in questions:
            continue
        questions.add(str(p["question"]))
        out.append(p)
    return out


def _is_trap(problem: dict[str, object]) -> bool:
    answers = problem["answers"]
    assert isinstance(answers, dict)
    return bool(max(answers.values()) > answers[problem["answer"]])


def _task_json(problems: Sequence[dict[str, object]]) -> str:
    lines = [json.dumps(p, ensure_ascii=False) for p in problems]
    return '{"problems": [\n  ' + ",\n  ".join(lines) + "\n]}\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="number of problems (default 30)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--task", type=Path, default=HERE / "tasks" / "math.json", help="task file to write")
    ap.add_argument("--data", type=Path, default=HERE / "sim_math.jsonl", help="dataset to write")
    ap.add_argument("--prm-noise", type=float, default=None, metavar="X",
                    help="give every problem this reward-model noise (default: drawn per problem)")
    ap.add_argument("--reasoning", action="store_true",
                    help="give every problem a thinking curve (a reasoning task)")
    ap.add_argument("--prm-bias", type=float, default=None, metavar="S",
                    help="the PRM favours each problem's likeliest wrong answer with strength S")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    if args.prm_noise is not None and not args.prm_noise >= 0:
        ap.error(f"--prm-noise must be >= 0, got {args.prm_noise}")
    problems = generate(args.n, args.seed)
    if args.prm_noise is not None:
        for p in problems:
            p["prm_noise"] = args.prm_noise
    if args.prm_bias is not None and not 0 < args.prm_bias <= 10:
        ap.error(f"--prm-bias must be in (0, 10], got {args.prm_bias}")
    if args.prm_bias is not None:
        for p in problems:
            answers = p["answers"]
            assert isinstance(answers, dict)
            wrong = max((a for a in answers if a != p["answer"]), key=lambda a: answers[a])
            p["prm_bias"] = {"favoured": [wrong], "strength": args.prm_bias}
    if args.reasoning:
        for p in problems:
            p["thinking"] = _thinking(p)
    args.task.parent.mkdir(parents=True, exist_ok=True)
    args.task.write_text(_task_json(problems), encoding="utf-8")
    with args.data.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"id": p["id"], "question": p["question"], "answer": p["answer"]}) + "\n")
    traps = sum(1 for p in problems if _is_trap(p))
    print(f"wrote {len(problems)} problems ({traps} traps) to {args.task} and {args.data}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
