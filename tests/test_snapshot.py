"""Snapshots (issue 12, docs/snapshot.md): round trips on each backend, every field, and a loaded
table that answers later calls exactly as the saved one.

``populate`` drives a table through a call sequence that leaves every kind of state a snapshot must
carry (several contexts in a known recency order, shared prefixes, stale aliases of both encodings,
entries without engine hashes, trimmed contexts, distinct idle times, every counter non-zero);
``followup`` is a sequence of later calls whose every result is recorded, so that an original table
and its loaded copy can be compared call by call. The other test_snapshot_*.py files import these.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from helpers import FakeClock
from helpers import STAT_KEYS, chain, removed, stored, toks
from prefixindex import AllBlocksCleared, BlockRemoved
from prefixindex import _snapshot

TABLE_ARGS = dict(max_contexts=5, max_prefixes_per_context=12, eviction_duration_minutes=1.0)


def has_snapshots(backend) -> bool:
    """Every backend takes snapshots; kept as a check that fails loudly if one stops doing so."""
    cls = backend.SyncPrefixHashTable
    assert all(hasattr(cls, name) for name in ("save", "load", "_export_state", "_from_state")), backend
    return True


def skip_without_snapshots(backend) -> None:
    """(Named for the days before the compiled core had snapshots.) Fails if the backend has none."""
    has_snapshots(backend)


@pytest.fixture
def snap_make(backend, make_table):
    """make_table, for a backend that has snapshot support."""
    skip_without_snapshots(backend)
    return make_table


def populate(table, clock: FakeClock) -> None:
    """A call sequence that leaves every kind of state a snapshot carries (made with TABLE_ARGS)."""
    table.process_block_stored(stored([1, 2, 3], [0, 1, 2], "a"))
    table.process_block_stored(stored([11, 12], [0, 1], "b"))
    table.process_block_stored(stored([13], [5], "b", parent=12))
    table.process_block_stored(stored([99], [0], "a"))  # an alias of engine hash 1 (D3)
    table.process_block_removed(removed([1], "a"))  # 99 stays, stale; "b" still holds its prefix
    table.process_block_stored(stored([50], [9], "a", parent=12345))  # an orphan
    table.process_block_stored(stored([61], [0], "w", model="w"))
    clock.advance(7.25)
    # a stale alias whose prefix leaves the context altogether: encoded with the escape
    table.process_block_stored(stored([5, 7], [0, 1], "c", model="m", lora=7))
    table.process_block_stored(stored([6], [0], "c", model="m", lora=7))
    table.process_block_removed(removed([5], "c", model="m", lora=7))
    clock.advance(3.5)
    table.process_block_stored(stored([2**64 - 1, 0], [3, 4], "ポッド", model="μοντέλο-ß", lora=2**63 - 1))
    table.process_block_stored(stored([21, 22], [1, 2], "e", model="x"))
    table.process_block_stored(stored([23], [3], "f", model="x"))
    table.process_all_blocks_cleared(AllBlocksCleared("f", "x", -1))
    clock.advance(30.0)
    assert table.match_blocks("m", -1, toks(0, 1, 5)) == {"b": 3}
    table.add_prefix("m", -1, "d", chain(20, 21))
    table.add_prefix("", -2**63, "d", chain(7, 8))  # entries without engine hashes; the sixth context:
    table.add_prefix("", -2**63, "d", chain(*range(20, 33)))  # "w" goes (D5); 15 > 12: a trim (D4)
    clock.advance(40.0)
    table.process_block_stored(stored([14], [6], "b", parent=13))
    table.process_block_stored(stored([15], [8], "a"))
    clock.advance(5.0)
    table.process_block_stored(stored([8], [2], "c", model="m", lora=7, parent=7))
    clock.advance(5.0)
    table.process_block_stored(stored([2**64 - 1], [3], "ポッド", model="μοντέλο-ß", lora=2**63 - 1))
    table.add_prefix("", -2**63, "d", chain(7))
    clock.advance(15.0)
    assert table.evict_now() == {"contexts": 1, "pods": 1}  # "x" (idle 95 s) and "d" in "m" (65 s)
    table.process_block_removed(BlockRemoved([12], "m", -1, ""))
    clock.advance(1.5)


def followup(table, clock: FakeClock) -> list:
    """Later calls on a populated table; every result, snapshot() and stats() recorded along the way."""
    out = []

    def record(result=None):
        if isinstance(result, tuple):
            result = (result[0], result[1].tolist())
        out.append((result, table.snapshot(), table.stats()))

    record(table.match_blocks("m", -1, toks(0, 1, 5, 6), ready_pods=["a", "b", "zz"]))
    record(table.match_prefix("m", -1, toks(0, 1, 2)))
    record(table.match("μοντέλο-ß", 2**63 - 1, toks(3, 4)))
    # the stale alias 99 of "a" is unknown: its child is an orphan (D3)...
    record(table.process_block_stored(stored([100], [1], "a", parent=99)))
    # ...until "a" holds that prefix again, through another engine hash: then 99 is known again
    record(table.process_block_stored(stored([101], [0], "a")))
    record(table.process_block_stored(stored([102], [7], "a", parent=99)))
    record(table.process_block_removed(removed([99], "a")))
    # the same for the escaped alias 6 of "c" in ("m", 7), whose prefix had left the context
    record(table.process_block_stored(stored([103], [1], "c", model="m", lora=7, parent=6)))
    record(table.process_block_stored(stored([104], [0], "c", model="m", lora=7)))
    record(table.process_block_stored(stored([105], [9], "c", model="m", lora=7, parent=6)))
    record(table.process_block_removed(BlockRemoved([13, 14], "m", -1, "")))
    record(table.process_block_stored(stored([2**64 - 1], [3], "ポッド", model="μοντέλο-ß", lora=2**63 - 1)))
    record(table.add_prefix("", -2**63, "d", chain(*range(40, 52))))  # a trim: the oldest ticks go (D4)
    record(table.match_blocks("", -2**63, toks(7, 8)))
    record(table.remove_prefix("m", -1, "b"))
    clock.advance(30.0)
    record(table.evict_now())
    for k in range(4):  # new contexts: the least recently used go (D5)
        record(table.process_block_stored(stored([200 + k], [k], "n", model=f"new{k}")))
    clock.advance(31.0)
    record(table.evict_now())
    clock.advance(60.5)
    record(table.evict_now())
    return out


def save_bytes(table) -> bytes:
    buf = io.BytesIO()
    table.save(buf)
    return buf.getvalue()


def state_equal(a: dict, b: dict) -> None:
    """Two exported states are the same, field by field (arrays by value and dtype)."""
    assert a["config"] == b["config"]
    assert a["counters"] == b["counters"]
    assert len(a["contexts"]) == len(b["contexts"])
    for ca, cb in zip(a["contexts"], b["contexts"]):
        assert set(ca) == set(cb)
        for field in ("model", "lora", "idle", "pods"):
            assert ca[field] == cb[field], field
        for field in ("prefixes", "pod_idle", "entry_pod_counts", "entry_pods"):
            assert ca[field].dtype == cb[field].dtype and ca[field].tolist() == cb[field].tolist(), field
        assert len(ca["engine"]) == len(cb["engine"])
        for (ka, va), (kb, vb) in zip(ca["engine"], cb["engine"]):
            assert ka.tolist() == kb.tolist() and va.tolist() == vb.tolist()


def test_populate_covers_every_kind_of_state(snap_make, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    state = table._export_state()
    assert all(v > 0 for v in state["counters"].values()), state["counters"]
    assert set(state["counters"]) == set(STAT_KEYS[4:])
    keys = [(c["model"], c["lora"]) for c in state["contexts"]]
    assert keys == [("m", -1), ("m", 7), ("μοντέλο-ß", 2**63 - 1), ("", -2**63)]
    assert [c["idle"] for c in state["contexts"]] == [26.5, 21.5, 16.5, 16.5]
    ctx_m = state["contexts"][0]
    assert ctx_m["pods"] == ["a", "b"] and len(ctx_m["prefixes"]) <= 12
    assert ctx_m["pod_idle"].tolist() == [26.5, 26.5]
    engine_a = dict(zip(*(x.tolist() for x in ctx_m["engine"][0])))
    assert engine_a[99] == chain(0)[0] and 1 not in engine_a  # the stale alias is exported
    ctx_7 = state["contexts"][1]
    engine_c = dict(zip(*(x.tolist() for x in ctx_7["engine"][0])))
    assert engine_c[6] == chain(0)[0] and chain(0)[0] not in ctx_7["prefixes"].tolist()  # escaped
    assert state["contexts"][3]["engine"][0][0].size == 0  # add_prefix records no engine hashes


def test_round_trip_every_field(snap_make, backend, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    data = save_bytes(table)
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(data), clock=clock, background_eviction=False)
    state_equal(loaded._export_state(), table._export_state())
    # what the file says equals what the table exports (the decoder is the loader's)
    decoded, extra, size = _snapshot.read_snapshot(io.BytesIO(data))
    state_equal(decoded, table._export_state())
    assert extra == b"" and size == len(data)
    assert loaded.snapshot() == table.snapshot()
    assert loaded.stats() == table.stats()
    assert loaded.config == table.config and loaded.seed == table.seed and loaded.block_size == 4
    assert save_bytes(loaded) == data  # saving a loaded table gives back its bytes


def test_same_calls_give_the_same_bytes(snap_make):
    clocks = [FakeClock(), FakeClock()]
    tables = [snap_make(clock=c, **TABLE_ARGS) for c in clocks]
    for t, c in zip(tables, clocks):
        populate(t, c)
    assert save_bytes(tables[0]) == save_bytes(tables[1])


@pytest.mark.parametrize("elsewhere", [0.0, 12345.0, -900.0])
def test_loaded_table_answers_later_calls_as_the_original(snap_make, backend, clock, elsewhere):
    # the loaded table's clock may read anything: idle times continue from the save (docs/snapshot.md)
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    other = FakeClock(clock.now + elsewhere)
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(save_bytes(table)), clock=other,
                                              background_eviction=False)
    expected = followup(table, clock)
    got = followup(loaded, other)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"call {i} of followup differs"
    if elsewhere == 0.0:
        assert save_bytes(loaded) == save_bytes(table)


def test_recency_orders_come_back(snap_make, backend, clock):
    table = snap_make(max_contexts=3, max_prefixes_per_context=8)
    for k, model in enumerate(["p", "q", "r"]):
        table.process_block_stored(stored([k * 10 + i for i in range(4)], [0, 1, 2, 3], "a", model=model))
    table.match_blocks("p", -1, toks(0))  # contexts now q, r, p; in "p" block 0 is the newest
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(save_bytes(table)), clock=clock,
                                              background_eviction=False)
    for t in (table, loaded):
        t.process_block_stored(stored([90], [0], "b", model="s"))  # evicts the LRU context: "q"
        t.process_block_stored(stored([91, 92, 93, 94, 95], [4, 5, 6, 7, 8], "a", model="p", parent=3))
    assert loaded.snapshot() == table.snapshot()
    assert set(table.snapshot()) == {("r", -1), ("p", -1), ("s", -1)}
    remaining = set(table.snapshot()[("p", -1)])
    assert chain(0)[0] in remaining and len(remaining) == 8 - 8 // 4  # block 0 was newest: it stayed


def test_empty_table_round_trip(snap_make, backend, clock):
    table = snap_make()
    data = save_bytes(table)
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(data), clock=clock, background_eviction=False)
    assert loaded.snapshot() == {} and loaded.stats() == table.stats()
    assert save_bytes(loaded) == data


def test_counters_continue(snap_make, backend, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    before = table.stats()
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(save_bytes(table)), clock=clock,
                                              background_eviction=False)
    loaded.match_blocks("m", -1, toks(0))
    assert loaded.stats()["matches"] == before["matches"] + 1


def test_a_loaded_table_starts_its_eviction_thread_when_asked(snap_make, backend, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    data = save_bytes(table)
    with backend.SyncPrefixHashTable.load(io.BytesIO(data), clock=clock) as loaded:
        assert loaded.eviction_thread_alive
    with backend.SyncPrefixHashTable.load(io.BytesIO(data), background_eviction=False) as loaded:
        assert not loaded.eviction_thread_alive


def test_idle_times_continue_from_the_save(snap_make, backend, clock):
    table = snap_make(eviction_duration_minutes=1.0)
    table.process_block_stored(stored([1], [0], "a"))
    table.process_block_stored(stored([2], [0], "b", model="other"))
    clock.advance(50.0)
    table.process_block_stored(stored([3], [0], "b"))  # context "m" and pod "b" fresh; "a" idle 50 s
    later = FakeClock(1e6)
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(save_bytes(table)), clock=later,
                                              background_eviction=False)
    later.advance(9.5)
    assert loaded.evict_now() == {"contexts": 0, "pods": 0}
    later.advance(1.0)  # "a" idle 60.5 s in "m", "other" idle 60.5 s
    assert loaded.evict_now() == {"contexts": 1, "pods": 1}
    assert loaded.snapshot() == {("m", -1): {chain(0)[0]: frozenset({"b"})}}


def test_export_state_is_canonical(snap_make, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    state = table._export_state()
    for c in state["contexts"]:
        assert c["prefixes"].dtype == np.uint64 and c["pod_idle"].dtype == np.float64
        assert c["entry_pod_counts"].dtype == np.uint32 and c["entry_pods"].dtype == np.uint32
        assert c["pods"] == sorted(c["pods"])
        for keys, values in c["engine"]:
            assert keys.dtype == values.dtype == np.uint64
            assert keys.tolist() == sorted(keys.tolist())
        _snapshot._check_context(c, "test")  # what a loader checks holds for what a backend exports
