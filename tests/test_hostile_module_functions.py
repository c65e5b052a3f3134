"""Differential tests of the module-level functions under hostile arguments (issue 8, Deliver 4 and 9).

``xxh64_digest``, ``prefix_hash_chain`` and ``token_bytes_from_msgpack`` must give identical results and
identical errors (type and message) on both backends, and a size that overflows or exceeds the data is a
ValueError on both. The calls run in child processes (hostile_cases/module_calls.py): a size check that
wraps makes the compiled core read out of bounds, which is a crash reported here as a failure.
"""

from __future__ import annotations

import pytest

from helpers import BACKENDS
from hostile_cases import runner

import module_calls  # noqa: E402  (on sys.path through runner)

GROUP = "module_calls"


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


def _comparable(outcome):
    return {k: v for k, v in outcome.items() if k != "traceback"}


@pytest.mark.parametrize("group", [GROUP])
@pytest.mark.parametrize("item_id", list(module_calls.ITEMS))
def test_module_function_gives_the_same_answer_on_both_backends(item_id, group):
    outcomes = {name: runner.item_outcome(group, item_id, name) for name in sorted(BACKENDS)}
    if item_id in module_calls.EXPECT_VALUE_ERROR:
        for name, outcome in outcomes.items():
            assert outcome.get("raised") == "ValueError", (
                f"{item_id} on the {name} backend: a size that overflows or exceeds the data must be a "
                f"ValueError, but it {runner.describe(outcome)}")
    if len(outcomes) < 2:
        pytest.skip("PREFIXINDEX_NO_EXTENSIONS=1 or no compiled core in this run: nothing to compare with")
    python, cython = _comparable(outcomes["python"]), _comparable(outcomes["cython"])
    assert cython == python, (f"{item_id}: the backends disagree:\n  python {runner.describe(outcomes['python'])}"
                              f"\n  cython {runner.describe(outcomes['cython'])}")
