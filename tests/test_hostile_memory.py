"""Running out of memory under an address-space limit (issue 8: "C++ exceptions as aborts"; SPEC 8), on
both backends, one child process per scenario (hostile_cases/memory_cases.py).

add_prefix of 6,000,000 hashes, a BlockStored of 3,000,000 blocks and the prefix hashes of a 16 M-block
query, each under RLIMIT_AS set a little above what the child already uses: a MemoryError, never an abort
(std::bad_alloc in noexcept code); afterwards stats() agree with snapshot() and a smaller store and
match work.
"""

from __future__ import annotations

import sys

import pytest

from helpers import BACKENDS
from hostile_cases import runner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/status and sets RLIMIT_AS: Linux only")

SCENARIOS = ["memory_cases:add_prefix_of_six_million_hashes", "memory_cases:block_stored_of_three_million_blocks",
             "memory_cases:match_of_a_huge_query", "memory_cases:token_ids_that_cannot_fit_in_memory"]


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_out_of_memory_is_a_memory_error(scenario, backend):
    runner.check_scenario(scenario, backend)
