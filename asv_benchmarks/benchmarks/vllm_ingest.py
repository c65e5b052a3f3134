"""The vLLM subscriber over loopback ZeroMQ (prefixindex.vllm; issue 10's targets).

- ``VllmIngest.track_blocks_per_second``: one publisher (a thread of the benchmark process) sends
  pre-encoded batches (8 BlockStored events of 16 blocks each, block size 16, current map encoding);
  blocks per second from the first batch sent to the last one applied (target: 1,500,000 into the
  compiled core). A run that lost anything raises instead of reporting.
- ``VllmIngest.track_blocks_per_second_100_publishers``: 100 publishers (one child process) at once,
  aggregate (target: 800,000).
- ``VllmPods.track_seconds_for_1000_add_pod``: 1,000 ``add_pod`` calls on a running subscriber
  (target: 1 s in all).

A backend that does not import makes ``setup`` raise NotImplementedError (asv: skipped), and so does a
commit of prefixindex without the subscriber. Missing pyzmq or msgspec is an error that says so: the
``bench`` extra installs them, and a benchmark that silently skips would hide it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._common import BACKENDS, BLOCK_SIZE, backend

N_BATCHES = 1000
EVENTS_PER_BATCH = 8
BLOCKS_PER_EVENT = 16


def _bench_module() -> Any:
    for dependency in ("zmq", "msgspec"):
        try:
            importlib.import_module(dependency)
        except ImportError as exc:
            raise RuntimeError(f"the vLLM benchmarks need pyzmq and msgspec ({exc}): install the bench extra, "
                               "python -m pip install -e '.[bench]'") from None
    for name in ("prefixindex._tools.vllm_bench", "prefixindex._vllm_bench"):  # today's, and before the move
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("prefixindex"):
                raise
    raise NotImplementedError("this commit of prefixindex has no vLLM subscriber benchmark")


class VllmIngest:
    params = [BACKENDS]
    param_names = ["backend"]
    repeat = (1, 3, 120.0)
    number = 1
    timeout = 600

    def setup(self, backend_name: str) -> None:
        module = backend(backend_name)
        self.bench = _bench_module()
        total = N_BATCHES * EVENTS_PER_BATCH * BLOCKS_PER_EVENT

        def factory() -> Any:
            return module.SyncPrefixHashTable(seed=0, block_size=BLOCK_SIZE, background_eviction=False,
                                              max_prefixes_per_context=100 * total)

        self.factory = factory
        self.payloads = self.bench.make_payloads(N_BATCHES, EVENTS_PER_BATCH, BLOCKS_PER_EVENT, BLOCK_SIZE, "map")

    def track_blocks_per_second(self, backend_name: str) -> float:
        result = self.bench.ingest_benchmark(self.factory, n_batches=N_BATCHES, blocks_per_event=BLOCKS_PER_EVENT,
                                             events_per_batch=EVENTS_PER_BATCH, encoding="map",
                                             payloads=self.payloads)
        if result["lost"]:
            raise RuntimeError(f"the ingestion lost data: {result}")
        return float(result["blocks_per_second"])

    track_blocks_per_second.unit = "blocks/s"  # type: ignore[attr-defined]

    def track_blocks_per_second_100_publishers(self, backend_name: str) -> float:
        multi = getattr(self.bench, "multi_ingest_benchmark", None)
        if multi is None:
            raise NotImplementedError("this commit has no multi-publisher benchmark")
        result = multi(self.factory, publishers=100, n_batches=20, blocks_per_event=BLOCKS_PER_EVENT,
                       events_per_batch=EVENTS_PER_BATCH, block_size=BLOCK_SIZE)
        if result["lost"]:
            raise RuntimeError(f"the ingestion lost data: {result}")
        return float(result["blocks_per_second"])

    track_blocks_per_second_100_publishers.unit = "blocks/s"  # type: ignore[attr-defined]


class VllmPods:
    repeat = (1, 3, 60.0)
    number = 1
    timeout = 300

    def setup(self) -> None:
        self.bench = _bench_module()
        if not hasattr(self.bench, "add_pods_benchmark"):
            raise NotImplementedError("this commit has no add_pod benchmark")

    def track_seconds_for_1000_add_pod(self) -> float:
        return float(self.bench.add_pods_benchmark(1000)["add_seconds"])

    track_seconds_for_1000_add_pod.unit = "seconds"  # type: ignore[attr-defined]
