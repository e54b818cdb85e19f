"""Token-matched accuracy curves: the engine behind `ttc bench` (no command-line code here).

A benchmark runs one or more strategies over a graded dataset (every line carries ``"answer"``)
for each value of one swept parameter, ``repeats`` times, and measures accuracy against the
completion tokens spent per question: the points of a *token-matched accuracy curve*.

Promises:

* `bench_points` decides what runs before anything runs: every sweep value is converted to the
  type of the parameter of every program that has it; a program without the parameter runs once
  (and a note says so); a sweep no program can take, a value of the wrong type, or a parameter
  set twice is one `HarnessError`.  `check_dataset` rejects a dataset that cannot be graded (a line
  without ``"answer"``) or that cannot fill a program's parameters, naming the line.
* `run_bench` runs the points one after another (so each point's wall time is its own) and the
  items of a point concurrently, all requests under one shared `CapacityLimiter`; nothing is
  written to disk, but ``on_pass`` sees the results after every pass (the command writes its
  JSON there), and passes given in ``done`` (read back with `load_passes`) are not run again.
  The first item that fails stops the benchmark with a `RunError` naming the program, the sweep
  value, the repeat and the item: a benchmark with silently missing items would report a wrong
  accuracy.
* Seeds: repeat 0 uses the run seed itself, repeat ``r`` a seed derived from (run seed, r); each
  item's seed derives from the repeat seed and the item id exactly as in dataset mode, so a
  one-repeat point reproduces dataset mode (`ttcdsl.harness.dataset`) with the same seed.  Every program and
  sweep value sees the same seeds (common random numbers): differences between points are not
  seed noise, and e.g. the first 4 samples of ``n = 16`` are exactly the 4 samples of ``n = 4``;
  since request seeds follow a step's position among the generating steps (`runtime.steps`),
  different programs whose generating steps line up share their draws too.
* Statistics per point: means over repeats, and the standard error of the mean over repeats
  (``None`` with a single repeat).  Intervals are over *items* (`ttcdsl.harness.stats`): each
  item's outcome is averaged over its repeats, accuracy gets a 95% Wilson interval over the
  items and every other metric (`ttcdsl.harness.metrics`) a mean.  `compare` pairs two points on
  the same items: the accuracy difference with its paired-bootstrap interval and an exact sign
  test (McNemar's with one repeat).  Baselines (`baseline_of`): a point is compared with the
  first program's point at the same sweep value, and the first program's points with its first.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from ttcdsl import plan as P
from ttcdsl.args import bind_args, convert
from ttcdsl.errors import RunError, TTCError, UsageError
from ttcdsl.harness import stats
from ttcdsl.harness._errors import HarnessError
from ttcdsl.harness.dataset import Item, item_seed
from ttcdsl.harness.metrics import X_AXES, ItemOutcome, outcome
from ttcdsl.runtime.backend import Backend
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.seeds import derive_seed

__all__ = [
    "BenchProgram",
    "BenchReport",
    "Point",
    "PointResult",
    "RepeatResult",
    "baseline_of",
    "bench_points",
    "check_dataset",
    "compare",
    "load_passes",
    "repeat_seed",
    "run_bench",
]


@dataclass(frozen=True)
class BenchProgram:
    """One strategy to benchmark: a display label, its plan and the file it came from."""

    label: str
    plan: P.Plan
    file: str


@dataclass(frozen=True)
class Point:
    """One program at one sweep value (``value`` None: the program has no such parameter)."""

    program: BenchProgram
    value: Any = None
    text: str | None = None  # the value as the user wrote it

    def describe(self, sweep: str | None) -> str:
        if sweep is None or self.text is None:
            return self.program.label
        return f"{self.program.label} {sweep}={self.text}"


@dataclass
class RepeatResult:
    """One pass over the dataset."""

    seed: int
    items: int = 0
    correct: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    budget_exhausted: int = 0
    wall_s: float = 0.0
    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)  # by item id

    def add(self, item_id: str, o: ItemOutcome, prompt: int, cached: int, requests: int) -> None:
        self.outcomes[item_id] = o
        self.items += 1
        self.correct += int(o.correct)
        self.completion_tokens += o.completion
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.requests += requests
        self.budget_exhausted += int(o.exhausted)

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0

    def per_item(self, total: int) -> float:
        return total / self.items if self.items else 0.0


def _mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class PointResult:
    """All repeats of one point, with the summary statistics `ttc bench` reports."""

    point: Point
    repeats: list[RepeatResult] = field(default_factory=list)

    def _over(self, fn: Callable[[RepeatResult], float]) -> tuple[float, float | None]:
        return _mean_se([fn(r) for r in self.repeats])

    @property
    def accuracy(self) -> tuple[float, float | None]:
        return self._over(lambda r: r.accuracy)

    @property
    def tokens_per_item(self) -> tuple[float, float | None]:
        return self._over(lambda r: r.per_item(r.completion_tokens))

    @property
    def requests_per_item(self) -> float:
        return self._over(lambda r: r.per_item(r.requests))[0]

    @property
    def prompt_per_item(self) -> float:
        return self._over(lambda r: r.per_item(r.prompt_tokens))[0]

    @property
    def cached_share(self) -> float:
        """Cached prompt tokens over all prompt tokens (prefix reuse)."""
        prompt = sum(r.prompt_tokens for r in self.repeats)
        return sum(r.cached_tokens for r in self.repeats) / prompt if prompt else 0.0

    @property
    def exhausted_share(self) -> float:
        """Share of item runs that hit a budget (partial results)."""
        n = sum(r.items for r in self.repeats)
        return sum(r.budget_exhausted for r in self.repeats) / n if n else 0.0

    @property
    def cut_share(self) -> float:
        """Share of finished samples that were truncated (length, budget, abort)."""
        runs = self._runs()
        samples = sum(o.samples for o in runs)
        return sum(o.cut for o in runs) / samples if samples else 0.0

    def _runs(self) -> list[ItemOutcome]:
        return [o for r in self.repeats for o in r.outcomes.values()]

    def item_ids(self) -> list[str]:
        """The items every repeat of this point ran, sorted."""
        if not self.repeats:
            return []
        common = set(self.repeats[0].outcomes)
        for r in self.repeats[1:]:
            common &= set(r.outcomes)
        return sorted(common)

    def per_item(self, fn: Callable[[ItemOutcome], float | None], ids: Sequence[str] | None = None) -> list[float]:
        """``fn`` of each item, averaged over its repeats (items where it is None throughout drop out)."""
        out: list[float] = []
        for item in self.item_ids() if ids is None else ids:
            values = [v for r in self.repeats if (v := fn(r.outcomes[item])) is not None]
            if values:
                out.append(statistics.fmean(values))
        return out

    def accuracy_ci(self) -> tuple[float, float] | None:
        """The 95% Wilson interval of accuracy over items (repeats folded in)."""
        scores = self.per_item(lambda o: float(o.correct))
        return stats.wilson(statistics.fmean(scores), len(scores)) if scores else None

    def x(self, axis: str) -> float:
        """Mean compute per question on x axis ``axis``."""
        runs = self._runs()
        return statistics.fmean(o.cost(axis) for o in runs) if runs else 0.0

    def metrics(self) -> dict[str, Any]:
        """The standard metrics of `ttcdsl.harness.metrics`, averaged over items."""
        runs = self._runs()
        if not runs:
            return {}

        def mean(fn: Callable[[ItemOutcome], float | None]) -> float | None:
            values = self.per_item(fn)
            return statistics.fmean(values) if values else None

        tokens = [float(o.completion) for o in runs]
        ci = self.accuracy_ci()
        return {
            "accuracy": mean(lambda o: float(o.correct)),
            "accuracy_ci95": list(ci) if ci else None,
            "single_sample_accuracy": mean(lambda o: o.single),
            "pass_at_k": mean(lambda o: float(o.any_right)),
            "majority_at_k": mean(lambda o: float(o.majority)),
            "tie_rate": mean(lambda o: float(o.tie)),
            "abstention_rate": mean(lambda o: float(o.abstained)),
            "samples_per_item": mean(lambda o: float(o.samples)),
            "tokens_mean": statistics.fmean(tokens),
            "tokens_p90": stats.percentile(tokens, 0.9),
            "budget_cut_share": self.cut_share,
        }

    @property
    def wall_s(self) -> float:
        return self._over(lambda r: r.wall_s)[0]

    def to_json(self, sweep: str | None) -> dict[str, Any]:
        acc, acc_se = self.accuracy
        tok, tok_se = self.tokens_per_item
        return {
            "program": self.point.program.label,
            "file": self.point.program.file,
            "strategy": self.point.program.plan.entry,
            "param": sweep if self.point.text is not None else None,
            "value": self.point.value,
            "value_text": self.point.text,
            "accuracy": acc,
            "accuracy_stderr": acc_se,
            "completion_tokens_per_item": tok,
            "completion_tokens_per_item_stderr": tok_se,
            "prompt_tokens_per_item": self.prompt_per_item,
            "requests_per_item": self.requests_per_item,
            "cached_share": self.cached_share,
            "budget_exhausted_share": self.exhausted_share,
            "wall_s": self.wall_s,
            "metrics": self.metrics(),
            "x": {axis: self.x(axis) for axis in X_AXES},
            "repeats": [
                {
                    "seed": r.seed, "items": r.items, "correct": r.correct, "accuracy": r.accuracy,
                    "completion_tokens": r.completion_tokens, "prompt_tokens": r.prompt_tokens,
                    "cached_tokens": r.cached_tokens, "requests": r.requests,
                    "budget_exhausted": r.budget_exhausted, "wall_s": round(r.wall_s, 4),
                    "outcomes": {k: o.to_json() for k, o in sorted(r.outcomes.items())},
                }
                for r in self.repeats
            ],
        }


@dataclass
class BenchReport:
    """Everything a benchmark measured, in the order the points ran."""

    sweep: str | None
    dataset: str
    items: int
    repeats: int
    seed: int
    results: list[PointResult]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    x_axis: str = "completion"
    provenance: dict[str, Any] = field(default_factory=dict)

    def comparisons(self) -> list[dict[str, Any]]:
        """Every point against its baseline (`baseline_of`), paired on the items both ran."""
        out = []
        for r in self.results:
            base = baseline_of(r, self.results)
            if base is not None:
                out.append({"point": r.point.describe(self.sweep), "baseline": base.point.describe(self.sweep),
                            **compare(base, r)})
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "dataset": self.dataset,
            "items": self.items,
            "repeats": self.repeats,
            "seed": self.seed,
            "notes": self.notes,
            "wall_s": round(self.wall_s, 4),
            "x_axis": self.x_axis,
            "x_axes": X_AXES,
            "intervals": "95% Wilson over items for accuracy (repeats averaged per item); "
                         "differences: paired bootstrap over items, exact sign test",
            "provenance": self.provenance,
            "points": [r.to_json(self.sweep) for r in self.results],
            "comparisons": self.comparisons(),
        }


def baseline_of(r: PointResult, results: Sequence[PointResult]) -> PointResult | None:
    """The point ``r`` is compared with: the first program's point at the same sweep value
    (or its only point), or for the first program's own points its first point; None for the
    baseline itself."""
    if not results:
        return None
    first = results[0].point.program
    mine = [x for x in results if x.point.program is first]
    if r.point.program is first:
        return None if r is mine[0] else mine[0]
    same = [x for x in mine if x.point.text == r.point.text and x.point.text is not None]
    base = same[0] if same else (mine[0] if len(mine) == 1 or r.point.text is None else None)
    return base


def compare(a: PointResult, b: PointResult) -> dict[str, Any]:
    """Accuracy of ``b`` minus ``a`` on the items both ran: the difference, its 95% paired-bootstrap
    interval, and the exact sign test (items ``b`` won, lost, and the two-sided p-value)."""
    ids = sorted(set(a.item_ids()) & set(b.item_ids()))
    if not ids:
        return {"items": 0, "diff": None, "diff_ci95": None, "wins": 0, "losses": 0, "p_value": None}
    xa = a.per_item(lambda o: float(o.correct), ids)
    xb = b.per_item(lambda o: float(o.correct), ids)
    wins, losses, p = stats.sign_test(xa, xb)
    return {"items": len(ids), "diff": statistics.fmean(xb) - statistics.fmean(xa),
            "diff_ci95": list(stats.paired_bootstrap(xa, xb)), "wins": wins, "losses": losses, "p_value": p}


def bench_points(programs: Sequence[BenchProgram], sweep: str | None, values: Sequence[str],
                 given: Mapping[str, Any]) -> tuple[list[Point], list[str]]:
    """The points to run, program by program in sweep order, and notes for the user.

    ``sweep`` names the swept parameter (None: no sweep) and ``values`` its values as text."""
    for name in given:
        if not any(name in _param_names(p) for p in programs):
            raise HarnessError("{arg} {name}: no program has a parameter '{name}' ({known})",
                               name=name, known=_known(programs))
    if sweep is None:
        return [Point(p) for p in programs], []
    if sweep in given:
        raise HarnessError("{sweep} {name} and {arg} {name}=... both set '{name}': drop one of them",
                           name=sweep)
    if not any(sweep in _param_names(p) for p in programs):
        raise HarnessError("{sweep} {name}: no program has a parameter '{name}' ({known})",
                           name=sweep, known=_known(programs))
    points: list[Point] = []
    notes: list[str] = []
    for p in programs:
        spec = next((q for q in p.plan.strategy().params if q.name == sweep), None)
        if spec is None:
            points.append(Point(p))
            notes.append(f"{p.label} has no parameter '{sweep}': it runs once, with its defaults")
            continue
        points += [Point(p, _sweep_value(spec, v), v) for v in values]
    return points, notes


def _sweep_value(spec: P.ParamSpec, text: str) -> Any:
    try:
        return convert(spec, text, where="")
    except UsageError as exc:
        # With an empty `where`, convert's message is " NAME=VALUE: expected ...".
        raise HarnessError("{sweep} {detail}", detail=str(exc).lstrip()) from None


def _param_names(program: BenchProgram) -> list[str]:
    return [q.name for q in program.plan.strategy().params]


def _known(programs: Sequence[BenchProgram]) -> str:
    return "parameters: " + "; ".join(f"{p.label}: {', '.join(_param_names(p)) or 'none'}" for p in programs)


def check_dataset(points: Sequence[Point], items: Sequence[Item], given: Mapping[str, Any],
                  sweep: str | None, source: str) -> None:
    """Every item can be graded and fills every point's parameters (else one `HarnessError`);
    ``source`` is the dataset's name in messages."""
    if not items:
        raise HarnessError("{input} {path}: no items to benchmark", path=source)
    graded = [it for it in items if "answer" in it.fields]
    if not graded:
        raise HarnessError(
            "{input} {path}: no line has an \"answer\" field, so accuracy cannot be measured; "
            "add \"answer\" to every line", path=source,
        )
    missing = next((it for it in items if "answer" not in it.fields), None)
    if missing is not None:
        raise HarnessError(
            "{input} {path}:{line}: item {item!r} has no \"answer\" field, so it cannot be "
            "graded; add one (or drop the line)", path=source, line=missing.line, item=missing.id,
        )
    seen: set[str] = set()
    for pt in points:
        if pt.program.label in seen:
            continue
        seen.add(pt.program.label)
        for it in items:
            _bind(pt, it, given, sweep)


def _bind(point: Point, item: Item, given: Mapping[str, Any], sweep: str | None) -> dict[str, Any]:
    strategy = point.program.plan.strategy()
    names = {p.name for p in strategy.params}
    values = {k: v for k, v in given.items() if k in names}
    values.update((k, v) for k, v in item.fields.items() if k in names)
    if sweep is not None and point.text is not None:
        values[sweep] = point.value
    try:
        return bind_args(strategy, values, where=f"line {item.line}:")
    except UsageError as exc:
        raise HarnessError("{input_line} {line} (id {item}), {program}: {detail}", line=item.line,
                           item=item.id, program=point.program.label, detail=exc) from None


def repeat_seed(seed: int, repeat: int) -> int:
    """The run seed of repeat ``repeat`` (repeat 0 keeps ``seed``)."""
    if repeat == 0:
        return seed
    return derive_seed(seed, "repeat", repeat)


async def run_bench(
    points: Sequence[Point],
    backend: Backend,
    items: Sequence[Item],
    *,
    sweep: str | None,
    given: Mapping[str, Any],
    options: RunOptions,
    repeats: int = 1,
    items_in_flight: int = 8,
    on_point: Callable[[Point, int], None] | None = None,
    on_item: Callable[[Point, int], None] | None = None,
    on_pass: Callable[[list[PointResult]], None] | None = None,
    done: Mapping[tuple[str, str | None, int], RepeatResult] | None = None,
) -> list[PointResult]:
    """Run every point ``repeats`` times over ``items`` on an entered backend.

    ``on_point(point, repeat)`` is called when a pass starts, ``on_item(point, repeat)`` after
    each item (for progress bars).  ``options.seed`` (default 0) is the run seed."""
    if repeats < 1:
        raise HarnessError("{repeats} must be >= 1, got {n}", n=repeats)
    seed = options.seed if options.seed is not None else 0
    limiter = options.limiter or anyio.CapacityLimiter(options.concurrency)
    results: list[PointResult] = []
    for point in points:
        pr = PointResult(point)
        results.append(pr)
        for r in range(repeats):
            earlier = (done or {}).get((point.program.label, point.text, repeat_seed(seed, r)))
            if earlier is not None:
                pr.repeats.append(earlier)
                continue
            if on_point is not None:
                on_point(point, r)
            pr.repeats.append(await _one_pass(
                point, backend, items, sweep=sweep, given=given, repeat=r,
                options=replace(options, seed=repeat_seed(seed, r), limiter=limiter, trace=None),
                items_in_flight=items_in_flight, on_item=on_item,
            ))
            if on_pass is not None:
                on_pass(results)
    return results


_PASS_COUNTS = ("items", "correct", "completion_tokens", "prompt_tokens", "cached_tokens", "requests",
                "budget_exhausted")


def load_passes(data: Mapping[str, Any], items: Sequence[Item]) -> dict[tuple[str, str | None, int], RepeatResult]:
    """The finished passes of a bench JSON written earlier (`BenchReport.to_json`), keyed by
    (program label, sweep value as written, repeat seed); only passes over exactly ``items``."""
    wanted = sorted(it.id for it in items)
    out: dict[tuple[str, str | None, int], RepeatResult] = {}
    try:
        for p in data["points"]:
            text = None if p["param"] is None else p["value_text"]
            for r in p["repeats"]:
                outcomes = {k: ItemOutcome(**o) for k, o in r["outcomes"].items()}
                if sorted(outcomes) != wanted:
                    continue
                rep = RepeatResult(seed=r["seed"], wall_s=r["wall_s"], outcomes=outcomes,
                                   **{k: r[k] for k in _PASS_COUNTS})
                out[(p["program"], text, r["seed"])] = rep
    except (KeyError, TypeError) as exc:
        raise HarnessError("{json} cannot resume from this file: it is not a ttc bench JSON ({detail})",
                           detail=exc) from None
    return out


async def _one_pass(point: Point, backend: Backend, items: Sequence[Item], *, sweep: str | None,
                    given: Mapping[str, Any], repeat: int, options: RunOptions, items_in_flight: int,
                    on_item: Callable[[Point, int], None] | None) -> RepeatResult:
    assert options.seed is not None
    run_seed = options.seed
    out = RepeatResult(seed=run_seed)
    gate = anyio.CapacityLimiter(max(1, items_in_flight))
    plan = point.program.plan

    async def one(item: Item) -> None:
        args = _bind(point, item, given, sweep)
        async with gate:
            try:
                result = await run_plan(plan, backend, args, replace(options, seed=item_seed(run_seed, item.id)))
            except TTCError as exc:
                raise RunError(
                    f"bench stopped: {point.describe(sweep)}, repeat {repeat + 1}, item {item.id} "
                    f"(line {item.line}): {exc}"
                ) from None
        u = result.usage
        out.add(item.id, outcome(result, item.fields["answer"]), u.prompt_tokens, u.cached_tokens, u.requests)
        if on_item is not None:
            on_item(point, repeat)

    t0 = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
    except BaseExceptionGroup as eg:
        raise _first(eg) from None
    out.wall_s = time.monotonic() - t0
    return out


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        inner = [e for e in group.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        group = (inner or list(group.exceptions))[0]
    return group
