"""The vLLM subscriber against real ZeroMQ sockets on 127.0.0.1 (random free ports).

The publisher here is written from the wire doc: a PUB socket sending
``[topic, seq as 8 bytes big-endian, msgpack payload]`` and, optionally, a ROUTER replay server that
answers ``[b"", start_seq]`` in either of vLLM's reply shapes (``ReplayServer``). test_vllm_faults.py
and test_vllm_resume.py use the same stand-in.

A SUB socket misses whatever is published before it is connected (the slow joiner): every test first
publishes empty probe batches until the subscriber has seen one (``Publisher.publish_until``), or uses
the replay path on purpose. Waits are bounded polls, never fixed sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest
import zmq

from prefixindex.vllm import Pod, VLLMSubscriber
from prefixindex._tools.vllm_bench import ingest_benchmark

from test_vllm_decode import batch, cleared, removed, stored

MODEL = "llama"
BS = 4  # the make_table fixture's block_size


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def block_tokens(k: int) -> List[int]:
    """Block k of the test prompts: 4 token ids."""
    return [1000 + 4 * k + i for i in range(BS)]


def prompt(blocks: List[int]) -> List[int]:
    return [t for k in blocks for t in block_tokens(k)]


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    deadline = time.monotonic() + 5
    while True:  # rebinding the port of a socket just closed may take a moment
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class ReplayServer:
    """vLLM's replay ROUTER, in a thread of its own, in either reply shape:

    - ``shape="3"`` (older vLLM): ``[b"", seq8, payload]`` per buffered batch, end ``[b"", -1, b""]``;
    - ``shape="4"`` (vLLM 0.33.0): ``[b"", topic, seq8, payload]``, end ``[b"", b"", -1, b""]``.

    Misbehaviours: ``mute`` never answers; ``ignore_start`` answers with everything it holds;
    ``babble`` keeps sending duplicates of its first batch and garbage, and never the end marker;
    ``topic`` overrides the topic frame of the 4-frame shape."""

    def __init__(self, ctx: zmq.Context, publisher: "Publisher", mute: bool = False, ignore_start: bool = False,
                 endpoint: str = "tcp://127.0.0.1:*", shape: str = "4", babble: bool = False,
                 topic: Optional[bytes] = None) -> None:
        assert shape in ("3", "4")
        self.publisher = publisher
        self.mute = mute
        self.ignore_start = ignore_start
        self.shape = shape
        self.babble = babble
        self.topic = topic
        self.requests: List[int] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ctx = ctx
        self._bind = endpoint
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _message(self, identity: bytes, seq: int, payload: bytes) -> List[bytes]:
        seq8 = seq.to_bytes(8, "big", signed=True)
        if self.shape == "3":
            return [identity, b"", seq8, payload]
        topic = b"" if seq == -1 else (self.publisher.topic if self.topic is None else self.topic)
        return [identity, b"", topic, seq8, payload]

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        _bind(sock, self._bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ready.set()
        babbling: List[bytes] = []
        try:
            while not self._stop.is_set():
                for identity in babbling:  # duplicates and garbage, never the end marker
                    first = self.publisher.buffered()[0]
                    sock.send_multipart(self._message(identity, *first))
                    sock.send_multipart([identity, b"", b"garbage"])
                if not sock.poll(5 if babbling else 20):
                    continue
                identity, empty, start = sock.recv_multipart()
                assert empty == b""
                self.requests.append(int.from_bytes(start, "big"))
                if self.mute:
                    continue
                if self.babble:
                    babbling.append(identity)
                    continue
                first = 0 if self.ignore_start else int.from_bytes(start, "big")
                for seq, payload in self.publisher.buffered():
                    if seq >= first:
                        sock.send_multipart(self._message(identity, seq, payload))
                sock.send_multipart(self._message(identity, -1, b""))
        finally:
            sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Publisher:
    """vLLM's KV-event publisher: PUB socket, seq from ``start_seq``, and a buffer for replays."""

    def __init__(self, ctx: zmq.Context, topic: str = "kv-events", start_seq: int = 0, replay: bool = False,
                 keep: int = 10_000, endpoint: str = "tcp://127.0.0.1:*", replay_bind: str = "tcp://127.0.0.1:*",
                 **replay_options: Any) -> None:
        self.ctx = ctx
        self.topic = topic.encode()
        self.seq = start_seq
        self.keep = keep
        self._lock = threading.Lock()
        self._buffer: List[tuple] = []
        self.payloads: Dict[int, bytes] = {}
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        _bind(self.pub, endpoint)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay = ReplayServer(ctx, self, endpoint=replay_bind, **replay_options) if replay else None

    @property
    def replay_endpoint(self) -> Optional[str]:
        return None if self.replay is None else self.replay.endpoint

    def buffered(self) -> List[tuple]:
        with self._lock:
            return list(self._buffer)

    def publish(self, payload: bytes, send: bool = True) -> int:
        """Publish one batch (``send=False``: it is buffered for replay but never sent: a dropped message)."""
        seq = self.seq
        self.seq += 1
        self.payloads[seq] = payload
        with self._lock:
            self._buffer.append((seq, payload))
            del self._buffer[:-self.keep]
        if send:
            self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    def drop(self, payload: bytes) -> int:
        return self.publish(payload, send=False)

    def send_raw(self, frames: List[bytes]) -> None:
        self.pub.send_multipart(frames)

    def publish_until(self, condition: Callable[[], bool], payload: Optional[bytes] = None,
                      timeout: float = 5.0) -> None:
        """Publish (empty batches by default) until the subscriber shows it received one."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the subscriber never received the publisher's batches")
            self.publish(batch([]) if payload is None else payload)
            time.sleep(0.01)

    def pod(self, name: str, **fields: Any) -> Pod:
        return Pod(name, self.endpoint, replay_endpoint=self.replay_endpoint, topic=self.topic.decode(), **fields)

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()
        self.pub.close(0)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def publishers(ctx):
    made: List[Publisher] = []

    def make(**kwargs: Any) -> Publisher:
        p = Publisher(ctx, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def subscribers():
    made: List[VLLMSubscriber] = []

    def make(table: Any, pods: List[Pod], **kwargs: Any) -> VLLMSubscriber:
        kwargs.setdefault("model", MODEL)
        kwargs.setdefault("poll_interval", 0.01)
        sub = VLLMSubscriber(table, pods, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.stop()


def pod_stats(sub: VLLMSubscriber, name: str) -> Dict[str, Any]:
    return sub.stats()["pods"][name]


def connect(pub: Publisher, sub: VLLMSubscriber, name: str) -> None:
    """Slow joiner: publish probes until the subscriber has applied one."""
    pub.publish_until(lambda: pod_stats(sub, name)["batches"] >= 1)


def wait_applied(sub: VLLMSubscriber, name: str, seq: int, timeout: float = 5.0) -> None:
    wait_for(lambda: (pod_stats(sub, name)["last_seq"] or -1) >= seq and not pod_stats(sub, name)["replaying"],
             timeout, f"pod {name} to apply seq {seq}")


# ---------------------------------------------------------------------------------------------------
# events into the index


@pytest.mark.parametrize("enc", ["array", "map"])
@pytest.mark.parametrize("shape", ["array3", "map"])
def test_events_reach_the_index_and_match_right_after(make_table, publishers, subscribers, enc, shape):
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    seq = pub.publish(batch([stored([2**64 - 1, 2**63 + 1], prompt([0, 1]), BS, enc=enc),
                             stored([77], prompt([2]), BS, 2**63 + 1, enc=enc)], shape=shape))
    wait_applied(sub, "pod-a", seq)
    assert table.match_prefix(MODEL, -1, prompt([0, 1, 2, 3]))[0] == {"pod-a": 75}
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 3}
    seq = pub.publish(batch([removed([2**63 + 1], enc=enc)], shape=shape))
    wait_applied(sub, "pod-a", seq)
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 1}
    s = pod_stats(sub, "pod-a")
    assert (s["events"], s["blocks_stored"], s["blocks_removed"], s["malformed"], s["gaps"]) == (3, 3, 1, 0, 0)
    assert table.stats()["orphan_blocks"] == 0


def test_two_pods_sharing_prefixes(make_table, publishers, subscribers):
    table = make_table()
    a, b = publishers(), publishers()
    sub = subscribers(table, [a.pod("pod-a"), b.pod("pod-b")]).start()
    connect(a, sub, "pod-a")
    connect(b, sub, "pod-b")
    # the same content under different engine hashes (the pods' hash seeds differ), in both encodings
    sa = a.publish(batch([stored([1, 2, 3, 4], prompt([0, 1, 2, 3]), BS, enc="array")]))
    sb = b.publish(batch([stored([901, 902], prompt([0, 1]), BS, enc="map")]))
    wait_applied(sub, "pod-a", sa)
    wait_applied(sub, "pod-b", sb)
    assert table.match_prefix(MODEL, -1, prompt([0, 1, 2, 3]))[0] == {"pod-a": 100, "pod-b": 50}
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2, 3]), ready_pods=["pod-b"]) == {"pod-b": 2}
    # pod-b extends its chain from its own engine hash; pod-a drops its second block
    sb = b.publish(batch([stored([903], prompt([2]), BS, 902)]))
    sa = a.publish(batch([removed([2])]))
    wait_applied(sub, "pod-a", sa)
    wait_applied(sub, "pod-b", sb)
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2, 3])) == {"pod-a": 1, "pod-b": 3}
    assert table.stats()["pods"] == 2


def test_all_blocks_cleared_and_filters_over_the_wire(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")], lora_map={"sql": 3}).start()
    connect(pub, sub, "pod-a")
    seq = pub.publish(batch([
        stored([1], prompt([0]), BS), stored([2], prompt([0]), BS, lora_name="sql"),
        stored([3], prompt([5]), BS, medium="CPU"),                                   # another tier
        stored([4], prompt([6]), BS, group_idx=1, kind="sliding_window"),              # a hybrid model's window
        stored([5], prompt([7]), BS, lora_name="unknown-adapter"),                     # no lora_id for it
    ]))
    wait_applied(sub, "pod-a", seq)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-a": 1}
    assert table.match_blocks(MODEL, 3, prompt([0])) == {"pod-a": 1}
    assert table.match_blocks(MODEL, -1, prompt([5])) == {}
    assert table.match_blocks(MODEL, -1, prompt([6])) == {}
    s = pod_stats(sub, "pod-a")
    assert (s["events"], s["filtered"], s["unmapped_lora"], s["malformed"]) == (2, 2, 1, 0)
    seq = pub.publish(batch([cleared(enc="array")]))
    wait_applied(sub, "pod-a", seq)
    assert table.stats()["entries"] == 0
    assert pod_stats(sub, "pod-a")["clears"] == 1


def test_garbage_is_counted_logged_and_skipped(make_table, publishers, subscribers, caplog):
    caplog.set_level(logging.WARNING, logger="prefixindex.vllm")
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-x")]).start()
    connect(pub, sub, "pod-x")
    t = pub.topic
    pub.send_raw([t])                                                      # 1 frame
    pub.send_raw([t, (5).to_bytes(8, "big"), b"x", b"extra"])              # 4 frames
    pub.send_raw([t, b"\x00\x01", batch([])])                              # short seq
    pub.send_raw([t, (-5).to_bytes(8, "big", signed=True), batch([])])     # negative seq
    pub.send_raw([t + b"-v2", pub.seq.to_bytes(8, "big"), batch([])])      # another topic: not ours
    pub.publish(b"\xc1 not msgpack")                                       # bad payload
    pub.publish(b"")                                                       # empty payload
    pub.publish(batch([stored([1], prompt([0]), BS), ["BlockStored", "junk"],          # one bad event
                       stored([2], prompt([1, 2]), 8),                                 # wrong block_size
                       stored([3, 4], prompt([3]), BS),                                # too few tokens
                       {"type": "BlockMigrated", "block_hashes": [1]}]))               # unknown type
    last = pub.publish(batch([stored([9], prompt([7]), BS)]))
    wait_applied(sub, "pod-x", last)
    s = pod_stats(sub, "pod-x")
    assert s["malformed"] == 9
    assert (s["other_topic"], s["unknown_events"], s["events"]) == (1, 1, 2)
    assert (s["gaps"], s["restarts"]) == (0, 0)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-x": 1}
    assert table.match_blocks(MODEL, -1, prompt([7])) == {"pod-x": 1}
    assert sub.running
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("'pod-x'" in m and "malformed" in m for m in warnings) == 9
    assert any("block_size 8" in m for m in warnings)
    assert any("BlockMigrated" in m for m in warnings)


class _FlakyTable:
    """A table whose first store fails with an unexpected exception (a bug, a full disk...)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.block_size = table.block_size
        self.failed = False

    def process_events(self, events: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        self.table.process_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_an_unexpected_exception_does_not_end_the_subscriber(make_table, publishers, subscribers, caplog):
    caplog.set_level(logging.WARNING, logger="prefixindex.vllm")
    table = make_table()
    pub = publishers()
    sub = subscribers(_FlakyTable(table), [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    pub.publish(batch([stored([1], prompt([0]), BS)]))
    last = pub.publish(batch([stored([2], prompt([1]), BS)]))
    wait_applied(sub, "pod-a", last)
    assert sub.running
    assert pod_stats(sub, "pod-a")["malformed"] == 1
    assert table.match_blocks(MODEL, -1, prompt([1])) == {"pod-a": 1}
    assert any("boom" in r.getMessage() and "'pod-a'" in r.getMessage() for r in caplog.records)


def test_malformed_logging_is_throttled(make_table, publishers, subscribers, caplog):
    caplog.set_level(logging.WARNING, logger="prefixindex.vllm")
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-x")]).start()
    connect(pub, sub, "pod-x")
    for _ in range(30):
        pub.send_raw([pub.topic])
    last = pub.publish(batch([]))
    wait_applied(sub, "pod-x", last)
    assert pod_stats(sub, "pod-x")["malformed"] == 30
    logged = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(logged) == 10  # the first ten, then every thousandth


# ---------------------------------------------------------------------------------------------------
# pods while running, lifecycle


def test_pods_added_and_removed_while_running(make_table, publishers, subscribers):
    table = make_table()
    a, b = publishers(), publishers(topic="")
    sub = subscribers(table, [a.pod("pod-a")]).start()
    connect(a, sub, "pod-a")
    seq = a.publish(batch([stored([1], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", seq)
    sub.add_pod("pod-b", b.endpoint)  # name, endpoint, topic "" (vLLM's default)
    assert sub.pods == ["pod-a", "pod-b"]
    connect(b, sub, "pod-b")
    seq = b.publish(batch([stored([5], prompt([0]), BS)]))
    wait_applied(sub, "pod-b", seq)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-a": 1, "pod-b": 1}
    with pytest.raises(ValueError, match="already subscribed"):
        sub.add_pod(Pod("pod-b", a.endpoint))
    with pytest.raises(ValueError, match="pod-c"):
        sub.add_pod(Pod("pod-c", "tcp://*:5557"))  # a bind address cannot be connected to
    assert sub.pods == ["pod-a", "pod-b"]
    sub.remove_pod("pod-a")
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-b": 1}
    assert "pod-a" not in sub.stats()["pods"]
    with pytest.raises(KeyError):
        sub.remove_pod("pod-a")
    sub.remove_pod("pod-b", clear=False)  # keep its entries (they age out by staleness)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-b": 1}
    assert sub.pods == [] and sub.running
    sub.add_pod(a.pod("pod-a"))  # and back
    connect(a, sub, "pod-a")


def test_lifecycle(make_table, publishers):
    table = make_table()
    pub = publishers()
    sub = VLLMSubscriber(table, [pub.pod("pod-a")], model=MODEL, poll_interval=0.05)
    assert not sub.running and sub.stats()["running"] is False
    with sub:
        assert sub.running
        with pytest.raises(RuntimeError, match="already running"):
            sub.start()
        connect(pub, sub, "pod-a")
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # stop() is prompt
    assert not sub.running
    sub.stop()  # idempotent
    assert pod_stats(sub, "pod-a")["batches"] >= 1  # stats survive the stop


def test_start_fails_on_an_endpoint_that_cannot_be_connected(make_table):
    sub = VLLMSubscriber(make_table(), [Pod("pod-a", "tcp://*:5557")], model=MODEL)
    with pytest.raises(ValueError, match="pod-a"):
        sub.start()
    assert not sub.running
    sub.remove_pod("pod-a")
    sub.start()
    sub.stop()


def test_constructor_checks(make_table):
    table = make_table()
    with pytest.raises(TypeError):
        VLLMSubscriber(object())
    with pytest.raises(ValueError, match="model"):
        VLLMSubscriber(table, [Pod("pod-a", "tcp://127.0.0.1:5557")])
    with pytest.raises(ValueError):
        Pod("pod-a", "127.0.0.1:5557")
    with pytest.raises(TypeError):
        VLLMSubscriber(table, model=MODEL, lora_map={"a": "1"})
    sub = VLLMSubscriber(table, [Pod("pod-a", "tcp://127.0.0.1:5557", model="other")])
    assert sub.stats()["pods"]["pod-a"]["model"] == "other"
    assert VLLMSubscriber(table, model=MODEL, mediums="CPU").mediums == ("CPU",)  # one tier, not 3 letters
    with pytest.raises(TypeError):
        VLLMSubscriber(table, model=MODEL, mediums=[1])
    with pytest.raises(ValueError):
        VLLMSubscriber(table, model=MODEL, replay_timeout=0)


@pytest.mark.parametrize("shape", ["3", "4"])
def test_stop_and_start_again_replays_what_was_missed(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    sub.stop()
    pub.publish(batch([stored([1], prompt([0]), BS)]))  # nobody listens
    sub.start()
    before = pod_stats(sub, "pod-a")["batches"]
    pub.publish_until(lambda: pod_stats(sub, "pod-a")["batches"] > before + 1)
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([0])) == {"pod-a": 1}, what="the missed batch")
    s = pod_stats(sub, "pod-a")
    assert s["gaps"] == 1 and s["replays"] == 1 and s["lost_batches"] == 0


@pytest.mark.parametrize("shape", ["3", "4"])
def test_replay_on_connect_fetches_what_came_before(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape)
    for k in range(5):  # published before the subscriber exists
        pub.publish(batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)]))
    sub = subscribers(table, [pub.pod("pod-a")], replay_on_connect=True).start()
    pub.publish_until(lambda: pod_stats(sub, "pod-a")["replays"] >= 1)
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt(list(range(5)))) == {"pod-a": 5}, what="the replay")
    s = pod_stats(sub, "pod-a")
    assert pub.replay.requests[0] == 0
    assert s["replayed_batches"] >= 5 and s["gaps"] == 0 and s["lost_batches"] == 0


def test_silent_pod_ages_out_by_the_staleness_rule(make_table, publishers, subscribers, clock):
    table = make_table(eviction_duration_minutes=1)
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    seq = pub.publish(batch([stored([1], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", seq)
    pub.close()  # the publisher disappears; nobody sends AllBlocksCleared
    clock.advance(30)
    assert table.evict_now() == {"contexts": 0, "pods": 0}
    assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-a": 1}
    clock.advance(31)
    table.evict_now()
    assert table.stats()["entries"] == 0
    assert "pod-a" in sub.stats()["pods"]  # still subscribed: a publisher that comes back is picked up


# ---------------------------------------------------------------------------------------------------
# ingestion


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_ingest_benchmark_loses_nothing(backend, encoding):
    def factory():
        return backend.SyncPrefixHashTable(block_size=16, seed=0, background_eviction=False,
                                           max_prefixes_per_context=100_000)

    result = ingest_benchmark(factory, n_batches=40, blocks_per_event=8, events_per_batch=4, encoding=encoding)
    assert result["lost"] is False
    assert result["blocks_indexed"] == result["blocks_sent"] == 40 * 4 * 8
    assert result["batches_applied"] >= 40 and result["orphan_blocks"] == 0
    assert result["blocks_per_second"] > 0
    assert result["backend"] == backend.__name__
