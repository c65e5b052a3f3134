"""The Router met by the caller's code inside its own calls (hostile_cases/routing_cases.py), with a
table of each backend, each scenario in a child process: a hang or a crash is a failure, and a call
that lands inside one of the router's sections completes or says why it cannot.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import routing_cases  # noqa: E402  (on sys.path through runner)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", [f"routing_cases:{name}" for name in routing_cases.SCENARIOS])
def test_the_callers_code_inside_a_routers_call_never_hangs_it(scenario, backend):
    runner.check_scenario(scenario, backend)
