"""The words of the `.ttc` language and what each one means, in one table.

Every stage reads its vocabulary from here: the parser (keywords, the words its error messages
list), the AST and the plan (the `Literal` types of their fields), the checker (builtin
signatures, sampling keys and their types and ranges), lowering (the defaults of omitted
clauses), the bounds pass (what a scorer costs, the `max_tokens` of a request that names none),
the formatter (which scorers take an argument) and the runtime (the same defaults).  The grammar
(`grammar/ttc.lark`) stays the source of truth for *syntax*; tests/test_parse.py checks that its
keyword terminals and this module agree word for word.

Nothing here imports another ttcdsl module: this is the bottom of the front half.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

__all__ = [
    "AGGREGATIONS",
    "BUILTINS",
    "DEFAULT_AGGREGATION",
    "DEFAULT_EXTRACTOR",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MIN_VOTES",
    "DEFAULT_PRUNE_GROUP",
    "DEFAULT_PRUNE_ORDER",
    "DEFAULT_RESAMPLE_METHOD",
    "DEFAULT_RESAMPLE_WEIGHTING",
    "DEFAULT_THINK_EXTEND",
    "DEFAULT_THINK_EXTEND_TEXT",
    "EXTRACTORS",
    "JUDGE_BRANCH",
    "JUDGE_TOKENS",
    "KEYWORDS",
    "NUMERIC",
    "PARAM_TYPES",
    "PIPE_STEPS",
    "PRUNE_GROUPS",
    "PRUNE_NEEDS_LOGPROBS",
    "PRUNE_ORDERS",
    "RESAMPLE_METHODS",
    "RESAMPLE_WEIGHTINGS",
    "RESERVED_NAMES",
    "SAMPLING_KEYS",
    "SCORERS",
    "STEP_KINDS",
    "STOP_RULES",
    "THINK_KEYS",
    "VALUE_TYPES",
    "Aggregation",
    "BuiltinName",
    "BuiltinSig",
    "Extractor",
    "PruneGroup",
    "PruneOrder",
    "PruneScope",
    "ResampleMethod",
    "ResampleWeighting",
    "SamplingKey",
    "ScorerInfo",
    "ScorerKind",
    "StepKind",
    "StopRule",
    "TypeName",
    "ValueType",
    "or_list",
]

# ---- types ----

TypeName: TypeAlias = Literal["text", "int", "float", "bool"]
"""What a strategy parameter can be declared as."""

ValueType: TypeAlias = Literal["text", "int", "float", "bool", "branches", "answer", "list"]
"""What an expression can evaluate to (the checker's types, a strategy's return type)."""

PARAM_TYPES: tuple[TypeName, ...] = get_args(TypeName)
VALUE_TYPES: tuple[ValueType, ...] = get_args(ValueType)
NUMERIC: tuple[ValueType, ...] = ("int", "float")

# ---- steps ----

StepKind: TypeAlias = Literal["sample", "expand", "score", "prune", "vote", "resample"]
STEP_KINDS: tuple[StepKind, ...] = get_args(StepKind)
"""The six steps; each becomes one plan node."""

PIPE_STEPS: tuple[StepKind, ...] = ("expand", "score", "prune", "vote", "resample")
"""The steps that can take their input from the left of a `|`."""

Aggregation: TypeAlias = Literal["last", "min", "mean", "prod"]
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
DEFAULT_AGGREGATION: Aggregation = "last"
"""How `score ... agg KIND` folds a branch's per-step scores; `last` when omitted."""

PruneOrder: TypeAlias = Literal["score", "logprob", "length"]
PRUNE_ORDERS: tuple[PruneOrder, ...] = get_args(PruneOrder)
DEFAULT_PRUNE_ORDER: PruneOrder = "score"
PRUNE_NEEDS_LOGPROBS: frozenset[PruneOrder] = frozenset({"logprob"})

PruneGroup: TypeAlias = Literal["root", "parent"]
PRUNE_GROUPS: tuple[PruneGroup, ...] = get_args(PruneGroup)
PruneScope: TypeAlias = Literal["all", PruneGroup]
DEFAULT_PRUNE_GROUP: PruneScope = "all"
"""`prune ... per root|parent` keeps K per group; without `per` the plan says `all`."""

Extractor: TypeAlias = Literal["number", "boxed", "line", "regex"]
EXTRACTORS: tuple[Extractor, ...] = get_args(Extractor)
DEFAULT_EXTRACTOR: Extractor = "number"
"""What `vote ... on KIND` reads from each branch; only `regex` takes a pattern."""

StopRule: TypeAlias = Literal["agreement", "confidence"]
STOP_RULES: tuple[StopRule, ...] = get_args(StopRule)
"""`vote ... until RULE >= X`: stop once the leader's share of the votes so far (`agreement`), or
the Beta-posterior probability that the leader is ahead of the runner-up (`confidence`), is at
least X."""

DEFAULT_MIN_VOTES = 3
"""`vote ... until ... after N`: no anytime vote stops before N votes; 3 when `after` is omitted."""

ResampleWeighting: TypeAlias = Literal["softmax", "weight"]
RESAMPLE_WEIGHTINGS: tuple[ResampleWeighting, ...] = get_args(ResampleWeighting)
DEFAULT_RESAMPLE_WEIGHTING: ResampleWeighting = "weight"
"""`resample ... by softmax T` draws with softmax(score / T); `by weight` (the default) with the
scores normalised, negative ones counting as 0.  Only `softmax` takes an argument."""

ResampleMethod: TypeAlias = Literal["systematic", "multinomial"]
RESAMPLE_METHODS: tuple[ResampleMethod, ...] = get_args(ResampleMethod)
DEFAULT_RESAMPLE_METHOD: ResampleMethod = "systematic"
"""How `resample` draws its copies: one systematic sweep (the default) or independent draws."""

# ---- scorers ----

DEFAULT_MAX_TOKENS = 256
"""Completion tokens per request of a `sample`/`expand` without `max_tokens`."""

JUDGE_TOKENS = 1
"""Completion tokens a `judge` generation spends per graded branch (it reads P(yes))."""

ScorerKind: TypeAlias = Literal["prm", "logprob", "judge", "verifier"]


@dataclass(frozen=True)
class ScorerInfo:
    """A scorer: its argument (a template for `judge`, a "module:function" for `verifier`), the
    completion tokens it spends per branch, and whether it needs token logprobs."""

    name: ScorerKind
    argument: Literal["template", "target"] | None
    tokens_per_branch: int
    needs_logprobs: bool = False


SCORERS: Mapping[ScorerKind, ScorerInfo] = {
    s.name: s
    for s in (
        ScorerInfo("prm", None, 0),
        ScorerInfo("logprob", None, 0, needs_logprobs=True),
        ScorerInfo("judge", "template", JUDGE_TOKENS),
        ScorerInfo("verifier", "target", 0),
    )
}

JUDGE_BRANCH = "branch"
"""The name a judge template uses for the text of the branch being graded (`{branch}`)."""

# ---- builtins ----

BuiltinName: TypeAlias = Literal[
    "best", "active", "done", "size", "finished", "agreement", "best_score", "budget_left"
]


@dataclass(frozen=True)
class BuiltinSig:
    """A builtin function: its argument types (the arity is their number) and its result."""

    name: BuiltinName
    params: tuple[ValueType, ...]
    result: ValueType


BUILTINS: Mapping[str, BuiltinSig] = {
    b.name: b
    for b in (
        BuiltinSig("best", ("branches",), "branches"),
        BuiltinSig("active", ("branches",), "branches"),
        BuiltinSig("done", ("branches",), "branches"),
        BuiltinSig("size", ("branches",), "int"),
        BuiltinSig("finished", ("branches",), "bool"),
        BuiltinSig("agreement", ("answer",), "float"),
        BuiltinSig("best_score", ("branches",), "float"),
        BuiltinSig("budget_left", (), "int"),
    )
}

# ---- sampling keys ----

DEFAULT_THINK_EXTEND = 1
"""How many times a thinking phase closed before `think_min` is extended when `think_extend` is
omitted."""

DEFAULT_THINK_EXTEND_TEXT = "Wait"
"""What replaces an early closing tag when `think_extend_text` is omitted (s1's choice)."""


@dataclass(frozen=True)
class SamplingKey:
    """A key of a `with` clause: the types its value may have, the value the runtime uses when
    the key is absent (None: no such setting), and, for numbers, the range a literal must be in
    (`rule` says it in words, `valid` tests it)."""

    name: str
    types: tuple[ValueType, ...]
    default: int | float | None = None
    rule: str | None = None
    valid: Callable[[float], bool] | None = None


SAMPLING_KEYS: Mapping[str, SamplingKey] = {
    k.name: k
    for k in (
        SamplingKey("max_tokens", ("int",), DEFAULT_MAX_TOKENS, "at least 1", lambda v: v >= 1),
        SamplingKey("temperature", ("float",), 1.0, "at least 0", lambda v: v >= 0),
        SamplingKey("top_p", ("float",), 1.0, "in (0, 1]", lambda v: 0 < v <= 1),
        SamplingKey("top_k", ("int",), -1, "-1 (no limit) or at least 1", lambda v: not (v == 0 or v < -1)),
        SamplingKey("min_p", ("float",), 0.0, "in [0, 1]", lambda v: 0 <= v <= 1),
        SamplingKey("seed", ("int",)),
        # `stop` ends the branch; `step` ends one step and the branch stays open.
        SamplingKey("stop", ("text", "list")),
        SamplingKey("step", ("text",)),
        # `chunk = N`: at most N tokens as one step; running out of them leaves the branch open
        # (generation in chunks, e.g. to probe a chain between them).  Instead of `max_tokens`.
        SamplingKey("chunk", ("int",)),
        # Thinking budgets (runtime/thinking.py): cap the reasoning phase at `think_max` tokens
        # (then `think_wrapup`, if given, and the closing tag are injected); a phase closed before
        # `think_min` tokens gets its closing tag replaced by `think_extend_text` ("Wait" when
        # omitted), at most `think_extend` times.  Every key but `think_max` needs `think_max`.
        # (No default, so the checker tests their range itself: at least 1.)
        SamplingKey("think_max", ("int",)),
        SamplingKey("think_min", ("int",)),
        SamplingKey("think_extend", ("int",), DEFAULT_THINK_EXTEND, "at least 0", lambda v: v >= 0),
        SamplingKey("think_wrapup", ("text",)),
        SamplingKey("think_extend_text", ("text",)),
    )
}

THINK_KEYS: tuple[str, ...] = tuple(k for k in SAMPLING_KEYS if k.startswith("think_"))
"""The sampling keys of a thinking budget (they need the model's thinking tags at run time)."""

# ---- keywords ----

RESERVED_NAMES: frozenset[str] = frozenset({*STEP_KINDS, "not", "true", "false"})
"""Words that start an expression: a value bound to such a name could never be read back."""

KEYWORDS: frozenset[str] = frozenset({
    "import", "strategy", "budget", "tokens", "repeat", "until", "if", "else", "return", "expect",
    "and", "or", "from", "by", "with", "keep", "agg", "per", "on", "weighted", "after", "to",
    *RESERVED_NAMES, *SCORERS, *PARAM_TYPES, *AGGREGATIONS, *PRUNE_ORDERS, *PRUNE_GROUPS,
    *EXTRACTORS, *STOP_RULES, *RESAMPLE_WEIGHTINGS, *RESAMPLE_METHODS,
})
"""Every word the grammar spells out.  Most are contextual (`score` is a step and a prune
order; `line` can still name a value); only `RESERVED_NAMES` cannot name a value."""


def or_list(words: tuple[str, ...] | list[str]) -> str:
    """`a, b or c`: how error messages list alternatives."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
