"""Memory: peak RSS while 1,000,000 blocks are stored (``peakmem_``), and bytes per stored (pod, block)
entry, engine-hash mapping included (``track_``).

``peakmem_store`` is asv's peak resident set of the whole benchmark process: the interpreter, numpy,
the events (~72 MB of token bytes and hashes for 1,000,000 blocks) and the index. ``peakmem_events_only``
is the same process without the stores, so the difference is the index's peak.

``track_bytes_per_entry`` stores N single-pod blocks in a fresh subprocess (``_memprobe.py``) and divides
the growth of the heap by N; the events are built before the first reading, so they are not counted.
The pure-Python backend is counted with tracemalloc; the compiled one with glibc's ``mallinfo2()``
(bytes in use) with ``PYTHONMALLOC=malloc``, since C++ allocations are invisible to tracemalloc.
``track_rss_bytes_per_entry`` is the same with the resident set instead, as a cross-check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ._common import BACKENDS, backend, chain_events, make_table, model, pod, rng

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_memprobe.py")
PRIMARY = {"python": "tracemalloc", "cython": "mallinfo2"}


class PeakMemStore:
    params = (BACKENDS, [1_000_000])
    param_names = ["backend", "blocks"]
    timeout = 900

    def setup(self, backend_name: str, blocks: int) -> None:
        module = backend(backend_name)
        self.events = chain_events(rng(blocks), blocks, 64, model(0), pod(0))
        self.table = make_table(module, max_prefixes_per_context=blocks + 64, max_contexts=10)

    def peakmem_store(self, backend_name: str, blocks: int) -> None:
        for event in self.events:
            self.table.process_block_stored(event)

    def peakmem_events_only(self, backend_name: str, blocks: int) -> None:
        pass


def probe(backend_name: str, entries: int, method: str) -> float:
    env = dict(os.environ)
    if method == "mallinfo2":
        env["PYTHONMALLOC"] = "malloc"
    proc = subprocess.run([sys.executable, PROBE, backend_name, str(entries), method], capture_output=True,
                          text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["entries"] != result["blocks"]:
        raise RuntimeError(f"the probe's table holds {result['entries']} entries, expected {result['blocks']}")
    return result["bytes_per_entry"]


class BytesPerEntry:
    params = (BACKENDS, [200_000, 1_000_000])
    param_names = ["backend", "entries"]
    timeout = 900

    def setup(self, backend_name: str, entries: int) -> None:
        backend(backend_name)  # skipped when the backend is absent

    def track_bytes_per_entry(self, backend_name: str, entries: int) -> float:
        return probe(backend_name, entries, PRIMARY[backend_name])

    track_bytes_per_entry.unit = "bytes"

    def track_rss_bytes_per_entry(self, backend_name: str, entries: int) -> float:
        return probe(backend_name, entries, "rss")

    track_rss_bytes_per_entry.unit = "bytes"
