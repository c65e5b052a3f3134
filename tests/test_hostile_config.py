"""Configurations that skip validation, the documented bounds, and __init__ on a live table (issue 8:
"Configs that skip validation"; Deliver 4). Each table is built in a child process per backend
(hostile_cases/config_cases.py): block_size=0 was a SIGFPE and max_contexts=0 a SIGSEGV.

Whatever the config's class, the table validates what it uses: a bad value is a ValueError naming the
field, never SIGFPE/SIGSEGV/OverflowError. Every value the public validation accepts builds a working
table; one past a documented bound is a ValueError naming the field; both backends say the same.
"""

from __future__ import annotations

import pytest

from prefixindex import Config

from helpers import BACKENDS
from hostile_cases import runner

import config_cases  # noqa: E402  (on sys.path through runner)

GROUP = "config_cases"


@pytest.fixture(scope="module", autouse=True)
def _children(request):
    runner.presubmit(request, BACKENDS)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("group", [GROUP])
@pytest.mark.parametrize("item_id", list(config_cases.ITEMS))
def test_table_validates_its_config(item_id, group, backend):
    outcome = runner.item_outcome(group, item_id, backend)
    expect = config_cases.EXPECT[item_id]
    if expect == "built":
        assert outcome.get("ok") == "built", f"{item_id}: a valid config must build a working table, but it " \
                                             f"{runner.describe(outcome)}"
    else:
        field = expect.split(":", 1)[1]
        assert outcome.get("raised") == "ValueError" and field in outcome.get("message", ""), (
            f"{item_id}: expected a ValueError naming {field!r}, but it {runner.describe(outcome)}")


@pytest.mark.parametrize("group", [GROUP])
@pytest.mark.parametrize("item_id", list(config_cases.ITEMS))
def test_both_backends_judge_a_config_alike(item_id, group):
    if len(BACKENDS) < 2:
        pytest.skip("PREFIXINDEX_NO_EXTENSIONS=1 or no compiled core in this run: nothing to compare with")
    python, cython = (runner.item_outcome(group, item_id, name) for name in ("python", "cython"))
    strip = lambda o: {k: v for k, v in o.items() if k != "traceback"}  # noqa: E731
    assert strip(python) == strip(cython), (f"{item_id}: python {runner.describe(python)}\n"
                                            f"  cython {runner.describe(cython)}")


@pytest.mark.parametrize("field,bound", sorted(config_cases.BOUNDS.items()))
def test_config_accepts_each_bound_and_refuses_one_past_it(field, bound):
    assert getattr(Config(**{field: bound}), field) == bound
    with pytest.raises(ValueError, match=field):
        Config(**{field: bound + 1})


@pytest.mark.parametrize("field,value", [("block_size", 2**31), ("max_contexts", 2**64),
                                         ("max_prefixes_per_context", 2**64),
                                         ("eviction_interval_seconds", 2.0**40),
                                         ("eviction_duration_minutes", float("inf"))])
def test_config_refuses_what_used_to_overflow(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("scenario", ["config_cases:init_again_on_a_live_table",
                                      "config_cases:init_again_from_the_clock_caught",
                                      "config_cases:init_again_from_the_clock_uncaught",
                                      "config_cases:table_never_initialised"])
def test_init_on_a_live_table_is_a_runtime_error(scenario, backend):
    runner.check_scenario(scenario, backend)
