"""Router from many threads at once (docs/routing.md, "Threads"), beside the table's writers: a plain writer
thread, and a real VLLMSubscriber fed over ZeroMQ on 127.0.0.1 with the table's eviction thread on a
short interval. The assertions are invariants (choices among the candidates, in-flight work back to
zero, the predicted index's size consistent and bounded, no exception in any thread), never timings."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Dict, List

import pytest

from prefixindex import BlockRemoved, BlockStored
from prefixindex.routing import Choice, PodLoad, Router

from helpers import BS, toks

MODEL = "m"
PODS = [f"pod-{i}" for i in range(6)]
PREFIXES = [[k, k + 1, k + 2, k + 3, k + 4, k + 5] for k in range(0, 60, 6)]  # 10 prompts of 6 blocks


def check_router(router: Router) -> None:
    """The predicted index's own bookkeeping agrees with what it holds."""
    with router._lock:
        held = sum(len(owners) for preds in router._predicted.values() for owners in preds.values())
        assert held == router._entries
        assert len(router._expiry) <= router._max_entries
        hashes = sum(len(rec.hashes) for rec in router._expiry)  # what the predictions keep of prompts
        assert hashes == router._held <= 2 * router._max_entries


def hammer(router: Router, seconds: float, threads: int = 4, seed: int = 0) -> List[BaseException]:
    """Threads choosing, finishing and reading stats until ``seconds`` have passed; returns errors."""
    errors: List[BaseException] = []
    stop = time.monotonic() + seconds

    def chooser(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        held: List[Choice] = []
        try:
            while time.monotonic() < stop or held:
                if time.monotonic() < stop and len(held) < 8:
                    ks = rng.choice(PREFIXES)[:rng.randint(1, 6)] + [100 + rng.randrange(50)]
                    pods = rng.sample(PODS, rng.randint(1, len(PODS)))
                    arg: Any = pods
                    if rng.random() < 0.3:
                        arg = {p: PodLoad(running=rng.randrange(3), kv_usage=rng.random()) for p in pods}
                    choice = router.choose(MODEL, -1, toks(*ks), arg)
                    assert choice.pod in pods, (choice.pod, pods)
                    assert set(choice.matched) == set(choice.predicted) == set(choice.cost) == set(pods)
                    assert all(choice.predicted[p] >= choice.matched[p] for p in pods)
                    held.append(choice)
                else:
                    choice = held.pop(rng.randrange(len(held)))
                    if rng.random() < 0.7:
                        router.prefill_done(choice)
                    router.finished(choice)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def reader() -> None:
        try:
            while time.monotonic() < stop:
                stats = router.stats()
                assert stats["predicted_entries"] <= router.settings["max_predicted_entries"]
                for counts in stats["in_flight"].values():
                    assert counts["prefilling"] >= 0 and counts["decoding"] >= 0
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=chooser, args=(k,)) for k in range(threads)]
    workers.append(threading.Thread(target=reader))
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive(), "a router thread hung"
    return errors


def final_checks(router: Router) -> None:
    stats = router.stats()
    assert stats["in_flight"] == {}
    assert stats["decisions"] > 100
    assert sum(stats["decisions_by_reason"].values()) == stats["decisions"]
    for counts in stats["predictions"].values():
        assert counts["confirmed"] + counts["expired"] <= counts["made"]
    # predictions were made and expired during the run (the TTLs are short): both paths ran in threads
    assert sum(c["made"] for c in stats["predictions"].values()) > 0
    assert sum(c["expired"] for c in stats["predictions"].values()) > 0
    check_router(router)


def test_threads_beside_a_writer_thread(make_table):
    table = make_table(block_size=BS)
    router = Router(table, predicted_ttl_seconds=0.02, max_predicted_entries=200)
    stop = threading.Event()
    writer_errors: List[BaseException] = []

    def writer() -> None:
        rng = random.Random(1)
        n = 0
        try:
            while not stop.is_set():
                pod = rng.choice(PODS)
                ks = rng.choice(PREFIXES)[:rng.randint(1, 6)]
                n += 1
                engine = [n * 10 + i for i in range(len(ks))]
                table.process_block_stored(BlockStored(engine, toks(*ks), MODEL, -1, pod, None))
                if rng.random() < 0.4:
                    table.process_block_removed(BlockRemoved(engine[rng.randrange(len(engine)):], MODEL, -1, pod))
        except BaseException as exc:  # noqa: BLE001
            writer_errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    try:
        errors = hammer(router, 1.5)
    finally:
        stop.set()
        w.join(10)
    assert not errors and not writer_errors, errors + writer_errors
    final_checks(router)


# -- with a real subscriber --------------------------------------------------------------------------

zmq = pytest.importorskip("zmq", reason="pyzmq is the vllm extra; without it there is no subscriber to test")
msgspec = pytest.importorskip("msgspec", reason="msgspec is the vllm extra")


def _payload(events: List[Dict[str, Any]]) -> bytes:
    """A vLLM KV-event batch, current shape: [ts, events, data_parallel_rank], events as tagged maps."""
    return msgspec.msgpack.encode([time.time(), events, 0])


def _stored(hashes: List[int], tokens: List[int], parent: Any) -> Dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": BS, "lora_id": None, "medium": "GPU", "lora_name": None}


def _removed(hashes: List[int]) -> Dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU"}


def test_threads_beside_a_vllm_subscriber_and_eviction(make_table):
    from prefixindex.vllm import Pod, VLLMSubscriber

    table = make_table(block_size=BS, clock=time.monotonic, background_eviction=True,
                       eviction_interval_seconds=0.01, eviction_duration_minutes=0.002,
                       max_prefixes_per_context=30)
    # A pod that reports once and then falls silent: the eviction thread drops it as stale mid-run.
    table.process_block_stored(BlockStored([1, 2], toks(0, 1), MODEL, -1, "pod-0", None))
    table.process_block_stored(BlockStored([1, 2], toks(0, 1), "quiet-model", -1, "silent", None))
    ctx = zmq.Context()
    sockets = []
    pods = []
    for name in PODS:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        sockets.append(sock)
        pods.append(Pod(name, sock.getsockopt_string(zmq.LAST_ENDPOINT), topic="kv-events"))
    sub = VLLMSubscriber(table, pods, model=MODEL, poll_interval=0.01).start()
    stop = threading.Event()
    publisher_errors: List[BaseException] = []
    seqs = [0] * len(PODS)

    def publish(i: int, events: List[Dict[str, Any]]) -> None:
        sockets[i].send_multipart([b"kv-events", seqs[i].to_bytes(8, "big"), _payload(events)])
        seqs[i] += 1

    def publisher() -> None:  # one thread owns the PUB sockets (zmq sockets are not thread-safe)
        rng = random.Random(2)
        n = 0
        try:
            deadline = time.monotonic() + 10
            while sum(s["batches"] for s in sub.stats()["pods"].values()) < len(PODS):  # slow joiners
                assert time.monotonic() < deadline, "the subscriber never received a batch"
                for i in range(len(PODS)):
                    publish(i, [])
                time.sleep(0.01)
            while not stop.is_set():
                i = rng.randrange(len(PODS))
                ks = rng.choice(PREFIXES)[:rng.randint(1, 6)]
                n += 1
                engine = [n * 10 + j for j in range(len(ks))]
                events = [_stored(engine, toks(*ks), None)]
                if rng.random() < 0.3:
                    events.append(_removed(engine[rng.randrange(len(engine)):]))
                publish(i, events)
                time.sleep(0.0005)
        except BaseException as exc:  # noqa: BLE001
            publisher_errors.append(exc)

    p = threading.Thread(target=publisher)
    p.start()
    router = Router(table, predicted_ttl_seconds=0.05, max_predicted_entries=300)
    try:
        deadline = time.monotonic() + 10
        while table.stats()["events_block_stored"] == 0:  # start routing once events flow
            assert time.monotonic() < deadline and p.is_alive(), "no event reached the table"
            time.sleep(0.01)
        errors = hammer(router, 2.0, seed=3)
    finally:
        stop.set()
        p.join(10)
        sub.stop()
        for sock in sockets:
            sock.close(0)
        ctx.term()
    assert not errors and not publisher_errors, errors + publisher_errors
    final_checks(router)
    stats = table.stats()
    assert stats["events_block_stored"] > 50
    # the eviction thread removed stale state, and the bound trimmed prefixes, while routers read
    assert stats["evicted_pods"] + stats["evicted_contexts"] > 0
    assert stats["evicted_prefixes"] > 0
    assert table.eviction_thread_alive
