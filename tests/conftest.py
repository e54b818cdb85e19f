"""Hypothesis profiles for the whole suite.

``ci`` (the default, what the README's test command and `.ci/run` use): derandomized, so every
fresh clone tries exactly the same examples and a green run stays green; no example database
(nothing carried over from an earlier run changes what is tried).

``explore`` (``HYPOTHESIS_PROFILE=explore``): random seeds, 1000 examples for every test that does
not set its own count, the database on, so counterexamples found are replayed next time.  Run it before finishing a change to a
property or to what it tests::

    HYPOTHESIS_PROFILE=explore .venv/bin/python -m pytest -q -p no:cacheprovider

The profile in force is printed in pytest's header.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    # Shared 2-core machines: generation speed varies with the load, not with the code.
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


def pytest_report_header() -> str:
    return f"hypothesis profile: {settings.get_current_profile_name()} (set {PROFILE_ENV}=explore to explore)"
