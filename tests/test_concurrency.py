"""SPEC 7: every method is safe from many threads at once, together with the eviction thread.

These run on the real clock with the background eviction thread at a short interval, so that the
staleness pass, the context bound and the per-context trims all happen while other threads work.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored
from helpers import check_invariants, chain, id_bytes, ref_chain, toks

N_THREADS = 8
MAX_CONTEXTS = 4
MAX_PREFIXES = 48
MAIN = [("m", -1), ("m", 1), ("n", -1), ("n", 7)]
RARE = ("rare", 0)   # a fifth context, used now and then: forces the context bound
PODS = [f"pod-{i}" for i in range(5)]
SEED = 11


def _worker(t, idx, deadline, errors, stats_seen):
    rng = random.Random(idx)
    next_engine = (idx + 1) << 40          # engine hashes unique to this thread
    recent = []                            # (context, pod, engine hash) stored by this thread
    ghosts = 0
    try:
        while time.monotonic() < deadline:
            key = RARE if rng.random() < 0.003 else rng.choice(MAIN)
            model, lora = key
            pod = rng.choice(PODS)
            r = rng.random()
            if r < 0.30:                                        # store a chain, maybe continuing one
                n = rng.randint(1, 6)
                ks = [rng.randint(0, 40) for _ in range(n)]
                hashes = list(range(next_engine, next_engine + n))
                next_engine += n
                parent = None
                mine = [e for (k, p, e) in recent[-20:] if k == key and p == pod]
                if mine and rng.random() < 0.5:
                    parent = rng.choice(mine)
                elif rng.random() < 0.05:
                    parent = rng.getrandbits(64)                # unknown: an orphan
                tokens = toks(*ks) if rng.random() < 0.5 else id_bytes(toks(*ks))
                t.process_block_stored(BlockStored(hashes, tokens, model, lora, pod, parent))
                recent.extend((key, pod, e) for e in hashes)
                del recent[:-200]
            elif r < 0.38:                                      # remove, for one pod or for all
                if recent:
                    picks = [e for (_, _, e) in rng.sample(recent, min(3, len(recent)))]
                    t.process_block_removed(BlockRemoved(picks, model, lora, pod if rng.random() < 0.8 else ""))
            elif r < 0.40:                                      # clear, in one model or everywhere
                t.process_all_blocks_cleared(AllBlocksCleared(pod, model if rng.random() < 0.7 else None))
            elif r < 0.65:                                      # match, and check what comes back
                ks = [rng.randint(0, 40) for _ in range(rng.randint(0, 6))]
                q = toks(*ks) + [1] * rng.randint(0, 3)
                ready = None if rng.random() < 0.5 else rng.sample(PODS + ["ghost"], rng.randint(0, 4))
                expected_hashes = ref_chain(id_bytes(q), 16, SEED)
                if rng.random() < 0.5:
                    result, hashes = t.match_prefix(model, lora, q, ready_pods=ready)
                    assert hashes.tolist() == expected_hashes
                    assert all(1 <= v <= 100 for v in result.values()), result
                else:
                    result = t.match_blocks(model, lora, q, ready_pods=ready)
                    assert all(1 <= v <= len(expected_hashes) for v in result.values()), result
                if ready is not None:
                    assert set(result) <= set(ready)
            elif r < 0.72:                                      # add_prefix of real or made-up hashes
                ks = [rng.randint(0, 40) for _ in range(rng.randint(1, 5))]
                hashes = chain(*ks, seed=SEED) if rng.random() < 0.7 else [rng.getrandbits(64)]
                t.add_prefix(model, lora, pod, hashes)
            elif r < 0.74:
                t.remove_prefix(model, lora, pod)
            elif r < 0.78:                                      # a consistent snapshot at any moment
                snap = t.snapshot()
                assert len(snap) <= MAX_CONTEXTS
                for prefixes in snap.values():
                    assert prefixes and len(prefixes) <= MAX_PREFIXES
                    assert all(pods for pods in prefixes.values())
                s = t.stats()
                assert s["contexts"] <= MAX_CONTEXTS and s["prefixes"] <= MAX_CONTEXTS * MAX_PREFIXES
                stats_seen.append(s["events_block_stored"])
            elif r < 0.80:
                got = t.evict_now()
                assert set(got) == {"contexts", "pods"} and min(got.values()) >= 0
            elif r < 0.85:                                      # a pod that sends one event and dies
                ghosts += 1
                t.process_block_stored(BlockStored([next_engine], toks(0), model, lora, f"ghost-{idx}-{ghosts}"))
                next_engine += 1
            else:                                               # keep the shared block 0 in use
                t.match_blocks(model, lora, toks(0))
    except BaseException:  # noqa: BLE001 - reported by the test
        errors.append(traceback.format_exc())


def test_mixed_load_with_background_eviction(backend):
    t = backend.SyncPrefixHashTable(seed=SEED, block_size=4, max_contexts=MAX_CONTEXTS,
                                    max_prefixes_per_context=MAX_PREFIXES,
                                    eviction_interval_seconds=0.01, eviction_duration_minutes=0.05 / 60)
    try:
        assert t.eviction_thread_alive
        errors, stats_seen = [], []
        deadline = time.monotonic() + 1.5
        threads = [threading.Thread(target=_worker, args=(t, i, deadline, errors, stats_seen))
                   for i in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads)
        assert not errors, errors[0]
        assert t.eviction_thread_alive

        check_invariants(t, MAX_CONTEXTS, MAX_PREFIXES)
        s = t.stats()
        assert s["events_block_stored"] > 100 and s["matches"] > 100
        assert s["evicted_prefixes"] > 0, "the per-context bound never trimmed"
        assert s["evicted_contexts"] > 0, "no context was evicted"
        assert s["evicted_pods"] > 0, "the eviction thread dropped no stale pod"
        assert stats_seen, "stats() was never called"

        # idle now: the background thread ages everything out on the real clock
        deadline = time.monotonic() + 5
        while t.stats()["contexts"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert t.snapshot() == {} and t.stats()["contexts"] == 0

        # and the table still answers correctly
        t.process_block_stored(BlockStored([1, 2, 3], toks(1, 2, 3), "final", -1, "fresh"))
        t.process_block_stored(BlockStored([4], toks(4), "final", -1, "fresh", parent_block_hash=3))
        assert t.match_prefix("final", -1, toks(1, 2, 3, 4, 5))[0] == {"fresh": 80}
        assert t.snapshot() == {("final", -1): {p: frozenset({"fresh"}) for p in chain(1, 2, 3, 4, seed=SEED)}}
        check_invariants(t)
    finally:
        t.close()
    assert not t.eviction_thread_alive


def test_no_lost_updates(backend):
    """Threads that store and remove disjoint data end in exactly the state a serial run gives."""
    t = backend.SyncPrefixHashTable(seed=SEED, block_size=4, eviction_interval_seconds=0.01,
                                    max_contexts=100, max_prefixes_per_context=100_000)
    errors = []
    n_chains, depth = 300, 5

    def work(idx):
        pod = f"pod-{idx}"
        try:
            for c in range(n_chains):
                ks = [idx * 1000 + c * 10 + j for j in range(depth)]
                base = (idx << 32) + c * 16
                t.process_block_stored(BlockStored([base], toks(ks[0]), "m", idx % 3, pod))
                t.process_block_stored(BlockStored([base + j for j in range(1, depth)], toks(*ks[1:]),
                                                   "m", idx % 3, pod, base))
                got = t.match_blocks("m", idx % 3, toks(*ks), ready_pods=[pod])
                assert got == {pod: depth}, got
                if c % 2:   # drop the tail of every odd chain again
                    t.process_block_removed(BlockRemoved([base + depth - 1], "m", idx % 3, pod))
                t.match_prefix("m", (idx + 1) % 3, toks(*ks))
                t.stats()
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not errors, errors[0]
        expected = {}
        for idx in range(N_THREADS):
            ctx = expected.setdefault(("m", idx % 3), {})
            for c in range(n_chains):
                ks = [idx * 1000 + c * 10 + j for j in range(depth)]
                hs = chain(*ks, seed=SEED)
                for h in hs[:depth - 1] if c % 2 else hs:
                    ctx.setdefault(h, set()).add(f"pod-{idx}")
        assert t.snapshot() == {k: {h: frozenset(p) for h, p in v.items()} for k, v in expected.items()}
        s = t.stats()
        assert s["events_block_stored"] == 2 * N_THREADS * n_chains
        assert s["blocks_stored"] == N_THREADS * n_chains * depth
        assert s["events_block_removed"] == s["blocks_removed"] == N_THREADS * n_chains // 2
        assert s["matches"] == 2 * N_THREADS * n_chains
        assert s["orphan_blocks"] == 0 and s["pods"] == N_THREADS
        check_invariants(t)
    finally:
        t.close()


def test_close_while_threads_work(backend):
    t = backend.SyncPrefixHashTable(seed=SEED, block_size=4, eviction_interval_seconds=0.005,
                                    eviction_duration_minutes=0.01 / 60)
    errors = []
    stop = time.monotonic() + 0.4

    def work(idx):
        try:
            i = 0
            while time.monotonic() < stop:
                i += 1
                t.process_block_stored(BlockStored([i], toks(i % 7), "m", -1, f"p{idx}"))
                t.match_prefix("m", -1, toks(i % 7))
                if idx == 0 and i % 50 == 0:
                    t.close()
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors, errors[0]
    assert not t.eviction_thread_alive
    t.close()
    check_invariants(t)
    # once closed, nothing ages out by itself (the duration is 0.6 ms) ...
    assert t.stats()["contexts"] == 1
    time.sleep(0.05)
    assert t.stats()["contexts"] == 1
    # ... until the owner runs the pass
    assert t.evict_now() == {"contexts": 1, "pods": 0}
    assert t.snapshot() == {}


def test_events_and_matches_are_atomic(backend):
    """A match sees a whole event or none of it: a chain stored and removed in single events is
    matched either fully or not at all, and a snapshot holds all of it or nothing."""
    t = backend.SyncPrefixHashTable(seed=SEED, block_size=4, background_eviction=False)
    errors, seen = [], set()
    query = toks(1, 2, 3, 4, 5, 6)
    # Run for at least 0.3 s and until the readers have seen both states (which shows they really
    # interleaved with the writer); how soon that happens is up to the scheduler, so no fixed window.
    started = time.monotonic()
    give_up = started + 10.0
    done = threading.Event()

    def running():
        if done.is_set():
            return False
        now = time.monotonic()
        if now > give_up or (now > started + 0.3 and seen == {0, 6}):
            done.set()
            return False
        return True

    def writer():
        try:
            while running():
                t.process_block_stored(BlockStored([1, 2, 3, 4, 5, 6], query, "m", -1, "A"))
                t.process_block_removed(BlockRemoved([1, 2, 3, 4, 5, 6], "m", -1, "A"))
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    def reader():
        try:
            while running():
                got = t.match_blocks("m", -1, query)
                seen.add(got.get("A", 0))
                assert got in ({}, {"A": 6}), got
                n = len(t.snapshot().get(("m", -1), {}))
                assert n in (0, 6), n
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())
            done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as possible, to expose unguarded steps
    try:
        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
    finally:
        sys.setswitchinterval(old)
        t.close()
    assert not errors, errors[0]
    assert seen == {0, 6}   # both states were observed, so the readers really interleaved
