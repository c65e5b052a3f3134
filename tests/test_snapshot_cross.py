"""Snapshots across backends (issue 12, Deliver 1): the same calls give byte-identical files on both,
each loads the other's, and the loaded tables then answer every later call identically.

They go through ``_snapshot.save_table``/``load_table``, which the backends' ``save``/``load`` wrap, so
that they hold the two backends' halves of the contract (``_export_state``/``_from_state``) to each other.
"""

from __future__ import annotations

import io

import pytest

from helpers import COMPILED, FakeClock
from test_snapshot import TABLE_ARGS, followup, has_snapshots, populate, state_equal
from prefixindex import _core_py, _snapshot

pytestmark = [
    pytest.mark.skipif(COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: only one backend in this run"),
]

BACKENDS = {"python": _core_py, "cython": COMPILED}


def save_bytes(table) -> bytes:
    buf = io.BytesIO()
    _snapshot.save_table(table, buf)
    return buf.getvalue()


def load(name, data: bytes, **kw):
    kw.setdefault("background_eviction", False)
    return _snapshot.load_table(BACKENDS[name].SyncPrefixHashTable, io.BytesIO(data), kw)


def make(name, clock, **kw):
    kw = {**TABLE_ARGS, **kw}
    return BACKENDS[name].SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False, **kw)


def populated(name):
    clock = FakeClock()
    table = make(name, clock)
    populate(table, clock)
    return table, clock


def test_same_calls_give_byte_identical_snapshots():
    (py, _), (cy, _) = populated("python"), populated("cython")
    state_equal(py._export_state(), cy._export_state())
    assert save_bytes(py) == save_bytes(cy)


def test_empty_tables_give_byte_identical_snapshots():
    assert save_bytes(make("python", FakeClock())) == save_bytes(make("cython", FakeClock()))


@pytest.mark.parametrize("writer, reader", [("python", "cython"), ("cython", "python")])
def test_each_loads_the_others_snapshot(writer, reader):
    table, clock = populated(writer)
    data = save_bytes(table)
    other_clock = FakeClock(clock.now)
    loaded = load(reader, data, clock=other_clock)
    assert loaded.snapshot() == table.snapshot() and loaded.stats() == table.stats()
    assert save_bytes(loaded) == data
    # and it answers later calls as the writer's own table does
    expected = followup(table, clock)
    got = followup(loaded, other_clock)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"call {i} of followup differs"
    assert len(got) == len(expected)


@pytest.mark.parametrize("bound", [1, 4, 7])
def test_trimming_overrides_agree(bound):
    table, clock = populated("python")
    data = save_bytes(table)
    loaded = [load(n, data, clock=clock, max_prefixes_per_context=bound, max_contexts=3)
              for n in ("python", "cython")]
    assert loaded[0].snapshot() == loaded[1].snapshot() and loaded[0].stats() == loaded[1].stats()
    assert save_bytes(loaded[0]) == save_bytes(loaded[1])


def test_a_large_random_table_round_trips_across_backends():
    # over 256 pods and 255 prefixes in a context: the 2-byte widths of docs/snapshot.md, stale aliases
    # escaped at that width, on both backends
    import numpy as np

    from helpers import removed, stored
    from prefixindex import _snapshot

    rng = np.random.default_rng(7)
    tables = [make(n, FakeClock(), max_prefixes_per_context=5000) for n in ("python", "cython")]
    for step in range(1200):
        pod = f"pod-{int(rng.integers(0, 500)):03d}"
        blocks = [int(b) for b in rng.integers(0, 400, size=int(rng.integers(1, 6)))]
        engine = [int(h) for h in rng.integers(0, 2**64, size=len(blocks), dtype=np.uint64)]
        for t in tables:
            t.process_block_stored(stored(engine, blocks, pod, model=f"m{step % 2}"))
            if step % 10 == 0:  # an alias, then the original removed: a stale alias (D3)
                t.process_block_stored(stored([e ^ 1 for e in engine], blocks, pod, model=f"m{step % 2}"))
                t.process_block_removed(removed(engine, pod, model=f"m{step % 2}"))
    data = [save_bytes(t) for t in tables]
    assert data[0] == data[1]
    state = _snapshot.read_snapshot(io.BytesIO(data[0]))[0]
    assert max(len(c["pods"]) for c in state["contexts"]) > 256
    assert max(len(c["prefixes"]) for c in state["contexts"]) > 255
    stale = [np.setdiff1d(values, c["prefixes"]).size for c in state["contexts"] for _, values in c["engine"]]
    assert sum(stale) > 0
    for reader in ("python", "cython"):
        loaded = load(reader, data[0], clock=FakeClock())
        assert loaded.snapshot() == tables[0].snapshot()
        assert save_bytes(loaded) == data[0]
