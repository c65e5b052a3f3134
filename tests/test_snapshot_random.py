"""Random call sequences with a save and load in the middle (issue 12, Deliver 1): from the load on,
the loaded table and the original answer every call identically, and their snapshots stay byte-equal.

Small bounds make trims (D4), context evictions (D5) and staleness (D6) happen often; engine hashes
are drawn from a small pool so that aliases, reuse with new content and stale aliases (D3) occur.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import BACKENDS, FakeClock
from helpers import toks
from test_snapshot import has_snapshots
from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored, _snapshot

PODS = ["a", "b", "c", "ポ"]
MODELS = ["m", "m", "m", "n", "o"]  # weighted: most calls land in one context, so that it fills and trims
BLOCK = st.integers(0, 7)
ENGINE = st.integers(0, 9)  # a small pool: aliases, reuse with new content, stale aliases

op = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(PODS), st.sampled_from(MODELS),
              st.lists(BLOCK, min_size=1, max_size=4), st.lists(ENGINE, min_size=4, max_size=4),
              st.sampled_from([None, None, None, 0, 1, 2, 3, 4])),
    st.tuples(st.just("remove"), st.sampled_from(PODS + [""]), st.sampled_from(MODELS),
              st.lists(ENGINE, min_size=1, max_size=3)),
    st.tuples(st.just("clear"), st.sampled_from(PODS), st.one_of(st.none(), st.sampled_from(MODELS))),
    st.tuples(st.just("match"), st.sampled_from(MODELS), st.lists(BLOCK, max_size=4),
              st.one_of(st.none(), st.lists(st.sampled_from(PODS), max_size=3))),
    st.tuples(st.just("add"), st.sampled_from(PODS), st.sampled_from(MODELS), st.lists(st.integers(0, 40),
                                                                                        max_size=4)),
    st.tuples(st.just("remove_prefix"), st.sampled_from(PODS), st.sampled_from(MODELS)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 0.5, 7.0, 31.0, 61.0])),
)


# Every sequence starts with these: a trim (D4), then a stale alias of each encoding (D3: "a" in "m"
# keeps engine hash 9 for a prefix "b" still holds; "c" keeps 8 for one the context lost).
PREAMBLE = [
    ("add", "d", "m", [100, 101, 102, 103, 104, 105, 106]), ("remove_prefix", "d", "m"),
    ("store", "a", "m", [0, 1], [0, 1, 0, 0], None), ("store", "b", "m", [0], [5, 0, 0, 0], None),
    ("store", "a", "m", [0], [9, 0, 0, 0], None), ("remove", "a", "m", [0]),
    ("store", "c", "n", [2, 3], [7, 6, 0, 0], None), ("store", "c", "n", [2], [8, 0, 0, 0], None),
    ("remove", "c", "n", [7]),
]


def apply(table, clock: FakeClock, call):
    kind = call[0]
    if kind == "store":
        _, pod, model, blocks, engine, parent = call
        return table.process_block_stored(BlockStored(engine[:len(blocks)], toks(*blocks), model, -1,
                                                      source_pod=pod, parent_block_hash=parent))
    if kind == "remove":
        _, pod, model, engine = call
        return table.process_block_removed(BlockRemoved(engine, model, -1, pod))
    if kind == "clear":
        return table.process_all_blocks_cleared(AllBlocksCleared(call[1], call[2]))
    if kind == "match":
        _, model, blocks, ready = call
        result, hashes = table.match(model, -1, toks(*blocks), ready_pods=ready)
        return result, hashes.tolist()
    if kind == "add":
        return table.add_prefix(call[2], -1, call[1], call[3])
    if kind == "remove_prefix":
        return table.remove_prefix(call[2], -1, call[1])
    clock.advance(call[1])
    return table.evict_now()


def dump(table) -> bytes:
    buf = io.BytesIO()
    _snapshot.save_table(table, buf)
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(op, max_size=60), after=st.lists(op, max_size=30),
       writer=st.sampled_from(sorted(n for n in BACKENDS if has_snapshots(BACKENDS[n]))),
       reader=st.sampled_from(sorted(n for n in BACKENDS if has_snapshots(BACKENDS[n]))))
def test_a_loaded_table_continues_exactly(before, after, writer, reader):
    clock = FakeClock()
    original = BACKENDS[writer].SyncPrefixHashTable(seed=3, block_size=4, clock=clock, background_eviction=False,
                                                    max_contexts=2, max_prefixes_per_context=6,
                                                    eviction_duration_minutes=1.0)
    for call in PREAMBLE + before:
        apply(original, clock, call)
    data = dump(original)
    other = FakeClock(clock.now)
    loaded = _snapshot.load_table(BACKENDS[reader].SyncPrefixHashTable, io.BytesIO(data),
                                  {"clock": other, "background_eviction": False})
    assert dump(loaded) == data
    for i, call in enumerate(after):
        assert apply(loaded, other, call) == apply(original, clock, call), (i, call)
        assert loaded.snapshot() == original.snapshot(), (i, call)
        assert loaded.stats() == original.stats(), (i, call)
    assert dump(loaded) == dump(original)
