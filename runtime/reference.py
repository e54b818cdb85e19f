"""The sequential reference interpreter: the oracle for the concurrent one.

It evaluates a plan the plainest way there is: statements in order, a binding evaluated before
the next statement starts, operands left to right, the forks of a step one after another, one request each.  No
task groups, no slots, no snapshots: names map to values.  It shares with the concurrent
interpreter only the meaning of values (`semantics.py`) and of steps (`steps.py`), never its
scheduling code, so when both give the same results on the same deterministic backend, the
concurrent scheduling changed nothing but time (tests/test_executor.py, tests/test_runtime_sim.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime import semantics as sem
from ttcdsl.runtime.backend import GenRequest, GenResult
from ttcdsl.runtime.budget import Budget, Reservation
from ttcdsl.runtime.client import RequestNote
from ttcdsl.runtime.steps import Frame, RunState, run_step
from ttcdsl.runtime.values import Branches

__all__ = ["Reference"]

T = TypeVar("T")

_NO_RETURN = object()


class Reference:
    """Runs strategies of `plan` one thing at a time."""

    def __init__(self, plan: P.Plan, state: RunState) -> None:
        self.plan = plan
        self.state = state

    async def gather(self, thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        return [await t() for t in thunks]

    async def ev_all(self, frame: Frame, refs: Sequence[P.Ref]) -> list[Any]:
        return [await self.ev(frame, r) for r in refs]

    async def generate(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                       reservations: Sequence[Reservation],
                       notes: Sequence[RequestNote] | None = None) -> list[GenResult]:
        notes = list(notes) if notes is not None else [RequestNote()] * len(requests)
        return [await self.state.client.generate(n, chain, r, res, note)
                for r, res, note in zip(requests, reservations, notes)]

    async def generate_until(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                             reservations: Sequence[Reservation], enough: Callable[[int, GenResult], bool],
                             notes: Sequence[RequestNote] | None = None,
                             ) -> tuple[list[GenResult | None], list[bool]]:
        """One request at a time; after the one that settles the vote, no more are sent."""
        results: list[GenResult | None] = [None] * len(requests)
        sent = [False] * len(requests)
        try:
            for i, (request, res) in enumerate(zip(requests, reservations)):
                sent[i] = True
                note = notes[i] if notes is not None else RequestNote()
                results[i] = result = await self.state.client.generate(n, chain, request, res, note)
                if enough(i, result):
                    break
        finally:
            for res in reservations:
                res.release()
        return results, sent

    async def call(self, name: str, args: Mapping[str, Any], budget: Budget, key: str,
                   chain: tuple[int, ...]) -> Any:
        s = self.plan.strategies[name]
        if s.budget is not None:
            budget = budget.child(s.budget, f"strategy {name}")
        env = {p.name: args.get(p.name, p.default) for p in s.params}
        frame = Frame(s, {n.id: n for n in s.nodes}, env, budget, key, (), chain)
        if s.budget_expr is not None:
            tokens = sem.budget_tokens(await self.ev(frame, s.budget_expr), s)
            frame.budget = budget.child(tokens, f"strategy {name}")
            if not key:
                self.state.entry_budget = tokens
        value = await self._block(frame, s.body)
        if value is _NO_RETURN:
            raise NodeFailed(f"strategy '{name}' ended without returning a value", s.span)
        return value

    async def _block(self, frame: Frame, stmts: Sequence[P.Stmt]) -> Any:
        """The value of the first `return` reached, or `_NO_RETURN`."""
        for st in stmts:
            if isinstance(st, P.Bind):
                frame.env[st.name] = await self.ev(frame, st.value)
            elif isinstance(st, P.Return):
                return await self.ev(frame, st.value)
            elif isinstance(st, P.Expect) and self.state.expect is not None:
                self.state.expected(frame, st, await self.ev(frame, st.cond))
            elif isinstance(st, P.If):
                body = st.then if await self.ev(frame, st.cond) else st.orelse
                value = await self._block(frame, body)
                if value is not _NO_RETURN:
                    return value
            elif isinstance(st, P.Repeat):
                outer = frame.loops
                try:
                    for i in range(sem.repeat_count(await self.ev(frame, st.times), st)):
                        await anyio.lowlevel.checkpoint()  # deadlines and Ctrl-C end long loops
                        frame.loops = (*outer, i)
                        if st.until is not None and await self.ev(frame, st.until):
                            break
                        value = await self._block(frame, st.body)
                        if value is not _NO_RETURN:
                            return value
                finally:
                    frame.loops = outer
        return _NO_RETURN

    async def ev(self, frame: Frame, ref: P.Ref) -> Any:
        n = frame.nodes[ref.node]
        if isinstance(n, P.Const):
            return sem.const(n)
        if isinstance(n, (P.Param, P.Var)):
            if n.name not in frame.env:
                raise sem.unbound(n)
            return frame.env[n.name]
        if isinstance(n, P.Prompt):
            return sem.fill(n.parts, [await self.ev(frame, r) for r in n.parts if isinstance(r, P.Ref)])
        if isinstance(n, P.ListOf):
            return [sem.interpolate(await self.ev(frame, r)) for r in n.items]
        if isinstance(n, (P.Arith, P.Union, P.Compare)):
            a = await self.ev(frame, n.left)
            b = await self.ev(frame, n.right)
            if isinstance(n, P.Arith):
                return sem.arith(n, a, b)
            if isinstance(n, P.Union):
                return Branches([*a.items, *b.items])
            return sem.compare(n.operator, a, b)
        if isinstance(n, P.Logic):
            if n.operator == "and":
                return bool(await self.ev(frame, n.left)) and bool(await self.ev(frame, n.right))
            return bool(await self.ev(frame, n.left)) or bool(await self.ev(frame, n.right))
        if isinstance(n, P.Not):
            return not await self.ev(frame, n.operand)
        if isinstance(n, P.Neg):
            return -(await self.ev(frame, n.operand))
        if isinstance(n, P.Builtin):
            return sem.builtin(n.name, [await self.ev(frame, r) for r in n.args], frame.budget)
        return await run_step(self, frame, n)
