"""The format as docs/snapshot.md states it, read back by an independent parser written from that page
(struct and xxhash only, none of prefixindex's code): every field in its place, the widths and the
escape at their boundaries, the size per entry, and the extra section of the subscriber hook.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import xxhash

from helpers import FakeClock
from helpers import removed, stored
from test_snapshot import TABLE_ARGS, populate, save_bytes, snap_make  # noqa: F401 (fixture)
from prefixindex import BlockStored, _snapshot, _snapshot_bounds

COUNTERS = ["events_block_stored", "events_block_removed", "events_all_blocks_cleared", "blocks_stored",
            "blocks_removed", "orphan_blocks", "matches", "evicted_contexts", "evicted_pods", "evicted_prefixes"]


def width(x: int) -> int:
    return next(w for w in (1, 2, 4, 8) if x < 1 << (8 * w))


class Parser:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        n = self.take("I")
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("utf-8", "surrogatepass")

    def ints(self, w: int, n: int) -> list:
        return [self.take({1: "B", 2: "H", 4: "I", 8: "Q"}[w]) for _ in range(n)]

    def section(self, tag: bytes) -> "Parser":
        start = self.pos
        got, length, check = self.take("4sQI")
        assert got == tag, (got, tag)
        assert check == xxhash.xxh64_intdigest(self.data[start:start + 12]) & 0xFFFFFFFF
        payload = self.data[self.pos:self.pos + length]
        self.pos += length
        assert self.take("Q") == xxhash.xxh64_intdigest(payload)
        return Parser(payload)


def parse(data: bytes) -> dict:
    """docs/snapshot.md, "The format (version 1)", read literally."""
    p = Parser(data)
    magic, version, flags, check = p.take("8sHHI")
    assert magic == b"\x89PFXIDX\n" and version == 1 and flags in (0, 1)
    assert check == xxhash.xxh64_intdigest(data[:12]) & 0xFFFFFFFF
    conf = p.section(b"CONF")
    out = {"config": dict(zip(["max_contexts", "max_prefixes_per_context", "eviction_interval_seconds",
                               "eviction_duration_minutes", "block_size", "seed"], conf.take("QQddQQ")))}
    counters = {}
    for _ in range(conf.take("I")):
        name = conf.data[conf.pos + 1:conf.pos + 1 + conf.data[conf.pos]].decode("ascii")
        conf.pos += 1 + len(name)
        counters[name] = conf.take("Q")
    out["counters"] = counters
    n_contexts, n_prefixes, n_entries = conf.take("QQQ")
    assert conf.pos == len(conf.data)
    out["contexts"] = []
    for _ in range(n_contexts):
        c = p.section(b"CTXT")
        ctx = {"model": c.string(), "lora": c.take("q"), "idle": c.take("d")}
        P, N, E, H, S = c.take("IQQQQ")
        ctx["pods"] = [c.string() for _ in range(P)]
        ctx["pod_idle"] = [c.take("d") for _ in range(P)]
        ctx["prefixes"] = c.ints(8, N)
        ctx["entry_pod_counts"] = c.ints(width(P), N)
        ctx["entry_pods"] = c.ints(width(max(P - 1, 0)), E)
        engine_counts = c.ints(8, P)
        keys = c.ints(8, H)
        index = c.ints(width(N), H)
        stale = iter(c.ints(8, S))
        values = [next(stale) if i == (1 << (8 * width(N))) - 1 else ctx["prefixes"][i] for i in index]
        ctx["engine"], pos = [], 0
        for k in engine_counts:
            ctx["engine"].append((keys[pos:pos + k], values[pos:pos + k]))
            pos += k
        ctx["stale"] = S
        assert c.pos == len(c.data)
        out["contexts"].append(ctx)
    assert sum(len(c["prefixes"]) for c in out["contexts"]) == n_prefixes
    assert sum(len(c["entry_pods"]) for c in out["contexts"]) == n_entries
    out["extra"] = p.section(b"XTRA").data if flags & 1 else b""
    p.section(b"END.")
    out["size"] = p.pos
    return out


def as_lists(state: dict) -> list:
    return [{"model": c["model"], "lora": c["lora"], "idle": c["idle"], "pods": c["pods"],
             "pod_idle": c["pod_idle"].tolist(), "prefixes": c["prefixes"].tolist(),
             "entry_pod_counts": c["entry_pod_counts"].tolist(), "entry_pods": c["entry_pods"].tolist(),
             "engine": [(k.tolist(), v.tolist()) for k, v in c["engine"]]} for c in state["contexts"]]


def test_every_field_is_where_the_doc_says(snap_make, clock):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    data = save_bytes(table)
    parsed = parse(data)
    assert parsed["size"] == len(data)
    state = table._export_state()
    config = table.config
    assert parsed["config"] == {"max_contexts": config.max_contexts,
                                "max_prefixes_per_context": config.max_prefixes_per_context,
                                "eviction_interval_seconds": config.eviction_interval_seconds,
                                "eviction_duration_minutes": config.eviction_duration_minutes,
                                "block_size": 4, "seed": 0}
    assert list(parsed["counters"]) == COUNTERS and parsed["counters"] == state["counters"]
    contexts = [{k: v for k, v in c.items() if k != "stale"} for c in parsed["contexts"]]
    assert contexts == as_lists(state)
    assert [c["stale"] for c in parsed["contexts"]] == [0, 1, 0, 0]  # the escaped alias of ("m", 7)


@pytest.mark.parametrize("n_prefixes", [254, 255, 256])
def test_the_engine_value_width_and_its_escape_at_the_boundary(snap_make, backend, clock, n_prefixes):
    # w(N) bytes per engine value; the escape 2^(8 w(N)) - 1 never collides with an index 0..N-1
    table = snap_make(max_prefixes_per_context=1000)
    table.process_block_stored(stored(list(range(1, n_prefixes + 1)), list(range(n_prefixes)), "a"))
    table.process_block_stored(stored([5000, 5001], [n_prefixes + 10, n_prefixes + 11], "a"))
    table.process_block_stored(stored([6000], [n_prefixes + 10], "a"))  # an alias
    table.process_block_removed(removed([5000, 5001], "a"))  # its prefix leaves the context: escaped
    data = save_bytes(table)
    parsed = parse(data)["contexts"][0]
    assert len(parsed["prefixes"]) == n_prefixes and parsed["stale"] == 1
    loaded = backend.SyncPrefixHashTable.load(io.BytesIO(data), clock=clock, background_eviction=False)
    assert save_bytes(loaded) == data
    keys, values = loaded._export_state()["contexts"][0]["engine"][0]
    assert dict(zip(keys.tolist(), values.tolist()))[6000] not in parsed["prefixes"]


def test_size_per_entry_on_a_wide_context(snap_make, clock):
    # 8 pods, 2,000 prefixes each held by one pod, an engine hash each: 8 + 1 + 1 + 8 + 2 bytes per entry
    table = snap_make(max_prefixes_per_context=100_000)
    rng = np.random.default_rng(3)
    for p in range(8):
        tokens = rng.integers(0, 2**32, size=2000 * 4, dtype=np.uint64).astype(np.int64).tolist()
        engine = rng.integers(0, 2**64, size=2000, dtype=np.uint64)
        from prefixindex import BlockStored
        table.process_block_stored(BlockStored(engine, tokens, "m", -1, source_pod=f"pod-{p}"))
    data = save_bytes(table)
    entries = table.stats()["entries"]
    assert entries == 16_000
    assert 20 * entries <= len(data) <= 20 * entries + 1000  # + header, configuration, names
    assert len(data) / entries <= 24  # issue 12's size target


def test_the_extra_section(snap_make, backend, clock, tmp_path):
    table = snap_make(**TABLE_ARGS)
    populate(table, clock)
    plain = save_bytes(table)
    buf = io.BytesIO()
    _snapshot.save_table(table, buf, extra=b"positions: pod-0=17")
    data = buf.getvalue()
    parsed = parse(data)
    assert parsed["extra"] == b"positions: pod-0=17" and data[10] == 1  # flag bit 0
    assert parse(plain)["extra"] == b"" and plain[10] == 0
    loaded, extra = _snapshot.load_table_and_extra(backend.SyncPrefixHashTable, io.BytesIO(data),
                                                   {"clock": clock, "background_eviction": False})
    assert extra == b"positions: pod-0=17" and loaded.snapshot() == table.snapshot()
    assert save_bytes(loaded) == plain  # a table's own save writes no extra section
    assert _snapshot.read_extra(io.BytesIO(data)) == b"positions: pod-0=17"
    assert _snapshot.read_extra(io.BytesIO(plain)) == b""
    path = tmp_path / "with-extra.snapshot"
    _snapshot.save_table(table, path, extra=b"x" * 1000)
    assert _snapshot.read_extra(path) == b"x" * 1000
    assert backend.SyncPrefixHashTable.load(path, background_eviction=False).snapshot() == table.snapshot()


def test_the_magic_is_as_documented():
    assert _snapshot.MAGIC == bytes([0x89, 0x50, 0x46, 0x58, 0x49, 0x44, 0x58, 0x0A]) and _snapshot.VERSION == 1


def test_a_clock_that_reads_the_same_gives_exact_idle_times():
    # idle = now - last is exact when last >= now / 2 (Sterbenz): saving a loaded table at the same clock
    # reading gives back the same bytes even for clock values like 0.1 (docs/snapshot.md, Determinism)
    from prefixindex import _core_py

    for start in (0.1, 1e6 + 0.3, 12345.678):
        clock = FakeClock(start)
        table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False)
        table.process_block_stored(stored([1], [0], "a"))
        clock.advance(0.7)
        data = save_bytes(table)
        loaded = _core_py.SyncPrefixHashTable.load(io.BytesIO(data), clock=clock, background_eviction=False)
        assert save_bytes(loaded) == data, start


def test_held_by_pod_groups_the_entries_as_a_pass_per_pod_would():
    """The loaders group a context's entries by pod with one sort (a pass per pod over every entry was
    quadratic in a context of many pods: 100,000 pods took seconds to load)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_pods, n_prefixes = int(rng.integers(1, 8)), int(rng.integers(1, 30))
        prefixes = np.arange(n_prefixes, dtype=np.uint64) * 7 + 1
        counts = rng.integers(1, n_pods + 1, size=n_prefixes).astype(np.uint32)
        entry_pods = np.concatenate([np.sort(rng.choice(n_pods, size=k, replace=False)) for k in counts])
        entry_pods = entry_pods.astype(np.uint32)
        owner = np.repeat(prefixes, counts.astype(np.intp))
        got = _snapshot_bounds.held_by_pod(prefixes, counts, entry_pods, n_pods)
        assert len(got) == n_pods
        for pod in range(n_pods):
            assert got[pod].tolist() == owner[entry_pods == pod].tolist()
