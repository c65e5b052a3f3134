"""Saves while other threads store, remove and match (issue 12, Deliver 2): every snapshot is one
consistent moment of the index (never half an event), and matches and events keep going meanwhile.
"""

from __future__ import annotations

import io
import threading
import time

from helpers import chain, removed, stored, toks
from test_snapshot import snap_make  # noqa: F401 (fixture)

CHAIN = 6  # each store places a whole 6-block chain for its pod, each removal takes it all out


def test_every_snapshot_is_a_consistent_moment(snap_make, backend):
    table = snap_make(max_prefixes_per_context=10_000)
    stop = threading.Event()
    errors = []
    progress = {"events": 0, "matches": 0}

    def writer(pod: str, base: int) -> None:
        try:
            k = 0
            while not stop.is_set():
                blocks = list(range(base + (k % 7) * CHAIN, base + (k % 7) * CHAIN + CHAIN))
                engine = [base * 1000 + k * CHAIN + i for i in range(CHAIN)]
                table.process_block_stored(stored(engine, blocks, pod))
                if k % 2:
                    table.process_block_removed(removed(engine, pod))
                progress["events"] += 1
                k += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                table.match_blocks("m", -1, toks(*range(CHAIN)))
                progress["matches"] += 1
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"pod-{i}", 100 * i)) for i in range(3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    try:
        snapshots = []
        deadline = time.monotonic() + 30
        while len(snapshots) < 15 and time.monotonic() < deadline:
            buf = io.BytesIO()
            table.save(buf)
            snapshots.append(buf.getvalue())
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert len(snapshots) == 15 and progress["events"] > 0 and progress["matches"] > 0
    for data in snapshots:
        loaded = backend.SyncPrefixHashTable.load(io.BytesIO(data), background_eviction=False)
        held = {}
        for prefixes in loaded.snapshot().values():
            for p, pods in prefixes.items():
                for pod in pods:
                    held.setdefault(pod, set()).add(p)
        for pod, prefixes in held.items():
            base = 100 * int(pod.split("-")[1])
            # a pod's prefixes are whole chains: each of the 7 chains it cycles through is all there or absent
            for c in range(7):
                full = set(chain(*range(base + c * CHAIN, base + c * CHAIN + CHAIN)))
                assert not (full & prefixes) or full <= prefixes, (pod, c)
        assert loaded.stats()["entries"] == sum(len(v) for v in held.values())


def test_a_load_never_shows_the_new_tables_eviction_thread_an_open_section(backend, caplog):
    """A load fills its new table in one section; the table's own eviction thread (started before the
    fill) must never find that section open. The compiled core once checked the names inside it: Python
    code there let the GIL go to the eviction thread, whose passes then failed as re-entries."""
    import sys

    source = backend.SyncPrefixHashTable(seed=0, block_size=4, background_eviction=False,
                                         max_prefixes_per_context=100_000)
    for i in range(20_000):  # a pod name a prefix: the load checks 20,000 names
        source.add_prefix("m", -1, f"pod-{i}", [i + 1])
    buf = io.BytesIO()
    source.save(buf)
    data = buf.getvalue()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over at the least chance (the old build failed ~10 passes a load)
    try:
        with caplog.at_level("ERROR", logger="prefixindex"):
            for _ in range(3):
                loaded = backend.SyncPrefixHashTable.load(io.BytesIO(data), eviction_interval_seconds=0.001)
                time.sleep(0.02)  # the eviction thread's passes, after the load too
                entries = loaded.stats()["entries"]
                loaded.close()
                assert entries == 20_000
    finally:
        sys.setswitchinterval(switch)
    failed = [r for r in caplog.records if "eviction pass failed" in r.getMessage()]
    assert not failed, failed[0].exc_info
