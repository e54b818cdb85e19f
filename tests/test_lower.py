"""Stage 3 (`ttcdsl.lower` -> `ttcdsl.plan`): golden plans for every core form, what lowering
makes of names, prompts, `+` and defaults, and that plans round-trip through JSON.

Golden files: `tests/fixtures/plans/NAME.ttc` -> `NAME.plan.json` (`ttcdsl.plan.to_json` of the
plan compiled from inside that folder, so spans read `NAME.ttc`).  After an intended change,
regenerate them with

    TTC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_lower.py

and review the diff: the golden files are the specification of lowering.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from ttcdsl import ast
from ttcdsl import plan as P
from ttcdsl.compiler import compile_file, compile_source
from ttcdsl.errors import UsageError
from ttcdsl.plan import to_json
from ttcdsl.testing import programs

PLANS = Path(__file__).resolve().parent / "fixtures" / "plans"
GOLDEN = sorted(p.name for p in PLANS.glob("*.ttc"))
UPDATE = os.environ.get("TTC_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("name", GOLDEN)
def test_plan_matches_golden_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PLANS)
    produced = to_json(compile_file(name).plan).decode() + "\n"
    golden = PLANS / name.replace(".ttc", ".plan.json")
    if UPDATE:
        golden.write_text(produced)
    assert golden.exists(), f"no golden file for {name}: run with TTC_UPDATE_GOLDEN=1 and review it"
    assert produced == golden.read_text(), f"{name}: plan differs from {golden.name} (see the module docstring)"


def test_golden_fixtures_cover_every_core_form() -> None:
    ops: set[str] = set()
    stmts: set[str] = set()
    clauses: set[str] = set()
    for name in GOLDEN:
        data = msgspec.json.decode((PLANS / name.replace(".ttc", ".plan.json")).read_bytes())
        for s in data["strategies"].values():
            for n in s["nodes"]:
                ops.add(n["op"])
                clauses.update(f"{n['op']}.{k}={v}" for k, v in n.items() if k in ("agg", "by", "per", "on", "weighted", "until", "method"))
                clauses.update(f"{n['op']}.{k}" for k in ("count", "temperature", "min_votes") if n["op"] in ("vote", "resample") and k in n)
                clauses.update(f"setting.{k}" for k in n.get("settings", {}))
                if n["op"] == "score":
                    clauses.add(f"scorer.{n['scorer']['kind']}")
                if n.get("budget") is not None:
                    clauses.add(f"{n['op']}.budget")
            pending = list(s["body"])
            while pending:
                st = pending.pop()
                stmts.add(st["stmt"] + (".until" if st.get("until") else ""))
                pending += st.get("body", []) + st.get("then", []) + st.get("orelse", [])
    assert ops >= {"const", "param", "var", "prompt", "list", "arith", "union", "compare", "logic",
                   "not", "neg", "builtin", "call", "sample", "expand", "score", "prune", "vote", "resample"}
    assert stmts >= {"bind", "repeat", "repeat.until", "if", "return"}
    assert clauses >= {
        *(f"setting.{k}" for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "step")),
        "scorer.prm", "scorer.judge", "scorer.logprob", "scorer.verifier",
        "score.agg=min", "score.agg=mean", "score.agg=prod", "score.agg=last",
        "prune.by=score", "prune.by=logprob", "prune.by=length", "prune.per=root", "prune.per=parent",
        "vote.on=number", "vote.on=boxed", "vote.on=line", "vote.on=regex", "vote.weighted=True",
        "vote.until=agreement", "vote.until=confidence", "vote.min_votes",
        "resample.count", "resample.temperature", "resample.method=systematic", "resample.method=multinomial",
        "sample.budget", "expand.budget", "score.budget", "call.budget",
    }


def test_each_template_is_parsed_once_between_check_and_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = ast.parse_template

    def counting(value: str) -> ast.Template:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(ast, "parse_template", counting)
    compile_source(textwrap.dedent("""\
        strategy s(question: text, hint: text = "none") {
            p = "Q: {question} ({hint})"
            b = sample 2 from p with stop = ["\\n\\n", "END"] | score with judge("Is {branch} right for {question}?")
            return b
        }
    """))
    assert sorted(seen) == sorted(["none", "Q: {question} ({hint})", "\n\n", "END", "Is {branch} right for {question}?"])


def test_refs_walk_every_input_of_a_node_in_field_order() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text) {
            b = sample 2 from question with max_tokens = 8, seed = 3
            return score b with judge("{question}: {branch}?") budget 20
        }
    """)
    by_id = {n.id: n for n in nodes}
    sample = next(n for n in nodes if isinstance(n, P.Sample))
    assert [by_id[r.node].op for r in P.refs(sample)] == ["const", "param", "const", "const"]
    score = next(n for n in nodes if isinstance(n, P.Score))
    assert [by_id[r.node].op for r in P.refs(score)] == ["var", "param"]
    assert isinstance(score, P.Budgeted) and score.budget == 20 and score.op == "score"


def entry_nodes(source: str) -> list[P.Node]:
    return list(compile_source(textwrap.dedent(source)).plan.strategy().nodes)


def test_parameters_become_param_nodes_until_reassigned() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text, n: int = 2) {
            n = n + 1
            return sample n from question
        }
    """)
    names = [(type(n).__name__, getattr(n, "name", None)) for n in nodes if isinstance(n, (P.Param, P.Var))]
    assert names == [("Var", "n"), ("Var", "n"), ("Param", "question")]


def test_prompt_interpolation_becomes_parts_and_literal_braces_fold_to_constants() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text) {
            return sample 1 from ("Q: {question} {{x}}" + "{{y}}")
        }
    """)
    prompt = next(n for n in nodes if isinstance(n, P.Prompt))
    assert prompt.parts[0] == "Q: " and isinstance(prompt.parts[1], P.Ref) and prompt.parts[2] == " {x}"
    assert any(isinstance(n, P.Const) and n.value == "{y}" for n in nodes)


def test_plus_on_branches_is_a_union_and_on_numbers_arithmetic() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text, n: int = 2) {
            both = sample n - 1 from question + sample n * 2 from question
            return both
        }
    """)
    assert [type(n).__name__ for n in nodes if isinstance(n, (P.Union, P.Arith))] == ["Arith", "Arith", "Union"]


def test_omitted_clauses_lower_to_their_defaults() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text) {
            return sample 2 from question | score with prm | prune keep 1 | vote
        }
    """)
    score = next(n for n in nodes if isinstance(n, P.Score))
    prune = next(n for n in nodes if isinstance(n, P.Prune))
    vote = next(n for n in nodes if isinstance(n, P.Vote))
    assert (score.agg, score.budget, prune.by, prune.per, vote.on, vote.weighted) == ("last", None, "score", "all", "number", False)


def test_an_anytime_vote_reads_a_step_no_other_node_reads_and_defaults_after_to_3() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text, n: int = 8) {
            b = sample n from question
            return vote (sample n from question) until agreement >= 0.8
        }
    """)
    by_id = {n.id: n for n in nodes}
    vote = next(n for n in nodes if isinstance(n, P.Vote))
    assert (vote.until, vote.on, vote.weighted) == ("agreement", "number", False)
    assert vote.threshold is not None and vote.min_votes is not None
    assert isinstance(by_id[vote.branches.node], P.Sample)
    readers = [n.id for n in nodes if vote.branches in P.refs(n)]
    assert readers == [vote.id]
    assert [by_id[r.node] for r in P.refs(vote)][1:] == [
        P.Const(id=vote.threshold.node, span=by_id[vote.threshold.node].span, value=0.8),
        P.Const(id=vote.min_votes.node, span=vote.span, value=3),
    ]


def test_an_ordinary_vote_keeps_its_json_and_a_half_set_anytime_vote_is_refused() -> None:
    nodes = entry_nodes("strategy s(q: text) {\n    return sample 2 from q | vote\n}\n")
    vote = next(n for n in nodes if isinstance(n, P.Vote))
    assert vote.until is None and vote.threshold is None and vote.min_votes is None
    encoded = msgspec.json.decode(msgspec.json.encode(vote))
    assert set(encoded) == {"op", "id", "span", "branches"}
    with pytest.raises(ValueError, match="all set or all unset"):
        P.Vote(id=1, span=vote.span, branches=P.Ref(2), until="confidence", threshold=P.Ref(3))
    encoded.update(until="agreement", threshold={"type": "ref", "node": 1})
    with pytest.raises(msgspec.ValidationError, match="all set or all unset"):
        msgspec.json.decode(msgspec.json.encode(encoded), type=P.Vote)


def test_resample_lowers_omitted_clauses_to_none_and_systematic() -> None:
    nodes = entry_nodes("""\
        strategy s(q: text, k: int = 3) {
            b = sample 4 from q | score with prm
            c = resample b
            d = b | resample to k by softmax 0.5 multinomial
            return resample (c + d) by weight
        }
    """)
    by_id = {n.id: n for n in nodes}
    plain, tuned, union = [n for n in nodes if isinstance(n, P.Resample)]
    assert (plain.count, plain.temperature, plain.method) == (None, None, "systematic")
    assert tuned.count is not None and isinstance(by_id[tuned.count.node], P.Param)
    assert tuned.temperature is not None and by_id[tuned.temperature.node] == P.Const(
        id=tuned.temperature.node, span=by_id[tuned.temperature.node].span, value=0.5)
    assert tuned.method == "multinomial" and isinstance(by_id[union.branches.node], P.Union)
    assert (union.count, union.temperature) == (None, None)
    assert isinstance(plain, P.Step) and not isinstance(plain, P.Budgeted) and plain.op == "resample"


def test_logprob_scoring_or_pruning_asks_every_generation_for_logprobs() -> None:
    with_logprobs = entry_nodes("strategy s(q: text) {\n    return sample 2 from q | prune keep 1 by logprob\n}\n")
    without = entry_nodes("strategy s(q: text) {\n    return sample 2 from q | prune keep 1 by length\n}\n")
    assert [n.logprobs for n in with_logprobs if isinstance(n, P.Sample)] == [True]
    assert [n.logprobs for n in without if isinstance(n, P.Sample)] == [False]


def test_judge_template_resolves_names_and_the_graded_branch() -> None:
    nodes = entry_nodes("""\
        strategy s(question: text) {
            return sample 2 from question | score with judge("Q: {question}\\nA: {branch}\\nRight?")
        }
    """)
    score = next(n for n in nodes if isinstance(n, P.Score))
    template = score.scorer.template
    assert template is not None
    assert template[0] == "Q: " and isinstance(template[1], P.Ref)
    assert template[2:] == ["\nA: ", P.BranchText(), "\nRight?"]


def test_node_ids_are_unique_across_strategies_and_stable() -> None:
    source = (PLANS / "calls.ttc").read_text()
    first = compile_source(source, "calls.ttc", base=PLANS).plan
    second = compile_source(source, "calls.ttc", base=PLANS).plan
    assert first == second
    ids = [n.id for s in first.strategies.values() for n in s.nodes]
    assert len(ids) == len(set(ids))


def test_entry_defaults_to_the_last_strategy_and_can_be_chosen() -> None:
    source = "strategy a(q: text) {\n    return q\n}\nstrategy b(q: text) {\n    return q\n}\n"
    assert compile_source(source).plan.entry == "b"
    assert compile_source(source, entry="a").plan.entry == "a"
    with pytest.raises(UsageError, match="no strategy named 'c' in <string>; it defines: a, b"):
        compile_source(source, entry="c")


def test_plan_json_round_trips_for_the_golden_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PLANS)
    for name in GOLDEN:
        plan = compile_file(name).plan
        assert P.decode(P.encode(plan)) == plan
        assert P.decode(to_json(plan)) == plan


def test_a_plan_from_a_newer_version_is_rejected_clearly() -> None:
    data = msgspec.json.decode(P.encode(compile_source("strategy s(q: text) {\n    return q\n}\n").plan))
    data["version"] = P.PLAN_VERSION + 1
    with pytest.raises(ValueError, match="newer than this ttcdsl understands"):
        P.decode(msgspec.json.encode(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_generated_programs_compile_and_their_plans_round_trip(source: str) -> None:
    plan = compile_source(source).plan
    assert P.decode(P.encode(plan)) == plan
    assert P.decode(to_json(plan)) == plan
    assert plan.strategy().returns in ("answer", "branches")
    assert plan.strategy().params[0] == P.ParamSpec("question", "text")
