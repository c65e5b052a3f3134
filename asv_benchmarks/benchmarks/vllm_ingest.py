"""Sustained ingestion of vLLM KV events over loopback ZeroMQ into the index (prefixindex.vllm).

A publisher thread sends pre-encoded batches (8 BlockStored events of 16 blocks each, block size 16,
current map encoding) on a PUB socket bound to 127.0.0.1; a ``VLLMSubscriber`` decodes them and feeds
the table. The tracked value is blocks per second, from the first batch sent to the last one applied
(target: 200,000 blocks/s into the compiled core). A run that lost anything raises instead of reporting.

Everything that is not ingestion (the payloads, the table factory, the imports) is prepared in
``setup``. A backend, or the vLLM subscriber and its optional dependencies (pyzmq, msgspec), that does
not import here makes ``setup`` raise NotImplementedError: asv reports the case as skipped.
"""

from __future__ import annotations

import importlib

from ._common import BACKENDS, BLOCK_SIZE, backend

N_BATCHES = 1000
EVENTS_PER_BATCH = 8
BLOCKS_PER_EVENT = 16


def _vllm_bench_module():
    """The ingestion bench wherever the commit under test keeps it: prefixindex/_tools/ since the tools
    moved there, prefixindex/_vllm_bench.py before (asv runs this suite against older commits too)."""
    try:
        return importlib.import_module("prefixindex._tools.vllm_bench")
    except ImportError:
        return importlib.import_module("prefixindex._vllm_bench")


class VllmIngest:
    params = [BACKENDS]
    param_names = ["backend"]
    repeat = (1, 3, 120.0)
    number = 1
    timeout = 600

    def setup(self, backend_name: str) -> None:
        module = backend(backend_name)
        try:
            self.bench = _vllm_bench_module()
            importlib.import_module("prefixindex.vllm")
        except ImportError as exc:
            raise NotImplementedError(f"the vLLM subscriber is not available: {exc}") from None
        total = N_BATCHES * EVENTS_PER_BATCH * BLOCKS_PER_EVENT

        def factory():
            return module.SyncPrefixHashTable(seed=0, block_size=BLOCK_SIZE, background_eviction=False,
                                              max_prefixes_per_context=2 * total)

        self.factory = factory
        self.payloads = self.bench.make_payloads(N_BATCHES, EVENTS_PER_BATCH, BLOCKS_PER_EVENT, BLOCK_SIZE, "map")

    def track_blocks_per_second(self, backend_name: str) -> float:
        result = self.bench.ingest_benchmark(self.factory, n_batches=N_BATCHES, blocks_per_event=BLOCKS_PER_EVENT,
                                             events_per_batch=EVENTS_PER_BATCH, encoding="map",
                                             payloads=self.payloads)
        if result["lost"]:
            raise RuntimeError(f"the ingestion lost data: {result}")
        return result["blocks_per_second"]

    track_blocks_per_second.unit = "blocks/s"  # type: ignore[attr-defined]
