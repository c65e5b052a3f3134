"""The compiled core's insert of a new key (emplace_new in _map_internals.h): the first four nodes of the
key's bucket are compared without branching, and a key not among them goes in through libstdc++'s
insert of a node known to be new unless the bucket runs past them, where the map's own try_emplace
decides. Speed only: here the inserts are held to the pure-Python backend's answers on buckets that
are empty, short, exactly four nodes long and longer, for new keys, keys already held (by the same pod
and by another) and engine hashes reported again with other tokens (D3)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from prefixindex import BlockRemoved, BlockStored, _core_py

from helpers import COMPILED

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: this run tests the pure-Python backend only")

BLOCK_SIZE = 4
WIDTH = 4 * BLOCK_SIZE
CROWD = 12  # keys put into one bucket: past the four compared without branching


def _tables():
    return (COMPILED.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False),
            _core_py.SyncPrefixHashTable(seed=9, block_size=BLOCK_SIZE, background_eviction=False))


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


def test_prefixes_crowded_into_one_bucket_are_stored_and_found_as_the_fallback_does():
    tables = _tables()
    rng = np.random.default_rng(21)
    spread = [int(x) for x in rng.integers(1, 2**63, 100, dtype=np.uint64)]
    for t in tables:
        t.add_prefix("m", -1, "p", spread)
    _, buckets, _ = COMPILED._debug_buckets(tables[0], "m", -1, "p")
    base = int(rng.integers(1, 2**40))
    crowd = [base + j * buckets for j in range(CROWD)]  # every one in bucket base % buckets
    # one at a time, so that the bucket holds 1, 2, ... CROWD nodes when the next comes
    for key in crowd:
        for t in tables:
            t.add_prefix("m", -1, "p", [key])
        _same(tables)
    assert COMPILED._debug_buckets(tables[0], "m", -1, "p")[1] == buckets  # no rehash: one bucket throughout
    # held already, at every place in the bucket: by the same pod, then by another
    for pod in ("p", "q"):
        for key in reversed(crowd):
            for t in tables:
                t.add_prefix("m", -1, pod, [key])
            _same(tables)
    for t in tables:
        assert t.stats()["entries"] == 100 + 2 * CROWD
    # and every key answers a probe the way the map's own find does (the walk's probes)
    absent = [base + j * buckets for j in range(CROWD, CROWD + 6)]
    _, answers = COMPILED._debug_raw_probes(tables[0], "m", -1, crowd + spread + absent)
    assert [std for std, _, _ in answers] == [True] * (CROWD + 100) + [False] * 6
    assert [near for _, _, near in answers] == [True] * (CROWD + 100) + [False] * 6


def test_engine_hashes_crowded_into_one_bucket_are_stored_replaced_and_removed_as_the_fallback_does():
    tables = _tables()
    rng = np.random.default_rng(22)
    first = BlockStored(rng.integers(1, 2**63, 100, dtype=np.uint64),
                        rng.integers(0, 256, (100, WIDTH), dtype=np.uint8), "m", source_pod="p")
    for t in tables:
        t.process_block_stored(first)
    _, _, buckets = COMPILED._debug_buckets(tables[0], "m", -1, "p")
    base = int(rng.integers(1, 2**40))
    engines = np.array([base + j * buckets for j in range(CROWD)], dtype=np.uint64)  # one engine bucket
    tokens = rng.integers(0, 256, (CROWD, WIDTH), dtype=np.uint8)
    for j in range(CROWD):  # the bucket grows one node at a time
        event = BlockStored(engines[j:j + 1], tokens[j:j + 1], "m", source_pod="p")
        for t in tables:
            t.process_block_stored(event)
        _same(tables)
    assert COMPILED._debug_buckets(tables[0], "m", -1, "p")[2] == buckets
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
    assert tables[0].stats()["entries"] == 100


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
