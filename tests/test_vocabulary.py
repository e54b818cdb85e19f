"""`ttcdsl.vocabulary` agrees with the grammar, the AST and the plan, word for word: the grammar
is the source of truth for syntax, the vocabulary for what the words mean."""

from __future__ import annotations

import re
import typing

import msgspec

from ttcdsl import ast
from ttcdsl import plan as P
from ttcdsl import vocabulary as V
from ttcdsl.parse import grammar_text

GRAMMAR = grammar_text()


def _alternatives(rule: str) -> list[str]:
    """The quoted words of a grammar rule or terminal, with its continuation lines."""
    m = re.search(rf"^{rule}\b.*?:(.*?)(?=^\S|\Z)", GRAMMAR, re.M | re.S)
    assert m is not None, rule
    return re.findall(r'"(\w+)"', m.group(1))


def _rule_names(rule: str) -> list[str]:
    m = re.search(rf"^{rule}: (.*)$", GRAMMAR, re.M)
    assert m is not None, rule
    return [w.strip() for w in m.group(1).split("|")]


def test_the_grammars_word_lists_are_the_vocabularys() -> None:
    assert tuple(_alternatives("TYPE")) == V.PARAM_TYPES
    assert tuple(_alternatives("AGG_KIND")) == V.AGGREGATIONS
    assert tuple(_alternatives("PRUNE_KEY")) == V.PRUNE_ORDERS
    assert tuple(_alternatives("PER_KIND")) == V.PRUNE_GROUPS
    assert tuple(_alternatives("EXTRACTOR")) == V.EXTRACTORS
    assert tuple(_alternatives("scorer")) == tuple(V.SCORERS)
    assert tuple(_alternatives("STOP_RULE")) == V.STOP_RULES
    assert tuple(_alternatives("!resample_method")) == V.RESAMPLE_METHODS
    assert tuple(w for w in _alternatives("resample_by") if w != "by") == V.RESAMPLE_WEIGHTINGS
    assert tuple(_rule_names("_step")) == V.STEP_KINDS
    assert tuple(_rule_names("_pipe_step")) == tuple(f"p{k}" for k in V.PIPE_STEPS)


def test_every_word_the_grammar_spells_is_a_keyword_and_back() -> None:
    spelled = set(re.findall(r'"([a-z_]+)"', GRAMMAR))
    assert spelled == set(V.KEYWORDS)
    assert V.RESERVED_NAMES <= V.KEYWORDS


def test_the_plan_and_the_ast_use_the_vocabularys_types() -> None:
    assert typing.get_args(V.BuiltinName) == tuple(V.BUILTINS)
    assert all(name == b.name for name, b in V.BUILTINS.items())
    assert P.Settings.__struct_fields__ == tuple(V.SAMPLING_KEYS)
    steps = (ast.Sample, ast.Expand, ast.Score, ast.Prune, ast.Vote, ast.Resample)
    assert {c.__name__.lower() for c in steps} == set(V.STEP_KINDS)
    assert {c.__struct_config__.tag for c in P.STEP_NODES} == {*V.STEP_KINDS, "call"}
    budgeted = {c.__struct_config__.tag for c in P.STEP_NODES if issubclass(c, P.Budgeted)}
    assert budgeted == {"sample", "expand", "score", "call"}


def test_sampling_key_ranges_accept_their_defaults_and_reject_the_edges() -> None:
    for key in V.SAMPLING_KEYS.values():
        if key.valid is not None:
            assert key.default is not None and key.valid(key.default), key.name
    top_k = V.SAMPLING_KEYS["top_k"].valid
    assert top_k is not None and [top_k(v) for v in (-2, -1, 0, 1)] == [False, True, False, True]
    assert V.SAMPLING_KEYS["max_tokens"].default == V.DEFAULT_MAX_TOKENS


def test_or_list_reads_like_a_sentence() -> None:
    assert V.or_list(["a"]) == "a"
    assert V.or_list(V.PRUNE_GROUPS) == "root or parent"
    assert V.or_list(V.AGGREGATIONS) == "last, min, mean or prod"


def test_the_new_clauses_of_vote_and_resample_use_the_vocabularys_types_and_defaults() -> None:
    vote, resample = typing.get_type_hints(P.Vote), typing.get_type_hints(P.Resample)
    assert vote["until"] == V.StopRule | None and resample["method"] == V.ResampleMethod
    assert typing.get_type_hints(ast.Vote)["until"] == V.StopRule | None
    assert typing.get_type_hints(ast.Resample)["by"] == V.ResampleWeighting | None
    assert typing.get_type_hints(ast.Resample)["method"] == V.ResampleMethod | None
    defaults = {f.name: f.default for f in msgspec.structs.fields(P.Resample)}
    assert defaults["method"] == V.DEFAULT_RESAMPLE_METHOD and defaults["temperature"] is None
    assert V.DEFAULT_RESAMPLE_WEIGHTING in V.RESAMPLE_WEIGHTINGS and V.DEFAULT_MIN_VOTES >= 1
    assert "resample" in V.RESERVED_NAMES and set(V.STOP_RULES) <= V.KEYWORDS
