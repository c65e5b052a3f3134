"""The compiled core's two ways of walking a query (chunked, or probing beside the hash chain) and the
choice between them by measurement (WalkChoice in _native.h; docs/performance.md, "How a query walks").

The way is a matter of speed only: each is held here to the pure-Python backend's answers, on short and
long queries, small maps and maps large enough to have their buckets touched, every run length, ready
filters, and a long walk that the index changed under."""

from __future__ import annotations

import numpy as np
import pytest

from prefixindex import BlockRemoved, BlockStored, _core_py

from helpers import COMPILED

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: this run tests the pure-Python backend only")

MODES = {"chunked": 1, "beside": 2}


@pytest.fixture
def walk_mode(request):
    COMPILED._debug_set_walk_mode(MODES[request.param])
    yield request.param
    COMPILED._debug_set_walk_mode(0)


def _tables(block_size):
    return (COMPILED.SyncPrefixHashTable(seed=5, block_size=block_size, background_eviction=False),
            _core_py.SyncPrefixHashTable(seed=5, block_size=block_size, background_eviction=False))


def _store(tables, tokens, width, runs, model="m"):
    for t in tables:
        for pod, blocks in runs:
            t.process_block_stored(BlockStored(np.arange(1, blocks + 1, dtype=np.uint64),
                                               tokens[:blocks * width].reshape(blocks, width), model,
                                               source_pod=pod))


def _block_size_16(seed, blocks, runs):
    """Both backends' tables at block_size 16 (64 token bytes a block), holding `runs` of a random
    prompt of `blocks` blocks; the generator, the prompt's token bytes and the tables."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, blocks * 64, dtype=np.uint8)
    tables = _tables(16)
    _store(tables, tokens, 64, runs)
    return rng, tokens, tables


def _answers(t, model, queries, readies):
    out = []
    for q in queries:
        for ready in readies:
            blocks = t.match_blocks(model, -1, q, ready)
            percent, hashes = t.match_prefix(model, -1, q, ready)
            out.append((blocks, percent, np.asarray(hashes).tolist()))
    return out


@pytest.mark.parametrize("walk_mode", list(MODES), indirect=True)
@pytest.mark.parametrize("block_size", [4, 16])  # 16: the links with the width a compile-time constant
def test_either_way_answers_as_the_reference_does(walk_mode, block_size):
    width = block_size * 4
    rng = np.random.default_rng(block_size)
    tokens = rng.integers(0, 256, 400 * width, dtype=np.uint8)
    tables = _tables(block_size)
    # runs ending before, at and after the first chunk (8) and the later ones (64 each); a context of
    # 400 prefixes has its buckets touched by the chunked walk, and is walked through its bucket array
    # with staged prefetches beside the chain (TOUCH_BUCKETS_FROM; the stages are 8 blocks apart)
    _store(tables, tokens, width, [("a", 400), ("b", 7), ("c", 8), ("d", 9), ("e", 71), ("f", 72), ("g", 1)])
    _store(tables, tokens, width, [("a", 40), ("b", 3)], model="small")
    queries = [tokens[:k * width + 3] for k in (0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 72, 73, 200)]
    queries.append(rng.integers(0, 256, 20 * width, dtype=np.uint8))  # a miss at block 0
    # misses after a prefix: inside the first stages of the pipelined way (map of 256+ entries beside the
    # chain), while it still hashes, and after it has hashed everything
    for k, total in ((5, 20), (40, 120), (100, 130), (150, 160)):
        queries.append(np.concatenate([tokens[:k * width], rng.integers(0, 256, (total - k) * width, dtype=np.uint8)]))
    readies = [None, ["a"], ["b", "e", "zz"], ["zz"], []]
    for model in ("m", "small", "nothing"):
        assert _answers(tables[0], model, queries, readies) == _answers(tables[1], model, queries, readies)


@pytest.mark.parametrize("walk_mode", list(MODES), indirect=True)
def test_either_way_answers_long_queries_as_the_reference_does(walk_mode):
    # a long query (16,384 token bytes or more) hashes and walks outside the GIL; the way applies there too
    rng, tokens, tables = _block_size_16(9, 1200, [("a", 1200), ("b", 300), ("c", 257), ("d", 1)])
    queries = [tokens[:k * 64] for k in (256, 257, 300, 700, 1200)]
    queries.append(np.concatenate([tokens[:500 * 64], rng.integers(0, 256, 300 * 64, dtype=np.uint8)]))
    readies = [None, ["b", "c"], ["zz"]]
    assert _answers(tables[0], "m", queries, readies) == _answers(tables[1], "m", queries, readies)


@pytest.mark.parametrize("walk_mode", list(MODES), indirect=True)
def test_a_long_walk_that_the_index_changed_under_answers_as_of_now(walk_mode):
    # the hook runs between the walk outside the GIL and its closing section, as another thread could:
    # the closing section sees the change and walks again, inside, with the hashes the query already has
    _, tokens, tables = _block_size_16(3, 600, [("a", 600), ("b", 600)])
    gone = BlockRemoved(np.arange(301, 601, dtype=np.uint64), "m", source_pod="a")
    tables[1].process_block_removed(gone)
    COMPILED._debug_set_after_walk(lambda: tables[0].process_block_removed(gone))
    try:
        got = tables[0].match_prefix("m", -1, tokens, None)
    finally:
        COMPILED._debug_set_after_walk(None)
    expected = tables[1].match_prefix("m", -1, tokens, None)
    assert got[0] == expected[0] == {"a": 50, "b": 100}
    assert np.asarray(got[1]).tolist() == np.asarray(expected[1]).tolist()


def test_the_choice_measures_both_ways_and_answers_alike():
    # by default each table measures each way's cost per hashed block and now and then walks the way
    # it does not prefer, so that both estimates follow the workload: after a few hundred walks both
    # are measured, for short and for long queries, and the answers are the reference's throughout
    _, tokens, tables = _block_size_16(4, 300, [("a", 300), ("b", 40)])
    assert COMPILED._debug_walk_costs(tables[0]) == {"short": (0.0, 0.0), "long": (0.0, 0.0)}
    short, long = tokens[:64 * 64], tokens
    for i in range(300):
        for q in (short, long) if i % 4 == 0 else (short,):
            got = tables[0].match_prefix("m", -1, q, ["a", "b"])
            expected = tables[1].match_prefix("m", -1, q, ["a", "b"])
            assert got[0] == expected[0]
    costs = COMPILED._debug_walk_costs(tables[0])
    assert all(c > 0 for c in costs["short"]), costs
    assert all(c > 0 for c in costs["long"]), costs


def test_walks_too_short_to_tell_are_not_measured():
    # a walk of fewer than 16 hashed blocks (a miss at block 0, a short prompt) says little about the
    # way: it leaves the costs alone
    tables = _tables(16)
    tokens = np.random.default_rng(5).integers(0, 256, 64 * 10, dtype=np.uint8)
    _store(tables, tokens, 64, [("a", 10)])
    for _ in range(200):
        assert tables[0].match_blocks("m", -1, tokens, None) == {"a": 10}
    assert COMPILED._debug_walk_costs(tables[0]) == {"short": (0.0, 0.0), "long": (0.0, 0.0)}


def test_the_walk_mode_knob_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="walk mode must be 0, 1 or 2, got 3"):
        COMPILED._debug_set_walk_mode(3)


def test_the_choice_takes_the_cheaper_way_and_follows_a_change():
    # WalkChoice driven with made-up costs (ticks per block), no clock: it settles on the cheaper way,
    # tries the other rarely (one walk in 1,024 while they are far apart), and when the workload turns
    # (the maps go cold: chunked becomes the cheaper) it follows within a few thousand walks
    picks = COMPILED._debug_walk_choice([(8192, 60.0, 45.0), (8192, 140.0, 215.0)])
    warm, cold = picks[:8192], picks[8192:]
    tries = len(warm[100:]) - sum(warm[100:])
    assert 1 <= tries <= len(warm) // 1024 + 1  # beside, but for the rare tries of chunked
    turned = cold.index(False)
    assert turned < 5000, turned
    settled = cold[turned + 1000:]
    assert 1 <= sum(settled) <= len(settled) // 1024 + 1  # chunked, but for the rare tries of beside


def test_the_choice_tries_the_other_way_often_while_the_two_are_close():
    # within a quarter of each other the costs may swap with the load: one walk in 64 goes the other way
    picks = COMPILED._debug_walk_choice([(6400, 50.0, 45.0)])
    others = len(picks) - sum(picks)
    assert 90 <= others <= 110, others


def test_the_bucket_array_probes_agree_with_the_maps_own():
    """The walk probes through the prefix map's bucket array (libstdc++'s, reached by _map_internals.h's
    bucket_array): find_raw (the staged way) and find_near (four nodes compared without branching, the
    plain beside way) find exactly what the map's own interface finds, for stored keys and absent ones,
    in maps of several bucket counts and chain lengths. On Linux (libstdc++) the array is in use."""
    import sys

    rng = np.random.default_rng(11)
    t = COMPILED.SyncPrefixHashTable(seed=3, block_size=4, background_eviction=False,
                                     max_prefixes_per_context=1 << 17)
    for model, blocks in (("a", 1), ("b", 7), ("c", 300), ("d", 5000), ("e", 70_000)):
        tokens = rng.integers(0, 256, (blocks, 16), dtype=np.uint8)
        t.process_block_stored(BlockStored(np.arange(blocks, dtype=np.uint64), tokens, model, source_pod="p"))
        stored = [int(x) for x in t.get_prefix_hashes(tokens.reshape(-1))]
        absent = [int(x) for x in rng.integers(0, 2**63, 2000, dtype=np.uint64)] + [0, 2**64 - 1]
        raw, answers = COMPILED._debug_raw_probes(t, model, -1, stored + absent)
        if sys.platform.startswith("linux"):
            assert raw
        expected = [True] * len(stored) + [False] * len(absent)
        assert [std for std, _, _ in answers] == expected
        assert [near for _, _, near in answers] == expected
        if raw:
            assert [by_raw for _, by_raw, _ in answers] == expected
