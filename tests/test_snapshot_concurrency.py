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
