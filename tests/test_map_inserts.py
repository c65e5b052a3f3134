"""The compiled core's insert of a new key (emplace_new in _map_internals.h). In a map that is likely in
the caches (fewer than TOUCH_BUCKETS_FROM entries) the first four nodes of the key's bucket are compared
without branching, and a key not among them goes in through libstdc++'s insert of a node known to be new
unless the bucket runs past them, where the map's own try_emplace decides. In a larger map, which may be
cold, the bucket is searched node by node to its end (touch_for_insert having fetched its first two
nodes), so that no node of another bucket is read. Speed only: here both ways are held to the
pure-Python backend's answers on buckets that are empty, short, exactly four nodes long and longer, for
new keys, keys already held (by the same pod and by another) and engine hashes reported again with
other tokens (D3); and removals from maps that may be cold, which go in chunks with their buckets
touched first (_remove_blocks in _table_events.pxi)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from prefixindex import BlockRemoved, BlockStored, _core_py

from helpers import COMPILED

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: this run tests the pure-Python backend only")

BLOCK_SIZE = 4
WIDTH = 4 * BLOCK_SIZE
CROWD = 12  # keys put into one bucket: past the four compared without branching
# where a map counts as maybe cold (_entries.pxd): the spread keys of each test stay under it, or go past it
COLD_FROM = int(re.search(r"TOUCH_BUCKETS_FROM = (\d+)",
                          (Path(__file__).resolve().parent.parent / "prefixindex" / "_entries.pxd").read_text())[1])
SPREADS = pytest.mark.parametrize("spread_n", [100, COLD_FROM + 150], ids=["in-cache-way", "cold-way"])


def _tables():
    return (COMPILED.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False),
            _core_py.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False))


def _crowd(table, pod, which, count, rng):
    """count keys that share one bucket of the table's prefix map (which=2) or of the pod's engine map
    (which=3), found among random keys: the bucket hash is keyed per table (D16)."""
    candidates = [int(x) for x in rng.integers(1, 2**63, 40 * count * 256, dtype=np.uint64)]
    buckets = COMPILED._debug_bucket_census(table, "m", -1, pod, candidates)[which]
    target = max(set(buckets), key=buckets.count)
    crowd = [k for k, b in zip(candidates, buckets) if b == target][:count]
    assert len(crowd) == count
    return crowd


def _same(tables):
    compiled, fallback = tables
    assert compiled.snapshot() == fallback.snapshot()
    assert compiled.stats() == fallback.stats()


def test_the_raw_insert_is_in_use_with_libstdcxx():
    t = COMPILED.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False)
    t.add_prefix("m", -1, "p", [1, 2, 3])
    raw, prefix_buckets, engine_buckets = COMPILED._debug_buckets(t, "m", -1, "p")
    assert prefix_buckets >= 2 and engine_buckets >= 1
    if sys.platform.startswith("linux"):
        assert raw


@SPREADS
def test_prefixes_crowded_into_one_bucket_are_stored_and_found_as_the_fallback_does(spread_n):
    tables = _tables()
    rng = np.random.default_rng(21)
    spread = [int(x) for x in rng.integers(1, 2**63, spread_n, dtype=np.uint64)]
    assert (spread_n + CROWD < COLD_FROM) == (spread_n == 100)
    for t in tables:
        t.add_prefix("m", -1, "p", spread)
    _, buckets, _ = COMPILED._debug_buckets(tables[0], "m", -1, "p")
    crowd = _crowd(tables[0], "p", 2, CROWD + 6, rng)  # every one in the same bucket
    crowd, absent = crowd[:CROWD], crowd[CROWD:]
    # one at a time, so that the bucket holds 1, 2, ... CROWD nodes when the next comes
    for key in crowd:
        for t in tables:
            t.add_prefix("m", -1, "p", [key])
        _same(tables)
    assert COMPILED._debug_buckets(tables[0], "m", -1, "p")[1] == buckets  # no rehash: one bucket throughout
    assert COMPILED._debug_bucket_census(tables[0], "m", -1, "p", [])[0] >= CROWD
    # held already, at every place in the bucket: by the same pod, then by another
    for pod in ("p", "q"):
        for key in reversed(crowd):
            for t in tables:
                t.add_prefix("m", -1, pod, [key])
            _same(tables)
    # all at once, for a third pod (several blocks: the inserts' buckets are touched first), half held
    for t in tables:
        t.add_prefix("m", -1, "r", crowd[::2] + absent[:3] + crowd[1::2])
    _same(tables)
    for t in tables:
        assert t.stats()["entries"] == spread_n + 3 * CROWD + 3
    absent = absent[3:]
    # and every key answers a probe the way the map's own find does (the walk's probes)
    _, answers = COMPILED._debug_raw_probes(tables[0], "m", -1, crowd + spread + absent)
    held = CROWD + spread_n
    assert [std for std, _, _ in answers] == [True] * held + [False] * 3
    assert [near for _, _, near in answers] == [True] * held + [False] * 3


@SPREADS
def test_engine_hashes_crowded_into_one_bucket_are_stored_replaced_and_removed_as_the_fallback_does(spread_n):
    tables = _tables()
    rng = np.random.default_rng(22)
    first = BlockStored(rng.integers(1, 2**63, spread_n, dtype=np.uint64),
                        rng.integers(0, 256, (spread_n, WIDTH), dtype=np.uint8), "m", source_pod="p")
    for t in tables:
        t.process_block_stored(first)
    _, _, buckets = COMPILED._debug_buckets(tables[0], "m", -1, "p")
    engines = np.array(_crowd(tables[0], "p", 3, CROWD, rng), dtype=np.uint64)  # one engine bucket
    tokens = rng.integers(0, 256, (CROWD, WIDTH), dtype=np.uint8)
    for j in range(CROWD):  # the bucket grows one node at a time
        event = BlockStored(engines[j:j + 1], tokens[j:j + 1], "m", source_pod="p")
        for t in tables:
            t.process_block_stored(event)
        _same(tables)
    assert COMPILED._debug_buckets(tables[0], "m", -1, "p")[2] == buckets
    assert COMPILED._debug_bucket_census(tables[0], "m", -1, "p", [])[1] >= CROWD
    # the same blocks again (held: nothing changes but recency), then other tokens under the same
    # engine hashes: each replaces its entry (D3), found at every place in the bucket
    again = BlockStored(engines, tokens, "m", source_pod="p")
    other = BlockStored(engines[::-1].copy(), rng.integers(0, 256, (CROWD, WIDTH), dtype=np.uint8), "m",
                        source_pod="p")
    for event in (again, other):
        for t in tables:
            t.process_block_stored(event)
        _same(tables)
    for t in tables:
        t.process_events([BlockRemoved(engines[::2].copy(), "m", source_pod="p")])
    _same(tables)
    for t in tables:
        t.process_block_removed(BlockRemoved(engines, "m", source_pod="p"))
    _same(tables)
    assert tables[0].stats()["entries"] == spread_n


def test_inserts_that_rehash_keep_every_key():
    # many small events into one growing context: each insert may be the one that rehashes the map
    tables = _tables()
    rng = np.random.default_rng(23)
    hashes = rng.integers(1, 2**63, 5000, dtype=np.uint64)
    tokens = rng.integers(0, 256, (5000, WIDTH), dtype=np.uint8)
    for start in range(0, 5000, 7):
        event = BlockStored(hashes[start:start + 7], tokens[start:start + 7], "m", source_pod="p",
                            parent_block_hash=int(hashes[start - 1]) if start else None)
        for t in tables:
            t.process_block_stored(event)
    _same(tables)
    assert tables[0].stats()["entries"] == 5000
    query = tokens.reshape(-1)
    assert tables[0].match_blocks("m", -1, query) == tables[1].match_blocks("m", -1, query) == {"p": 5000}


# Keys picked to share a bucket of a map hashed by the identity (std::hash of an integer, which the maps
# used before D16): multiples of the bucket count the map has once it holds them all. Such keys made every
# insert walk one bucket of all the keys before it, quadratic (32,000 took 1.6 s to add, 0.003 s ordinary).
FLOOD = 20_000
LONGEST = 32  # a bucket of a keyed hash holds ~2 keys at the load factor of 2; Poisson: 32 has p < 1e-26


def _identity_crowd(build):
    """FLOOD keys that would all fall into bucket 0 of an identity-hashed map built as `build` builds it,
    and the bucket count they were picked for."""
    scratch = build([j * 2**20 + 1 for j in range(FLOOD)])
    _, prefix_buckets, engine_buckets = COMPILED._debug_buckets(scratch, "m", -1, "p")
    return prefix_buckets, engine_buckets


def _table():
    return COMPILED.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False,
                                        max_prefixes_per_context=10 * FLOOD)


def test_prefix_hashes_picked_for_one_identity_bucket_spread_over_the_map():
    def build(keys):
        t = _table()
        t.add_prefix("m", -1, "p", keys)
        return t
    prefix_buckets, _ = _identity_crowd(build)
    keys = [j * prefix_buckets for j in range(1, FLOOD + 1)]
    t = build(keys)
    assert COMPILED._debug_buckets(t, "m", -1, "p")[1] == prefix_buckets  # picked for this very count
    longest, _, spread, _ = COMPILED._debug_bucket_census(t, "m", -1, "p", keys)
    assert longest <= LONGEST
    assert len(set(spread)) > prefix_buckets // 2
    assert t.stats()["entries"] == FLOOD


def test_engine_hashes_picked_for_one_identity_bucket_spread_over_the_map():
    rng = np.random.default_rng(24)
    tokens = rng.integers(0, 256, (FLOOD, WIDTH), dtype=np.uint8)

    def build(engines):
        t = _table()
        t.process_block_stored(BlockStored(np.array(engines, dtype=np.uint64), tokens, "m", source_pod="p"))
        return t
    _, engine_buckets = _identity_crowd(build)
    engines = [j * engine_buckets for j in range(1, FLOOD + 1)]
    t = build(engines)
    assert COMPILED._debug_buckets(t, "m", -1, "p")[2] == engine_buckets
    _, longest, _, spread = COMPILED._debug_bucket_census(t, "m", -1, "p", engines)
    assert longest <= LONGEST
    assert len(set(spread)) > engine_buckets // 2
    t.process_block_removed(BlockRemoved(np.array(engines, dtype=np.uint64), "m", source_pod="p"))
    assert t.stats()["entries"] == 0


def test_a_snapshot_of_picked_keys_loads_spread(tmp_path):
    def build(keys):  # the keys as a loaded table holds them (a load sizes its maps itself)
        t = _table()
        t.add_prefix("m", -1, "p", keys)
        path = tmp_path / "keys.pidx"
        t.save(path)
        return COMPILED.SyncPrefixHashTable.load(path)
    prefix_buckets, _ = _identity_crowd(build)
    keys = [j * prefix_buckets for j in range(1, FLOOD + 1)]
    loaded = build(keys)
    assert COMPILED._debug_buckets(loaded, "m", -1, "p")[1] == prefix_buckets
    longest, _, _, _ = COMPILED._debug_bucket_census(loaded, "m", -1, "p", [])
    assert longest <= LONGEST
    assert loaded.stats()["entries"] == FLOOD


def test_each_table_keys_its_bucket_hash_apart():
    keys = list(range(1, 201))
    a, b = _table(), _table()
    for t in (a, b):
        t.add_prefix("m", -1, "p", keys)
    assert COMPILED._debug_buckets(a, "m", -1, "p")[1] == COMPILED._debug_buckets(b, "m", -1, "p")[1]
    assert COMPILED._debug_bucket_census(a, "m", -1, "p", keys)[2] != COMPILED._debug_bucket_census(
        b, "m", -1, "p", keys)[2]


@pytest.mark.parametrize("n", [COLD_FROM - 26, COLD_FROM * 3], ids=["in-cache-way", "cold-way"])
@pytest.mark.parametrize("pods", [("p",), ("p", "q")], ids=["one-pod", "two-pods"])
def test_removals_in_chunks_leave_what_the_fallback_leaves(pods, n):
    # removals go in chunks of 16 blocks (_remove_blocks), in engine maps of COLD_FROM entries or more
    # with their buckets touched first; events of 1 to 100 blocks (chunk boundaries at 16), with hashes
    # held by one pod, by both, by none, and repeated, for one pod and for every pod (source_pod "")
    tables = _tables()
    rng = np.random.default_rng(25)
    engines = rng.integers(1, 2**63, n, dtype=np.uint64)
    tokens = rng.integers(0, 256, (n, WIDTH), dtype=np.uint8)
    for j, pod in enumerate(pods):
        part = slice(0, n) if j == 0 else slice(0, n // 2)  # the second pod holds the first half
        event = BlockStored(engines[part], tokens[part], "m", source_pod=pod)
        for t in tables:
            t.process_block_stored(event)
    _same(tables)
    absent = rng.integers(1, 2**63, 50, dtype=np.uint64)
    order = rng.permutation(n)
    start = 0
    for size, who in [(1, "p"), (5, "p"), (16, "p"), (17, ""), (40, "p"), (100, ""), (33, pods[-1])]:
        picked = engines[order[start:start + size]]
        start += size
        hashes = np.concatenate([picked[: size // 2], absent[: size % 7], picked[size // 2:], picked[:2]])
        event = BlockRemoved(hashes, "m", source_pod=who)
        for t in tables:
            t.process_block_removed(event)
        _same(tables)
    for t in tables:  # and the rest, in one event of every hash held (and again: nothing left to remove)
        t.process_events([BlockRemoved(engines, "m", source_pod=""), BlockRemoved(engines[::-1].copy(), "m",
                                                                                  source_pod="")])
    _same(tables)
    assert tables[0].stats()["entries"] == 0
