"""Limits and staleness: SPEC 5 and 6, decisions D3 (memory), D4, D5, D6, D12.

Everything but the background-thread tests runs on the fake clock with ``evict_now()``.
Expected victims are derived from D4's ticks: every placed or matched prefix gets a fresh tick, and
within one call block 0 gets the newest one.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixindex import AllBlocksCleared, BlockStored
from helpers import check_invariants, chain, ctx, removed, stored, toks


# --- D4: the per-context prefix bound ----------------------------------------------------------------------

def test_one_long_event_keeps_the_head_of_its_chain(make_table):
    t = make_table(max_prefixes_per_context=8)
    t.process_block_stored(stored(range(100, 120), range(20), "A"))
    # 20 > 8: trimmed to 8 - 8 // 4 = 6, the oldest ticks first, which are the tail of the chain
    assert set(ctx(t)) == set(chain(*range(20))[:6])
    assert t.stats()["evicted_prefixes"] == 14
    assert t.match_blocks("m", -1, toks(*range(20))) == {"A": 6}


def test_trim_to_three_quarters_oldest_first(make_table):
    t = make_table(max_prefixes_per_context=8)
    X = chain(1, 2, 3, 4, 5, 6, 7, 8)
    t.process_block_stored(stored(range(1, 9), range(1, 9), "A"))   # ticks X0=7 ... X7=0
    assert set(ctx(t)) == set(X) and t.stats()["evicted_prefixes"] == 0  # the bound itself is allowed
    t.process_block_stored(stored([50], [50], "B"))                  # tick 8: 9 > 8 -> keep 6
    Y = chain(50, 51, 52)
    assert set(ctx(t)) == set(X[:5]) | {Y[0]}
    assert t.stats()["evicted_prefixes"] == 3
    t.process_block_stored(stored([51], [51], "B", parent=50))      # tick 9: 7
    t.process_block_stored(stored([52], [52], "B", parent=51))      # tick 10: 8, no trim
    assert len(ctx(t)) == 8 and t.stats()["evicted_prefixes"] == 3
    t.add_prefix("m", -1, "C", [1001])                               # tick 11: 9 -> drop X4, X3, X2
    assert set(ctx(t)) == set(X[:2]) | set(Y) | {1001}
    assert t.stats()["evicted_prefixes"] == 6
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4)) == {"A": 2}


def test_match_refreshes_matched_prefixes(make_table):
    t = make_table(max_prefixes_per_context=8)
    P, Q = chain(1, 2, 3, 4), chain(11, 12, 13, 14)
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))      # P3=0 .. P0=3
    t.process_block_stored(stored([11, 12, 13, 14], [11, 12, 13, 14], "B"))  # Q3=4 .. Q0=7
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4)) == {"A": 4}         # P3=8 .. P0=11
    t.process_block_stored(stored([21], [21], "C"))                       # 12: drop Q3, Q2, Q1
    assert set(ctx(t)) == set(P) | {Q[0], chain(21)[0]}


def test_match_touches_only_the_matched_depth(make_table):
    t = make_table(max_prefixes_per_context=8)
    P, Q = chain(1, 2, 3, 4), chain(11, 12, 13, 14)
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))      # P3=0 .. P0=3
    t.process_block_stored(stored([11, 12, 13, 14], [11, 12, 13, 14], "B"))  # Q3=4 .. Q0=7
    assert t.match_prefix("m", -1, toks(1, 2, 99))[0] == {"A": 66}        # P1=8, P0=9
    t.process_block_stored(stored([21], [21], "C"))                       # 10: drop P3, P2, Q3
    assert set(ctx(t)) == set(P[:2]) | set(Q[:3]) | {chain(21)[0]}


def test_match_with_no_ready_holder_touches_nothing(make_table):
    t = make_table(max_prefixes_per_context=8)
    P, Q = chain(1, 2, 3, 4), chain(11, 12, 13, 14)
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))
    t.process_block_stored(stored([11, 12, 13, 14], [11, 12, 13, 14], "B"))
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4), ready_pods=["B"]) == {}  # depth 0
    t.process_block_stored(stored([21], [21], "C"))                       # drop P3, P2, P1
    assert set(ctx(t)) == {P[0]} | set(Q) | {chain(21)[0]}


def test_match_depth_is_the_longest_among_ready_pods(make_table):
    t = make_table(max_prefixes_per_context=8)
    P, Q = chain(1, 2, 3, 4), chain(11, 12, 13)
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))      # P3=0 .. P0=3
    t.process_block_stored(stored([1, 2], [1, 2], "B"))                   # P1=4, P0=5
    t.process_block_stored(stored([11, 12, 13], [11, 12, 13], "B"))       # Q2=6, Q1=7, Q0=8
    # only B is ready: depth 2 although A holds all four blocks
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4), ready_pods=["B", "X"]) == {"B": 2}  # P1=9, P0=10
    t.add_prefix("m", -1, "C", [901, 902])                                # 902=11, 901=12 -> 9: drop 3
    assert set(ctx(t)) == set(P[:2]) | set(Q[:2]) | {901, 902}


def test_add_prefix_ticks_run_backwards_too(make_table):
    t = make_table(max_prefixes_per_context=8)
    t.add_prefix("m", -1, "A", list(range(1, 11)))
    assert set(ctx(t)) == set(range(1, 7))
    assert t.stats()["evicted_prefixes"] == 4


def test_small_bound_trims_one_at_a_time(make_table):
    t = make_table(max_prefixes_per_context=3)   # 3 // 4 == 0: trimmed back to the bound itself
    t.process_block_stored(stored(range(5), range(5), "A"))
    assert set(ctx(t)) == set(chain(0, 1, 2, 3, 4)[:3])
    t.process_block_stored(stored([9], [9], "A"))
    assert set(ctx(t)) == set(chain(0, 1)) | {chain(9)[0]}
    assert t.stats()["evicted_prefixes"] == 3


def test_trim_drops_pods_left_with_nothing(make_table):
    t = make_table(max_prefixes_per_context=4)
    t.process_block_stored(stored([1], [1], "old"))
    t.process_block_stored(stored([2, 3, 4, 5], [2, 3, 4, 5], "new"))  # 5 > 4 -> keep 3
    assert set().union(*ctx(t).values()) == {"new"}
    assert t.stats()["pods"] == 1
    check_invariants(t, max_prefixes=4)
    # the trimmed pod's engine hashes went with it
    t.process_block_stored(stored([6], [6], "old", parent=1))
    assert t.stats()["orphan_blocks"] == 1


def test_trim_forgets_engine_hashes_of_prefixes_no_longer_held(make_table):
    """D3, Memory: at a trim, each pod state forgets engine hashes whose prefix it no longer holds."""
    t = make_table(block_size=1, max_prefixes_per_context=8)
    p1 = int(t.get_prefix_hashes([100])[0])
    t.process_block_stored(BlockStored([1], [100], "m", -1, "A"))
    t.process_block_stored(BlockStored([2], [100], "m", -1, "A"))   # alias of the same prefix p1
    t.add_prefix("m", -1, "B", [21, 22, 23, 24, 25])
    t.add_prefix("m", -1, "A", [31])                                # A keeps something through the trim
    t.process_block_removed(removed([1], "A"))                      # p1 gone; engine hash 2 now unknown
    t.add_prefix("m", -1, "B", [26, 27, 28])                        # 9 prefixes -> trim (A keeps 31)
    assert t.stats()["evicted_prefixes"] == 3 and 31 in ctx(t)
    t.add_prefix("m", -1, "A", [p1])                                # A holds p1 again
    t.process_block_stored(BlockStored([5], [200], "m", -1, "A", parent_block_hash=2))
    # engine hash 2 was forgotten at the trim, so it is not a known parent any more
    assert t.stats()["orphan_blocks"] == 1
    assert t.stats()["blocks_stored"] == 2


_OPS = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from(["A", "B", "C"]), st.sampled_from(["m", "n"]),
              st.lists(st.integers(0, 30), min_size=1, max_size=12), st.booleans()),
    st.tuples(st.just("add"), st.sampled_from(["A", "B", "C"]), st.sampled_from(["m", "n"]),
              st.lists(st.integers(1, 60), min_size=1, max_size=12, unique=True), st.booleans()),
    st.tuples(st.just("match"), st.sampled_from(["A", "B", "C"]), st.sampled_from(["m", "n"]),
              st.lists(st.integers(0, 30), min_size=1, max_size=12), st.booleans()),
), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bound=st.integers(1, 12), ops=_OPS)
def test_prefix_bound_holds_and_trims_keep_the_newest(make_table, bound, ops):
    t = make_table(max_prefixes_per_context=bound)
    target = bound - bound // 4
    engine = 0
    for kind, pod, model, ks, flag in ops:
        before = t.stats()["evicted_prefixes"]
        if kind == "store":
            engine += len(ks)
            t.process_block_stored(stored(range(engine, engine + len(ks)), ks, pod, model=model))
            newest = chain(*ks)
        elif kind == "add":
            t.add_prefix(model, -1, pod, ks)
            newest = list(dict.fromkeys(ks))
        else:
            t.match_blocks(model, -1, toks(*ks), ready_pods=None if flag else [pod])
            newest = []
        snap = t.snapshot()
        for prefixes in snap.values():
            assert len(prefixes) <= bound
        if t.stats()["evicted_prefixes"] > before:
            assert newest, "only placing can trim"
            assert len(snap[(model, -1)]) == target
            # this call's prefixes are the newest: its first `target` ones survive, in chain order
            assert all(p in snap[(model, -1)] for p in newest[:target])
            assert not any(p in snap[(model, -1)] for p in newest[target:])
    check_invariants(t, max_prefixes=bound)


# --- D5: the context bound -------------------------------------------------------------------------------

def test_max_contexts_evicts_least_recently_used(make_table):
    t = make_table(max_contexts=3)
    for lora in (0, 1, 2):
        t.process_block_stored(stored([1], [1], "A", lora=lora))
    t.match_prefix("m", 0, toks(1))                               # order now 1, 2, 0
    t.process_block_stored(stored([1], [1], "A", lora=3))         # evicts 1
    assert set(t.snapshot()) == {("m", 0), ("m", 2), ("m", 3)}
    assert t.stats()["evicted_contexts"] == 1
    t.add_prefix("m", 2, "B", [5])                                # order 0, 3, 2
    t.process_block_stored(stored([1], [1], "A", lora=4))         # evicts 0
    assert set(t.snapshot()) == {("m", 2), ("m", 3), ("m", 4)}
    t.process_block_stored(stored([2], [2], "A", lora=3))         # existing context: no eviction
    assert t.stats()["evicted_contexts"] == 2
    for lora in range(5, 30):
        t.add_prefix("x", lora, "A", [lora])
        assert t.stats()["contexts"] <= 3
    assert set(t.snapshot()) == {("x", 27), ("x", 28), ("x", 29)}
    assert t.stats()["evicted_contexts"] == 2 + 25


def test_orphans_do_not_create_or_evict_contexts(make_table):
    t = make_table(max_contexts=1)
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [2], "A", model="other", parent=1))
    t.process_block_stored(BlockStored([], [], "third", -1, "A"))
    t.add_prefix("fourth", -1, "A", [])
    assert set(t.snapshot()) == {("m", -1)}
    assert t.stats()["evicted_contexts"] == 0


# What counts as a use of a context (D5, D6) and as an event of pod A there (D6).
# name: (action on context ("m", -1) where pod A holds block 1, uses the context, refreshes A there)
ACTIONS = {
    "store": (lambda t: t.process_block_stored(stored([3], [3], "A")), True, True),
    "store_other_pod": (lambda t: t.process_block_stored(stored([3], [3], "B")), True, False),
    "add_prefix": (lambda t: t.add_prefix("m", -1, "A", [777]), True, True),
    "add_prefix_other_pod": (lambda t: t.add_prefix("m", -1, "C", [777]), True, False),
    "match_prefix": (lambda t: t.match_prefix("m", -1, toks(1)), True, False),
    "match_blocks": (lambda t: t.match_blocks("m", -1, toks(1, 2)), True, False),
    "short_query": (lambda t: t.match_prefix("m", -1, [1, 2]), True, False),
    "match_nothing": (lambda t: t.match_prefix("m", -1, toks(9), ready_pods=[]), True, False),
    "orphan_store": (lambda t: t.process_block_stored(stored([50], [50], "A", parent=12345)), False, True),
    "empty_store": (lambda t: t.process_block_stored(BlockStored([], [], "m", -1, "A")), False, True),
    "remove_named": (lambda t: t.process_block_removed(removed([999], "A")), False, True),
    "remove_every_pod": (lambda t: t.process_block_removed(removed([999], "")), False, False),
    "remove_prefix_other": (lambda t: t.remove_prefix("m", -1, "nobody"), False, False),
    "clear_other": (lambda t: t.process_all_blocks_cleared(AllBlocksCleared("nobody")), False, False),
    "store_other_context": (lambda t: t.process_block_stored(stored([3], [3], "A", lora=2)), False, False),
    "match_other_context": (lambda t: t.match_prefix("zzz", -1, toks(1)), False, False),
    "read_only": (lambda t: (t.stats(), t.snapshot(), t.get_prefix_hashes(toks(1))), False, False),
}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_context_recency_follows_uses(make_table, name):
    action, uses, _ = ACTIONS[name]
    t = make_table(max_contexts=2)
    t.process_block_stored(stored([1], [1], "A"))              # ("m", -1): least recently used
    t.process_block_stored(stored([1], [1], "A", lora=2))      # ("m", 2)
    action(t)
    t.process_block_stored(stored([1], [1], "A", lora=3))      # a third context: one must go
    survivor = ("m", -1) if uses else ("m", 2)
    assert set(t.snapshot()) == {survivor, ("m", 3)}
    assert t.stats()["evicted_contexts"] == 1


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_context_staleness_follows_uses(make_table, clock, name):
    action, uses, refreshes_a = ACTIONS[name]
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    clock.advance(50)
    action(t)
    clock.advance(20)   # the context is idle 70 s unless the action used it 20 s ago
    got = t.evict_now()
    assert got["contexts"] == (0 if uses else 1)
    # when the context stays, A goes unless the action was an event of A there
    assert got["pods"] == (1 if uses and not refreshes_a else 0)
    assert (("m", -1) in t.snapshot()) == (uses and (refreshes_a or name in ("store_other_pod",
                                                                             "add_prefix_other_pod")))


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_pod_staleness_follows_its_events(make_table, clock, name):
    action, _, refreshes_a = ACTIONS[name]
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [2], "B"))
    clock.advance(50)
    action(t)
    t.match_blocks("m", -1, toks(8))   # keeps the context in use, refreshes no pod
    clock.advance(20)
    t.evict_now()
    pods = set().union(*ctx(t).values()) if ctx(t) else set()
    assert ("A" in pods) == refreshes_a
    assert ("B" in pods) == (name == "store_other_pod")


# --- D6: staleness -----------------------------------------------------------------------------------------

def test_context_dropped_only_after_more_than_the_duration(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    clock.advance(60)
    assert t.evict_now() == {"contexts": 0, "pods": 0}
    assert ("m", -1) in t.snapshot()
    clock.advance(0.5)
    assert t.evict_now() == {"contexts": 1, "pods": 0}   # its pods go with it, not counted as pods
    assert t.snapshot() == {}
    s = t.stats()
    assert (s["evicted_contexts"], s["evicted_pods"], s["contexts"], s["pods"]) == (1, 0, 0, 0)


def test_fractional_duration(make_table, clock):
    t = make_table(eviction_duration_minutes=0.5)
    t.process_block_stored(stored([1], [1], "A"))
    clock.advance(30)
    assert t.evict_now()["contexts"] == 0
    clock.advance(0.25)
    assert t.evict_now()["contexts"] == 1


def test_stale_pod_dropped_fresh_pod_stays(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    t.process_block_stored(stored([1], [1], "C", model="n"))
    clock.advance(40)
    t.process_block_stored(stored([1], [1], "B"))
    t.process_block_stored(stored([5], [5], "C", model="n"))
    clock.advance(30)   # A idle 70 s in ("m", -1); B 30 s; C 30 s in ("n", -1)
    assert t.evict_now() == {"contexts": 0, "pods": 1}
    assert t.snapshot() == {("m", -1): {chain(1)[0]: frozenset({"B"})},
                            ("n", -1): {chain(1)[0]: frozenset({"C"}), chain(5)[0]: frozenset({"C"})}}
    s = t.stats()
    assert (s["evicted_pods"], s["evicted_contexts"], s["pods"]) == (1, 0, 2)
    # A's engine hashes went with it
    t.process_block_stored(stored([3], [3], "A", parent=2))
    assert t.stats()["orphan_blocks"] == 1


def test_context_emptied_by_pod_eviction_is_not_an_evicted_context(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [2], "B"))
    clock.advance(50)
    t.match_prefix("m", -1, toks(1))   # the context is used, its pods are silent
    clock.advance(20)
    assert t.evict_now() == {"contexts": 0, "pods": 2}
    assert t.snapshot() == {}
    s = t.stats()
    assert (s["evicted_contexts"], s["evicted_pods"], s["contexts"]) == (0, 2, 0)


def test_no_per_block_ttl(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    for i in range(4):
        clock.advance(40)
        t.process_block_stored(stored([10 + i], [10 + i], "A"))
        t.evict_now()
    assert t.match_blocks("m", -1, toks(1)) == {"A": 1}   # stored 160 s ago, still indexed
    assert t.stats()["evicted_pods"] == 0 and t.stats()["evicted_contexts"] == 0


def test_evict_now_counts_accumulate(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    for lora in range(3):
        t.process_block_stored(stored([1], [1], "A", lora=lora))
    t.process_block_stored(stored([1], [1], "B", lora=0))
    clock.advance(61)
    t.process_block_stored(stored([2], [2], "B", lora=0))   # keeps ("m", 0) and B there
    assert t.evict_now() == {"contexts": 2, "pods": 1}
    assert t.evict_now() == {"contexts": 0, "pods": 0}
    s = t.stats()
    assert (s["evicted_contexts"], s["evicted_pods"], s["contexts"], s["pods"]) == (2, 1, 1, 1)


# --- the background thread and the lifecycle (SPEC 6, D12) -----------------------------------------------

def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _new_threads(before):
    return [th for th in threading.enumerate() if th not in before]


def test_background_thread_evicts_stale_contexts(make_table, clock):
    t = make_table(background_eviction=True, eviction_interval_seconds=0.05, eviction_duration_minutes=1)
    assert t.eviction_thread_alive
    t.process_block_stored(stored([1], [1], "A"))
    time.sleep(0.2)   # a few passes on a clock that has not moved: nothing is stale
    assert t.stats()["contexts"] == 1
    clock.advance(61)
    assert _wait_until(lambda: t.stats()["contexts"] == 0)
    assert t.stats()["evicted_contexts"] == 1


def test_a_pass_that_raises_system_exit_is_logged_and_the_thread_goes_on(make_table, clock, caplog):
    """A clock= that raises SystemExit (not an Exception) in a background pass ended the thread for good,
    silently; every later stale context then stayed."""
    raising = threading.Event()

    def odd_clock():
        if raising.is_set() and threading.current_thread().name == "prefixindex-eviction":
            raising.clear()
            raise SystemExit(1)
        return clock()

    with caplog.at_level("ERROR", logger="prefixindex"):
        t = make_table(background_eviction=True, eviction_interval_seconds=0.02, eviction_duration_minutes=1,
                       clock=odd_clock)
        t.process_block_stored(stored([1], [1], "A"))
        raising.set()
        assert _wait_until(lambda: not raising.is_set())  # the pass that raised has run
        clock.advance(61)
        assert _wait_until(lambda: t.stats()["contexts"] == 0)  # a later pass of the same thread
        assert t.eviction_thread_alive
        t.close()
    assert any("eviction pass failed" in r.getMessage() and r.exc_info[0] is SystemExit for r in caplog.records)


def test_close_is_idempotent_and_stops_the_thread(make_table, clock):
    before = set(threading.enumerate())
    t = make_table(background_eviction=True, eviction_interval_seconds=0.05, eviction_duration_minutes=1)
    started = _new_threads(before)
    assert len(started) == 1 and started[0].daemon and started[0].is_alive()
    t.close()
    t.close()
    assert not t.eviction_thread_alive
    started[0].join(timeout=5)
    assert not started[0].is_alive()
    # the table stays usable; nothing ages out by itself any more
    t.process_block_stored(stored([1], [1], "A"))
    clock.advance(61)
    time.sleep(0.2)
    assert t.stats()["contexts"] == 1
    assert t.evict_now() == {"contexts": 1, "pods": 0}


def test_no_thread_without_background_eviction(make_table):
    before = set(threading.enumerate())
    t = make_table(background_eviction=False)
    assert not t.eviction_thread_alive
    assert _new_threads(before) == []
    t.close()
    assert not t.eviction_thread_alive


def test_context_manager(backend, clock):
    before = set(threading.enumerate())
    with backend.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, eviction_interval_seconds=0.05) as t:
        assert isinstance(t, backend.SyncPrefixHashTable)
        assert t.eviction_thread_alive
        t.process_block_stored(stored([1], [1], "A"))
        assert t.match_blocks("m", -1, toks(1)) == {"A": 1}
        threads = _new_threads(before)
        assert len(threads) == 1
    assert not t.eviction_thread_alive
    threads[0].join(timeout=5)
    assert not threads[0].is_alive()
    assert t.match_blocks("m", -1, toks(1)) == {"A": 1}


def test_dropped_table_is_collected_and_its_thread_ends(backend, clock):
    before = set(threading.enumerate())
    t = backend.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, eviction_interval_seconds=0.02)
    t.process_block_stored(stored([1], [1], "A"))
    (thread,) = _new_threads(before)
    ref = weakref.ref(t)
    del t

    def collected():
        gc.collect()
        return ref() is None

    assert _wait_until(collected, timeout=3)
    thread.join(timeout=3)
    assert not thread.is_alive()
