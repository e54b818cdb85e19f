"""Runtime values and run results (msgspec structs).

A `Branch` is one line of generation: its root and parent ids, the prompt it grew from (ids and
text), the token ids and text it generated step by step, how it finished, its cumulative logprob
when known, and its per-step and aggregate scores.  `Branches` is an ordered collection of them;
`Answer` is the outcome of a vote.  `RunResult` is what every run returns: the value, usage per
node and in total, and (optionally) the trace of every request.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Answer",
    "Branch",
    "Branches",
    "FinishReason",
    "NodeUsage",
    "RunResult",
    "TraceRecord",
    "Usage",
    "result_to_json",
    "value_to_json",
]

FinishReason = Literal["stop", "eos", "length", "budget", "abort"]


class Branch(msgspec.Struct, kw_only=True):
    id: str
    root: str
    parent: str | None
    prompt: str
    prompt_ids: tuple[int, ...]
    ids: list[int] = msgspec.field(default_factory=list)
    steps: list[str] = msgspec.field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    logprob: float | None = None  # sum of generated tokens' logprobs, when known
    n_tokens: int = 0
    step_scores: list[float] = msgspec.field(default_factory=list)
    scored_steps: int = 0  # how many steps the step_scores cover
    score: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.steps)

    @property
    def mean_logprob(self) -> float | None:
        if self.logprob is None or self.n_tokens == 0:
            return None
        return self.logprob / self.n_tokens

    def child(self, fork_id: str) -> Branch:
        """A copy that continues from this branch's tokens."""
        return Branch(
            id=fork_id,
            root=self.root,
            parent=self.id,
            prompt=self.prompt,
            prompt_ids=self.prompt_ids,
            ids=list(self.ids),
            steps=list(self.steps),
            logprob=self.logprob,
            n_tokens=self.n_tokens,
            step_scores=list(self.step_scores),
            scored_steps=self.scored_steps,
            score=self.score,
        )


class Branches(msgspec.Struct):
    items: list[Branch]

    def __len__(self) -> int:
        return len(self.items)


class Answer(msgspec.Struct, kw_only=True):
    value: str | None
    support: float
    agreement: float
    votes: dict[str, float]
    branches: list[Branch]
    # Every branch the vote was given (voters, abstainers and the excluded), in input order.
    ballots: list[Branch] = msgspec.field(default_factory=list)
    # Branches left out of the vote because they did not finish on their own (`aggregate.vote`),
    # and whether the winner is backed by unfinished branches only (when they were counted).
    excluded: int = 0
    unfinished_only: bool = False
    # An anytime vote (`vote ... until`) also says how it stopped: the branches that voted, the
    # requests it aborted while they were generating, those it never sent, and whether the
    # stopping rule held (False: every branch voted and the rule never held).  None otherwise.
    used: int | None = None
    aborted: int | None = None
    unsent: int | None = None
    stopped_early: bool | None = None


class Usage(msgspec.Struct, kw_only=True):
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    # Tokens scorers read: a reward model's input (prompt and branch) and a judge's prompts
    # (also in prompt_tokens).  Never charged to a budget; an x axis of `ttc bench`.
    scoring_tokens: int = 0


class NodeUsage(msgspec.Struct, kw_only=True):
    id: int
    op: str
    strategy: str
    file: str
    line: int
    budget: int | None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    calls: int = 0
    wall_s: float = 0.0
    scoring_tokens: int = 0


class TraceRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One backend request and what came of it.  The first record `ttc run --trace` writes for
    a run also carries the run's ``provenance`` (`ttcdsl.provenance`)."""

    kind: str  # generate | warm | reward | tokenize
    node: int
    rid: str = ""
    attempt: int = 1
    t_start: float = 0.0
    t_end: float = 0.0
    input_tokens: int = 0
    max_new_tokens: int | None = None
    seed: int | None = None
    text: str | None = None
    finish: str | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    provenance: dict[str, Any] | None = None


class RunResult(msgspec.Struct, kw_only=True):
    strategy: str
    value: Any
    usage: Usage
    nodes: list[NodeUsage]
    wall_s: float
    seed: int
    budget: int | None  # the strategy's own `budget N tokens`
    budget_exhausted: bool = False
    run_budget: int | None = None  # the run's extra cap (`--budget`)
    # Every branch the run's samples and expansions finished (any reason), in finish order: what
    # `ttc bench` grades for pass@k and majority@k.  Not part of the JSON.
    leaves: list[Branch] = msgspec.field(default_factory=list)

    @property
    def binding_budget(self) -> int | None:
        """The cap that binds the whole run: the smaller of the strategy's and the run's."""
        caps = [b for b in (self.budget, self.run_budget) if b is not None]
        return min(caps) if caps else None


def _branch_json(b: Branch) -> dict[str, Any]:
    return {
        "text": b.text,
        "score": b.score,
        "finished": b.finished,
        "finish_reason": b.finish_reason,
        "tokens": len(b.ids),
        "id": b.id,
        "root": b.root,
        "parent": b.parent,
    }


def _ballot_json(b: Branch, answer: Answer) -> dict[str, Any]:
    return _branch_json(b) | {"voted": any(b is w for w in answer.branches)}


def value_to_json(value: Any) -> Any:
    """The `result` part of `ttc run --json` (DESIGN §7)."""
    if isinstance(value, Answer):
        out: dict[str, Any] = {
            "value": value.value,
            "agreement": value.agreement,
            "support": value.support,
            "votes": value.votes,
            "excluded": value.excluded,
            "unfinished_only": value.unfinished_only,
        }
        out["branches"] = [_ballot_json(b, value) for b in value.ballots]
        if value.used is not None:
            out |= {"used": value.used, "aborted": value.aborted, "unsent": value.unsent,
                    "stopped_early": value.stopped_early}
        return out
    if isinstance(value, Branches):
        return {"branches": [_branch_json(b) for b in value.items]}
    return {"value": value}


_USAGE_KEYS = ("completion_tokens", "prompt_tokens", "cached_tokens", "requests")


def result_to_json(result: RunResult) -> dict[str, Any]:
    return {
        "result": value_to_json(result.value),
        "usage": {k: getattr(result.usage, k) for k in _USAGE_KEYS},
        "scoring_tokens": result.usage.scoring_tokens,
        "nodes": [msgspec.to_builtins(n) for n in result.nodes],
        "wall_s": round(result.wall_s, 4),
        "strategy": result.strategy,
        "seed": result.seed,
        "budget": result.budget,
        "run_budget": result.run_budget,
        "binding_budget": result.binding_budget,
        "budget_exhausted": result.budget_exhausted,
    }
