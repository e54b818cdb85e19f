"""The concurrent interpreter: the language's meaning, scheduled by dataflow.

Scheduling policy.  A run is one anyio task group per strategy invocation (a *frame*).  Statements
are processed in order: `x = EXPR` starts a task that evaluates EXPR against the bindings visible
at that point (a snapshot of slots, so later rebinding cannot leak backwards) and binds `x` to a
slot that is filled when the task ends; reading a name waits for its slot.  So independent steps
run concurrently and dependent ones in dataflow order.  `repeat`, `if` and `return` wait for the
values they test.  All forks of a step run concurrently; every backend request holds one slot of a
single `CapacityLimiter` (``concurrency``) for its duration.  Forks of one prompt are sent after a
prefix warm-up, so the prefix is prefilled once and every fork hits the cache; continuations are
sent as exact token ids.

When independent steps run concurrently and the remaining budget cannot cover both, the one that
reserves first (its inputs ready first) gets its share first; results are then timing-dependent.

Steps are evaluated by `steps.run_step` (their meaning is shared with the sequential reference
interpreter in `reference.py`, which is the oracle for this one); everything here is about when
things run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ttcdsl import plan as P
from ttcdsl.errors import NodeFailed
from ttcdsl.runtime import semantics as sem
from ttcdsl.runtime.backend import GenRequest, GenResult, first_failure
from ttcdsl.runtime.budget import Budget, Reservation
from ttcdsl.runtime.client import RequestNote
from ttcdsl.runtime.steps import Frame, RunState, run_step
from ttcdsl.runtime.values import Branches

__all__ = ["Interpreter"]

T = TypeVar("T")

# Passes of one `repeat` whose bindings may still be computing when the next pass starts.
_PASSES_IN_FLIGHT = 2


def _reads_budget(nodes: dict[int, P.Node], ref: P.Ref) -> bool:
    """Whether the expression at ``ref`` calls `budget_left()` (its value depends on timing)."""
    todo, seen = [ref.node], set()
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        n = nodes[nid]
        if isinstance(n, P.Builtin) and n.name == "budget_left":
            return True
        if isinstance(n, (P.Arith, P.Compare, P.Logic)):
            todo += [n.left.node, n.right.node]
        elif isinstance(n, (P.Not, P.Neg)):
            todo.append(n.operand.node)
        elif isinstance(n, P.Builtin):
            todo += [a.node for a in n.args]
    return False


class _Slot:
    """A binding whose value may still be computing."""

    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Any = None

    def set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    async def get(self) -> Any:
        await self._event.wait()
        return self._value

    @property
    def ready(self) -> bool:
        return self._event.is_set()

    @property
    def value(self) -> Any:
        return self._value


class _Return:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Interpreter:
    """Runs strategies of `plan` concurrently (see the module doc)."""

    def __init__(self, plan: P.Plan, state: RunState) -> None:
        self.plan = plan
        self.state = state

    async def gather(self, thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        if len(thunks) <= 1:
            return [await t() for t in thunks]
        results: list[Any] = [None] * len(thunks)

        async def one(i: int) -> None:
            results[i] = await thunks[i]()

        try:
            async with anyio.create_task_group() as tg:
                for i in range(1, len(thunks)):
                    tg.start_soon(one, i)
                await one(0)  # the calling task runs the first itself: one task fewer
        except BaseExceptionGroup as eg:
            raise first_failure(eg) from None
        return results

    async def generate(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                       reservations: Sequence[Reservation],
                       notes: Sequence[RequestNote] | None = None) -> list[GenResult]:
        return await self.state.client.generate_many(n, chain, requests, reservations, notes)

    async def generate_until(self, n: P.Node, chain: tuple[int, ...], requests: Sequence[GenRequest],
                             reservations: Sequence[Reservation], enough: Callable[[int, GenResult], bool],
                             notes: Sequence[RequestNote] | None = None,
                             ) -> tuple[list[GenResult | None], list[bool]]:
        return await self.state.client.generate_until(n, chain, requests, reservations, enough, notes)

    # ---- frames and statements ----

    async def call(self, name: str, args: Mapping[str, Any], budget: Budget, key: str,
                   chain: tuple[int, ...]) -> Any:
        s = self.plan.strategies[name]
        if s.budget is not None:
            budget = budget.child(s.budget, f"strategy {name}")
        env: dict[str, Any] = {}
        for p in s.params:
            slot = _Slot()
            slot.set(args.get(p.name, p.default))
            env[p.name] = slot
        frame = Frame(s, {n.id: n for n in s.nodes}, env, budget, key, (), chain)
        if s.budget_expr is not None:
            tokens = sem.budget_tokens(await self.ev(frame, s.budget_expr), s)
            frame.budget = budget.child(tokens, f"strategy {name}")
            if not key:
                self.state.entry_budget = tokens
        try:
            async with anyio.create_task_group() as tg:
                # A `return` does not cancel steps still running: the frame waits for them, so
                # usage does not depend on scheduling.
                ret = await self._block(frame, s.body, tg)
        except BaseExceptionGroup as eg:
            raise first_failure(eg) from None
        if ret is None:
            raise NodeFailed(f"strategy '{name}' ended without returning a value", s.span)
        return ret.value

    async def _block(self, frame: Frame, stmts: Sequence[P.Stmt], tg: anyio.abc.TaskGroup) -> _Return | None:
        """Run statements; a `return` ends the block (and every enclosing one) with its value."""
        for st in stmts:
            match st:
                case P.Bind():
                    slot = _Slot()
                    view = replace(frame, env=dict(frame.env))
                    frame.env[st.name] = slot
                    tg.start_soon(self._fill, slot, view, st.value)
                case P.Return():
                    return _Return(await self.ev(frame, st.value))
                case P.Expect() if self.state.expect is not None:
                    # Off the critical path, like a binding, so test mode schedules as usual.
                    tg.start_soon(self._expect, replace(frame, env=dict(frame.env)), st)
                case P.If():
                    cond = await self.ev(frame, st.cond)
                    ret = await self._block(frame, st.then if cond else st.orelse, tg)
                    if ret is not None:
                        return ret
                case P.Repeat():
                    times = sem.repeat_count(await self.ev(frame, st.times), st)
                    settle = st.until is not None and _reads_budget(frame.nodes, st.until)
                    outer = frame.loops
                    # Passes are started lazily: at most `_PASSES_IN_FLIGHT` have values still
                    # computing, so a long loop holds a bounded number of tasks, not one per pass.
                    in_flight: deque[list[_Slot]] = deque()
                    for i in range(times):
                        # A pass may do no I/O at all (its steps out of budget): give the event
                        # loop a turn, so deadlines and Ctrl-C still end a long loop.
                        await anyio.lowlevel.checkpoint()
                        if len(in_flight) >= _PASSES_IN_FLIGHT:
                            for slot in in_flight.popleft():
                                await slot.get()
                        before = {id(v) for v in frame.env.values()}
                        frame.loops = (*outer, i)
                        try:
                            # Tested before every pass: an early stop spends nothing more.
                            if settle:
                                # `budget_left()` is read once the steps bound so far (the last
                                # pass's included) are done and their unused reservations refunded.
                                for slot in list(frame.env.values()):
                                    await slot.get()
                            if st.until is not None and await self.ev(frame, st.until):
                                break
                            ret = await self._block(frame, st.body, tg)
                            if ret is not None:
                                return ret
                        finally:
                            frame.loops = outer
                        in_flight.append([v for v in frame.env.values() if id(v) not in before])
        return None

    async def _fill(self, slot: _Slot, frame: Frame, ref: P.Ref) -> None:
        slot.set(await self.ev(frame, ref))

    async def _expect(self, frame: Frame, st: P.Expect) -> None:
        self.state.expected(frame, st, await self.ev(frame, st.cond))

    # ---- expressions ----

    async def ev(self, frame: Frame, ref: P.Ref) -> Any:
        n = frame.nodes[ref.node]
        match n:
            case P.Const():
                return sem.const(n)
            case P.Param() | P.Var():
                slot = frame.env.get(n.name)
                if slot is None:
                    raise sem.unbound(n)
                return await slot.get()
            case P.Prompt():
                refs = [r for r in n.parts if isinstance(r, P.Ref)]
                return sem.fill(n.parts, await self.ev_all(frame, refs))
            case P.ListOf():
                return [sem.interpolate(v) for v in await self.ev_all(frame, n.items)]
            case P.Arith():
                return sem.arith(n, *await self.ev_all(frame, [n.left, n.right]))
            case P.Union():
                a, b = await self.ev_all(frame, [n.left, n.right])
                return Branches([*a.items, *b.items])
            case P.Compare():
                return sem.compare(n.operator, *await self.ev_all(frame, [n.left, n.right]))
            case P.Logic():
                left = bool(await self.ev(frame, n.left))
                if left == (n.operator == "or"):
                    return left
                return bool(await self.ev(frame, n.right))
            case P.Not():
                return not await self.ev(frame, n.operand)
            case P.Neg():
                return -(await self.ev(frame, n.operand))
            case P.Builtin():
                return sem.builtin(n.name, await self.ev_all(frame, n.args), frame.budget)
        return await run_step(self, frame, n)

    async def ev_all(self, frame: Frame, refs: Sequence[P.Ref]) -> list[Any]:
        """The values of `refs`, concurrently; constants and names already bound are read in
        place, so only what must wait gets a task (usually none, or one awaited inline)."""
        values: list[Any] = [None] * len(refs)
        later: list[int] = []
        for i, ref in enumerate(refs):
            n = frame.nodes[ref.node]
            if isinstance(n, P.Const):
                values[i] = sem.const(n)
                continue
            if isinstance(n, (P.Param, P.Var)):
                slot = frame.env.get(n.name)
                if slot is not None and slot.ready:
                    values[i] = slot.value
                    continue
            later.append(i)
        if later:
            done = await self.gather([partial(self.ev, frame, refs[i]) for i in later])
            for i, value in zip(later, done):
                values[i] = value
        return values
