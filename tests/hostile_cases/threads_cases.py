"""Threads, floods and fork() (issue 8: "Writer starvation", "Context floods", "fork()"; SPEC 5, 7).

Liveness, not speed: each scenario bounds how long a thread may wait (60 s) so that starvation or a
deadlock is a failure; none measures throughput (the bench rows do). The context flood is differential:
both backends get the same calls and must keep the same contexts.
"""

from __future__ import annotations

import importlib
import itertools
import random
import threading
import time
import traceback
from typing import Any, List, Tuple

import numpy as np

from common import (BlockRemoved, BlockStored, FakeClock, chain, check_usable, consistent, fail_now, fork_while_running,
                    in_fork_child, make_table, stored, toks)

LIVENESS = 60.0


def _prompt(n_tokens: int, offset: int = 0) -> np.ndarray:
    return np.arange(offset, offset + n_tokens, dtype=np.uint32)


def _writer_not_starved(n_tokens: int) -> Any:
    def run(backend: Any) -> None:
        _writer_beside_readers(backend, n_tokens)
    return run


def _writer_beside_readers(backend: Any, n_tokens: int) -> None:
    """Three threads match prompts in a tight loop; a fourth stores 200 ten-block events."""
    t = make_table(backend, block_size=16, max_prefixes_per_context=10**6)
    prompt = _prompt(n_tokens)
    t.process_block_stored(BlockStored(list(range(1, n_tokens // 16 + 1)), prompt, "m", -1, "reader-pod"))
    stop = threading.Event()
    matches = [0, 0, 0]

    def reader(i: int) -> None:
        while not stop.is_set():
            t.match_blocks("m", -1, prompt)
            matches[i] += 1

    def writer() -> None:
        for e in range(200):
            base = 10_000 + 10 * e
            t.process_block_stored(BlockStored(list(range(base, base + 10)), _prompt(160, 7 * e), "m", -1,
                                               f"writer-{e % 4}"))
            done[0] = e + 1

    done = [0]
    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
    for r in readers:
        r.start()
    while min(matches) == 0:  # the readers are in their loops before the writer starts
        time.sleep(0.001)
    w = threading.Thread(target=writer, daemon=True)
    started = time.monotonic()
    w.start()
    w.join(LIVENESS)
    took = time.monotonic() - started
    if w.is_alive():
        fail_now(f"WRITER STARVED: {done[0]} of 200 stores done after {took:.0f} s beside 3 matching threads "
              f"({sum(matches)} matches)")
    stop.set()
    for r in readers:
        r.join(LIVENESS)
    print(f"200 stores in {took:.2f} s beside {sum(matches)} matches")
    assert t.stats()["events_block_stored"] == 201
    consistent(t)
    check_usable(t, backend)


# 1,024 tokens: hashed with the GIL held (short), the walk without it; 32,768 tokens: hashed without the
# GIL too, so the readers overlap under the shared lock for longer (the case glibc's rwlock starves).
writer_not_starved_by_1k_token_matches = _writer_not_starved(1024)
writer_not_starved_by_32k_token_matches = _writer_not_starved(32768)


def readers_not_starved(backend: Any) -> None:
    """Two threads store in a tight loop; a matching thread must still get its 300 matches done."""
    t = make_table(backend, block_size=16, max_prefixes_per_context=10**6)
    prompt = _prompt(1024)
    t.process_block_stored(BlockStored(list(range(1, 65)), prompt, "m", -1, "reader-pod"))
    stop = threading.Event()

    def writer(k: int) -> None:
        e = 0
        while not stop.is_set():
            base = 10**6 * (k + 1) + 10 * (e % 500)  # 500 distinct events per writer, stored again and again
            t.process_block_stored(BlockStored(list(range(base, base + 10)), _prompt(160, 3 * (e % 500)), "m",
                                               -1, f"writer-{k}"))
            e += 1

    done = [0]

    def reader() -> None:
        for _ in range(300):
            got = t.match_blocks("m", -1, prompt)
            assert got.get("reader-pod", 0) == 64, got
            done[0] += 1

    writers = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(2)]
    for w in writers:
        w.start()
    r = threading.Thread(target=reader, daemon=True)
    r.start()
    r.join(LIVENESS)
    if r.is_alive():
        fail_now(f"READER STARVED: {done[0]} of 300 matches done in {LIVENESS:.0f} s beside 2 storing threads")
    stop.set()
    for w in writers:
        w.join(LIVENESS)
        if w.is_alive():
            fail_now("a writer did not finish its last store")
    assert done[0] == 300
    consistent(t)
    check_usable(t, backend)


def every_method_from_many_threads(backend: Any) -> None:
    """Six threads call every method at random while the eviction thread runs; all finish, no error."""
    t = make_table(backend, max_contexts=8, max_prefixes_per_context=64, background_eviction=True,
                   eviction_interval_seconds=0.005)
    errors: List[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(600):
                m, k, pod = f"m{rng.randrange(12)}", rng.randrange(20), f"p{rng.randrange(5)}"
                op = rng.randrange(10)
                if op < 3:
                    t.process_block_stored(stored([k, k + 1, k + 2], [k, k + 1, k + 2], pod, model=m))
                elif op < 6:
                    t.match_blocks(m, -1, toks(k, k + 1, k + 2), [pod] if op == 5 else None)
                elif op == 6:
                    t.process_events([stored([k], [k], pod, model=m), BlockRemoved([k + 1], m, -1, pod)])
                elif op == 7:
                    t.add_prefix(m, -1, pod, chain(k, k + 1))
                elif op == 8:
                    t.remove_prefix(m, -1, pod)
                else:
                    t.stats() if i % 2 else t.snapshot()
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in range(6)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + LIVENESS
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
        if th.is_alive():
            fail_now("DEADLOCK or starvation: a thread did not finish 600 calls in 60 s")
    assert not errors, errors[0]
    t.close()
    consistent(t)
    check_usable(t, backend)


def _store_and_match(t: Any) -> None:
    """What a fork child asks of the table: a store and a match that answers right."""
    t.process_block_stored(stored([500, 501], [40, 41], "after-fork", model="fork"))
    got = t.match_blocks("fork", -1, toks(40, 41, 42))
    assert got == {"after-fork": 2}, got


def fork_while_hammering(backend: Any) -> None:
    """fork() while another thread (and the eviction thread) is inside calls on the table: in the child
    the table works and answers right, or raises a RuntimeError saying it cannot be used after fork."""
    t = make_table(backend, background_eviction=True, eviction_interval_seconds=0.001)
    counter = itertools.count()

    def hammer() -> None:
        i = next(counter)
        k = i % 30
        t.process_block_stored(stored([k, k + 1], [k, k + 1], f"p{i % 3}", model=f"m{i % 5}"))
        t.match_blocks(f"m{i % 5}", -1, toks(k, k + 1))

    outcomes = fork_while_running(hammer, lambda: _store_and_match(t), "fork", 10, 3, (0.001, 0.02))
    t.close()
    print("fork children:", outcomes)
    check_usable(t, backend)


def fork_child_keeps_evicting(backend: Any) -> None:
    """A child of fork() has no thread of its parent's: its table must get an eviction thread of its
    own, so that stale contexts still go there (SPEC 6; a pre-forking server's workers)."""
    clock = FakeClock()
    t = make_table(backend, background_eviction=True, eviction_interval_seconds=0.01, clock=clock)
    for k in range(3):
        t.process_block_stored(stored([k + 1], [k], "p", model=f"m{k}"))

    def child() -> int:
        clock.now += 3600.0  # an hour idle here: every context is stale for the child's next pass
        deadline = time.monotonic() + 10.0
        while t.stats()["contexts"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert t.stats()["contexts"] == 0, t.stats()
        names = [th.name for th in threading.enumerate()]
        assert names.count("prefixindex-eviction") == 1, names
        t.close()  # the child's own thread stops
        assert [th.name for th in threading.enumerate()].count("prefixindex-eviction") == 0
        return 0

    for attempt in range(3):
        code = in_fork_child(child, f"eviction child {attempt}")
        assert code == 0, f"fork child {attempt} failed (exit {code}); its traceback is above"
    t.close()
    closed = make_table(backend, background_eviction=True, eviction_interval_seconds=0.01)
    closed.close()

    def closed_child() -> int:  # a table closed before the fork gets no thread in the child
        time.sleep(0.05)
        assert "prefixindex-eviction" not in [th.name for th in threading.enumerate()]
        return 0

    assert in_fork_child(closed_child, "closed-table child") == 0


def fork_while_a_subscriber_is_read(backend: Any) -> None:
    """fork() while another thread reads a running subscriber's stats (a metrics scrape): in the child
    stats(), positions(), pods() and stop() answer at once, and start() says the subscriber ran in the
    parent (ZeroMQ's sockets cannot be used across fork). Its locks were not reset: a child hung."""
    from prefixindex.vllm import Pod, VLLMSubscriber

    t = make_table(backend)
    sub = VLLMSubscriber(t, [Pod(f"pod-{i}", f"tcp://127.0.0.1:{45000 + i}") for i in range(20)], model="m")
    sub.start()

    def child() -> int:
        stats = sub.stats()
        assert stats["running"] is False and len(stats["pods"]) == 20, stats
        assert sub.positions() == {} and len(sub.pods) == 20
        sub.stop()  # the parent's loop is not here: nothing to stop
        try:
            sub.start()
        except RuntimeError as exc:
            assert "forked" in str(exc), exc
        else:
            raise AssertionError("start() of a subscriber forked while running did not raise")
        return 0

    try:
        outcomes = fork_while_running(lambda: sub.stats(), child, "never refused", 30, 5, (0.0005, 0.01))
    finally:
        sub.stop()
    assert outcomes == {"works": 30, "refused": 0}, outcomes
    print("fork children:", outcomes)


def context_flood_differential(backend: Any) -> None:
    """max_contexts=1,000 and 5,000 new contexts among matches and stores on older ones: both backends
    keep the same contexts (SPEC 5, 9). Runs both backends in this one child (``backend`` is the compiled
    one), compared every 100 steps."""
    reference = importlib.import_module("prefixindex._core_py")
    tables = {"python": make_table(reference, max_contexts=1000, max_prefixes_per_context=50, clock=FakeClock()),
              "cython": make_table(backend, max_contexts=1000, max_prefixes_per_context=50, clock=FakeClock())}
    rng = random.Random(8)
    keys: List[Tuple[Any, ...]] = []
    for i in range(5000):
        key = (f"model-{i}", i % 3 - 1)
        keys.append(key)
        k = rng.randrange(40)
        ops = [("store", key, k, f"p{rng.randrange(4)}")]
        for _ in range(rng.randrange(4)):
            old = keys[rng.randrange(len(keys))]
            ops.append((rng.choice(["store", "match", "match", "add"]), old, rng.randrange(40),
                        f"p{rng.randrange(4)}"))
        for op, (model, lora), k, pod in ops:
            results = {}
            for name, t in tables.items():
                if op == "store":
                    results[name] = t.process_block_stored(stored([k, k + 1], [k, k + 1], pod, model, lora))
                elif op == "add":
                    results[name] = t.add_prefix(model, lora, pod, chain(k))
                else:
                    results[name] = t.match_blocks(model, lora, toks(k, k + 1))
            assert results["python"] == results["cython"], (i, op, model, results)
        if i % 100 == 99 or i == 4999:
            snaps = {name: t.snapshot() for name, t in tables.items()}
            if set(snaps["python"]) != set(snaps["cython"]):
                only_py = sorted(set(snaps["python"]) - set(snaps["cython"]))[:5]
                only_cy = sorted(set(snaps["cython"]) - set(snaps["python"]))[:5]
                raise AssertionError(f"step {i}: the backends keep different contexts: python only {only_py}, "
                                     f"cython only {only_cy}")
            assert snaps["python"] == snaps["cython"], f"step {i}: same contexts, different prefixes"
            assert tables["python"].stats() == tables["cython"].stats(), i
    assert tables["cython"].stats()["contexts"] == 1000
    assert tables["cython"].stats()["evicted_contexts"] >= 4000
