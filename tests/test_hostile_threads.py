"""Threads, context floods and fork() (issue 8: "Writer starvation", "Context floods", "fork()"), each
scenario in a child process with a timeout (hostile_cases/threads_cases.py).

Liveness, not speed: three threads matching in a tight loop must let a fourth finish 200 ten-block
stores within 60 s (and storing threads must let a matcher finish); six threads calling every method
beside the eviction thread all finish; fork() while another thread is inside the table gives a child
whose table works (or raises a RuntimeError about fork), never a hang; a child's table gets an eviction
thread of its own, and a subscriber that ran in the parent answers there (its locks reset) and refuses
to start. The context flood is differential:
with max_contexts=1,000 and 5,000 new contexts, both backends evict the same contexts.
"""

from __future__ import annotations

import os

import pytest

from helpers import BACKENDS, COMPILED
from hostile_cases import runner

LIVENESS = ["threads_cases:writer_not_starved_by_1k_token_matches",
            "threads_cases:writer_not_starved_by_32k_token_matches",
            "threads_cases:readers_not_starved", "threads_cases:every_method_from_many_threads"]
FORK = "threads_cases:fork_while_hammering"
FORK_WORKERS = ["threads_cases:fork_child_keeps_evicting", "threads_cases:fork_while_a_subscriber_is_read"]
FLOOD = "threads_cases:context_flood_differential"
for _scenario in LIVENESS + [FORK] + FORK_WORKERS:
    runner.TIMEOUTS[_scenario] = 100.0  # the child's own bound is 60 s (20 s per fork child)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", LIVENESS)
def test_no_thread_is_starved_or_deadlocked(scenario, backend):
    runner.check_scenario(scenario, backend)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork()")
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", [FORK])
def test_table_works_in_a_child_after_fork(scenario, backend):
    runner.check_scenario(scenario, backend)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork()")
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", FORK_WORKERS)
def test_a_fork_child_keeps_its_eviction_thread_and_can_read_a_subscriber(scenario, backend):
    runner.check_scenario(scenario, backend)


@pytest.mark.skipif(COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1 or no compiled core: nothing to "
                                             "compare the reference with")
@pytest.mark.parametrize("backend", ["cython"])
@pytest.mark.parametrize("scenario", [FLOOD])
def test_context_flood_evicts_the_same_contexts_on_both_backends(scenario, backend):
    runner.check_scenario(scenario, backend)
