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
    "REQUEST_KINDS",
    "Answer",
    "Branch",
    "Branches",
    "ExpectOutcome",
    "FinishReason",
    "NodeLabel",
    "NodeUsage",
    "RunResult",
    "TraceRecord",
    "Usage",
    "result_to_json",
    "usage_to_json",
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
    # Of the completion tokens, those generated inside a thinking phase (`think_max`); and the
    # prompt tokens the runtime injected (`after TEXT`, wrap-ups, closing tags, "Wait").
    thinking_tokens: int = 0
    injected_tokens: int = 0
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
    thinking_tokens: int = 0
    injected_tokens: int = 0
    scoring_tokens: int = 0


class TraceRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One backend request and what came of it, or one decision of the run.  The first record
    `ttc run --trace` writes for a run also carries the run's ``provenance`` (`ttcdsl.provenance`).

    Requests (`REQUEST_KINDS`) carry times, tokens and text; a generation that grows a branch
    also names the branch, the branch it continues and the index of the step it writes.
    Decisions are the search tree's other facts, stamped with the time they were made: ``plan``
    (first record of a run: ``labels``, node id -> step keyword, line and source), ``finish``
    (the ``branches`` a sample or expand finished and their finish reasons in ``values``), ``score``
    (``branches`` and their ``scores``), ``prune`` (``branches`` in, ``kept``), ``resample``
    (``branches`` in, the copies ``kept``, and the branch each copies in ``sources``), ``vote`` (``branches`` that could vote, their
    extracted ``values``, the ``voters`` counted for the ``answer``) and ``result`` (the
    ``branches`` returned, and the ``answer`` if it is one)."""

    kind: str  # a request (generate | warm | reward | tokenize) or a decision (see above)
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
    # Lineage of a generation that grows a branch.
    branch: str | None = None
    parent: str | None = None
    step: int | None = None
    # Decisions.
    branches: list[str] | None = None
    scores: list[float | None] | None = None
    kept: list[str] | None = None
    sources: list[str] | None = None
    values: list[str | None] | None = None
    voters: list[str] | None = None
    answer: str | None = None
    labels: dict[int, NodeLabel] | None = None

    # A request of a thinking budget says its phase ("think" or "answer"); a request that
    # continues injected text says how many of its input tokens were injected.
    phase: str | None = None
    injected_tokens: int = 0
    provenance: dict[str, Any] | None = None


REQUEST_KINDS = ("tokenize", "warm", "generate", "reward")


class NodeLabel(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a trace says about one step node of the program that wrote it."""

    op: str
    strategy: str
    line: int
    source: str = ""


class ExpectOutcome(msgspec.Struct, kw_only=True):
    """One evaluation of an `expect` statement in test mode: where (file, line, column, the
    strategy and the call path / loop iterations it ran in), the condition as written, and whether
    it held."""

    strategy: str
    file: str
    line: int
    col: int
    text: str
    where: str
    held: bool


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


def usage_to_json(usage: Usage | NodeUsage) -> dict[str, Any]:
    """A usage as JSON.  The thinking and injection counts appear only when non-zero (then with
    ``answer_tokens``, the completion tokens outside thinking phases), so a run that uses neither
    reports exactly the four keys of DESIGN §7.  A run's scoring tokens are reported beside its
    usage (``scoring_tokens`` in `result_to_json`), a node's inside it."""
    out: dict[str, Any] = msgspec.to_builtins(usage)
    if isinstance(usage, Usage):
        out.pop("scoring_tokens", None)
    for key in ("thinking_tokens", "injected_tokens"):
        if not out.get(key):
            out.pop(key, None)
    if usage.thinking_tokens:
        out["answer_tokens"] = usage.completion_tokens - usage.thinking_tokens
    return out


def result_to_json(result: RunResult) -> dict[str, Any]:
    return {
        "result": value_to_json(result.value),
        "usage": usage_to_json(result.usage),
        "scoring_tokens": result.usage.scoring_tokens,
        "nodes": [usage_to_json(n) for n in result.nodes],
        "wall_s": round(result.wall_s, 4),
        "strategy": result.strategy,
        "seed": result.seed,
        "budget": result.budget,
        "run_budget": result.run_budget,
        "binding_budget": result.binding_budget,
        "budget_exhausted": result.budget_exhausted,
    }
