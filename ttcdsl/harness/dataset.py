"""Dataset mode: run a strategy on every line of a JSONL file, concurrently, resumably.

The engine of ``ttc run --input IN.jsonl --output OUT.jsonl``; it takes parsed values (a plan,
an entered backend, `RunOptions`, the given arguments) and knows nothing of the command line.

Promises:

* Every input line is validated before any work starts; a malformed line is reported with its
  line number (`HarnessError`), never dropped.  An item's id is its ``"id"`` field (else its line
  number); ids must be unique.
* The item's fields fill the strategy's parameters by name; ``given`` values supply the rest.
* Each finished item is appended to the output as one JSON line (the `ttc run --json` object plus
  ``"id"``, and ``"answer"``/``"correct"`` when the input has an answer) and flushed at once, so a
  killed run loses no finished item.  ``resume=True`` skips ids already in the output (a torn last
  line from a killed run is cut off first) and never writes an id twice; the lines already there
  count towards the summary's ``all_graded``/``all_correct`` (accuracy over the whole output).
* With ``provenance`` given (`ttcdsl.provenance`), every line carries it, with the item's seed.
* An output that cannot hold results is refused before any work, by name: the input file itself,
  a directory, a path under a regular file.  A write that fails later (a full disk) stops the run
  with one `HarnessError`; every line written before it stays whole.  Lines being resumed are read
  as bytes, so an output that is not UTF-8 (or not JSON lines) is refused, never half-read.
* Items run concurrently (``items_in_flight``) and share one request limiter; each item's seed is
  derived from (run seed, item id).  An item that fails is reported (one line) and not written,
  so a later resumed run retries it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import anyio

from ttcdsl import jsonsafe
from ttcdsl import plan as P
from ttcdsl.args import bind_args
from ttcdsl.errors import TTCError, UsageError
from ttcdsl.harness._errors import HarnessError
from ttcdsl.runtime.aggregate import extract, normalize_number
from ttcdsl.runtime.backend import Backend, first_failure
from ttcdsl.runtime.executor import RunOptions, run_plan
from ttcdsl.runtime.seeds import derive_seed
from ttcdsl.runtime.values import Answer, Branches, RunResult, result_to_json

__all__ = ["DatasetSummary", "Item", "is_correct", "item_seed", "no_answer", "read_items", "run_dataset"]


@dataclass(frozen=True)
class Item:
    """One dataset line: its id, its line number in the file and its JSON fields."""

    id: str
    line: int
    fields: dict[str, Any]


@dataclass
class DatasetSummary:
    """Counts of a dataset run so far (``on_item`` sees it grow) and, at the end, its wall time."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    graded: int = 0
    correct: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    # Graded lines already in the output before this run (``resume``) and how many were right.
    prior_graded: int = 0
    prior_correct: int = 0
    empty: int = 0  # results with no answer (a vote nobody finished, no number in the text)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.graded if self.graded else None

    @property
    def all_graded(self) -> int:
        return self.prior_graded + self.graded

    @property
    def all_correct(self) -> int:
        return self.prior_correct + self.correct

    @property
    def all_accuracy(self) -> float | None:
        """Accuracy over every graded line of the output (earlier runs' lines included)."""
        return self.all_correct / self.all_graded if self.all_graded else None


def read_items(path: str | Path) -> list[Item]:
    """Every item of a JSONL file, validated (one `HarnessError` naming the first bad line)."""
    try:
        kind = Path(path).stat().st_mode
        if stat.S_ISDIR(kind) or stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            raise HarnessError("{input} {path}: not a regular file; expected a JSONL file", path=path)
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError("{input} {path}: no such file", path=path) from None
    except ValueError:  # a NUL byte in the name
        raise HarnessError("{input} {path!r}: not a valid file name", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError("{input} {path}: cannot read it ({reason})", path=path, reason=exc) from None
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = jsonsafe.loads(line)
        except jsonsafe.BadJSON as exc:
            raise HarnessError("{path}:{line}: not valid JSON ({reason})",
                               path=path, line=lineno, reason=exc) from None
        if not isinstance(obj, dict):
            raise HarnessError("{path}:{line}: expected a JSON object, got {kind}",
                               path=path, line=lineno, kind=type(obj).__name__)
        item_id = str(obj.get("id", lineno))
        if item_id in seen:
            raise HarnessError("{path}:{line}: id {item!r} already used on line {first}",
                               path=path, line=lineno, item=item_id, first=seen[item_id])
        seen[item_id] = lineno
        items.append(Item(item_id, lineno, obj))
    return items


def _done_ids(path: Path) -> dict[str, bool | None]:
    """Ids already in an output file, each with its ``"correct"`` (None: ungraded); cuts off a
    torn last line left by a killed run."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
        data = data[:good_end]
    ids: dict[str, bool | None] = {}
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = jsonsafe.loads(line)
            correct = obj.get("correct")
            ids[str(obj["id"])] = correct if isinstance(correct, bool) else None
        except (jsonsafe.BadJSON, KeyError, TypeError, IndexError, AttributeError):
            raise HarnessError("{output} {path}:{line}: not a ttc result line; cannot resume into it",
                               path=path, line=lineno) from None
    return ids


def _open_output(path: Path, input_path: str | Path | None) -> TextIO:
    """The output file opened for appending; a `HarnessError` saying why it cannot be."""
    if input_path is not None and _same_file(path, Path(input_path)):
        raise HarnessError("{output} {path} is the input file too; write the results elsewhere",
                           path=path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8")
    except ValueError:  # a NUL byte in the name
        raise HarnessError("{output} {path!r}: not a valid file name", path=str(path)) from None
    except IsADirectoryError:
        raise HarnessError("{output} {path} is a directory; name a file", path=path) from None
    except (FileExistsError, NotADirectoryError):
        raise HarnessError("{output} {path}: a folder on the way is a file", path=path) from None
    except OSError as exc:
        raise HarnessError("{output} {path}: cannot write it ({reason})", path=path,
                           reason=exc.strerror or exc) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def is_correct(value: Any, expected: Any) -> bool:
    """Compare a result with a dataset answer: numbers numerically-normalised, else trimmed text."""
    if isinstance(value, Answer):
        got = value.value
    elif isinstance(value, Branches):
        got = extract(value.items[0].text, "number") if value.items else None
    else:
        got = None if value is None else str(value)
    if got is None:
        return False
    want = str(expected).strip()
    a, b = normalize_number(got), normalize_number(want)
    if a is not None and b is not None:
        return a == b
    return got.strip() == want


def no_answer(value: Any) -> bool:
    """Whether a result gives no answer to grade (graded wrong, and warned about)."""
    if isinstance(value, Answer):
        return value.value is None
    if isinstance(value, Branches):
        return not value.items or extract(value.items[0].text, "number") is None
    return value is None


def item_seed(run_seed: int, item_id: str) -> int:
    """The run seed of one item (dataset mode and every bench pass use it alike)."""
    return derive_seed(run_seed, "item", item_id)


def _bind(strategy: P.StrategyPlan, item: Item, given: Mapping[str, Any]) -> dict[str, Any]:
    names = {p.name for p in strategy.params}
    fields = {k: v for k, v in item.fields.items() if k in names}
    try:
        return bind_args(strategy, {**given, **fields}, where=f"line {item.line}:")
    except UsageError as exc:
        raise HarnessError("{input_line} {line} (id {item}): {detail}",
                           line=item.line, item=item.id, detail=exc) from None


async def run_dataset(
    plan: P.Plan,
    backend: Backend,
    items: list[Item],
    output: str | Path,
    *,
    given: Mapping[str, Any],
    options: RunOptions,
    resume: bool = False,
    items_in_flight: int = 8,
    on_item: Callable[[DatasetSummary, Item, RunResult | None], None] | None = None,
    input_path: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> DatasetSummary:
    """Run ``plan`` on every item not yet in ``output`` and append one line per finished item.

    ``input_path`` (where ``items`` came from) lets the output be refused when it is that file.

    ``on_item(summary, item, result)`` is called after each item (``result`` None: it failed,
    and its message is ``summary.errors[-1]``).  ``options.seed`` (default 0) is the run seed."""
    out_path = Path(output)
    out = _open_output(out_path, input_path)
    try:
        return await _run(plan, backend, items, out_path, out, given=given, options=options,
                          resume=resume, items_in_flight=items_in_flight, on_item=on_item,
                          provenance=provenance)
    finally:
        with contextlib.suppress(OSError):
            out.close()


async def _run(
    plan: P.Plan,
    backend: Backend,
    items: list[Item],
    out_path: Path,
    out: TextIO,
    *,
    given: Mapping[str, Any],
    options: RunOptions,
    resume: bool,
    items_in_flight: int,
    on_item: Callable[[DatasetSummary, Item, RunResult | None], None] | None,
    provenance: Mapping[str, Any] | None,
) -> DatasetSummary:
    done = _done_ids(out_path) if resume else {}
    if not resume and out_path.stat().st_size > 0:
        raise HarnessError("{output} {path} already has results: pass {resume} to continue it, "
                           "or remove it", path=out_path)
    todo = [(item, _bind(plan.strategy(), item, given)) for item in items if item.id not in done]
    summary = DatasetSummary(total=len(items), skipped=len(items) - len(todo),
                             prior_graded=sum(c is not None for c in done.values()),
                             prior_correct=sum(c is True for c in done.values()))
    run_seed = options.seed if options.seed is not None else 0
    limiter = options.limiter or anyio.CapacityLimiter(options.concurrency)
    item_limiter = anyio.CapacityLimiter(max(1, items_in_flight))
    t0 = time.monotonic()

    async def one(item: Item, args: dict[str, Any]) -> None:
        async with item_limiter:
            opts = replace(options, seed=item_seed(run_seed, item.id), limiter=limiter)
            try:
                result = await run_plan(plan, backend, args, opts)
            except TTCError as exc:
                summary.failed += 1
                summary.errors.append(f"item {item.id} (line {item.line}): {exc}")
                if on_item is not None:
                    on_item(summary, item, None)
                return
        record: dict[str, Any] = {"id": item.fields.get("id", item.id), **result_to_json(result)}
        if "answer" in item.fields:
            ok = is_correct(result.value, item.fields["answer"])
            record["answer"] = item.fields["answer"]
            record["correct"] = ok
            summary.graded += 1
            summary.correct += int(ok)
        if provenance is not None:
            record["provenance"] = {**provenance, "run_seed": run_seed, "seed": opts.seed}
        try:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:  # a full disk, say: stop; the lines written so far stay
            raise HarnessError("{output} {path}: cannot write a result ({reason}); the {done} "
                               "finished before it are in the file", path=out_path,
                               reason=exc.strerror or exc, done=summary.done) from None
        summary.done += 1
        summary.empty += int(no_answer(result.value))
        summary.completion_tokens += result.usage.completion_tokens
        if on_item is not None:
            on_item(summary, item, result)

    try:
        async with anyio.create_task_group() as tg:
            for item, args in todo:
                tg.start_soon(one, item, args)
    except BaseExceptionGroup as eg:
        raise first_failure(eg) from None
    summary.wall_s = time.monotonic() - t0
    return summary
