"""Bench section: snapshots (issue 12 targets): save, load and file size of a 10^6-entry index.

The workload is the one the targets are stated on: 100 contexts, 8 pods, 10^6 entries (10^5 with
``quick``). In each context every pod stores a shared 50-block chain (a system prompt: 400 entries on
50 prefixes), then 1,200 blocks of its own as 15 chains of 80 blocks that continue it, all through
``BlockStored`` events with random engine hashes: 9,650 prefixes and 10,000 entries per context, every
entry with its engine hash. Block size 16, ``max_prefixes_per_context`` 10,000 (no trim happens).

Rows (timed through ``_snapshot.save_table`` and ``load_table``, which a backend's ``save`` and ``load``
wrap; the targets are the compiled core's, the pure-Python figures are for information): ``snapshot_save`` (seconds, a save to a file on the
temporary directory's file system, fsync and rename included), ``snapshot_load`` (seconds, a new table
from that file) and ``snapshot_bytes`` (file bytes per entry). Times are medians over repetitions
(at least one, more while ``budget_s`` lasts, at most 5), with the interquartile range as the spread.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from prefixindex import _snapshot

from .common import RowSpec, judge, result_row

BLOCK_SIZE = 16
SEED = 0x5EED
CONTEXTS, PODS, SHARED_BLOCKS, CHAINS, CHAIN_BLOCKS = 100, 8, 50, 15, 80
MAX_REPS = 5

SUMMARY = ("snapshots of 10^6 entries (10^5 with --quick) in 100 contexts over 8 pods: save to a file "
           "(fsync and rename included), load from it, file bytes per entry; medians of up to 5")
ROWS: List[RowSpec] = [  # the time targets are the compiled core's, stated for 10^6 entries
    ("snapshot_save", "snapshot save", "s", "lower", 0.5, None),
    ("snapshot_load", "snapshot load", "s", "lower", 1.0, None),
    ("snapshot_bytes", "snapshot file size", "B/entry", "lower", 24.0, None),
]
JUDGED = ("cython",)


def workload_events(contexts: int, seed: int = 0) -> List[Tuple[str, List[Any]]]:
    """(model name, the events that fill its context) for each context of the workload."""
    from prefixindex import BlockStored

    rng = np.random.default_rng(seed)
    width = 4 * BLOCK_SIZE
    out = []
    for c in range(contexts):
        model = f"model-{c:03d}"
        shared = rng.integers(0, 256, size=(SHARED_BLOCKS, width), dtype=np.uint8)
        events = []
        for p in range(PODS):
            pod = f"pod-{p}"
            engine = rng.integers(0, 2**64, size=SHARED_BLOCKS, dtype=np.uint64)
            events.append(BlockStored(engine, shared, model, -1, source_pod=pod))
            for _ in range(CHAINS):
                tokens = rng.integers(0, 256, size=(CHAIN_BLOCKS, width), dtype=np.uint8)
                hashes = rng.integers(0, 2**64, size=CHAIN_BLOCKS, dtype=np.uint64)
                events.append(BlockStored(hashes, tokens, model, -1, source_pod=pod,
                                          parent_block_hash=int(engine[-1])))
        out.append((model, events))
    return out


def build_table(module: Any, workload: List[Tuple[str, List[Any]]]) -> Any:
    table = module.SyncPrefixHashTable(seed=SEED, block_size=BLOCK_SIZE, background_eviction=False,
                                       max_prefixes_per_context=10_000, max_contexts=1_000)
    for _, events in workload:
        table.process_events(events)
    expected = len(workload) * PODS * (SHARED_BLOCKS + CHAINS * CHAIN_BLOCKS)
    if table.stats()["entries"] != expected:
        raise RuntimeError(f"{module.__name__}: the snapshot workload holds {table.stats()['entries']} entries, "
                           f"expected {expected}")
    return table


def _spread(values: List[float]) -> Dict[str, float]:
    values = sorted(values)
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "reps": len(values)}


def measure_backend(module: Any, workload: List[Tuple[str, List[Any]]], budget_s: float,
                    directory: str) -> Dict[str, Dict[str, Any]]:
    table = build_table(module, workload)
    entries = table.stats()["entries"]
    path = os.path.join(directory, f"bench-{module.BACKEND}.snapshot")
    saves: List[float] = []
    loads: List[float] = []
    deadline = time.perf_counter() + budget_s
    checked = False
    while len(saves) < MAX_REPS and (not saves or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        _snapshot.save_table(table, path)  # what table.save(path) does
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded = _snapshot.load_table(module.SyncPrefixHashTable, path, {"background_eviction": False})
        loads.append(time.perf_counter() - t0)
        if not checked:  # the figures are only worth quoting for a faithful copy
            if loaded.stats() != table.stats():
                raise RuntimeError(f"{module.__name__}: the loaded table's stats differ from the saved one's")
            checked = True
        loaded.close()
    size = os.path.getsize(path)
    table.close()
    return {"snapshot_save": dict(_spread(saves), entries=entries),
            "snapshot_load": dict(_spread(loads), entries=entries),
            "snapshot_bytes": {"median": size / entries, "entries": entries, "file_bytes": size}}


def run(modules: Dict[str, Any], quick: bool, budget_s: Optional[float],
        say: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The section's result rows, shaped like the other bench rows (values per backend, pass/miss)."""
    contexts = CONTEXTS // 10 if quick else CONTEXTS
    budget = (0.25 if quick else 3.0) if budget_s is None else budget_s
    say(f"snapshot workload: {contexts} contexts, {PODS} pods, "
        f"{contexts * PODS * (SHARED_BLOCKS + CHAINS * CHAIN_BLOCKS):,} entries")
    workload = workload_events(contexts)
    measured: Dict[str, Dict[str, Dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="prefixindex-bench-") as directory:
        for name, module in modules.items():
            if not hasattr(module.SyncPrefixHashTable, "_export_state"):
                measured[name] = {spec[0]: {"error": f"{name} has no snapshot support (no _export_state)"}
                                  for spec in ROWS}
                continue
            say(f"timing snapshot save/load: {name}")
            try:
                measured[name] = measure_backend(module, workload, budget, directory)
            except Exception as exc:  # a broken backend is reported in its cells, not a crashed bench
                measured[name] = {spec[0]: {"error": f"{type(exc).__name__}: {exc}"} for spec in ROWS}
    return [result_row(spec, judge({name: dict(results[spec[0]]) for name, results in measured.items()},
                                   spec, JUDGED))
            for spec in ROWS]


if __name__ == "__main__":  # python -m prefixindex._tools.bench.snapshot [--quick]: this section alone
    import sys

    from prefixindex import _core_py

    found: Dict[str, Any] = {"python": _core_py}
    try:
        from prefixindex import _core
        found["cython"] = _core
    except ImportError:
        pass
    for row in run(found, "--quick" in sys.argv, None, lambda msg: print("...", msg, file=sys.stderr)):
        cells = ", ".join(f"{n}: {v.get('median', v.get('error'))}" for n, v in row["values"].items())
        print(f"{row['title']} ({row['unit']}, target <= {row['target']}): {cells}")
