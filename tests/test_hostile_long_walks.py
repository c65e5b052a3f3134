"""Long walks outside the GIL (issue 8, Deliver 5, 6, 8; docs/architecture.md, "Long walks"), each
scenario in a child process with a timeout (hostile_cases/long_walk_cases.py): changes between a walk
and its result, writers beside long walkers, a change waiting for a walk, and fork() while a walk is
outside the GIL. A crash or a hang is a failure, not a dead test run."""

from __future__ import annotations

import os

import pytest

from helpers import BACKENDS
from hostile_cases import runner

SCENARIOS = ["long_walk_cases:changed_between_walk_and_result", "long_walk_cases:writers_beside_long_walks",
             "long_walk_cases:writer_waits_for_the_gate"]
FORK = "long_walk_cases:fork_while_a_walk_is_outside"
for _scenario in SCENARIOS + [FORK]:
    runner.TIMEOUTS[_scenario] = 120.0  # the child's own bounds are 60 s (20 s per fork child)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_long_walks_stay_exact_and_never_block_a_writer_for_good(scenario, backend):
    runner.check_scenario(scenario, backend)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork()")
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", [FORK])
def test_fork_while_a_walk_is_outside_the_gil(scenario, backend):
    runner.check_scenario(scenario, backend)
