"""The plan: what the runtime executes.  Plain, typed, versioned, JSON-serialisable data.

A `Plan` holds one `StrategyPlan` per strategy.  A strategy is a flat table of expression nodes
(`Node`, a msgspec tagged union on the field ``op``) plus a structured body of statements
(`Stmt`, tagged on ``stmt``) that bind, loop, branch and return.  Nodes refer to each other with
typed `Ref`s (never bare strings), ids are assigned deterministically by the lowering pass and are
unique across the whole plan, and every node and statement keeps the `Span` of the source it came
from so a runtime failure can name the `.ttc` line.

The plan knows nothing about execution.  The seven step nodes (the six steps and `Call`) are
`Step`s; those that spend tokens (`sample`, `expand`, `score`, a call) are also `Budgeted`: an
optional `budget` of their own and a static `Bound` on their completion tokens, filled in by
`ttcdsl.bounds.annotate`.  `Step` and `Budgeted` are plain mixins, not Struct bases, so each node
keeps its own field order in the JSON.  `refs(node)` yields the nodes a node reads (the walker:
a plan is a flat table, so this is all the iteration it needs).

Schema evolution follows msgspec's rules: new fields get defaults, nothing is renamed, and
``PLAN_VERSION`` increases when a reader must know.  `encode`/`decode` are the only entry points;
the decoder is built once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal, TypeAlias

import msgspec

from ttcdsl.span import Span
from ttcdsl.vocabulary import (
    DEFAULT_AGGREGATION,
    DEFAULT_EXTRACTOR,
    DEFAULT_PRUNE_GROUP,
    DEFAULT_PRUNE_ORDER,
    DEFAULT_RESAMPLE_METHOD,
    THINK_KEYS,
    Aggregation,
    BuiltinName,
    Extractor,
    PruneOrder,
    PruneScope,
    ResampleMethod,
    ScorerKind,
    StopRule,
    TypeName,
    ValueType,
)

__all__ = [
    "PLAN_VERSION",
    "STEP_NODES",
    "Arith",
    "Bind",
    "Bound",
    "BranchText",
    "Budgeted",
    "Builtin",
    "Call",
    "Compare",
    "Const",
    "Expand",
    "Expect",
    "If",
    "ListOf",
    "Logic",
    "Neg",
    "Node",
    "Not",
    "Param",
    "ParamSpec",
    "Plan",
    "Prompt",
    "Prune",
    "Ref",
    "Repeat",
    "Resample",
    "Return",
    "Sample",
    "Score",
    "Scorer",
    "Settings",
    "Step",
    "Stmt",
    "StrategyPlan",
    "StrategyRef",
    "Union",
    "Var",
    "Vote",
    "decode",
    "encode",
    "refs",
    "to_json",
    "version_for",
]

PLAN_VERSION = 2
"""The newest plan version this reader knows.  Version 2 adds text injection (`Expand.inject`),
`chunk` and the thinking-budget settings; a plan that uses none of them still says version 1
(`version_for`), so a version-1 reader runs it, and refuses one that does instead of silently
dropping what it cannot read."""


class Ref(msgspec.Struct, frozen=True, tag="ref"):
    """A reference to another node of the same strategy."""

    node: int


class StrategyRef(msgspec.Struct, frozen=True):
    """A reference to a strategy of the same plan."""

    name: str


class BranchText(msgspec.Struct, frozen=True, tag="branch"):
    """In a judge template: the text of the branch being graded (`{branch}`)."""


class Bound(msgspec.Struct, frozen=True):
    """Static worst-case completion tokens of a step node: ``per_call`` for one invocation,
    ``calls`` invocations in the worst case (loops multiplied out), ``total`` = their product.
    ``None`` means unbounded or unknown until run time."""

    per_call: int | None
    calls: int | None
    total: int | None


class Settings(msgspec.Struct, frozen=True, omit_defaults=True):
    """The `with` clause of `sample`/`expand`; each value is a node evaluated at run time."""

    max_tokens: Ref | None = None
    temperature: Ref | None = None
    top_p: Ref | None = None
    top_k: Ref | None = None
    min_p: Ref | None = None
    seed: Ref | None = None
    stop: Ref | None = None
    step: Ref | None = None
    chunk: Ref | None = None
    think_max: Ref | None = None
    think_min: Ref | None = None
    think_extend: Ref | None = None
    think_wrapup: Ref | None = None
    think_extend_text: Ref | None = None


class Scorer(msgspec.Struct, frozen=True, omit_defaults=True):
    kind: ScorerKind
    # judge: the template; names resolve to nodes, `{branch}` to the graded branch.
    template: list[str | Ref | BranchText] | None = None
    # verifier: "module:function".
    target: str | None = None


class NodeBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", omit_defaults=True):
    id: int
    span: Span

    @property
    def op(self) -> str:
        """The node's tag in the JSON (`sample`, `const`, ...)."""
        return _tag(self.__struct_config__)


def _tag(config: msgspec.structs.StructConfig) -> str:
    assert isinstance(config.tag, str)
    return config.tag


class Step:
    """Mixin of the step nodes: the six steps and `Call`.  These are what `ttc plan` tabulates
    and what a run reports usage for."""

    __slots__ = ()
    id: int
    span: Span
    __struct_config__: ClassVar[msgspec.structs.StructConfig]

    @property
    def op(self) -> str:
        return _tag(self.__struct_config__)


class Budgeted(Step):
    """Mixin of the steps that spend completion tokens: `sample`, `expand`, `score` and `Call`.
    `budget` is the step's own `budget N` (None: it draws on the enclosing budget); `bound` is its
    static worst case, set by the bounds pass (None before it runs)."""

    __slots__ = ()
    budget: int | None
    bound: Bound | None


class Const(NodeBase, tag="const", frozen=True):
    value: int | float | str | bool | list[str] | None


class Param(NodeBase, tag="param", frozen=True):
    """The value of a strategy parameter."""

    name: str


class Var(NodeBase, tag="var", frozen=True):
    """The current value of a name bound by an earlier statement."""

    name: str


class Prompt(NodeBase, tag="prompt", frozen=True):
    """Text with interpolations: branches interpolate as their best branch's text, answers as
    their value, numbers in decimal."""

    parts: list[str | Ref]


class ListOf(NodeBase, tag="list", frozen=True):
    items: list[Ref]


class Arith(NodeBase, tag="arith", frozen=True):
    """`+ - * / %` on numbers (`/` on two ints is floor division); `+` on two texts concatenates."""

    operator: Literal["+", "-", "*", "/", "%"]
    left: Ref
    right: Ref


class Union(NodeBase, tag="union", frozen=True):
    """`a + b` on branches: all branches of both, in that order."""

    left: Ref
    right: Ref


class Compare(NodeBase, tag="compare", frozen=True):
    operator: Literal["==", "!=", "<", "<=", ">", ">="]
    left: Ref
    right: Ref


class Logic(NodeBase, tag="logic", frozen=True):
    operator: Literal["and", "or"]
    left: Ref
    right: Ref


class Not(NodeBase, tag="not", frozen=True):
    operand: Ref


class Neg(NodeBase, tag="neg", frozen=True):
    operand: Ref


class Builtin(NodeBase, tag="builtin", frozen=True):
    name: BuiltinName
    args: list[Ref] = []


class Call(NodeBase, Budgeted, tag="call", frozen=True):
    """Run another strategy inside the caller's remaining budget (or `budget`, if given)."""

    strategy: StrategyRef
    args: dict[str, Ref]
    budget: int | None = None
    bound: Bound | None = None


class Sample(NodeBase, Budgeted, tag="sample", frozen=True):
    """`count` fresh forks of `prompt`."""

    count: Ref
    prompt: Ref
    settings: Settings = Settings()
    budget: int | None = None
    # Ask the backend for token logprobs (some scorer or prune of this strategy needs them).
    logprobs: bool = False
    bound: Bound | None = None


class Expand(NodeBase, Budgeted, tag="expand", frozen=True):
    """Every unfinished branch forked `count` times from its own tokens; finished ones pass.
    With `inject` (`after TEXT`), each child gets the text's exact tokens before it continues."""

    branches: Ref
    count: Ref
    inject: Ref | None = None
    settings: Settings = Settings()
    budget: int | None = None
    logprobs: bool = False
    bound: Bound | None = None


class Score(NodeBase, Budgeted, tag="score", frozen=True):
    branches: Ref
    scorer: Scorer
    agg: Aggregation = DEFAULT_AGGREGATION
    budget: int | None = None
    bound: Bound | None = None


class Prune(NodeBase, Step, tag="prune", frozen=True):
    branches: Ref
    keep: Ref
    by: PruneOrder = DEFAULT_PRUNE_ORDER
    per: PruneScope = DEFAULT_PRUNE_GROUP


class Vote(NodeBase, Step, tag="vote", frozen=True):
    """The answer most branches give.  An anytime vote (`until` set) takes its branches from the
    `Sample`/`Expand` node `branches` refers to (no other node refers to it), counts votes as they
    finish and stops once the rule `until` reaches `threshold`, never before `min_votes` votes;
    `threshold` and `min_votes` are set exactly when `until` is.  Only branches that finished on
    their own (stop or EOS) vote unless `unfinished` is set (`counting unfinished`)."""

    branches: Ref
    on: Extractor = DEFAULT_EXTRACTOR
    pattern: str | None = None
    weighted: bool = False
    unfinished: bool = False
    until: StopRule | None = None
    threshold: Ref | None = None
    min_votes: Ref | None = None

    def __post_init__(self) -> None:
        if (self.until is None) != (self.threshold is None) or (self.until is None) != (self.min_votes is None):
            raise ValueError("a vote has `until`, `threshold` and `min_votes` all set or all unset")


class Resample(NodeBase, Step, tag="resample", frozen=True):
    """`count` branches drawn with replacement (None: as many as `branches` has), each with a
    probability from its score: softmax(score / `temperature`), or without a temperature the
    scores normalised (negative ones count as 0); drawn by `method`.  Copies keep their root."""

    branches: Ref
    count: Ref | None = None
    temperature: Ref | None = None
    method: ResampleMethod = DEFAULT_RESAMPLE_METHOD


Node: TypeAlias = (
    Const
    | Param
    | Var
    | Prompt
    | ListOf
    | Arith
    | Union
    | Compare
    | Logic
    | Not
    | Neg
    | Builtin
    | Call
    | Sample
    | Expand
    | Score
    | Prune
    | Vote
    | Resample
)
STEP_NODES = (Sample, Expand, Score, Prune, Vote, Resample, Call)
"""The `Step` classes, in the order `ttc plan` documents them."""


class StmtBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="stmt"):
    span: Span


class Bind(StmtBase, tag="bind", frozen=True):
    name: str
    value: Ref


class Repeat(StmtBase, tag="repeat", frozen=True):
    """Run `body` up to `times` times; before each pass, stop if `until` holds (so a loop whose
    condition already holds runs no pass at all)."""

    times: Ref
    until: Ref | None
    body: list[Stmt]


class If(StmtBase, tag="if", frozen=True):
    cond: Ref
    then: list[Stmt]
    orelse: list[Stmt] = []


class Return(StmtBase, tag="return", frozen=True):
    value: Ref


class Expect(StmtBase, tag="expect", frozen=True):
    """`expect COND`: evaluated only when the run asks for it (`RunOptions.expect`, test mode);
    otherwise skipped, so `cond` and the nodes under it cost nothing.  `text` is the condition as
    written, for reports."""

    cond: Ref
    text: str


Stmt: TypeAlias = Bind | Repeat | If | Return | Expect


class ParamSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    type: TypeName
    # The default value (a literal), if any.
    default: int | float | str | bool | None = None
    required: bool = True


class StrategyPlan(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    params: list[ParamSpec]
    nodes: list[Node]
    body: list[Stmt]
    span: Span
    returns: ValueType
    # The strategy's own `budget N tokens`, if any.
    budget: int | None = None
    # `budget EXPR tokens` with an expression of the parameters: its node, evaluated per call.
    budget_expr: Ref | None = None
    # Static worst case of one call (loops multiplied out); None = unbounded.
    worst: int | None = None


class Plan(msgspec.Struct, frozen=True):
    """A whole program: `entry` is the strategy a run starts with."""

    entry: str
    strategies: dict[str, StrategyPlan]
    version: int = 1

    def strategy(self, name: str | None = None) -> StrategyPlan:
        return self.strategies[name or self.entry]


_V2_SETTINGS = ("chunk", *THINK_KEYS)


def version_for(strategies: dict[str, StrategyPlan]) -> int:
    """The oldest plan version that can express ``strategies`` (see `PLAN_VERSION`)."""
    for s in strategies.values():
        for n in s.nodes:
            if isinstance(n, Expand) and n.inject is not None:
                return 2
            if isinstance(n, (Sample, Expand)) and any(getattr(n.settings, k) is not None for k in _V2_SETTINGS):
                return 2
    return 1


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Plan)


def encode(plan: Plan) -> bytes:
    return _ENCODER.encode(plan)


def to_json(plan: Plan) -> bytes:
    """`encode`, indented for people (what `ttc plan --format json` prints, the golden files)."""
    return msgspec.json.format(encode(plan), indent=2)


def decode(data: bytes | str) -> Plan:
    """Decode a plan; a newer `version` than this reader knows is rejected with a clear error."""
    plan = _DECODER.decode(data)
    if plan.version > PLAN_VERSION:
        raise ValueError(
            f"plan version {plan.version} is newer than this ttcdsl understands "
            f"({PLAN_VERSION}); upgrade ttcdsl"
        )
    return plan


# ---- walkers ----


def refs(node: Node | Scorer | Settings) -> Iterator[Ref]:
    """The nodes `node` reads, in field order: operands, items, arguments, prompt and template
    parts, settings."""
    for name in node.__struct_fields__:
        yield from _refs_in(getattr(node, name))


def _refs_in(value: object) -> Iterator[Ref]:
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _refs_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _refs_in(item)
    elif isinstance(value, (Settings, Scorer)):
        yield from refs(value)

