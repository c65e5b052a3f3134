"""Bytes per stored (pod, block) entry, measured in a fresh subprocess (see ``memory_probe``)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ... import _backend
from .common import BLOCK_BYTES, LORA, POD, make_table, random_hashes

# Entries stored by the bytes-per-entry probe, per backend: the pure-Python backend takes ~4 us and
# ~500 bytes per block (twice the time under tracemalloc), so it is measured on fewer blocks.
MEMORY_ENTRIES = {"python": 200_000, "cython": 1_000_000}
MEMORY_ENTRIES_QUICK = {"python": 25_600, "cython": 102_400}  # multiples of 64
# Per backend, the primary way of counting the index's bytes (docs/performance.md, "Bytes per entry").
MEMORY_METHOD = {"python": "tracemalloc", "cython": "mallinfo2"}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _heap_bytes(method: str) -> int:
    """The process's live heap, counted one way (see memory_probe)."""
    if method == "tracemalloc":
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]
    libc = _libc()
    if method == "mallinfo2":
        fn = libc.mallinfo2  # type: ignore[union-attr]
        fn.restype = _MallInfo2
        info = fn()
        return int(info.uordblks + info.hblkhd)  # in use: heap chunks + mmapped chunks
    if method == "rss":
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)  # hand freed memory back, so that RSS counts what is live
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    raise ValueError(f"unknown memory method {method!r}")


def memory_methods_available() -> Dict[str, bool]:
    libc = _libc()
    return {"tracemalloc": True, "mallinfo2": libc is not None and hasattr(libc, "mallinfo2"),
            "rss": os.path.exists("/proc/self/statm")}


def _memory_probe_child(argv: List[str]) -> int:
    """In a fresh process: build the events, measure, store them all, measure again; print JSON."""
    backend, n, method = argv[0], int(argv[1]), argv[2]
    module = _backend.load(backend)
    import prefixindex

    chain = 64  # blocks per event: the chain of a 1,024-token prompt
    n = max(chain, n - n % chain)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=(n, BLOCK_BYTES), dtype=np.uint8)
    hashes = random_hashes(rng, n)
    events = [prefixindex.BlockStored(hashes[i:i + chain], tokens[i:i + chain], "model", LORA, source_pod=POD)
              for i in range(0, n, chain)]
    table = make_table(module, max_prefixes_per_context=n + chain, max_contexts=16)
    if method == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    gc.collect()
    before = _heap_bytes(method)
    t0 = time.perf_counter()
    for event in events:
        table.process_block_stored(event)
    store_s = time.perf_counter() - t0
    gc.collect()
    after = _heap_bytes(method)
    if method == "mallinfo2" and hasattr(table, "_debug_memory"):
        # the compiled core's node pool maps its larger slabs itself (huge pages): malloc does not see them
        after += table._debug_memory().get("pool_mapped_bytes", 0)
    stats = table.stats()
    print(json.dumps({
        "backend": backend, "method": method, "entries": stats["entries"], "prefixes": stats["prefixes"],
        "blocks": n, "delta_bytes": after - before, "bytes_per_entry": (after - before) / max(stats["entries"], 1),
        "store_seconds": store_s, "pythonmalloc": os.environ.get("PYTHONMALLOC", ""),
    }))
    return 0 if stats["entries"] == n else 1


def memory_probe(backend: str, entries: int, method: str, timeout: float = 600.0) -> Dict[str, Any]:
    """Bytes per stored (pod, block) entry, engine-hash mapping included, measured in a fresh process.

    ``entries`` single-pod blocks (chains of 64, in one context) are stored; the events are built
    before the first reading, so only the index is counted. Methods:
    - ``tracemalloc``: every Python allocation (the pure-Python backend's whole index);
    - ``mallinfo2``: glibc's bytes in use (``uordblks + hblkhd``), with ``PYTHONMALLOC=malloc`` so that
      Python objects go through malloc too: C++ allocations are invisible to tracemalloc; plus the
      slabs that the compiled core's node pool maps itself (``pool_mapped_bytes``);
    - ``rss``: the resident set, after ``malloc_trim(0)`` (a cross-check, page-granular).
    """
    env = dict(os.environ)
    if method == "mallinfo2":
        env["PYTHONMALLOC"] = "malloc"
    code = "import sys; from prefixindex._tools.bench.memory import _memory_probe_child as f; sys.exit(f(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, backend, str(entries), method], capture_output=True,
                          text=True, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe ({backend}, {entries}, {method}) failed with exit code "
                           f"{proc.returncode}: {proc.stderr.strip()[-2000:]}")
    result: Dict[str, Any] = json.loads(lines[-1])
    return result

