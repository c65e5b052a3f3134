"""The subscriber's snapshot (docs/snapshot.md, "Subscriber positions"): the table plus each pod's
position in the XTRA section, written atomically, read back before any table is built.
"""

from __future__ import annotations

import io
import json

import pytest

from test_snapshot import TABLE_ARGS, populate, save_bytes, snap_make  # noqa: F401 (fixture)
from prefixindex import _snapshot
from prefixindex._snapshot import SnapshotError
from prefixindex._subscriber_snapshot import (POSITIONS_KIND, decode_positions, encode_positions,
                                              load_subscriber_snapshot, save_subscriber)

POSITIONS = {"pod-b": {"seq": 17, "publisher": {"endpoint": "tcp://10.0.0.2:5557", "ts": 1733040000.125}},
             "pod-a": {"seq": 0, "publisher": {"ts": None}},
             "ポッド": {"seq": 2**64 - 1}}


class StandIn:
    """What save_subscriber needs of a VLLMSubscriber: its table and positions()."""

    def __init__(self, table, positions):
        self.table, self._positions, self.calls = table, positions, []

    def positions(self):
        self.calls.append("positions")
        return self._positions


@pytest.fixture
def table(snap_make, clock):
    t = snap_make(**TABLE_ARGS)
    populate(t, clock)
    return t


def test_round_trip(table, backend, clock, tmp_path):
    path = tmp_path / "router.snapshot"
    saved = save_subscriber(StandIn(table, POSITIONS), path)
    loaded, positions = load_subscriber_snapshot(backend.SyncPrefixHashTable, path,
                                                 {"clock": clock, "background_eviction": False})
    assert positions == saved == {
        "pod-b": {"seq": 17, "publisher": {"endpoint": "tcp://10.0.0.2:5557", "ts": 1733040000.125}},
        "pod-a": {"seq": 0, "publisher": {"endpoint": None, "ts": None}},
        "ポッド": {"seq": 2**64 - 1, "publisher": {"endpoint": None, "ts": None}}}
    assert loaded.snapshot() == table.snapshot() and loaded.stats() == table.stats()
    # the table part is the table's own snapshot: a plain load reads it too
    plain = backend.SyncPrefixHashTable.load(path, clock=clock, background_eviction=False)
    assert save_bytes(plain) == save_bytes(table)


def test_the_section_is_documented_json():
    data = encode_positions(POSITIONS)
    doc = json.loads(data)
    assert doc["kind"] == POSITIONS_KIND and doc["version"] == 1
    assert list(doc) == sorted(doc) and doc["pods"]["pod-a"] == {"seq": 0, "publisher": {"endpoint": None,
                                                                                         "ts": None}}
    assert encode_positions(dict(reversed(list(POSITIONS.items())))) == data  # deterministic bytes
    assert decode_positions(data) == decode_positions(encode_positions(decode_positions(data)))


def test_a_plain_table_snapshot_has_no_positions(table, backend):
    loaded, positions = load_subscriber_snapshot(backend.SyncPrefixHashTable, io.BytesIO(save_bytes(table)),
                                                 {"background_eviction": False})
    assert positions == {} and loaded.snapshot() == table.snapshot()


@pytest.mark.parametrize("bad, error", [
    ({"p": {"seq": -1}}, ValueError), ({"p": {"seq": True}}, ValueError), ({"p": {}}, ValueError),
    ({"": {"seq": 1}}, TypeError), ({"p": {"seq": 1, "publisher": {"ts": float("nan")}}}, ValueError),
    ({"p": {"seq": 1, "publisher": {"endpoint": 5}}}, TypeError), ({"p": 3}, TypeError), ([("p", 1)], TypeError),
])
def test_bad_positions_save_nothing(table, tmp_path, bad, error):
    path = tmp_path / "router.snapshot"
    path.write_bytes(b"old")
    with pytest.raises(error):
        save_subscriber(StandIn(table, bad), path)
    assert path.read_bytes() == b"old"


def extra_snapshot(table, extra: bytes) -> bytes:
    buf = io.BytesIO()
    _snapshot.save_table(table, buf, extra=extra)
    return buf.getvalue()


@pytest.mark.parametrize("extra, kind", [
    (b"\xff\xfe", "corrupted"), (b"[1, 2]", "foreign"), (json.dumps({"kind": "other"}).encode(), "foreign"),
    (json.dumps({"kind": POSITIONS_KIND, "version": 2, "pods": {}}).encode(), "newer"),
    (json.dumps({"kind": POSITIONS_KIND, "version": 1, "pods": {"p": {"seq": "x"}}}).encode(), "corrupted"),
    (json.dumps({"kind": POSITIONS_KIND, "version": 1, "pods": []}).encode(), "corrupted"),
    # a version that is no version is corrupted, not "newer"; nesting past the parser's depth was a bare
    # RecursionError (a hostile-input search after issue 8)
    pytest.param(json.dumps({"kind": POSITIONS_KIND, "version": 0, "pods": {}}).encode(), "corrupted", id="version 0"),
    pytest.param(json.dumps({"kind": POSITIONS_KIND, "version": -3, "pods": {}}).encode(), "corrupted",
                 id="version -3"),
    pytest.param(json.dumps({"kind": POSITIONS_KIND, "version": "1", "pods": {}}).encode(), "corrupted",
                 id="version as a string"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "corrupted", id="nested past the parser's depth"),
])
def test_bad_positions_in_a_file_build_nothing(table, backend, extra, kind):
    built = []

    class Spy(backend.SyncPrefixHashTable):
        @classmethod
        def _from_state(cls, state, **kw):
            built.append(1)
            return super()._from_state(state, **kw)

    with pytest.raises(SnapshotError) as info:
        load_subscriber_snapshot(Spy, io.BytesIO(extra_snapshot(table, extra)), {"background_eviction": False})
    assert info.value.kind == kind and built == []


def test_positions_are_read_before_the_table_is_copied(table):
    order = []

    class Table:
        def _export_state(self):
            order.append("table")
            return table._export_state()

    class Sub(StandIn):
        def positions(self):
            order.append("positions")
            return POSITIONS

    save_subscriber(Sub(Table(), POSITIONS), io.BytesIO())
    assert order == ["positions", "table"]


# -- the subscribe command's options ---------------------------------------------------------------------


def test_command_options():
    import argparse

    from prefixindex import _subscriber_snapshot as ss

    parser = argparse.ArgumentParser()
    ss.add_arguments(parser)
    args = parser.parse_args(["--snapshot", "x.snap", "--snapshot-every", "2.5"])
    ss.check_arguments(parser, args)
    assert (args.snapshot, args.snapshot_every) == ("x.snap", 2.5)
    assert parser.parse_args([]).snapshot is None
    for argv, word in ((["--snapshot-every", "3"], "needs --snapshot"),
                       (["--snapshot", "x", "--snapshot-every", "0"], "positive"),
                       (["--snapshot", "x", "--snapshot-every", "nan"], "positive")):
        with pytest.raises(SystemExit) as info:
            ss.check_arguments(parser, parser.parse_args(argv))
        assert info.value.code == 2


def test_open_table_starts_empty_or_from_the_snapshot(table, backend, tmp_path):
    from prefixindex import _subscriber_snapshot as ss

    path = tmp_path / "router.snapshot"
    fresh, resume, said = ss.open_table(backend.SyncPrefixHashTable, str(path), {"block_size": 4})
    assert resume is None and fresh.stats()["entries"] == 0 and "starting empty" in said
    fresh.close()
    save_subscriber(StandIn(table, POSITIONS), path)
    loaded, resume, said = ss.open_table(backend.SyncPrefixHashTable, str(path), {"block_size": 4})
    assert loaded.snapshot() == table.snapshot() and set(resume) == set(POSITIONS) and "3 pod position" in said
    loaded.close()
    with pytest.raises(ValueError, match="block_size=16 differs"):
        ss.open_table(backend.SyncPrefixHashTable, str(path), {"block_size": 16})
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a prefixindex snapshot"):  # never silently replaced
        ss.open_table(backend.SyncPrefixHashTable, str(path), {})


def test_periodic_saver(table, backend, tmp_path, caplog):
    from prefixindex import _subscriber_snapshot as ss

    path = tmp_path / "router.snapshot"
    sub = StandIn(table, POSITIONS)
    saver = ss.PeriodicSaver(sub, str(path), 10.0, now=100.0)
    assert not saver.due(109.9) and saver.due(110.0)
    assert saver.save(110.0) and saver.next_at == 120.0 and saver.saves == 1
    _, positions = load_subscriber_snapshot(backend.SyncPrefixHashTable, path, {"background_eviction": False})
    assert set(positions) == set(POSITIONS)
    once = ss.PeriodicSaver(sub, str(path), None, now=0.0)
    assert not once.due(1e9)  # without --snapshot-every: only the save at the end
    broken = ss.PeriodicSaver(sub, str(tmp_path / "no-such-dir" / "x"), 1.0, now=0.0)
    with caplog.at_level("WARNING", logger="prefixindex"):
        assert broken.save(1.0) is False
    assert broken.failures == 1 and "saving the snapshot" in caplog.text
