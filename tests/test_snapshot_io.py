"""Where snapshots go (docs/snapshot.md, "Saving" and "Loading"): paths (atomic; a failed save leaves
the old file and no temporary file), streams (current position, left open, short reads and writes,
pipes, sockets), wrong arguments, and a save that does not hold the table's lock while it encodes and
writes. Load overrides: block size and seed checked, smaller bounds trim as a store would.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import FakeClock
from helpers import chain, stored, toks
from test_snapshot import TABLE_ARGS, populate, save_bytes, snap_make, state_equal  # noqa: F401 (fixture)
from prefixindex import Config, _core_py, _snapshot

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(snap_make, clock):
    t = snap_make(**TABLE_ARGS)
    populate(t, clock)
    return t


def leftovers(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def load(backend, file, **kw):
    kw.setdefault("background_eviction", False)
    return backend.SyncPrefixHashTable.load(file, **kw)


@pytest.mark.parametrize("kind", [str, Path, os.fsencode])
def test_save_and_load_a_path(table, backend, clock, tmp_path, kind):
    path = kind(str(tmp_path / "index.snapshot"))
    table.save(path)
    assert (tmp_path / "index.snapshot").read_bytes() == save_bytes(table)
    loaded = load(backend, path, clock=clock)
    assert loaded.snapshot() == table.snapshot() and loaded.stats() == table.stats()
    assert leftovers(tmp_path) == []


def test_a_save_replaces_the_old_file(snap_make, backend, clock, tmp_path):
    path = tmp_path / "index.snapshot"
    first = snap_make()
    first.process_block_stored(stored([1], [0], "a"))
    first.save(path)
    second = snap_make(**TABLE_ARGS)
    populate(second, clock)
    second.save(path)
    assert path.read_bytes() == save_bytes(second)
    assert leftovers(tmp_path) == []


def test_the_file_gets_the_usual_permissions(table, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    table.save(tmp_path / "index.snapshot")
    assert (tmp_path / "index.snapshot").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_missing_path_is_an_oserror(snap_make, backend, tmp_path):
    with pytest.raises(FileNotFoundError):
        load(backend, tmp_path / "nothing-here")
    with pytest.raises(OSError):
        snap_make().save(tmp_path / "no-such-dir" / "index.snapshot")
    with pytest.raises(OSError):  # a directory under the name: the rename fails, the temporary file goes
        (tmp_path / "dir").mkdir()
        snap_make().save(tmp_path / "dir")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_save_leaves_the_old_file_and_no_temporary(table, tmp_path, monkeypatch, step):
    path = tmp_path / "index.snapshot"
    path.write_bytes(b"the old snapshot")
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    if step == "write":  # the second write: part of the file is on disk already
        real_write = os.write

        def fail(fd, data):  # noqa: F811
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real_write(fd, data)
    monkeypatch.setattr(_snapshot.os, step, fail)
    with pytest.raises(OSError, match="No space left"):
        table.save(path)
    monkeypatch.undo()
    assert calls and path.read_bytes() == b"the old snapshot"
    assert leftovers(tmp_path) == []


def test_an_interrupt_mid_write_leaves_the_old_file(table, tmp_path, monkeypatch):
    path = tmp_path / "index.snapshot"
    path.write_bytes(b"old")

    def interrupt(fd, data):
        raise KeyboardInterrupt
    monkeypatch.setattr(_snapshot.os, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        table.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


FSIZE = """
import os, resource, signal, sys
sys.path.insert(0, "tests")
from helpers import FakeClock
from test_snapshot import TABLE_ARGS, populate
import importlib
module = importlib.import_module(sys.argv[1])
path = sys.argv[2]
clock = FakeClock()
small = module.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False)
small.add_prefix("m", -1, "a", [1, 2, 3])
small.save(path)
big = module.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False, **TABLE_ARGS)
populate(big, clock)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is then an OSError (EFBIG)
limit = os.path.getsize(path) + 100
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    big.save(path)
except OSError as exc:
    print("failed:", exc.errno)
else:
    print("saved")
"""


def test_a_file_size_limit_hit_mid_write_leaves_the_old_file(backend, tmp_path):
    # a real short write from the file system (RLIMIT_FSIZE), in a subprocess with a timeout
    from test_snapshot import skip_without_snapshots
    skip_without_snapshots(backend)
    path = tmp_path / "index.snapshot"
    proc = subprocess.run([sys.executable, "-c", FSIZE, backend.__name__, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "failed: 27", proc.stdout  # EFBIG
    loaded = load(backend, path)
    assert loaded.stats()["entries"] == 3  # the old snapshot, whole
    assert leftovers(tmp_path) == []


def test_streams_are_used_from_their_position_and_left_open(table, backend, clock):
    buf = io.BytesIO()
    buf.write(b"preamble")
    table.save(buf)
    table.save(buf)  # two snapshots back to back
    buf.write(b"trailer")
    assert not buf.closed
    data = save_bytes(table)
    assert buf.getvalue() == b"preamble" + data + data + b"trailer"
    buf.seek(8)
    first = load(backend, buf, clock=clock)
    assert buf.tell() == 8 + len(data)  # exactly the snapshot's bytes were read
    second = load(backend, buf, clock=clock)
    assert buf.tell() == 8 + 2 * len(data) and buf.read() == b"trailer" and not buf.closed
    assert first.snapshot() == second.snapshot() == table.snapshot()


class Trickle(io.RawIOBase):
    """A raw stream that moves at most 5 bytes per call, as a socket or pipe may."""

    def __init__(self, data: bytes = b"") -> None:
        self.data, self.pos, self.out = data, 0, bytearray()

    def readable(self):
        return True

    def writable(self):
        return True

    def readinto(self, b):
        n = min(len(b), 5, len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def write(self, b):
        n = min(len(b), 5)
        self.out += bytes(b[:n])
        return n


def test_short_reads_and_writes(table, backend, clock):
    out = Trickle()
    table.save(out)
    assert bytes(out.out) == save_bytes(table)
    loaded = load(backend, Trickle(bytes(out.out)), clock=clock)
    assert loaded.snapshot() == table.snapshot()


def test_over_a_socket(table, backend, clock):
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=lambda: (table.save(a.makefile("wb")), a.shutdown(socket.SHUT_WR)))
        sender.start()
        loaded = load(backend, b.makefile("rb"), clock=clock)
        sender.join(timeout=30)
    assert loaded.snapshot() == table.snapshot() and loaded.stats() == table.stats()


def test_through_a_pipe(table, backend, clock):
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "wb") as writer:
        sender = threading.Thread(target=lambda: (table.save(writer), writer.close()))
        sender.start()
        loaded = load(backend, reader, clock=clock)
        sender.join(timeout=30)
    assert loaded.snapshot() == table.snapshot()


def test_a_writer_whose_write_returns_none_took_everything(table, backend, clock):
    """Only RawIOBase gives None a meaning (a non-blocking stream that took nothing); other writers
    return None and take it all. Refused before, after its first chunk was written."""
    import codecs

    class Sink:  # a hand-written sink, as most are
        def __init__(self):
            self.parts = []

        def write(self, b):
            self.parts.append(bytes(b))

    data = save_bytes(table)
    sink = Sink()
    table.save(sink)
    assert b"".join(sink.parts) == data and len(sink.parts) > 1
    target = io.BytesIO()
    table.save(codecs.EncodedFile(target, "latin-1"))  # the stdlib's recoder: its write() returns None
    assert target.getvalue() == data
    assert load(backend, io.BytesIO(b"".join(sink.parts)), clock=clock).snapshot() == table.snapshot()


def test_a_non_blocking_raw_stream_that_takes_nothing_is_an_error(table):
    class Full(io.RawIOBase):  # a non-blocking raw stream whose buffer is full: write() returns None
        def writable(self):
            return True

        def write(self, b):
            return None

    with pytest.raises(BlockingIOError, match="took no data"):
        table.save(Full())


def test_a_stream_that_fails_mid_write(table):
    class Full(io.RawIOBase):
        def __init__(self):
            self.calls = 0

        def writable(self):
            return True

        def write(self, b):
            self.calls += 1
            if self.calls == 3:
                raise OSError(28, "No space left on device")
            return len(b)

    stream = Full()
    with pytest.raises(OSError, match="No space"):
        table.save(stream)
    assert not stream.closed


def test_wrong_arguments(table, backend, tmp_path):
    for bad in (123, None, ["x"]):
        with pytest.raises(TypeError, match="path or a binary stream"):
            table.save(bad)
        with pytest.raises(TypeError, match="path or a binary stream"):
            load(backend, bad)
    with pytest.raises(TypeError, match="binary stream"):
        load(backend, io.StringIO("text"))
    with pytest.raises(TypeError):
        table.save(io.StringIO())
    with pytest.raises(TypeError, match="extra must be bytes"):
        _snapshot.save_table(table, io.BytesIO(), extra="text")


# -- overrides ----------------------------------------------------------------------------------------


def test_block_size_and_seed_must_match(table, backend):
    data = save_bytes(table)
    for kw, word in ((dict(block_size=8), "block_size=8"), (dict(seed=1), "seed=1"),
                     (dict(config=Config(seed=0)), "block_size=16")):
        with pytest.raises(ValueError, match=word):
            load(backend, io.BytesIO(data), **kw)
    same = load(backend, io.BytesIO(data), block_size=4, seed=0)
    assert same.seed == 0 and same.block_size == 4
    assert load(backend, io.BytesIO(data), seed=None).seed == 0  # None: the snapshot's


def test_bad_overrides_fail_before_any_input_is_read(snap_make, backend, tmp_path):
    with pytest.raises(TypeError, match="unknown keyword"):
        load(backend, tmp_path / "nothing-here", max_contxts=3)
    with pytest.raises(TypeError, match="prefixindex.Config"):
        load(backend, tmp_path / "nothing-here", config={"max_contexts": 3})
    data = save_bytes(snap_make())
    for kw, field in ((dict(max_contexts=0), "max_contexts"), (dict(max_contexts=True), "max_contexts"),
                      (dict(max_prefixes_per_context=None), "max_prefixes_per_context"),
                      (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"), (dict(block_size=4.0), "block_size"),
                      (dict(eviction_interval_seconds=0), "eviction_interval_seconds"),
                      (dict(eviction_duration_minutes=float("nan")), "eviction_duration_minutes")):
        stream = io.BytesIO(data)
        with pytest.raises(ValueError, match=f"Config.{field} "):
            load(backend, stream, **kw)
        assert stream.tell() == 0, kw  # not a byte read: a stream of several snapshots keeps this one
        with pytest.raises(ValueError, match=f"Config.{field} "):  # the same error Config gives
            Config(**kw)


def test_other_overrides_replace_the_saved_values(table, backend, clock):
    data = save_bytes(table)
    loaded = load(backend, io.BytesIO(data), clock=clock, eviction_duration_minutes=0.25,
                  eviction_interval_seconds=5)
    assert loaded.config.eviction_duration_minutes == 0.25 and loaded.config.eviction_interval_seconds == 5
    assert loaded.config.max_contexts == table.config.max_contexts
    clock.advance(0.0)
    assert loaded.evict_now()["contexts"] == 4  # all idle more than 15 s now
    via_config = load(backend, io.BytesIO(data), config=Config(block_size=4, max_contexts=9))
    assert via_config.config.max_contexts == 9 and via_config.seed == 0


def expected_trim(state: dict, bound: int) -> dict:
    """What a store's trim leaves (D4, D2, D3), computed from the exported state independently."""
    keep = bound - bound // 4
    out = {}
    for c in state["contexts"]:
        prefixes = c["prefixes"].tolist()
        holders, pos = [], 0
        for k in c["entry_pod_counts"].tolist():
            holders.append({c["pods"][i] for i in c["entry_pods"][pos:pos + k].tolist()})
            pos += k
        if len(prefixes) > bound:
            prefixes, holders = prefixes[-keep:], holders[-keep:]
        out[(c["model"], c["lora"])] = {p: frozenset(h) for p, h in zip(prefixes, holders)}
    return out


def test_a_smaller_prefix_bound_trims_as_a_store_would(table, backend, clock):
    state = table._export_state()
    sizes = [len(c["prefixes"]) for c in state["contexts"]]
    bound = 4
    assert max(sizes) > bound >= min(sizes)
    loaded = load(backend, io.BytesIO(save_bytes(table)), clock=clock, max_prefixes_per_context=bound)
    assert loaded.snapshot() == expected_trim(state, bound)
    evicted = sum(n - (bound - bound // 4) for n in sizes if n > bound)
    assert loaded.stats()["evicted_prefixes"] == table.stats()["evicted_prefixes"] + evicted
    for c in loaded._export_state()["contexts"]:  # D3: the trimmed contexts' engine maps hold no stale value
        if len(c["prefixes"]) == bound - bound // 4:
            owner = np.repeat(c["prefixes"], c["entry_pod_counts"])
            for j, (keys, values) in enumerate(c["engine"]):
                assert set(values.tolist()) <= set(owner[c["entry_pods"] == j].tolist())
    # and the loaded table then behaves as one that was trimmed by a store: the bound holds from now on
    loaded.add_prefix("m", -1, "z", chain(*range(60, 64)))
    assert len(loaded.snapshot()[("m", -1)]) <= bound


def test_a_smaller_context_bound_drops_the_least_recently_used(table, backend, clock):
    keys = list(table.snapshot())
    order = [(c["model"], c["lora"]) for c in table._export_state()["contexts"]]
    loaded = load(backend, io.BytesIO(save_bytes(table)), clock=clock, max_contexts=2)
    assert set(loaded.snapshot()) == set(order[-2:]) and len(keys) == 4
    assert loaded.stats()["evicted_contexts"] == table.stats()["evicted_contexts"] + 2
    assert loaded.snapshot()[order[-1]] == table.snapshot()[order[-1]]


def test_a_bound_that_is_not_smaller_changes_nothing(table, backend, clock):
    loaded = load(backend, io.BytesIO(save_bytes(table)), clock=clock, max_prefixes_per_context=1000,
                  max_contexts=1000)
    state_equal(dict(loaded._export_state(), config=table.config), table._export_state())


# -- locking (the reference backend: the lock is held only while copying) ---------------------------------


def test_python_backend_save_does_not_hold_the_lock_while_encoding_or_writing(monkeypatch):
    clock = FakeClock()
    table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False,
                                         **TABLE_ARGS)
    populate(table, clock)
    results = {}

    def match_from_another_thread(tag):
        worker = threading.Thread(target=lambda: results.__setitem__(tag, table.match_blocks("m", -1, toks(0))))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), f"a match waited for the save ({tag})"

    real_encode = _snapshot.encode

    def encode(state, extra=b""):
        match_from_another_thread("encode")
        return real_encode(state, extra)
    monkeypatch.setattr(_snapshot, "encode", encode)

    class Stream(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            if "write" not in results:
                match_from_another_thread("write")
            return len(b)

    table.save(Stream())
    assert results == {"encode": {"b": 1}, "write": {"b": 1}}
