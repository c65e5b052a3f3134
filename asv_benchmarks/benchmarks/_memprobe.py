"""Bytes per stored (pod, block) entry, measured in this (fresh) process; run as a script by memory.py.

    python _memprobe.py BACKEND ENTRIES METHOD     (BACKEND: python | cython; METHOD: tracemalloc |
                                                    mallinfo2 | rss)

Builds ENTRIES single-pod blocks as BlockStored events (chains of 64 blocks, one context), reads the
heap, stores every event, reads the heap again, and prints one JSON line. The events exist before
the first reading, so only the index is counted. ``mallinfo2`` counts glibc's bytes in use
(uordblks + hblkhd), plus the slabs the compiled core's node pool maps itself; run it with
PYTHONMALLOC=malloc so that Python objects are counted too. ``rss``
reads /proc/self/statm after malloc_trim(0). Self-contained (no import from the suite or from
prefixindex._bench) so that it measures older commits the same way.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import sys

import numpy as np

MODULES = {"python": "prefixindex._core_py", "cython": "prefixindex._core"}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_bytes(method: str) -> int:
    if method == "tracemalloc":
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]
    libc = ctypes.CDLL(None)
    if method == "mallinfo2":
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)
    if method == "rss":
        libc.malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    raise ValueError(method)


def main(argv: list) -> int:
    backend, entries, method = argv[0], int(argv[1]), argv[2]
    module = importlib.import_module(MODULES[backend])
    import prefixindex

    chain = 64
    n = max(chain, entries - entries % chain)
    gen = np.random.default_rng(1)
    tokens = gen.integers(0, 256, size=(n, 64), dtype=np.uint8)
    hashes = gen.integers(0, 2**64, size=n, dtype=np.uint64)
    events = [prefixindex.BlockStored(hashes[i:i + chain], tokens[i:i + chain], "model", -1, source_pod="pod-0")
              for i in range(0, n, chain)]
    table = module.SyncPrefixHashTable(seed=1, block_size=16, background_eviction=False,
                                       max_prefixes_per_context=n + chain, max_contexts=16)
    if method == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    gc.collect()
    before = heap_bytes(method)
    for event in events:
        table.process_block_stored(event)
    gc.collect()
    after = heap_bytes(method)
    if method == "mallinfo2" and hasattr(table, "_debug_memory"):
        # the compiled core's node pool maps its larger slabs itself (huge pages): malloc does not see them
        after += table._debug_memory().get("pool_mapped_bytes", 0)
    held = table.stats()["entries"]
    print(json.dumps({"backend": backend, "method": method, "blocks": n, "entries": held,
                      "delta_bytes": after - before, "bytes_per_entry": (after - before) / max(held, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
