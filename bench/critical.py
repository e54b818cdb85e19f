"""What the server did for one client run, and the latency model's ideal wall time for it.

`summarize` turns the server's request log (`bench.simserver`) into a `ServerSide`: requests,
generations (requests that asked for at least one token), prefilled prompt tokens
(``len(input) - cached`` summed over every request, warm-ups included) and `Ideal`.

The ideal is a lower bound on the wall time of *any* client that sends exactly these requests
to a server with this latency model:

* a request costs ``prefill_s * (len(input) - cached) + decode_s * len(output)`` (what the
  simulator sleeps for it; ``/classify``, ``/tokenize`` and the like cost nothing in the model);
* request R *depends on* an earlier request Q when Q had finished before R arrived and R's
  input text begins with Q's input text followed by Q's first output token (R continues what Q
  wrote), or Q was a prefill-only warm-up whose input text begins R's (R waited for it).  The
  comparison is on decoded text, not token ids, so a client that re-tokenizes the text it got
  back (SGLang's frontend does) is judged like one that sends the exact ids;
* ``chain_s``: the costliest chain of dependent requests; ``work_s``: the total cost divided by
  the batch limit (no more than that many requests run at once); ``ideal_s`` is the larger.
  Questions a workload runs one after the other (``in_turn``) are bounded one by one and their
  bounds added.
* ``served_s``: the same bound with each request costing what the server really took to serve
  it (admission past the batch limit to finish, ``t1 - ta``): the larger of its costliest chain
  and its total over the batch limit.  On a loaded machine the simulator sleeps longer than its
  model says, for every client alike; wall / ``served_s`` leaves out the server's own slowness
  and keeps what the client adds: gaps between dependent requests, slots left idle.  It cannot
  see a client that slows the server down (say, by streaming every token), which
  wall / ``ideal_s`` and the wall ratio between clients do see.

* ``queued_s``: not a bound but a schedule: the same requests, each costing what the server
  took to serve it, replayed through the server's own admission rule (at most the batch limit
  running, the rest admitted first come first served) by a client that spends no time at all:
  every request is sent the moment the requests it depends on have finished (at once when it
  depends on none), in the order the client sent them.  wall / ``queued_s`` is the time the
  client itself added; what separates ``queued_s`` from ``served_s`` is the batch limit's
  packing (a partly empty last wave of requests), which no client that cannot foresee the
  lengths of its samples avoids.

Sibling forks never depend on each other (their inputs are the same text, so neither continues
the other), and requests for different prompts never do either.  A ratio wall / ideal of 1.00
means the client added nothing to the latency the model imposes; the bound ignores queueing
order, so the ratio can only overstate a client's overhead, never hide it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Ideal", "ServerSide", "ideal", "replay", "summarize"]


@dataclass(frozen=True)
class Ideal:
    chain_s: float
    work_s: float
    served_s: float
    ideal_s: float
    queued_s: float = 0.0

    def __add__(self, other: Ideal) -> Ideal:
        """The ideal of two request sets run one after the other."""
        return Ideal(self.chain_s + other.chain_s, self.work_s + other.work_s,
                     self.served_s + other.served_s, self.ideal_s + other.ideal_s,
                     self.queued_s + other.queued_s)


@dataclass(frozen=True)
class ServerSide:
    requests: int
    generations: int
    prefilled: int
    ideal: Ideal


def _cost(entry: dict[str, Any], prefill_s: float, decode_s: float) -> float:
    uncached = len(entry["input_ids"]) - entry["cached"]
    return prefill_s * uncached + decode_s * len(entry["output_ids"])


def ideal(log: Sequence[dict[str, Any]], decode: Callable[[Sequence[int]], str], *,
          prefill_s: float, decode_s: float, max_batch: int) -> Ideal:
    """The latency model's ideal for the requests in ``log`` (see the module doc); ``decode``
    turns token ids into text (the simulator's tokenizer)."""
    entries = sorted(log, key=lambda e: e["t0"])
    texts = [decode(e["input_ids"]) for e in entries]
    # What a dependent request's input must begin with: the input itself for a warm-up, else
    # the input and the first output token.
    heads = [t if e["warm"] else t + decode(e["output_ids"][:1]) for t, e in zip(texts, entries)]
    costs = [_cost(e, prefill_s, decode_s) for e in entries]
    finish: list[float] = []  # the chain ending with request i, in model seconds
    served: list[float] = []  # the same, in the seconds the server took
    after: list[list[int]] = []  # the requests each one depends on
    for i, (entry, text) in enumerate(zip(entries, texts)):
        before = before_served = 0.0
        deps = []
        for j in range(i):
            q = entries[j]
            if q["t1"] > entry["t0"] or not (q["warm"] or q["output_ids"]):
                continue
            if len(heads[j]) <= len(text) and text.startswith(heads[j]):
                deps.append(j)
                before = max(before, finish[j])
                before_served = max(before_served, served[j])
        after.append(deps)
        finish.append(before + costs[i])
        served.append(before_served + entry["t1"] - entry["ta"])
    busy = [e["t1"] - e["ta"] for e in entries]
    work = sum(costs) / max_batch if max_batch > 0 else 0.0
    served_work = sum(busy) / max_batch if max_batch > 0 else 0.0
    chain = max(finish, default=0.0)
    return Ideal(chain_s=chain, work_s=work, served_s=max(max(served, default=0.0), served_work),
                 ideal_s=max(chain, work), queued_s=replay(after, busy, max_batch))


def replay(after: Sequence[Sequence[int]], costs: Sequence[float], max_batch: int) -> float:
    """When the last request would finish on a server that runs at most ``max_batch`` requests
    at once (0: no limit) and admits the rest first come first served, if each request ``i``
    (in the client's order) were sent the moment every request in ``after[i]`` had finished and
    took ``costs[i]`` once admitted."""
    waiting = [len(deps) for deps in after]
    unblocks: list[list[int]] = [[] for _ in after]
    for i, deps in enumerate(after):
        for j in deps:
            unblocks[j].append(i)
    ready = [(0.0, i) for i, w in enumerate(waiting) if w == 0]  # (sent at, client order)
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (finishes at, request)
    now = end = 0.0
    while ready or running:
        while ready and (max_batch <= 0 or len(running) < max_batch):
            sent, i = heapq.heappop(ready)
            heapq.heappush(running, (max(now, sent) + costs[i], i))
        now, j = heapq.heappop(running)
        end = max(end, now)
        for i in unblocks[j]:
            waiting[i] -= 1
            if waiting[i] == 0:
                heapq.heappush(ready, (now, i))
    return end


def summarize(log: Sequence[dict[str, Any]], decode: Callable[[Sequence[int]], str], *,
              prefill_s: float, decode_s: float, max_batch: int,
              in_turn: Sequence[str] = ()) -> ServerSide:
    """Counts and the ideal of one client run's requests.  ``in_turn``: questions the client
    ran one after the other (each request belongs to the first whose text is in its input);
    their ideals add up, since the workload itself puts them in sequence."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for entry in log:
        text = decode(entry["input_ids"])
        index = next((i for i, q in enumerate(in_turn) if q in text), len(in_turn))
        groups.setdefault(index, []).append(entry)
    total = Ideal(0.0, 0.0, 0.0, 0.0, 0.0)
    for group in groups.values():
        total += ideal(group, decode, prefill_s=prefill_s, decode_s=decode_s, max_batch=max_batch)
    return ServerSide(
        requests=len(log),
        generations=sum(1 for e in log if not e["warm"]),
        prefilled=sum(len(e["input_ids"]) - e["cached"] for e in log),
        ideal=total,
    )
