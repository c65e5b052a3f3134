"""The warm-restart scenario of ``python -m prefixindex vllm-bench warm`` (issue 12's target: a router
restarted from a snapshot and delta replay after 1,000 missed batches per pod on 8 pods is current
again within 1 s of starting).

Publishers run in a child process (``--warm-child``, not for direct use): per pod a PUB socket and a
replay ROUTER (vLLM's 4-frame reply shape) over a buffer of pre-encoded batches. Seq 0 is an empty
batch; seqs 1..base are the state the router had when it stopped; seqs base+1..base+missed are what it
missed. The parent:

1. fills a table from the buffers (a subscriber resumed from seq 0, which asks from seq 1), stops it
   and saves the table with the positions (``VLLMSubscriber.save``);
2. tells the child to publish the missed batches (they land in the buffers: nobody is subscribed);
3. starts the clock, loads the snapshot (``VLLMSubscriber.from_snapshot``), starts the subscriber and
   waits until every pod has applied its last missed batch and no replay runs; stops the clock.

The row reports the time from start to current (and the load's share), and checks that every pod
resumed (none refilled, nothing lost) and that the table holds every missed block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

__all__ = ["warm_restart_benchmark"]

TOPIC = b"kv-events"


def _warm_child(spec: Dict[str, Any]) -> int:
    import zmq

    from .vllm_bench import _empty_batch, make_payloads

    ctx = zmq.Context()
    pods = spec["pods"]
    base, missed = spec["base"], spec["missed"]
    pubs, routers = [], []
    for _ in range(pods):
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind("tcp://127.0.0.1:*")
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 0)  # a replay is never dropped
        router.bind("tcp://127.0.0.1:*")
        pubs.append(pub)
        routers.append(router)
    payloads = [[_empty_batch()] + make_payloads(base + missed, spec["events_per_batch"], spec["blocks_per_event"],
                                                 spec["block_size"], seed=i) for i in range(pods)]
    published = [base + 1] * pods  # seqs 0..base are in the buffers
    print(json.dumps([[p.getsockopt_string(zmq.LAST_ENDPOINT), r.getsockopt_string(zmq.LAST_ENDPOINT)]
                      for p, r in zip(pubs, routers)]), flush=True)
    commands: List[str] = []
    lock = threading.Lock()

    def read_commands() -> None:
        for line in sys.stdin:
            with lock:
                commands.append(line.strip())
        with lock:
            commands.append("quit")

    threading.Thread(target=read_commands, daemon=True).start()
    poller = zmq.Poller()
    for r in routers:
        poller.register(r, zmq.POLLIN)
    end = (-1).to_bytes(8, "big", signed=True)
    while True:
        with lock:
            todo, commands[:] = list(commands), []
        for command in todo:
            if command == "quit":
                ctx.destroy(0)
                return 0
            if command == "publish-missed":  # nobody is subscribed: the batches only reach the buffers
                published = [base + missed + 1] * pods
                print(json.dumps([n - 1 for n in published]), flush=True)
        for sock, _ in poller.poll(10):
            i = routers.index(sock)
            identity, _empty, start = sock.recv_multipart()
            for seq in range(int.from_bytes(start, "big"), published[i]):
                sock.send_multipart([identity, b"", TOPIC, seq.to_bytes(8, "big"), payloads[i][seq]], copy=False)
            sock.send_multipart([identity, b"", b"", end, b""])


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def _current(sub: Any, last: int) -> bool:
    pods = sub.stats()["pods"]
    return all(p["last_seq"] == last and not p["replaying"] for p in pods.values())


def warm_restart_benchmark(table_class: Any = None, pods: int = 8, missed: int = 1000, base: int = 100,
                           events_per_batch: int = 2, blocks_per_event: int = 16, block_size: int = 16,
                           timeout: float = 120.0) -> Dict[str, Any]:
    """One warm restart (see the module's docstring); the figures as a dict."""
    from ..vllm import Pod, VLLMSubscriber

    if table_class is None:
        from .. import SyncPrefixHashTable as table_class
    spec = {"pods": pods, "base": base, "missed": missed, "events_per_batch": events_per_batch,
            "blocks_per_event": blocks_per_event, "block_size": block_size}
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.Popen([sys.executable, "-m", "prefixindex._tools.warm_bench", "--warm-child", json.dumps(spec)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdin is not None and child.stdout is not None
    path = None
    try:
        endpoints = json.loads(child.stdout.readline())
        specs = [Pod(f"pod-{i}", pub, replay_endpoint=replay, topic=TOPIC.decode())
                 for i, (pub, replay) in enumerate(endpoints)]
        capacity = 4 * pods * (base + missed) * events_per_batch * blocks_per_event
        overrides = {"block_size": block_size, "seed": 0, "background_eviction": False,
                     "max_prefixes_per_context": capacity}
        table = table_class(**overrides)
        first = VLLMSubscriber(table, specs, model="bench", replay_timeout=30.0,
                               resume={s.name: {"seq": 0} for s in specs}).start()
        if not _wait(lambda: _current(first, base), timeout):
            raise RuntimeError(f"the first run never applied its {base} batches per pod: {first.stats()['totals']}")
        first.stop()
        fd, path = tempfile.mkstemp(suffix=".pisnap")
        os.close(fd)
        first.save(path)
        entries_before = table.stats()["entries"]
        table.close()
        child.stdin.write("publish-missed\n")
        child.stdin.flush()
        last = json.loads(child.stdout.readline())[0]
        started = time.perf_counter()
        sub = VLLMSubscriber.from_snapshot(path, specs, table_class=table_class, overrides={
            k: v for k, v in overrides.items() if k not in ("block_size", "seed")}, model="bench",
            replay_timeout=30.0)
        loaded = time.perf_counter()
        sub.start()
        ok = _wait(lambda: _current(sub, last), timeout)
        current = time.perf_counter()
        sub.stop()
        totals = sub.stats()["totals"]
        index = sub.table.stats()
        sub.table.close()
        missed_blocks = pods * missed * events_per_batch * blocks_per_event
        return {"backend": getattr(table_class, "__module__", "?"), "pods": pods, "missed_batches": missed,
                "base_batches": base, "blocks_per_batch": events_per_batch * blocks_per_event,
                "snapshot_bytes": os.path.getsize(path), "entries_at_stop": entries_before,
                "load_seconds": loaded - started, "current_seconds": current - started if ok else None,
                "resumes": totals["resumes"], "resume_refills": totals["resume_refills"],
                "lost": (not ok or totals["resume_refills"] != 0 or totals["lost_batches"] != 0
                         or index["entries"] != entries_before + missed_blocks or index["orphan_blocks"] != 0)}
    finally:
        try:
            child.stdin.write("quit\n")
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if path is not None and os.path.exists(path):
            os.unlink(path)


def line(r: Dict[str, Any]) -> str:
    """The bench row."""
    cur = r["current_seconds"]
    return (f"warm     {r['backend']:<22} {r['pods']} pods, {r['missed_batches']} missed batches each "
            f"({r['blocks_per_batch']} blocks per batch) after a snapshot of {r['entries_at_stop']:,} entries: "
            f"current {'n/a' if cur is None else f'{cur:.3f} s'} after start (load {r['load_seconds']:.3f} s); "
            f"{r['resumes']} resumed, {r['resume_refills']} refilled, "
            f"{'LOST DATA' if r['lost'] else 'nothing lost'}")


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--warm-child"]:
        return _warm_child(json.loads(args[1]))
    print(line(warm_restart_benchmark()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
