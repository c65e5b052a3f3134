"""Names given as str/int subclasses, on both backends, each scenario in a child process
(hostile_cases/names_cases.py; issue 8: "use after free", "state changed by rejected calls").

A str subclass as model name, pod or ready_pods member (a ``__hash__`` that changes on every call or
raises, an ``__eq__`` that lies, an ``enum`` of pods) is stored as the plain str of the same text: no
crash, one context per text, exact str keys in snapshot() and in match results, an Enum pod matching as
its value text. A model name that is not a str is a TypeError that changes nothing.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import names_cases  # noqa: E402  (on sys.path through runner)

SCENARIOS = [f"names_cases:{kind}_as_{role}" for kind in names_cases.MAKERS for role in names_cases.ROLES] + [
    "names_cases:int_subclass_lora_ids",
    "names_cases:non_str_names_are_type_errors",
]


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_names_are_stored_as_plain_str(scenario, backend):
    runner.check_scenario(scenario, backend)
