"""Rejected calls change nothing (issue 8: "State changed by rejected calls"; SPEC 8), on both backends,
in child processes (hostile_cases/rejected_cases.py).

With max_contexts full, a call that is rejected (a forced event whose lora_id is a float or whose model
name is a list, add_prefix with a bad pod, a batch with one bad event, a match with bad tokens, ...) raises
the TypeError/ValueError it should, leaves stats() and snapshot() identical, and evicts no context: the
next new context evicts the one that was least recently used before the call.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import rejected_cases  # noqa: E402  (on sys.path through runner)

GROUP = "rejected_cases"


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("group", [GROUP])
@pytest.mark.parametrize("item_id", list(rejected_cases.ITEMS))
def test_rejected_call_changes_nothing(item_id, group, backend):
    outcome = runner.item_outcome(group, item_id, backend)
    assert "ok" in outcome, f"{item_id}: the checks around the call failed: {runner.describe(outcome)}"
    result = dict(outcome["ok"]["dict"])
    expected = rejected_cases.EXPECT[item_id]
    assert result["raised"] in expected, (
        f"{item_id}: expected {' or '.join(expected)}, got {result['raised']}: {result['message']}")
    assert result["unchanged"], f"{item_id}: the rejected call changed the index: {result.get('diff')}"
    assert result["evicted"] == ["c0"], (
        f"{item_id}: the next new context evicted {result['evicted']}, not the least recently used 'c0'")
