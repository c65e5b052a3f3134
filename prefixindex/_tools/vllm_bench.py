"""``python -m prefixindex vllm-bench``: the vLLM subscriber's targets (issue 10), measured over loopback.

    python -m prefixindex vllm-bench [ingest|multi|add-pods|idle|flood|warm|all] [--backend python|cython|auto]

- ``ingest``: one publisher, pre-encoded batches (8 BlockStored events of 16 blocks, block size 16) as
  fast as it sends them; blocks per second from "go" to the last batch applied, and whether anything was
  lost (the table must have placed every block, with no orphan, no gap, no malformed batch).
- ``multi``: the same from 100 publishers at once (aggregate blocks per second).
- ``add-pods``: 1,000 ``add_pod`` calls on a running subscriber, then 1,000 ``remove_pod``; wall time in
  all, and the loop thread's CPU time per call.
- ``idle``: 10,000 pods subscribed and idle; the loop thread's CPU use (percent of one core).
- ``flood``: 2 MB garbage frames for 10 s; growth of resident memory, and how long ``stop()`` takes.
- ``warm``: a router restarted from a snapshot after 1,000 missed batches per pod on 8 pods; the time
  from start to every pod current again (``warm_bench.py`` says how).

Publishers run in a child process (``--publisher-child``, not for direct use), so that they do not
share the subscriber's interpreter lock; their payloads are made before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ._checks import check_vllm_bench

__all__ = ["add_pods_benchmark", "flood_benchmark", "idle_benchmark", "ingest_benchmark", "main", "make_payloads",
           "multi_ingest_benchmark"]


def make_payloads(n_batches: int, events_per_batch: int, blocks_per_event: int, block_size: int,
                  encoding: str = "map", seed: int = 0) -> List[bytes]:
    """Encoded batches of BlockStored events; every event is a new chain from the root (no orphans).

    ``encoding`` is "map" (current vLLM: tagged maps, the batch as an array) or "array" (legacy tagged
    arrays). Token ids are random, so that every block is a new prefix; engine block hashes are random
    64-bit values, half of them above 2**63.
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
            tokens = rng.integers(0, 2**31, size=tokens_per_event, dtype=np.int64)
            tokens[::block_size] = event_no  # the event number in each block's first token: all distinct
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


def _empty_batch() -> bytes:
    import msgspec

    return msgspec.msgpack.encode([time.time(), [], 0])


# ---------------------------------------------------------------------------------------------------
# the publisher child: P PUB sockets, warm-up probes until "go", then every batch round-robin


def _publisher_child(spec: Dict[str, Any]) -> int:
    import zmq

    ctx = zmq.Context()
    topic = b"kv-events"
    n_pub = spec["publishers"]
    socks = []
    for _ in range(n_pub):
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.SNDHWM, 0)   # never drop: the benchmark counts every block
        s.setsockopt(zmq.LINGER, 0)
        s.bind("tcp://127.0.0.1:*")
        socks.append(s)
    if spec["mode"] == "flood":
        return _flood_child(ctx, socks[0], topic, spec)
    payloads = [make_payloads(spec["batches"], spec["events_per_batch"], spec["blocks_per_event"],
                              spec["block_size"], spec["encoding"], seed=i) for i in range(n_pub)]
    print(json.dumps([s.getsockopt_string(zmq.LAST_ENDPOINT) for s in socks]), flush=True)
    seqs = [0] * n_pub
    probe = _empty_batch()
    go = threading.Event()
    def wait_for_go() -> None:
        sys.stdin.readline()
        go.set()

    threading.Thread(target=wait_for_go, daemon=True).start()
    while not go.is_set():  # the slow joiner: probes until the parent says every pod has seen one
        for i, s in enumerate(socks):
            s.send_multipart([topic, seqs[i].to_bytes(8, "big"), probe])
            seqs[i] += 1
        go.wait(0.01)
    for k in range(spec["batches"]):
        for i, s in enumerate(socks):
            s.send_multipart([topic, seqs[i].to_bytes(8, "big"), payloads[i][k]], copy=False)
            seqs[i] += 1
    print(json.dumps([q - 1 for q in seqs]), flush=True)
    sys.stdin.readline()  # keep the sockets until the parent is done
    return 0


def _flood_child(ctx: Any, sock: Any, topic: bytes, spec: Dict[str, Any]) -> int:
    import zmq

    print(json.dumps([sock.getsockopt_string(zmq.LAST_ENDPOINT)]), flush=True)
    sys.stdin.readline()
    garbage = os.urandom(spec["frame_bytes"])
    end = time.monotonic() + spec["seconds"]
    seq = 0
    sent = 0
    while time.monotonic() < end:
        if seq % 4 == 3:
            sock.send_multipart([topic, garbage])  # a message of the wrong shape
        else:
            sock.send_multipart([topic, seq.to_bytes(8, "big"), garbage], copy=False)
        seq += 1
        sent += len(garbage)
    print(json.dumps({"messages": seq, "bytes": sent}), flush=True)
    sys.stdin.readline()
    return 0


class _Child:
    def __init__(self, spec: Dict[str, Any]) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "prefixindex._tools.vllm_bench", "--publisher-child",
                                      json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the publisher child ended (status {self.proc.wait()})")
        return json.loads(line)

    def say(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.say()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _default_factory(block_size: int, capacity: int) -> Callable[[], Any]:
    import prefixindex

    def factory() -> Any:
        return prefixindex.SyncPrefixHashTable(block_size=block_size, seed=0, background_eviction=False,
                                               max_prefixes_per_context=max(capacity, 1))
    return factory


# How often the ingestion benchmarks look for the last batch. Each look is a stats() call, which takes
# the interpreter lock from the subscriber thread: every 0.5 ms took about 7% off the measured rate.
# Every 2 ms the end is seen at most 2 ms late (about 1% of a 256,000-block run, counted against it).
_END_POLL = 0.002


def _schedstat(native_id: Optional[int]) -> Optional[List[int]]:
    """Linux's scheduler figures for one thread of this process: [ns on a CPU, ns waiting for one,
    time slices]; None where /proc does not have them."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return [int(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def _wait(condition: Callable[[], bool], timeout: float, poll: float = 0.0005) -> bool:
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            return False
        time.sleep(poll)
    return True


# ---------------------------------------------------------------------------------------------------
# ingestion


def multi_ingest_benchmark(table_factory: Optional[Callable[[], Any]] = None, publishers: int = 100,
                           n_batches: int = 100, blocks_per_event: int = 16, events_per_batch: int = 8,
                           block_size: int = 16, encoding: str = "map", timeout: float = 300.0) -> Dict[str, Any]:
    """``publishers`` publishers (in one child process) each send ``n_batches``; aggregate blocks/s."""
    from ..vllm import Pod, VLLMSubscriber

    total_blocks = publishers * n_batches * events_per_batch * blocks_per_event
    table = (table_factory or _default_factory(block_size, 2 * total_blocks))()
    child = _Child({"mode": "ingest", "publishers": publishers, "batches": n_batches, "block_size": block_size,
                    "events_per_batch": events_per_batch, "blocks_per_event": blocks_per_event,
                    "encoding": encoding})
    sub = None
    try:
        endpoints = child.read()
        pods = [Pod(f"bench-{i}", ep, topic="kv-events") for i, ep in enumerate(endpoints)]
        sub = VLLMSubscriber(table, pods, model="bench-model", rcvhwm=0).start()
        names = [p.name for p in pods]
        if not _wait(lambda: all(s["batches"] > 0 for s in sub.stats()["pods"].values()), 60, 0.01):
            raise RuntimeError("the subscriber never received a batch from every benchmark publisher")
        before = table.stats()
        tid = _loop_tid(sub)
        sched0 = _schedstat(tid)
        started = time.perf_counter()
        child.say()
        last = dict(zip(names, child.read()))
        sent = time.perf_counter() - started

        def finished() -> bool:
            pods_stats = sub.stats()["pods"]
            return all(pods_stats[n]["last_seq"] == last[n] and not pods_stats[n]["replaying"] for n in names)

        ok = _wait(finished, timeout, _END_POLL)
        elapsed = time.perf_counter() - started if ok else None
        sched1 = _schedstat(tid)
        sub.stop()
        stats = sub.stats()["totals"]
    finally:
        if sub is not None:
            sub.stop()
        child.close()
    after = table.stats()
    placed = after["blocks_stored"] - before["blocks_stored"]
    orphans = after["orphan_blocks"] - before["orphan_blocks"]
    lost = (elapsed is None or placed != total_blocks or orphans != 0 or stats["lost_batches"] != 0
            or stats["gaps"] != 0 or stats["malformed"] != 0)
    close = getattr(table, "close", None)
    if close is not None:
        close()
    # the loop thread from "go" to the last batch applied: its CPU time, and how long it was ready to
    # run but had no CPU (the machine's other load; on a quiet machine this is near 0)
    loop_cpu = loop_wait = None
    if sched0 is not None and sched1 is not None:
        loop_cpu, loop_wait = (sched1[0] - sched0[0]) / 1e9, (sched1[1] - sched0[1]) / 1e9
    n_sent = publishers * n_batches
    return {"backend": type(table).__module__, "publishers": publishers, "batches_each": n_batches,
            "blocks_sent": total_blocks, "blocks_indexed": placed, "orphan_blocks": orphans,
            "gaps": stats["gaps"], "lost_batches": stats["lost_batches"], "malformed": stats["malformed"],
            "seconds": elapsed, "blocks_per_second": None if not elapsed else total_blocks / elapsed, "lost": lost,
            "publisher_seconds": sent, "loop_cpu_seconds": loop_cpu, "loop_wait_seconds": loop_wait,
            "loop_cpu_us_per_batch": None if loop_cpu is None else 1e6 * loop_cpu / n_sent}


def ingest_benchmark(table_factory: Optional[Callable[[], Any]] = None, n_batches: int = 1000,
                     blocks_per_event: int = 16, events_per_batch: int = 8, block_size: Optional[int] = None,
                     encoding: str = "map", timeout: float = 120.0,
                     payloads: Optional[List[bytes]] = None) -> Dict[str, Any]:
    """One publisher (a thread of this process, on 127.0.0.1) into a subscriber; blocks/s and ``lost``.

    ``table_factory()`` makes the table (default: the active backend, block_size 16, a prefix bound large
    enough to keep every block). ``payloads``: batches made beforehand by ``make_payloads``.
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
    probe = _empty_batch()
    context: Any = zmq.Context()
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
            while not go.is_set():  # slow joiner: probes until the subscriber has seen one
                pub.send_multipart([topic, state["seq"].to_bytes(8, "big"), probe])
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
    finished = None
    try:
        publisher.start()
        if not _wait(lambda: sub.stats()["pods"]["bench-pod"]["batches"] > 0, min(timeout, 30.0), 0.005):
            raise RuntimeError("the subscriber never received a batch from the benchmark publisher")
        go.set()
        publisher.join(timeout)
        expected_last = state["seq"] - 1

        def done() -> bool:
            pod = sub.stats()["pods"]["bench-pod"]
            return bool(pod["last_seq"] == expected_last and not pod["replaying"])

        if _wait(done, timeout, _END_POLL):
            finished = time.perf_counter()
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
    return {"backend": type(table).__module__, "encoding": encoding, "block_size": table_block_size,
            "batches": n_batches, "events_per_batch": events_per_batch, "blocks_per_event": blocks_per_event,
            "blocks_sent": total_blocks, "blocks_indexed": placed, "orphan_blocks": orphans,
            "warmup_batches": warm_batches, "batches_applied": pod["batches"], "gaps": pod["gaps"],
            "lost_batches": pod["lost_batches"], "malformed": pod["malformed"], "seconds": elapsed,
            "blocks_per_second": None if not elapsed else total_blocks / elapsed,
            "batches_per_second": None if not elapsed else n_batches / elapsed, "lost": lost,
            "publisher_error": state["error"]}


# ---------------------------------------------------------------------------------------------------
# pods, idle CPU, floods


def _thread_cpu(native_id: Optional[int]) -> float:
    """CPU seconds (user + system) of one thread of this process (Linux; the process's elsewhere)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.process_time()


def _loop_tid(sub: Any) -> Optional[int]:
    thread = getattr(sub, "_thread", None)
    return None if thread is None else thread.native_id


def add_pods_benchmark(n_pods: int = 1000) -> Dict[str, Any]:
    """``n_pods`` add_pod then remove_pod calls on a running subscriber (endpoints nobody serves)."""
    import prefixindex
    from ..vllm import Pod, VLLMSubscriber

    table = prefixindex.SyncPrefixHashTable(background_eviction=False)
    sub = VLLMSubscriber(table, model="m", max_pods=max(n_pods, 1)).start()
    tid = _loop_tid(sub)
    pods = [Pod(f"pod-{i}", f"tcp://127.0.0.1:{20000 + i % 30000}") for i in range(n_pods)]
    cpu0, t0 = _thread_cpu(tid), time.perf_counter()
    for pod in pods:
        sub.add_pod(pod)
    t1, cpu1 = time.perf_counter(), _thread_cpu(tid)
    for pod in pods:
        sub.remove_pod(pod.name)
    t2, cpu2 = time.perf_counter(), _thread_cpu(tid)
    sub.stop()
    table.close()
    return {"pods": n_pods, "add_seconds": t1 - t0, "remove_seconds": t2 - t1,
            "loop_cpu_ms_per_add": 1000 * (cpu1 - cpu0) / n_pods,
            "loop_cpu_ms_per_remove": 1000 * (cpu2 - cpu1) / n_pods}


def idle_benchmark(n_pods: int = 10_000, seconds: float = 10.0) -> Dict[str, Any]:
    """``n_pods`` pods subscribed to one idle publisher (inproc, in the subscriber's context: no file
    descriptor per connection); the loop thread's CPU use while nothing is sent."""
    import zmq

    import prefixindex
    from ..vllm import Pod, VLLMSubscriber

    ctx: Any = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 2 * n_pods + 64)
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://idle-bench")
    table = prefixindex.SyncPrefixHashTable(background_eviction=False)
    sub = VLLMSubscriber(table, model="m", max_pods=n_pods, context=ctx).start()
    t0 = time.perf_counter()
    for i in range(n_pods):
        sub.add_pod(Pod(f"pod-{i}", "inproc://idle-bench"))
    added = time.perf_counter() - t0
    time.sleep(1.0)  # let the connections settle
    tid = _loop_tid(sub)
    cpu0, w0 = _thread_cpu(tid), time.perf_counter()
    time.sleep(seconds)
    cpu1, w1 = _thread_cpu(tid), time.perf_counter()
    t0 = time.perf_counter()
    sub.stop()
    stop_seconds = time.perf_counter() - t0
    pub.close(0)
    ctx.term()
    table.close()
    return {"pods": n_pods, "add_seconds": added, "loop_cpu_percent": 100 * (cpu1 - cpu0) / (w1 - w0),
            "stop_seconds": stop_seconds}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flood_benchmark(seconds: float = 10.0, frame_bytes: int = 2 << 20) -> Dict[str, Any]:
    """Garbage frames of ``frame_bytes`` for ``seconds`` from a child process; resident memory growth
    of this process (sampled every 50 ms) and the time ``stop()`` takes."""
    import prefixindex
    from ..vllm import Pod, VLLMSubscriber

    table = prefixindex.SyncPrefixHashTable(background_eviction=False)
    child = _Child({"mode": "flood", "publishers": 1, "seconds": seconds, "frame_bytes": frame_bytes})
    try:
        [endpoint] = child.read()
        sub = VLLMSubscriber(table, [Pod("flooded", endpoint, topic="kv-events")], model="m").start()
        time.sleep(0.5)
        base = peak = _rss_bytes()
        child.say()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, _rss_bytes())
            time.sleep(0.05)
        sent = child.read()
        peak = max(peak, _rss_bytes())
        t0 = time.perf_counter()
        sub.stop()
        stop_seconds = time.perf_counter() - t0
        pod = sub.stats()["pods"]["flooded"]
    finally:
        child.close()
    table.close()
    return {"seconds": seconds, "frame_bytes": frame_bytes, "messages_sent": sent["messages"],
            "malformed": pod["malformed"], "rss_growth_mib": (peak - base) / 2**20, "stop_seconds": stop_seconds}


# ---------------------------------------------------------------------------------------------------
# command line


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


def _line(name: str, r: Dict[str, Any]) -> str:
    if name == "warm":
        from .warm_bench import line

        return line(r)
    if name in ("ingest", "multi"):
        rate = r["blocks_per_second"]
        text = (f"{name:<8} {r['backend']:<22} {r['publishers']} publisher(s), {r['blocks_sent']} blocks: "
                f"{'n/a' if rate is None else f'{rate:,.0f}'} blocks/s, "
                f"{'LOST DATA' if r['lost'] else 'nothing lost'}")
        if r.get("loop_cpu_seconds") is not None and r["seconds"]:
            text += (f"; loop thread {r['loop_cpu_us_per_batch']:.1f} us CPU a batch, "
                     f"{1000 * r['loop_wait_seconds']:.0f} of {1000 * r['seconds']:.0f} ms waiting for a CPU; "
                     f"publisher done in {1000 * r['publisher_seconds']:.0f} ms")
        return text
    if name == "add-pods":
        return (f"add-pods {r['pods']} add_pod: {r['add_seconds']:.3f} s in all, {r['pods']} remove_pod: "
                f"{r['remove_seconds']:.3f} s; loop CPU {r['loop_cpu_ms_per_add']:.3f} ms/add, "
                f"{r['loop_cpu_ms_per_remove']:.3f} ms/remove")
    if name == "idle":
        return (f"idle     {r['pods']} pods idle: loop CPU {r['loop_cpu_percent']:.2f}% of one core "
                f"(adding them took {r['add_seconds']:.2f} s; stop() {r['stop_seconds']:.2f} s)")
    return (f"flood    {r['frame_bytes'] >> 20} MB garbage frames for {r['seconds']:.0f} s ({r['messages_sent']} sent, "
            f"{r['malformed']} counted malformed): RSS +{r['rss_growth_mib']:.1f} MiB, stop() {r['stop_seconds']:.3f} s")


def main(argv: Optional[List[str]] = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in[:1] == ["--publisher-child"]:
        return _publisher_child(json.loads(args_in[1]))
    parser = argparse.ArgumentParser(prog="python -m prefixindex vllm-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="all", choices=("ingest", "multi", "add-pods", "idle",
                                                                        "flood", "warm", "all"))
    parser.add_argument("--backend", choices=("auto", "python", "cython"), default="auto")
    parser.add_argument("--batches", type=int, default=2000, help="ingest: batches (default 2000)")
    parser.add_argument("--publishers", type=int, default=100, help="multi: publishers (default 100)")
    parser.add_argument("--batches-each", type=int, default=40, help="multi: batches per publisher (default 40)")
    parser.add_argument("--encoding", choices=("map", "array"), default="map")
    parser.add_argument("--pods", type=int, default=None, help="add-pods: 1000, idle: 10000, warm: 8 (default)")
    parser.add_argument("--seconds", type=float, default=10.0, help="idle and flood: duration (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="ingest, multi: runs (the median is reported)")
    parser.add_argument("--missed", type=int, default=1000, help="warm: batches missed per pod (default 1000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(args_in)
    try:
        import msgspec  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as exc:
        print(f"error: the vLLM benchmarks need pyzmq and msgspec: python -m pip install -e '.[vllm]' ({exc})")
        return 1
    check_vllm_bench(parser, args)
    scenarios = (["ingest", "multi", "add-pods", "idle", "flood", "warm"] if args.scenario == "all"
                 else [args.scenario])
    results: Dict[str, Any] = {}
    failed = False
    for name in scenarios:
        if name == "ingest":
            total = args.batches * 8 * 16
            factory = _backend_factory(args.backend, 16, 2 * total)
            runs = [multi_ingest_benchmark(factory, publishers=1, n_batches=args.batches, encoding=args.encoding)
                    for _ in range(args.repeat)]
        elif name == "multi":
            total = args.publishers * args.batches_each * 8 * 16
            factory = _backend_factory(args.backend, 16, 2 * total)
            runs = [multi_ingest_benchmark(factory, publishers=args.publishers, n_batches=args.batches_each,
                                           encoding=args.encoding) for _ in range(args.repeat)]
        elif name == "add-pods":
            runs = [add_pods_benchmark(args.pods or 1000)]
        elif name == "idle":
            runs = [idle_benchmark(args.pods or 10_000, args.seconds)]
        elif name == "warm":
            from .warm_bench import warm_restart_benchmark

            probe = _backend_factory(args.backend, 16, 1)()  # only for its class
            cls = type(probe)
            probe.close()
            runs = [warm_restart_benchmark(cls, pods=args.pods or 8, missed=args.missed) for _ in range(args.repeat)]
            runs.sort(key=lambda r: float("inf") if r["current_seconds"] is None else r["current_seconds"])
        else:
            runs = [flood_benchmark(args.seconds)]
        failed = failed or any(r.get("lost") for r in runs)
        if len(runs) > 1 and name != "warm":
            runs.sort(key=lambda r: r["blocks_per_second"] or 0)
        result = runs[len(runs) // 2]  # the median run
        results[name] = result if len(runs) == 1 else {"median": result, "runs": runs}
        if not args.json:
            print(_line(name, result) + (f"  (median of {len(runs)})" if len(runs) > 1 else ""), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
