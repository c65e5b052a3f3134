"""Snapshot streams that answer with impossible counts, and the slot writer given another class's slot
(hostile_cases/stream_cases.py), on both backends, each in a child process: a hang or a crash is a
failure, and the error says what the stream or class did wrong.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import stream_cases  # noqa: E402  (on sys.path through runner)


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", [f"stream_cases:{name}" for name in stream_cases.SCENARIOS])
def test_an_impossible_count_or_a_foreign_slot_is_an_error(scenario, backend):
    runner.check_scenario(scenario, backend)
