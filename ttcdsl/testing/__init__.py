"""ttcdsl's testing kit: property tests of `.ttc` strategies with hypothesis.

    from ttcdsl.testing import run_strategy, sim_backend, check_invariants, strategies

    result = run_strategy("my.ttc", args={"question": q}, backend=sim_backend(task), seed=s)
    check_invariants(result)      # one AssertionError listing every violated invariant
    result.answer, result.branches, result.usage, result.nodes, result.trace, result.expects

    strategies.sim_tasks(...)           valid simulated tasks
    strategies.backend_behaviours(...)  adversarial scripted models
    strategies.programs(...)            valid .ttc programs
    strategies.seeds()                  run seeds

Modules: `running` (run_strategy, sim_backend, and the first kit's run_on/assert_budgets),
`invariants` (check_invariants), `strategies` (the hypothesis strategies above), `generators`
(the program generators: programs, modules, grammar_programs, keywords) and `cases` (what
`ttc test` runs).  docs/testing.md walks through an example.
"""

from __future__ import annotations

from ttcdsl.testing import strategies
from ttcdsl.testing.generators import grammar_programs, keywords, modules, programs
from ttcdsl.testing.invariants import check_invariants
from ttcdsl.testing.running import (
    CheckedRun,
    StrategyResult,
    assert_budgets,
    run_on,
    run_strategy,
    sim_backend,
)
from ttcdsl.testing.strategies import backend_behaviours, scripts, seeds, sim_tasks

__all__ = [
    "CheckedRun",
    "StrategyResult",
    "assert_budgets",
    "backend_behaviours",
    "check_invariants",
    "grammar_programs",
    "keywords",
    "modules",
    "programs",
    "run_on",
    "run_strategy",
    "scripts",
    "seeds",
    "sim_backend",
    "sim_tasks",
    "strategies",
]
