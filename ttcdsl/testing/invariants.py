"""`check_invariants(result)`: what holds for every strategy on every backend.

It reads a `StrategyResult` (a test-mode run: `run_strategy`) and raises one `AssertionError`
listing every violated invariant, one line each:

* budgets: at every level of the budget tree the tokens spent stay within the limit and nothing
  is left reserved; the completion tokens the backend reported (plus what aborted requests were
  charged) equal the budget tree's and the run's; the strategy's and the run's caps hold;
* usage: the totals and every step node's usage equal the sum over the requests in the trace,
  and the step nodes together account for the total;
* aborted requests are charged no more than the backend had generated for them;
* requests: no result reports fewer completion tokens than it returned, or more than allowed;
* finish reasons: a branch is finished exactly when it has a reason, and the reason agrees with
  the generation that made it (`length`/`budget` ran out of tokens, `stop`/`eos` stopped, an
  open branch stopped at a step);
* lineage: every branch's parent exists, has the same root and prompt, and the branch continues
  the parent's tokens exactly; an `expand` passes finished branches through;
* prune: the size is `keep` per group (or all there were), the kept branches came from the
  input, are in order, and none dropped is better than one kept;
* vote: support is the winner's votes, the winner has the most, agreement is support over all
  votes (so in [0, 1]), the backing branches came from the input and, unweighted, number the
  support;
* `expect`: every `expect` of the program held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ttcdsl import plan as P
from ttcdsl.runtime import aggregate as agg
from ttcdsl.runtime.backend import GenRequest, GenResult
from ttcdsl.runtime.values import Answer, Branch, Branches
from ttcdsl.testing.running import StrategyResult

__all__ = ["check_invariants", "violations"]

_CHARGED = ("generate", "warm", "reward")
_SHOWN = 25  # violations listed in one AssertionError


def check_invariants(result: StrategyResult) -> None:
    """Raise one `AssertionError` listing every violated invariant (see the module doc)."""
    problems = violations(result)
    if problems:
        head = f"{len(problems)} invariant{'s' if len(problems) != 1 else ''} violated"
        shown = [f"- {p}" for p in problems[:_SHOWN]]
        if len(problems) > _SHOWN:
            shown.append(f"- ... and {len(problems) - _SHOWN} more")
        raise AssertionError(head + ":\n" + "\n".join(shown))


def violations(result: StrategyResult) -> list[str]:
    """Every violated invariant, one line each (empty when all hold)."""
    checks: list[Callable[[StrategyResult], Iterable[str]]] = [
        _budgets, _usage, _aborted, _requests, _finish_reasons, _lineage, _prunes, _votes, _expects,
    ]
    return [p for check in checks for p in check(result)]


# ---- budgets and usage ----


def _budgets(r: StrategyResult) -> Iterable[str]:
    yield from (f"budget: {v}" for v in r.root.violations())
    aborted = sum(t.completion_tokens for t in r.trace if t.error == "aborted")
    reported, spent, usage = r.backend.reported + aborted, r.root.spent, r.usage.completion_tokens
    if not reported == spent == usage:
        yield (f"budget: the backend reported {reported} completion tokens, the budget tree "
               f"recorded {spent}, the run says {usage}")
    cap = r.plan.strategy().budget
    if cap is not None and usage > cap:
        yield f"budget: {usage} completion tokens > the strategy's budget {cap}"
    if r.cap is not None and usage > r.cap:
        yield f"budget: {usage} completion tokens > the run's cap {r.cap}"


def _charged(records: Iterable[Any]) -> tuple[int, int, int, int]:
    rs = [t for t in records if t.kind in _CHARGED and t.error in (None, "aborted")]
    return (sum(t.completion_tokens for t in rs), sum(t.prompt_tokens for t in rs),
            sum(t.cached_tokens for t in rs), len(rs))


def _usage(r: StrategyResult) -> Iterable[str]:
    u = r.usage
    total = (u.completion_tokens, u.prompt_tokens, u.cached_tokens, u.requests)
    traced = _charged(r.trace)
    if total != traced:
        yield (f"usage: the run's totals (completion, prompt, cached, requests) {total} differ from "
               f"the sum over its requests {traced}")
    calls = {n.id for s in r.plan.strategies.values() for n in s.nodes if isinstance(n, P.Call)}
    steps = [n for n in r.nodes if n.id not in calls]
    for n in steps:
        mine = _charged(t for t in r.trace if t.node == n.id)
        have = (n.completion_tokens, n.prompt_tokens, n.cached_tokens, n.requests)
        if have != mine:
            yield f"usage: node n{n.id} ({n.op}, line {n.line}) reports {have}, its requests sum to {mine}"
    summed = sum(n.completion_tokens for n in steps)
    if summed != u.completion_tokens:
        yield f"usage: the step nodes' completion tokens sum to {summed}, the run's total is {u.completion_tokens}"


def _aborted(r: StrategyResult) -> Iterable[str]:
    generated = {req.rid: tokens for req, tokens in r.backend.aborted}
    for t in r.trace:
        if t.error != "aborted":
            continue
        used = generated.get(t.rid, r.backend.progress.get(t.rid, 0))
        if t.completion_tokens > used:
            yield (f"aborted request {t.rid} (node n{t.node}) was charged {t.completion_tokens} tokens; "
                   f"the backend had generated {used}")


def _requests(r: StrategyResult) -> Iterable[str]:
    for req, res in r.backend.calls:
        if res.completion_tokens < len(res.output_ids):
            yield (f"request {req.rid}: returned {len(res.output_ids)} tokens but reported "
                   f"{res.completion_tokens} completion tokens")
        if res.completion_tokens > req.sampling.max_new_tokens:
            yield (f"request {req.rid}: {res.completion_tokens} completion tokens > the "
                   f"{req.sampling.max_new_tokens} allowed")


# ---- branches ----


def _generations(r: StrategyResult) -> dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[GenRequest, GenResult]]]:
    out: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[GenRequest, GenResult]]] = {}
    for req, res in r.backend.calls:
        out.setdefault((req.input_ids, tuple(res.output_ids)), []).append((req, res))
    return out


def _made(r: StrategyResult) -> Iterable[tuple[P.Node, Branch, Branch | None]]:
    """(node, branch, parent) for every branch a `sample` or `expand` generated."""
    for rec in r.steps:
        if not isinstance(rec.node, (P.Sample, P.Expand)) or not isinstance(rec.output, Branches):
            continue
        parents = {b.id: b for b in rec.inputs or []}
        for b in rec.output.items:
            if b.id in parents:
                continue  # a finished branch an expand passed through
            yield rec.node, b, parents.get(b.parent or "")


def _after_injection(r: StrategyResult, start: tuple[int, ...],
                     full: tuple[int, ...]) -> list[tuple[GenRequest, GenResult]]:
    """The generations that continued ``start`` plus injected tokens and returned the rest of
    ``full`` (an `expand ... after TEXT` child: parent tokens, the text's, then generated ones)."""
    return [(req, res) for req, res in r.backend.calls
            if len(req.input_ids) > len(start) and full[: len(req.input_ids)] == req.input_ids
            and tuple(res.output_ids) == full[len(req.input_ids):]]


def _reason_agrees(reason: str | None, finish: str) -> bool:
    if reason is None:
        return finish == "stop"  # an open branch stopped at its step string
    return {"length": finish == "length", "budget": finish == "length", "abort": finish == "abort",
            "stop": finish in ("stop", "eos"), "eos": finish in ("stop", "eos")}.get(reason, False)


def _finish_reasons(r: StrategyResult) -> Iterable[str]:
    made = _generations(r)
    for node, b, parent in _made(r):
        where = f"branch {b.id} (line {node.span.line})"
        if b.finished != (b.finish_reason is not None):
            yield f"finish: {where} is {'finished' if b.finished else 'open'} with reason {b.finish_reason!r}"
        before = list(parent.ids) if parent is not None else []
        new = tuple(b.ids[len(before):])
        if not new and b.finish_reason in ("budget", "abort"):
            continue  # possibly never sent (its share of the budget was 0, or an anytime vote stopped)
        found = made.get(((*b.prompt_ids, *before), new), [])
        if not found and isinstance(node, P.Expand) and node.inject is not None:
            if b.finish_reason in ("budget", "abort") and len(b.steps) == len(parent.steps if parent else ()) + 1:
                continue  # possibly never sent: the child holds only the injected text (a step of its own)
            found = _after_injection(r, (*b.prompt_ids, *before), (*b.prompt_ids, *b.ids))
        if not found:
            yield f"finish: {where} ({b.finish_reason}) has {len(new)} new tokens that no request returned"
            continue
        if not any(_reason_agrees(b.finish_reason, res.finish) for _, res in found):
            finishes = sorted({res.finish for _, res in found})
            yield f"finish: {where} has reason {b.finish_reason!r} but its generation ended with {'/'.join(finishes)}"


def _every_branch(r: StrategyResult) -> dict[str, Branch]:
    seen: dict[str, Branch] = {}
    for rec in r.steps:
        out = rec.output.items if isinstance(rec.output, Branches) else []
        for b in [*(rec.inputs or []), *out]:
            seen.setdefault(b.id, b)
    for b in r.branches:
        seen.setdefault(b.id, b)
    return seen


def _lineage(r: StrategyResult) -> Iterable[str]:
    seen = _every_branch(r)
    for b in seen.values():
        if b.parent is None:
            if b.root != b.id:
                yield f"lineage: branch {b.id} has no parent but root {b.root}"
            continue
        parent = seen.get(b.parent)
        if parent is None:
            yield f"lineage: branch {b.id}'s parent {b.parent} was never made"
            continue
        if parent.root != b.root or parent.prompt_ids != b.prompt_ids:
            yield f"lineage: branch {b.id} has another root or prompt than its parent {parent.id}"
        if b.ids[: len(parent.ids)] != parent.ids:
            yield f"lineage: branch {b.id} does not continue its parent {parent.id}'s tokens exactly"
    for rec in r.steps:
        if isinstance(rec.node, P.Expand) and isinstance(rec.output, Branches):
            out = {b.id for b in rec.output.items}
            dropped = [b.id for b in rec.inputs or [] if b.finished and b.id not in out]
            if dropped:
                yield f"expand (line {rec.node.span.line}) dropped finished branches {', '.join(dropped)}"


# ---- prune and vote ----


def _groups(items: list[Branch], per: str) -> dict[str, list[Branch]]:
    groups: dict[str, list[Branch]] = {}
    for b in items:
        key = "" if per == "all" else b.root if per == "root" else (b.parent or b.root)
        groups.setdefault(key, []).append(b)
    return groups


def _prunes(r: StrategyResult) -> Iterable[str]:
    for rec in r.steps:
        n = rec.node
        if not isinstance(n, P.Prune) or not isinstance(rec.output, Branches) or rec.keep is None:
            continue
        where = f"prune (line {n.span.line}{', ' + rec.where if rec.where else ''})"
        inputs, kept = rec.inputs or [], rec.output.items
        groups = _groups(inputs, n.per)
        want = sum(min(rec.keep, len(g)) for g in groups.values())
        if len(kept) != want:
            yield f"{where}: kept {len(kept)} of {len(inputs)} branches, keep {rec.keep} per {n.per} means {want}"
        ids = [b.id for b in inputs]
        if any(ids.count(b.id) < [k.id for k in kept].count(b.id) for b in kept):
            yield f"{where}: kept branches that were not in its input"
        keys = [agg._key(b, n.by) for b in kept]
        if keys != sorted(keys):
            yield f"{where}: the kept branches are not in order by {n.by}"
        kept_ids = {b.id for b in kept}
        for g in groups.values():
            worst_kept = max((agg._key(b, n.by) for b in g if b.id in kept_ids), default=None)
            better = [b.id for b in g if b.id not in kept_ids and worst_kept is not None
                      and agg._key(b, n.by) < worst_kept]
            if better:
                yield f"{where}: dropped {', '.join(better)}, better by {n.by} than a branch it kept"


def _votes(r: StrategyResult) -> Iterable[str]:
    for rec in r.steps:
        if isinstance(rec.node, P.Vote) and isinstance(rec.output, Answer):
            yield from _vote(rec.node, rec.output, rec.inputs or [])


def _vote(n: P.Vote, a: Answer, inputs: list[Branch]) -> Iterable[str]:
    where = f"vote (line {n.span.line})"
    total = sum(a.votes.values())
    if not 0 <= a.agreement <= 1:
        yield f"{where}: agreement {a.agreement} is outside [0, 1]"
    if a.value is None:
        if a.votes or a.support:
            yield f"{where}: no winner but votes {a.votes} and support {a.support}"
        return
    if a.votes.get(a.value) != a.support:
        yield f"{where}: support {a.support} is not the winner's votes {a.votes.get(a.value)}"
    if a.support < max(a.votes.values()):
        yield f"{where}: the winner {a.value!r} has {a.support} votes, another answer more"
    if total > 0 and abs(a.agreement - a.support / total) > 1e-9:
        yield f"{where}: agreement {a.agreement} is not support / votes = {a.support / total}"
    ids = {b.id for b in inputs}
    if any(b.id not in ids for b in a.branches):
        yield f"{where}: the answer is backed by branches that did not vote"
    if not n.weighted:
        if len(a.branches) != a.support:
            yield f"{where}: {len(a.branches)} branches back an answer with support {a.support}"
        if total > len(inputs):
            yield f"{where}: {total} votes from {len(inputs)} branches"


def _expects(r: StrategyResult) -> Iterable[str]:
    for e in r.failed_expects:
        where = f" ({e.where})" if e.where else ""
        yield f"expect: {e.file}:{e.line}: `{e.text}` does not hold in strategy {e.strategy}{where}"
