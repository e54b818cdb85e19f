"""Hard token budgets by reservation.

A `Budget` is one level of a tree: the run, a strategy, a call, one invocation of a step.  Before
a request is sent, the runtime *reserves* its ``max_new_tokens`` at its level; a reservation must
fit at every level up to the root, so no request whose worst case does not fit is ever sent.  When
the request returns, the reservation is *settled*: the tokens the backend reported are kept as
spent and the rest is refunded everywhere.  Hence at every level, at every moment,

    spent <= spent + reserved <= limit

and the completion tokens the backend reports never exceed any budget.

Fair split (`split`): when a step has more pending forks than its remaining budget covers at
their full ``max_tokens``, the available tokens are divided equally, the first ``available % k``
forks getting one token more; a fork whose share is 0 is not sent and finishes with reason
``budget``.  A fork that sends several requests (a thinking budget) reserves its share once and
gives each request its own part of it (`Reservation.take`).  Everything here is synchronous, so a check-and-reserve can never interleave with
another task's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Budget", "Reservation", "split"]


@dataclass(eq=False)
class Budget:
    """One level of the budget tree; ``limit=None`` means this level adds no cap of its own."""

    limit: int | None
    parent: Budget | None = None
    name: str = "run"
    spent: int = 0
    reserved: int = 0
    children: list[Budget] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"budget {self.name}: limit must be >= 0, got {self.limit}")

    def child(self, limit: int | None, name: str) -> Budget:
        b = Budget(limit, self, name)
        self.children.append(b)
        return b

    def chain(self) -> list[Budget]:
        out: list[Budget] = []
        b: Budget | None = self
        while b is not None:
            out.append(b)
            b = b.parent
        return out

    def own_available(self) -> int | None:
        if self.limit is None:
            return None
        return self.limit - self.spent - self.reserved

    def available(self) -> int | None:
        """Tokens a new reservation may take: the tightest level of the chain (None = no cap)."""
        caps = [a for a in (b.own_available() for b in self.chain()) if a is not None]
        return min(caps) if caps else None

    def reserve(self, tokens: int) -> Reservation:
        if tokens < 0:
            raise ValueError("cannot reserve a negative number of tokens")
        avail = self.available()
        if avail is not None and tokens > avail:
            raise ValueError(f"reservation of {tokens} tokens exceeds the {avail} available")
        for b in self.chain():
            b.reserved += tokens
        return Reservation(self, tokens)

    def walk(self) -> list[Budget]:
        """This level and every level below it."""
        out = [self]
        for c in self.children:
            out += c.walk()
        return out

    def violations(self) -> list[str]:
        """Broken invariants anywhere in this subtree (empty when all is well): spending over a
        limit, reservations left open, or a level that spent less than its children."""
        problems = []
        for b in self.walk():
            if b.limit is not None and b.spent + b.reserved > b.limit:
                problems.append(f"{b.name}: spent {b.spent} + reserved {b.reserved} > limit {b.limit}")
            if b.reserved != 0:
                problems.append(f"{b.name}: {b.reserved} tokens still reserved")
            below = sum(c.spent for c in b.children)
            if below > b.spent:
                problems.append(f"{b.name}: children spent {below} > own {b.spent}")
        return problems


@dataclass(eq=False)
class Reservation:
    budget: Budget
    tokens: int
    settled: bool = False
    # The reservation this one was taken from (`take`): what it does not use goes back there.
    source: Reservation | None = None

    def settle(self, used: int) -> None:
        """Keep `used` tokens as spent and refund the rest (to the reservation it was taken
        from while that is open, else to every level).  `used` must not exceed the
        reservation: the caller checks the backend's report first (ProtocolViolation)."""
        if self.settled:
            raise RuntimeError("reservation settled twice")
        if not 0 <= used <= self.tokens:
            raise ValueError(f"used {used} tokens of a {self.tokens}-token reservation")
        self.settled = True
        back = self.source is not None and not self.source.settled
        for b in self.budget.chain():
            b.reserved -= used if back else self.tokens
            b.spent += used
        if back:
            assert self.source is not None
            self.source.tokens += self.tokens - used

    def release(self) -> None:
        """Refund everything (the request was never answered)."""
        if not self.settled:
            self.settle(0)

    def take(self, tokens: int) -> Reservation:
        """Move ``tokens`` of this open reservation into a new one at the same level (no level's
        totals change): a fork that holds its share for several requests gives each its own,
        and gets back what each did not use."""
        if self.settled:
            raise RuntimeError("cannot take from a settled reservation")
        if not 0 <= tokens <= self.tokens:
            raise ValueError(f"cannot take {tokens} tokens of a {self.tokens}-token reservation")
        self.tokens -= tokens
        return Reservation(self.budget, tokens, source=self)


def split(available: int | None, wants: list[int]) -> list[int]:
    """Tokens for each pending fork: what it wants if everything fits, else a fair share."""
    if available is None or sum(wants) <= available:
        return list(wants)
    k = len(wants)
    if k == 0:
        return []
    # Water-filling: forks wanting less than the equal share keep what they want; the rest is
    # shared equally among the others (the first ones get the remainder, one token each).
    alloc = [0] * k
    remaining = max(0, available)
    pending = sorted(range(k), key=lambda i: (wants[i], i))
    while pending:
        share = remaining // len(pending)
        small = [i for i in pending if wants[i] <= share]
        if not small:
            extra = remaining - share * len(pending)
            for pos, i in enumerate(sorted(pending)):
                alloc[i] = share + (1 if pos < extra else 0)
            break
        for i in small:
            alloc[i] = wants[i]
            remaining -= wants[i]
        pending = [i for i in pending if i not in small]
    return alloc
