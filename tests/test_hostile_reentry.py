"""Python code that calls back into the same table during a call (issue 8: "Python code under the
mutex"; SPEC 7), on both backends, one child process per scenario (hostile_cases/reentry_cases.py).

A name's ``__hash__``/``__eq__``, a ``ready_pods`` generator, a ``clock=`` and garbage-collector
finalizers call stats(), snapshot(), match_blocks(), process_block_stored(), add_prefix(), evict_now() or
process_block_removed() while the outer call runs. Each call completes or raises a RuntimeError saying
the table was re-entered; never an abort (SIGABRT "Resource deadlock avoided") or a hang; the child exits
0 and its table is consistent and agrees with a fresh table afterwards.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import reentry_cases  # noqa: E402  (on sys.path through runner)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", [f"reentry_cases:{name}" for name in reentry_cases.SCENARIOS])
def test_reentrant_callback_completes_or_raises_runtime_error(scenario, backend):
    runner.check_scenario(scenario, backend)
