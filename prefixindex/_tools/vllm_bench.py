"""Sustained ingestion from a vLLM-style publisher into the index, over loopback ZeroMQ.

    python -m prefixindex._vllm_bench [--backend python|cython|auto] [--batches N] ...

A publisher thread binds a PUB socket on 127.0.0.1 and sends pre-encoded batches exactly as vLLM does
(three frames: topic, 8-byte big-endian seq, msgpack payload); a ``VLLMSubscriber`` feeds the table.
The clock runs from the first measured batch sent to the moment the subscriber has applied the last one.
Nothing is lost when the subscriber saw every batch in order and the table placed every block:
``blocks_stored`` of the table grew by exactly the number of blocks sent, with no orphans.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["ingest_benchmark", "main", "make_payloads"]


def make_payloads(n_batches: int, events_per_batch: int, blocks_per_event: int, block_size: int,
                  encoding: str = "map", seed: int = 0) -> List[bytes]:
    """Encoded batches of BlockStored events; every event is a new chain from the root (no orphans).

    ``encoding`` is "map" (current vLLM: tagged maps, the batch as an array) or "array" (legacy tagged
    arrays). Token ids are distinct across events so that every block is a new prefix; engine block
    hashes are random 64-bit values, half of them above 2**63.
    """
    import msgspec

    if encoding not in ("map", "array"):
        raise ValueError(f"encoding must be 'map' or 'array', got {encoding!r}")
    rng = np.random.default_rng(seed)
    tokens_per_event = blocks_per_event * block_size
    encoder = msgspec.msgpack.Encoder()
    payloads = []
    event_no = 0
    for _ in range(n_batches):
        events: List[Any] = []
        for _ in range(events_per_batch):
            hashes = rng.integers(0, 2**64 - 1, size=blocks_per_event, dtype=np.uint64, endpoint=True).tolist()
            # token ids 0..2**31: the event number in the first token of each block keeps blocks distinct
            tokens = rng.integers(0, 2**31, size=tokens_per_event, dtype=np.int64)
            tokens[::block_size] = event_no
            token_list = tokens.tolist()
            event_no += 1
            if encoding == "map":
                events.append({"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": None,
                               "token_ids": token_list, "block_size": block_size, "lora_id": None,
                               "medium": "GPU", "lora_name": None})
            else:
                events.append(["BlockStored", hashes, None, token_list, block_size, None, "GPU", None])
        payloads.append(encoder.encode([time.time(), events, 0]))
    return payloads


def _default_factory(block_size: int, capacity: int) -> Callable[[], Any]:
    import prefixindex

    def factory() -> Any:
        return prefixindex.SyncPrefixHashTable(block_size=block_size, seed=0, background_eviction=False,
                                               max_prefixes_per_context=max(capacity, 1))
    return factory


def ingest_benchmark(table_factory: Optional[Callable[[], Any]] = None, n_batches: int = 1000,
                     blocks_per_event: int = 16, events_per_batch: int = 8, block_size: Optional[int] = None,
                     encoding: str = "map", timeout: float = 120.0,
                     payloads: Optional[List[bytes]] = None) -> Dict[str, Any]:
    """Publish ``n_batches`` batches on loopback into a subscriber and time their ingestion.

    ``table_factory()`` makes the table (default: the active backend, block_size 16, a prefix bound large
    enough to keep every block). The table's ``block_size`` is the events'. ``payloads``: batches made
    beforehand by ``make_payloads`` with the same arguments (else they are made here, untimed).
    Returns blocks/s and ``lost`` (True when any batch or block did not arrive in the index).
    """
    import zmq

    from ..vllm import Pod, VLLMSubscriber

    total_blocks = n_batches * events_per_batch * blocks_per_event
    if table_factory is None:
        table_factory = _default_factory(block_size or 16, 2 * total_blocks)
    table = table_factory()
    table_block_size = int(getattr(table, "block_size", None) or table.config.block_size)
    if block_size is not None and block_size != table_block_size:
        raise ValueError(f"block_size {block_size} differs from the table's {table_block_size}")
    if payloads is None:
        payloads = make_payloads(n_batches, events_per_batch, blocks_per_event, table_block_size, encoding)
    elif len(payloads) != n_batches:
        raise ValueError(f"{len(payloads)} payloads given for n_batches={n_batches}")
    warmup = msgspec_empty_batch()

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, n_batches + 10_000)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    sub = VLLMSubscriber(table, [Pod("bench-pod", endpoint, topic="kv-events")], model="bench-model",
                         rcvhwm=n_batches + 10_000, context=context)
    before = table.stats()
    state: Dict[str, Any] = {"sent_at": None, "seq": 0, "error": None}
    go = threading.Event()

    def publish() -> None:
        try:
            topic = b"kv-events"
            # slow joiner: send empty batches until the subscriber has seen one
            while not go.is_set():
                pub.send_multipart([topic, state["seq"].to_bytes(8, "big"), warmup])
                state["seq"] += 1
                go.wait(0.01)
            state["sent_at"] = time.perf_counter()
            for payload in payloads:
                pub.send_multipart([topic, state["seq"].to_bytes(8, "big"), payload], copy=False)
                state["seq"] += 1
        except Exception as exc:  # pragma: no cover - reported in the result
            state["error"] = repr(exc)

    publisher = threading.Thread(target=publish, name="vllm-bench-publisher", daemon=True)
    sub.start()
    try:
        publisher.start()
        limit = time.monotonic() + min(timeout, 30.0)
        while sub.stats()["pods"]["bench-pod"]["batches"] == 0:
            if time.monotonic() > limit:
                raise RuntimeError("the subscriber never received a batch from the benchmark publisher")
            time.sleep(0.005)
        go.set()
        publisher.join(timeout)
        expected_last = state["seq"] - 1
        limit = time.monotonic() + timeout
        finished = None
        while True:
            pod = sub.stats()["pods"]["bench-pod"]
            if pod["last_seq"] == expected_last and not pod["replaying"]:
                finished = time.perf_counter()
                break
            if time.monotonic() > limit:
                break
            time.sleep(0.0005)
        warm_batches = state["seq"] - n_batches
    finally:
        sub.stop()
        pub.close(0)
        context.term()
    after = table.stats()
    pod = sub.stats()["pods"]["bench-pod"]
    placed = after["blocks_stored"] - before["blocks_stored"]
    orphans = after["orphan_blocks"] - before["orphan_blocks"]
    elapsed = None if finished is None or state["sent_at"] is None else finished - state["sent_at"]
    lost = (finished is None or placed != total_blocks or orphans != 0 or pod["lost_batches"] != 0
            or pod["gaps"] != 0 or pod["malformed"] != 0 or pod["blocks_stored"] != total_blocks
            or state["error"] is not None)
    close = getattr(table, "close", None)
    if close is not None:
        close()
    return {
        "backend": type(table).__module__,
        "encoding": encoding,
        "block_size": table_block_size,
        "batches": n_batches,
        "events_per_batch": events_per_batch,
        "blocks_per_event": blocks_per_event,
        "blocks_sent": total_blocks,
        "blocks_indexed": placed,
        "orphan_blocks": orphans,
        "warmup_batches": warm_batches,
        "batches_applied": pod["batches"],
        "gaps": pod["gaps"],
        "lost_batches": pod["lost_batches"],
        "malformed": pod["malformed"],
        "seconds": elapsed,
        "blocks_per_second": None if not elapsed else total_blocks / elapsed,
        "batches_per_second": None if not elapsed else n_batches / elapsed,
        "lost": lost,
        "publisher_error": state["error"],
    }


def msgspec_empty_batch() -> bytes:
    import msgspec

    return msgspec.msgpack.encode([time.time(), [], 0])


def _backend_factory(name: str, block_size: int, capacity: int) -> Callable[[], Any]:
    if name == "auto":
        return _default_factory(block_size, capacity)
    if name == "python":
        from .. import _core_py as module
    elif name == "cython":
        from .. import _core as module  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown backend {name!r}")

    def factory() -> Any:
        return module.SyncPrefixHashTable(block_size=block_size, seed=0, background_eviction=False,
                                          max_prefixes_per_context=max(capacity, 1))
    return factory


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefixindex._vllm_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("auto", "python", "cython"), default="auto")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--events-per-batch", type=int, default=8)
    parser.add_argument("--blocks-per-event", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--encoding", choices=("map", "array"), default="map")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best rate is reported too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    total = args.batches * args.events_per_batch * args.blocks_per_event
    try:
        factory = _backend_factory(args.backend, args.block_size, 2 * total)
    except ImportError as exc:
        print(f"error: backend {args.backend!r} is not available: {exc}")
        return 1
    results = [ingest_benchmark(factory, n_batches=args.batches, blocks_per_event=args.blocks_per_event,
                                events_per_batch=args.events_per_batch, encoding=args.encoding)
               for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(results if args.repeat > 1 else results[0], indent=2))
    else:
        for r in results:
            rate = r["blocks_per_second"]
            print(f"{r['backend']:<22} {r['encoding']:<5} {r['blocks_sent']} blocks in "
                  f"{r['batches']} batches: {'n/a' if rate is None else f'{rate:,.0f}'} blocks/s, "
                  f"{'LOST DATA' if r['lost'] else 'nothing lost'}")
        if args.repeat > 1:
            best = max((r["blocks_per_second"] or 0) for r in results)
            print(f"best: {best:,.0f} blocks/s")
    return 1 if any(r["lost"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
