"""SPEC Semantics 1-4 and 9, and decisions D2, D3, D7, D8, D9 (limits and staleness: test_limits_eviction.py).

Tables come from ``make_table``: seed 0, block_size 4. Blocks are named by small integers (helpers.blk),
so ``chain(1, 2, 3)`` is the prefix hashes a pod holds after storing blocks 1, 2, 3 as one chain.
"""

from __future__ import annotations

import numpy as np
import pytest

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored
from helpers import BACKENDS, STAT_KEYS, U64, FakeClock, chain, counters, ctx, id_bytes, removed, stored, toks


def holders_by_block(table, ks, model="m", lora=-1):
    """For the chain ks: the pods holding each of its prefix hashes (empty set when none)."""
    c = ctx(table, model, lora)
    return [set(c.get(p, ())) for p in chain(*ks)]


# --- SPEC 1: store ---------------------------------------------------------------------------------------

def test_blocks_of_one_event_form_a_chain(make_table):
    t = make_table()
    t.process_block_stored(stored([101, 102, 103], [1, 2, 3], "A"))
    assert t.snapshot() == {("m", -1): {p: frozenset({"A"}) for p in chain(1, 2, 3)}}
    # the hashes are chained: block 2 alone (from the root) is not what was indexed
    assert chain(2)[0] not in ctx(t) and chain(3)[0] not in ctx(t)
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 3}


def test_chain_continues_across_events_through_parent(make_table):
    t = make_table()
    t.process_block_stored(stored([101], [1], "A"))
    t.process_block_stored(stored([102, 103], [2, 3], "A", parent=101))
    assert set(ctx(t)) == set(chain(1, 2, 3))
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 3}
    assert t.stats()["orphan_blocks"] == 0


def test_parent_may_be_any_known_block_branching(make_table):
    t = make_table()
    t.process_block_stored(stored([101, 102, 103], [1, 2, 3], "A"))
    t.process_block_stored(stored([109], [9], "A", parent=102))  # branch after block 1
    assert chain(1, 2, 9)[2] in ctx(t)
    assert t.match_blocks("m", -1, toks(1, 2, 9)) == {"A": 3}
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 3}
    assert t.match_blocks("m", -1, toks(1, 9)) == {"A": 1}


def test_parent_none_starts_at_root_even_for_known_pod(make_table):
    t = make_table()
    t.process_block_stored(stored([101], [1], "A"))
    t.process_block_stored(stored([102], [2], "A"))  # no parent: a new chain from the root
    assert set(ctx(t)) == {chain(1)[0], chain(2)[0]}
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 1}
    assert t.match_blocks("m", -1, toks(2)) == {"A": 1}


def test_orphan_unknown_parent_in_new_context(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2, 3], [1, 2, 3], "A", parent=777))
    s = t.stats()
    assert t.snapshot() == {}
    assert s["orphan_blocks"] == 3 and s["blocks_stored"] == 0 and s["events_block_stored"] == 1
    assert s["contexts"] == 0 and s["pods"] == 0
    assert t.match_prefix("m", -1, toks(1, 2, 3))[0] == {}


def test_orphan_parent_known_only_to_another_pod(make_table):
    t = make_table()
    t.process_block_stored(stored([101], [1], "B"))
    before = t.snapshot()
    t.process_block_stored(stored([102, 103], [2, 3], "A", parent=101))
    assert t.snapshot() == before
    assert t.stats()["orphan_blocks"] == 2
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"B": 1}


def test_orphan_parent_known_only_in_another_context(make_table):
    t = make_table()
    t.process_block_stored(stored([101], [1], "A", model="m", lora=-1))
    before = t.snapshot()
    t.process_block_stored(stored([102], [2], "A", model="m", lora=3, parent=101))
    t.process_block_stored(stored([102], [2], "A", model="other", lora=-1, parent=101))
    assert t.snapshot() == before
    assert t.stats()["orphan_blocks"] == 2
    assert t.stats()["contexts"] == 1


def test_orphan_parent_unknown_for_known_pod_and_chains_after_orphans(make_table):
    t = make_table()
    t.process_block_stored(stored([101], [1], "A"))
    before = t.snapshot()
    t.process_block_stored(stored([105], [5], "A", parent=999))  # A never reported 999
    t.process_block_stored(stored([106], [6], "A", parent=105))  # 105 was never placed
    assert t.snapshot() == before
    assert t.stats()["orphan_blocks"] == 2
    assert t.stats()["blocks_stored"] == 1


def test_store_is_idempotent(make_table):
    t = make_table()
    t.process_block_stored(stored([101, 102], [1, 2], "A"))
    snap, s1 = t.snapshot(), t.stats()
    t.process_block_stored(stored([101, 102], [1, 2], "A"))
    t.process_block_stored(stored([102], [2], "A", parent=101))
    s2 = t.stats()
    assert t.snapshot() == snap
    assert (s2["prefixes"], s2["entries"], s2["pods"]) == (s1["prefixes"], s1["entries"], s1["pods"]) == (2, 2, 1)
    assert s2["blocks_stored"] == 2 + 2 + 1  # re-stores are counted (D9)
    # still removed by a single BlockRemoved
    t.process_block_removed(removed([102], "A"))
    assert set(ctx(t)) == {chain(1, 2)[0]}


def test_two_pods_same_content_share_prefixes(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([71, 72], [1, 2], "B"))  # own engine hashes, same content
    assert t.snapshot() == {("m", -1): {p: frozenset({"A", "B"}) for p in chain(1, 2)}}
    s = t.stats()
    assert (s["prefixes"], s["entries"], s["pods"]) == (2, 4, 2)


def test_empty_event_is_counted_and_changes_nothing(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A"))
    snap = t.snapshot()
    t.process_block_stored(BlockStored([], [], "m", -1, "A"))
    t.process_block_stored(BlockStored([], [], "m", -1, "A", parent_block_hash=12345))
    t.process_block_stored(BlockStored([], b"", "new-model", -1, "Z"))
    assert t.snapshot() == snap
    s = t.stats()
    assert s["events_block_stored"] == 4 and s["blocks_stored"] == 1 and s["orphan_blocks"] == 0
    assert s["contexts"] == 1


# --- SPEC 2: remove --------------------------------------------------------------------------------------

def test_remove_is_per_pod(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([1, 2], [1, 2], "B"))
    t.process_block_removed(removed([2], "A"))
    assert holders_by_block(t, [1, 2]) == [{"A", "B"}, {"B"}]
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 1, "B": 2}
    assert t.stats()["blocks_removed"] == 1


def test_engine_hashes_are_per_pod(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([11, 12], [1, 2], "B"))
    snap = t.snapshot()
    t.process_block_removed(removed([1, 2], "B"))  # B never reported 1 or 2
    assert t.snapshot() == snap
    assert t.stats()["blocks_removed"] == 0 and t.stats()["events_block_removed"] == 1
    t.process_block_removed(removed([11], "B"))
    assert holders_by_block(t, [1, 2]) == [{"A"}, {"A", "B"}]


def test_empty_source_pod_removes_for_every_pod(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([1, 2], [1, 2], "B"))
    t.process_block_stored(stored([21, 22], [1, 2], "C"))
    t.process_block_removed(removed([1], ""))
    # A and B reported engine hash 1; C named the same block 21
    assert holders_by_block(t, [1, 2]) == [{"C"}, {"A", "B", "C"}]
    assert t.stats()["blocks_removed"] == 2
    # A and B still hold block 1's prefix, but without block 0 they match nothing (SPEC 4)
    assert t.match_prefix("m", -1, toks(1, 2))[0] == {"C": 100}


def test_removing_a_middle_block_cuts_the_match(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))
    t.process_block_removed(removed([2], "A"))
    c = ctx(t)
    h = chain(1, 2, 3, 4)
    assert h[0] in c and h[1] not in c and h[2] in c and h[3] in c
    assert t.match_prefix("m", -1, toks(1, 2, 3, 4))[0] == {"A": 25}
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4)) == {"A": 1}


def test_remove_unknown_hash_pod_or_context_is_harmless(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A"))
    snap = t.snapshot()
    t.process_block_removed(removed([5], "A"))
    t.process_block_removed(removed([1], "nobody"))
    t.process_block_removed(removed([1], "A", model="other"))
    t.process_block_removed(removed([1], "", lora=4))
    t.process_block_removed(removed([], "A"))
    assert t.snapshot() == snap
    s = t.stats()
    assert s["events_block_removed"] == 5 and s["blocks_removed"] == 0 and s["contexts"] == 1


# --- SPEC 3 / D8: clear ----------------------------------------------------------------------------------

def _clear_setup(t):
    for model, lora in (("m", -1), ("m", 1), ("n", -1), ("n", 1)):
        t.process_block_stored(stored([1, 2], [1, 2], "A", model=model, lora=lora))
        t.process_block_stored(stored([9], [3], "B", model=model, lora=lora))


def _pods_by_context(t):
    return {key: set().union(*v.values()) for key, v in t.snapshot().items()}


def test_clear_one_context(make_table):
    t = make_table()
    _clear_setup(t)
    t.process_all_blocks_cleared(AllBlocksCleared("A", "m", -1))
    assert _pods_by_context(t) == {("m", -1): {"B"}, ("m", 1): {"A", "B"},
                                   ("n", -1): {"A", "B"}, ("n", 1): {"A", "B"}}
    assert t.stats()["events_all_blocks_cleared"] == 1


def test_clear_every_context(make_table):
    t = make_table()
    _clear_setup(t)
    t.process_block_stored(stored([5], [5], "A", model="only-a"))
    t.process_all_blocks_cleared(AllBlocksCleared("A"))
    assert _pods_by_context(t) == {k: {"B"} for k in (("m", -1), ("m", 1), ("n", -1), ("n", 1))}
    assert t.stats()["pods"] == 1 and t.stats()["contexts"] == 4  # "only-a" is gone (D2)


def test_clear_model_filter_covers_every_lora(make_table):
    t = make_table()
    _clear_setup(t)
    t.process_all_blocks_cleared(AllBlocksCleared("A", "m"))
    assert _pods_by_context(t) == {("m", -1): {"B"}, ("m", 1): {"B"},
                                   ("n", -1): {"A", "B"}, ("n", 1): {"A", "B"}}


def test_clear_lora_filter_covers_every_model(make_table):
    t = make_table()
    _clear_setup(t)
    t.process_all_blocks_cleared(AllBlocksCleared("A", None, 1))
    assert _pods_by_context(t) == {("m", -1): {"A", "B"}, ("m", 1): {"B"},
                                   ("n", -1): {"A", "B"}, ("n", 1): {"B"}}


def test_clear_forgets_engine_hashes_and_unknown_pod_is_harmless(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([1], [1], "B"))
    snap = t.snapshot()
    t.process_all_blocks_cleared(AllBlocksCleared("nobody"))
    t.process_all_blocks_cleared(AllBlocksCleared("A", "no-such-model"))
    assert t.snapshot() == snap
    t.process_all_blocks_cleared(AllBlocksCleared("A"))
    t.process_block_stored(stored([2], [2], "A", parent=1))  # 1 is no longer known for A
    assert t.stats()["orphan_blocks"] == 1
    assert t.snapshot() == {("m", -1): {chain(1)[0]: frozenset({"B"})}}
    assert t.stats()["events_all_blocks_cleared"] == 3


# --- SPEC 4 / D7: match ----------------------------------------------------------------------------------

def _match_setup(t):
    t.process_block_stored(stored([1, 2, 3], [1, 2, 3], "C"))  # all 3
    t.process_block_stored(stored([1, 2], [1, 2], "A"))        # 2 of 3
    t.process_block_stored(stored([1], [1], "B"))              # 1 of 3
    t.add_prefix("m", -1, "D", chain(1, 2, 3)[1:])             # blocks 1 and 2 but not 0
    t.process_block_stored(stored([5], [5], "E"))              # something else


def test_match_percent_floor_and_zero_left_out(make_table):
    t = make_table()
    _match_setup(t)
    result, hashes = t.match_prefix("m", -1, toks(1, 2, 3))
    assert result == {"C": 100, "A": 66, "B": 33}
    assert hashes.tolist() == chain(1, 2, 3)
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"C": 3, "A": 2, "B": 1}
    # a longer query: percent of the query's blocks
    assert t.match_prefix("m", -1, toks(1, 2, 3, 4, 6, 7, 8))[0] == {"C": 42, "A": 28, "B": 14}
    assert t.match_prefix("m", -1, toks(1, 9, 9))[0] == {"C": 33, "A": 33, "B": 33}
    assert t.match_prefix("m", -1, toks(7, 2, 3))[0] == {}


def test_match_ignores_trailing_partial_block_and_accepts_every_token_form(make_table):
    t = make_table()
    _match_setup(t)
    expected = {"C": 100, "A": 100, "B": 50}
    q = toks(1, 2) + [77, 78]
    for form in (q, np.array(q, dtype=np.int64), np.array(q, dtype=">u4"), id_bytes(q),
                 bytearray(id_bytes(q)), memoryview(id_bytes(q)), np.frombuffer(id_bytes(q), np.uint8),
                 id_bytes(q) + b"\x01\x02"):
        assert t.match_prefix("m", -1, form)[0] == expected


@pytest.mark.parametrize("ready, expected", [
    (None, {"C": 3, "A": 2, "B": 1}),
    (["A", "B"], {"A": 2, "B": 1}),
    ({"C"}, {"C": 3}),
    (frozenset({"A", "D", "E"}), {"A": 2}),
    ({"B": 1, "X": 2}, {"B": 1}),                # dict: its keys
    (("unknown", "also-unknown"), {}),
    ([], {}),
    (["A", "A", "ghost"], {"A": 2}),
])
def test_ready_pods_filter(make_table, ready, expected):
    t = make_table()
    _match_setup(t)
    assert t.match_blocks("m", -1, toks(1, 2, 3), ready_pods=ready) == expected
    percents = {pod: m * 100 // 3 for pod, m in expected.items()}
    assert t.match_prefix("m", -1, toks(1, 2, 3), ready_pods=ready)[0] == percents


def test_ready_pods_generator_and_dict_keys(make_table):
    t = make_table()
    _match_setup(t)
    assert t.match_blocks("m", -1, toks(1, 2, 3), ready_pods=(p for p in ["C", "B"])) == {"C": 3, "B": 1}
    assert t.match_blocks("m", -1, toks(1, 2, 3), ready_pods={"A": 0}.keys()) == {"A": 2}


def test_query_shorter_than_one_block(make_table):
    t = make_table()
    _match_setup(t)
    for q in ([], toks(1)[:3], id_bytes(toks(1))[:15], b""):
        result, hashes = t.match_prefix("m", -1, q)
        assert result == {} and hashes.dtype == np.uint64 and len(hashes) == 0
        assert t.match_blocks("m", -1, q) == {}
    assert t.stats()["matches"] == 8  # still counted (D7)


def test_contexts_are_isolated(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A", model="m", lora=-1))
    t.process_block_stored(stored([1], [1], "B", model="m", lora=2))
    t.process_block_stored(stored([1], [1], "C", model="M", lora=-1))
    assert t.match_blocks("m", -1, toks(1)) == {"A": 1}
    assert t.match_blocks("m", 2, toks(1)) == {"B": 1}
    assert t.match_blocks("M", -1, toks(1)) == {"C": 1}
    assert t.match_blocks("m", 0, toks(1)) == {}


# --- D3: engine block hashes -----------------------------------------------------------------------------

def test_alias_engine_hashes_share_one_entry(make_table):
    t = make_table()
    t.process_block_stored(stored([5], [5], "A"))   # keeps A's pod state alive throughout
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [1], "A"))   # alias: same content, other engine hash
    assert ctx(t)[chain(1)[0]] == frozenset({"A"})
    assert t.stats()["entries"] == 2 and t.stats()["blocks_stored"] == 3
    t.process_block_removed(removed([2], "A"))      # removing either alias removes the entry
    assert chain(1)[0] not in ctx(t)
    assert t.stats()["blocks_removed"] == 1
    # the other alias is unknown while A does not hold the prefix ...
    t.process_block_stored(stored([3], [3], "A", parent=1))
    assert t.stats()["orphan_blocks"] == 1
    # ... and known again once it does
    t.process_block_stored(stored([4], [1], "A"))
    t.process_block_stored(stored([3], [3], "A", parent=1))
    assert t.match_blocks("m", -1, toks(1, 3)) == {"A": 2}
    assert t.stats()["orphan_blocks"] == 1


def test_engine_hash_reused_with_new_content(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([9], [1], "B"))
    t.process_block_stored(stored([1], [2], "A"))  # A's engine hash 1 now names block 2
    assert ctx(t) == {chain(1)[0]: frozenset({"B"}), chain(2)[0]: frozenset({"A"})}
    s = t.stats()
    assert s["blocks_removed"] == 0 and s["blocks_stored"] == 3 and s["entries"] == 2
    t.process_block_stored(stored([7], [7], "A", parent=1))  # parent 1 is the new content
    assert chain(2, 7)[1] in ctx(t)
    t.process_block_removed(removed([1], "A"))
    assert ctx(t) == {chain(1)[0]: frozenset({"B"}), chain(2, 7)[1]: frozenset({"A"})}


def test_add_prefix_entries_are_not_removed_by_block_removed(make_table):
    t = make_table()
    h = chain(1, 2)
    t.add_prefix("m", -1, "A", h)
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 2}
    snap = t.snapshot()
    t.process_block_removed(removed(h + [1, 2], "A"))
    t.process_block_removed(removed(h, ""))
    assert t.snapshot() == snap and t.stats()["blocks_removed"] == 0
    # and add_prefix records no engine hash: nothing can chain from it by engine hash
    t.process_block_stored(stored([3], [3], "A", parent=h[1]))
    assert t.stats()["orphan_blocks"] == 1
    assert t.snapshot() == snap


def test_add_prefix_and_remove_prefix(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([1, 2], [1, 2], "B"))
    t.process_block_stored(stored([1], [1], "A", lora=5))
    t.add_prefix("m", -1, "A", [123, -1])
    assert ctx(t)[123] == frozenset({"A"}) and ctx(t)[U64 - 1] == frozenset({"A"})
    t.add_prefix("m", -1, "C", np.array(chain(1, 2), dtype=np.uint64))
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 2, "B": 2, "C": 2}
    events = {k: v for k, v in counters(t).items() if k.startswith("events")}
    t.remove_prefix("m", -1, "A")  # also the entries made by events (D8)
    assert t.match_blocks("m", -1, toks(1, 2)) == {"B": 2, "C": 2}
    assert 123 not in ctx(t) and U64 - 1 not in ctx(t)
    assert ctx(t, "m", 5) == {chain(1)[0]: frozenset({"A"})}  # one context only
    assert {k: v for k, v in counters(t).items() if k.startswith("events")} == events  # not an event
    # A's engine hashes are gone with its entries
    t.process_block_stored(stored([3], [3], "A", parent=2))
    assert t.stats()["orphan_blocks"] == 1
    t.remove_prefix("m", -1, "nobody")
    t.remove_prefix("nowhere", 0, "B")
    assert t.stats()["contexts"] == 2


# --- D2: lifetimes ---------------------------------------------------------------------------------------

def test_empty_contexts_disappear(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([1], [1], "A", model="n"))
    t.process_block_removed(removed([1, 2], "A"))
    assert t.snapshot() == {("n", -1): {chain(1)[0]: frozenset({"A"})}}
    assert t.stats()["contexts"] == 1
    t.remove_prefix("n", -1, "A")
    assert t.snapshot() == {} and t.stats()["contexts"] == 0 and t.stats()["pods"] == 0


def test_matching_removing_and_orphans_never_create_a_context(make_table):
    t = make_table()
    t.match_prefix("m", -1, toks(1, 2))
    t.match_blocks("m", -1, toks(1))
    t.process_block_removed(removed([1], "A"))
    t.process_block_removed(removed([1], ""))
    t.process_block_stored(stored([1], [1], "A", parent=5))
    t.process_all_blocks_cleared(AllBlocksCleared("A"))
    t.add_prefix("m", -1, "A", [])
    t.remove_prefix("m", -1, "A")
    assert t.snapshot() == {}
    s = t.stats()
    assert (s["contexts"], s["prefixes"], s["entries"], s["pods"]) == (0, 0, 0, 0)


def test_pods_stat_counts_pods_holding_something_anywhere(make_table):
    t = make_table()
    t.process_block_stored(stored([1], [1], "A", model="x"))
    t.process_block_stored(stored([1], [1], "A", model="y"))
    t.process_block_stored(stored([1], [1], "B", model="x"))
    assert t.stats()["pods"] == 2
    t.process_block_removed(removed([1], "A", model="x"))
    assert t.stats()["pods"] == 2
    t.process_block_removed(removed([1], "A", model="y"))
    assert t.stats()["pods"] == 1
    t.process_block_stored(stored([1], [1], "C", model="x", parent=1))  # orphan: C holds nothing
    assert t.stats()["pods"] == 1


def test_pod_state_is_forgotten_when_pod_holds_nothing(make_table):
    t = make_table()
    t.process_block_stored(stored([5], [5], "B"))  # keeps the context alive
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [1], "A"))  # alias of the same entry
    t.process_block_removed(removed([1], "A"))     # A holds nothing now: its engine map goes (D2)
    t.process_block_stored(stored([3], [1], "A"))  # A holds the prefix again, under engine hash 3
    t.process_block_stored(stored([4], [4], "A", parent=2))
    assert t.stats()["orphan_blocks"] == 1
    t.process_block_stored(stored([4], [4], "A", parent=3))
    assert t.match_blocks("m", -1, toks(1, 4)) == {"A": 2}


# --- D9: stats -------------------------------------------------------------------------------------------

def test_stats_keys(make_table):
    s = make_table().stats()
    assert set(STAT_KEYS) <= set(s)
    assert all(s[k] == 0 for k in STAT_KEYS)


def test_stats_after_scripted_sequence(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2, 3], [1, 2, 3], "A"))        # stored 3
    t.process_block_stored(stored([1, 2], [1, 2], "B"))              # stored 5
    t.process_block_stored(stored([9], [9], "A", parent=777))        # orphan 1
    t.process_block_stored(stored([4, 5], [4, 5], "A", parent=3))    # stored 7: A holds chain 1..5
    t.process_block_stored(stored([1], [1], "A"))                    # re-store: stored 8
    t.process_block_stored(stored([7], [7], "B", model="n"))         # stored 9, second context
    t.process_block_removed(removed([2, 99], "A"))                   # removed 1 (99 unknown)
    t.process_block_removed(removed([1], ""))                        # removed 3: A's and B's block 0
    t.match_prefix("m", -1, toks(1, 2))                              # matches 1
    t.match_blocks("n", -1, toks(7))                                 # matches 2
    t.match_prefix("zzz", -1, toks(1))                               # matches 3: unknown context
    t.process_all_blocks_cleared(AllBlocksCleared("B", "n"))         # context n is gone
    h = chain(1, 2, 3, 4, 5)
    # A lost block 0 and 1, B lost block 0: A holds h[2:], B holds h[1]
    assert t.snapshot() == {("m", -1): {h[1]: frozenset({"B"}), h[2]: frozenset({"A"}),
                                        h[3]: frozenset({"A"}), h[4]: frozenset({"A"})}}
    expected = dict(contexts=1, prefixes=4, entries=4, pods=2,
                    events_block_stored=6, events_block_removed=2, events_all_blocks_cleared=1,
                    blocks_stored=9, blocks_removed=3, orphan_blocks=1, matches=3,
                    evicted_contexts=0, evicted_pods=0, evicted_prefixes=0)
    assert {k: t.stats()[k] for k in STAT_KEYS} == expected
    t.add_prefix("m", -1, "C", [123, h[1]])   # one new prefix, two new entries
    expected.update(prefixes=5, entries=6, pods=3)
    assert {k: t.stats()[k] for k in STAT_KEYS} == expected
    t.remove_prefix("m", -1, "A")             # h[2:] had only A
    expected.update(prefixes=2, entries=3, pods=2)
    assert {k: t.stats()[k] for k in STAT_KEYS} == expected


# --- accepted edge names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, pod", [("", "p"), ("模型/ü", "ポッド-1"), ("m", "🚀 pod"), ("a\x00b", "10.0.0.1:8000")])
def test_any_str_names(make_table, model, pod):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], pod, model=model))
    t.process_block_stored(stored([1], [1], "other", model=model))
    assert t.snapshot() == {(model, -1): {chain(1, 2)[0]: frozenset({pod, "other"}),
                                          chain(1, 2)[1]: frozenset({pod})}}
    assert t.match_prefix(model, -1, toks(1, 2), ready_pods=[pod])[0] == {pod: 100}
    t.process_all_blocks_cleared(AllBlocksCleared(pod, model))
    assert t.match_blocks(model, -1, toks(1, 2)) == {"other": 1}


def test_pod_named_empty_string_is_refused_where_it_would_store(make_table):
    # SPEC: a block is always stored by some pod; "" means "every pod", and only in BlockRemoved
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    before = t.snapshot(), t.stats()
    with pytest.raises(ValueError, match="source_pod must be a non-empty pod name"):
        t.process_block_stored(stored([1, 2], [1, 2], ""))
    with pytest.raises(ValueError, match="pod must be a non-empty pod name"):
        t.add_prefix("m", -1, "", [42])
    with pytest.raises(ValueError, match="pod must be a non-empty pod name"):
        t.remove_prefix("m", -1, "")
    with pytest.raises(ValueError, match="source_pod must be a non-empty pod name"):
        t.process_all_blocks_cleared(AllBlocksCleared(""))
    assert (t.snapshot(), t.stats()) == before
    t.process_block_removed(removed([2], ""))  # "" as source_pod means every pod (SPEC 2)
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 1}


# --- SPEC 9: backends ------------------------------------------------------------------------------------

def test_backends_agree():
    """SPEC 9 / 5: the same calls give the same results on every backend (and as computed here).
    Which backend the package picks, and when: tests/test_backends.py."""

    def script(mod):
        clock = FakeClock()
        t = mod.SyncPrefixHashTable(seed=2024, block_size=4, clock=clock, background_eviction=False,
                                    max_prefixes_per_context=8, max_contexts=2,
                                    eviction_duration_minutes=1)
        out = []
        t.process_block_stored(stored(range(10), range(10), "A"))
        t.process_block_stored(stored([20, 21], [1, 2], "B", lora=3))
        clock.advance(30)
        t.process_block_stored(stored([30], [4], "B", lora=3, parent=21))
        out.append(t.match_prefix("m", -1, toks(*range(8)))[0])
        t.process_block_stored(stored([1], [1], "C", model="x"))
        clock.advance(45)
        out.append(t.evict_now())
        out.append(t.match_prefix("m", 3, toks(1, 2, 4), ready_pods=["B"])[0])
        out.append(t.get_prefix_hashes(toks(1, 2, 3)).tolist())
        out.append(t.snapshot())
        out.append(t.stats())
        t.close()
        return out

    results = {name: script(mod) for name, mod in BACKENDS.items()}
    first = results[sorted(results)[0]]
    for name, res in results.items():
        assert res == first, name
    # and the common result is the right one
    assert first[3] == chain(1, 2, 3, seed=2024)
    assert first[0] == {"A": 75}  # a 10-block event trimmed to its first 6 blocks: 3 of 4 match
