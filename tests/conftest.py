"""Fixtures shared by the whole suite (only fixtures: shared helpers are in tests/helpers.py).

``backend`` is parametrised over every backend that this run can use: the pure-Python one always, the
compiled one unless PREFIXINDEX_NO_EXTENSIONS=1. With PREFIXINDEX_REQUIRE_EXTENSIONS=1 (set by CI) a
compiled core that does not import, or that was built from other sources than the ones checked out,
is an error rather than a silently shorter test run.
"""

from __future__ import annotations

import pytest

# the backends and the clock live in helpers; test modules import them from there, never from here
from helpers import BACKENDS, FakeClock


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The backend module (prefixindex._core_py or prefixindex._core) under test."""
    return BACKENDS[request.param]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_table(backend, clock):
    """make_table(**overrides) -> a table of the backend under test, on the fake clock, with no
    background thread unless asked (background_eviction=True), seed 0 and block_size 4 unless given."""
    made = []

    def make(**overrides):
        overrides.setdefault("seed", 0)
        overrides.setdefault("block_size", 4)
        overrides.setdefault("clock", clock)
        overrides.setdefault("background_eviction", False)
        table = backend.SyncPrefixHashTable(**overrides)
        made.append(table)
        return table

    yield make
    for table in made:
        table.close()


@pytest.fixture
def router_for(make_table, clock):
    """router_for(table=None, **settings) -> a Router on a table of the backend under test (a new one
    unless given), sharing the fake clock unless a clock setting is given."""
    from prefixindex.routing import Router  # here: the routing module is not every test's concern

    def make(table=None, **settings):
        settings.setdefault("clock", clock)
        return Router(table if table is not None else make_table(), **settings)
    return make
