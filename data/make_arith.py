"""Write the arithmetic demo data set: two-number additions, one JSON object per line.

    python data/make_arith.py                 # 200 items, seed 0 -> data/arith.jsonl
    python data/make_arith.py --n 50 --seed 7 --out /tmp/arith.jsonl
    python data/make_arith.py --task data/tasks/arith.json   # also a simulator task file

Each line is ``{"id": "a0001", "question": "23 + 58", "answer": "81"}``.  The operands are
drawn uniformly from ``[--low, --high]`` (default 10..99, i.e. two-digit numbers) with a seeded
`random.Random`, so a given ``--seed`` always writes the same file, byte for byte.  Duplicate
questions are skipped, so every id names a distinct problem.

The range is chosen for the default local model (SmolLM2-135M-Instruct with the few-shot prompt
of ``programs/arith_vote.ttc``): two-digit sums are hard enough that one sample is right only
some of the time, and easy enough that a majority vote over several samples helps.  This script
uses only the standard library.

``--task FILE`` also writes a simulator task for the same problems (DESIGN §6), so
``programs/arith_vote.ttc`` can be tried on the simulator: one sample is right with probability
0.35 and otherwise slips by ten either way (0.2 each) or by one (0.15 up, 0.1 down), so the
right answer is the plurality and a vote helps, as it does with the local model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["generate", "main"]

DEFAULT_OUT = Path(__file__).with_name("arith.jsonl")


def generate(n: int, *, seed: int = 0, low: int = 10, high: int = 99) -> Iterator[dict[str, str]]:
    """Yield ``n`` distinct addition problems with operands in ``[low, high]``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    span = high - low + 1
    if n > span * span:
        raise ValueError(
            f"only {span * span} distinct problems exist in [{low}, {high}], asked for {n}"
        )
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        yield {"id": f"a{len(seen):04d}", "question": f"{a} + {b}", "answer": str(a + b)}


SLIPS = ((0, 0.35), (10, 0.2), (-10, 0.2), (1, 0.15), (-1, 0.1))


def _task_json(items: Sequence[dict[str, str]]) -> str:
    """A simulator task file for ``items``, one problem per line."""
    lines = []
    for item in items:
        right = int(item["answer"])
        answers = {str(right + d): p for d, p in SLIPS}
        problem = {"id": item["id"], "question": item["question"], "answer": item["answer"],
                   "answers": answers, "steps": [1, 2], "step_tokens": [14, 20]}
        lines.append(json.dumps(problem))
    return '{"problems": [\n  ' + ",\n  ".join(lines) + "\n]}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of problems (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--low", type=int, default=10, help="smallest operand (default 10)")
    parser.add_argument("--high", type=int, default=99, help="largest operand (default 99)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT.name})"
    )
    parser.add_argument("--task", type=Path, default=None, help="also write a simulator task file")
    args = parser.parse_args(argv)
    try:
        items = list(generate(args.n, seed=args.seed, low=args.low, high=args.high))
    except ValueError as exc:
        print(f"make_arith: error: {exc}", file=sys.stderr)
        return 2
    with args.out.open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item) + "\n")
    print(f"wrote {len(items)} problems to {args.out}")
    if args.task is not None:
        args.task.write_text(_task_json(items), encoding="utf-8")
        print(f"wrote the simulator task to {args.task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
