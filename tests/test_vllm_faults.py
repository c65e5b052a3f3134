"""The faults of issue 10, each on real ZeroMQ sockets on 127.0.0.1 with the stand-in publisher of
test_vllm_zmq.py (both replay reply shapes). Waits are bounded polls; the few subprocess tests keep a
crash or a hang from taking the test run with it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest
import zmq

from prefixindex.vllm import Pod, VLLMSubscriber, data_parallel_pods

from test_vllm_decode import batch, removed, stored
from test_vllm_zmq import (BS, MODEL, Publisher, connect, ctx, pod_stats, prompt, publishers, subscribers,  # noqa: F401
                           wait_applied, wait_for)

ROOT = Path(__file__).resolve().parent.parent


def loop_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefixindex-vllm" and t.is_alive()]


# ---------------------------------------------------------------------------------------------------
# replay in both shapes (Deliver 1)


def test_late_subscriber_replays_from_a_0_33_publisher(make_table, publishers, subscribers):
    """The failure seen against vLLM 0.33.0: replay_on_connect ended with replay_failures=1, lost_batches=30."""
    table = make_table()
    pub = publishers(replay=True, shape="4")
    for k in range(30):
        pub.publish(batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)]))
    sub = subscribers(table, [pub.pod("pod-a")], replay_on_connect=True).start()
    pub.publish_until(lambda: pod_stats(sub, "pod-a")["replays"] >= 1)
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt(list(range(30)))) == {"pod-a": 30}, what="the replay")
    s = pod_stats(sub, "pod-a")
    assert (s["replay_failures"], s["lost_batches"], s["malformed"]) == (0, 0, 0)
    assert s["replayed_batches"] >= 30


def test_replayed_batches_of_another_topic_are_not_applied(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True, shape="4")
    pub.replay.topic = b"someone-else"  # the 4-frame replies carry a topic that is not the pod's
    sub = subscribers(table, [pub.pod("pod-a")], replay_timeout=0.5).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([]))
    wait_applied(sub, "pod-a", first)
    pub.drop(batch([stored([1], prompt([0]), BS)]))
    last = pub.publish(batch([]))
    wait_applied(sub, "pod-a", last)
    s = pod_stats(sub, "pod-a")
    assert s["other_topic"] >= 1 and s["replayed_batches"] == 0
    assert s["lost_batches"] == 1 and s["replays"] == 1  # the end marker came; the batch did not
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}


@pytest.mark.parametrize("shape", ["3", "4"])
def test_replay_that_never_ends_is_given_up_without_progress(make_table, publishers, subscribers, shape):
    """Duplicates and garbage, and never the end marker: every message used to push the deadline on."""
    table = make_table()
    pub = publishers(replay=True, shape=shape, babble=True)
    sub = subscribers(table, [pub.pod("pod-a")], replay_timeout=0.4).start()
    connect(pub, sub, "pod-a")
    pub.publish(batch([stored([10], prompt([0]), BS)]))
    pub.drop(batch([]))
    started = time.monotonic()
    for k in range(1, 6):  # live batches keep coming meanwhile, and are held
        last = pub.publish(batch([stored([10 + k], prompt([k]), BS, 9 + k)]))
        time.sleep(0.02)
    wait_applied(sub, "pod-a", last, timeout=10)
    assert time.monotonic() - started < 5
    s = pod_stats(sub, "pod-a")
    assert (s["replay_failures"], s["replays"], s["lost_batches"]) == (1, 0, 1)
    assert s["duplicates"] > 0 and s["malformed"] > 0  # what the babbling server sent
    assert table.match_blocks(MODEL, -1, prompt([4, 5])) == {}  # block 1's parent was in the lost batch
    assert pod_stats(sub, "pod-a")["held_bytes"] == 0 and sub.running


def test_a_slow_replay_that_progresses_is_not_given_up(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True, shape="4")
    sub = subscribers(table, [pub.pod("pod-a")], replay_timeout=0.3).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([]))
    wait_applied(sub, "pod-a", first)
    original = pub.replay._message

    def slow(identity: bytes, seq: int, payload: bytes) -> List[bytes]:
        time.sleep(0.1)  # 6 batches at 0.1 s: longer than replay_timeout in all, never 0.3 s without one
        return original(identity, seq, payload)

    pub.replay._message = slow
    for k in range(6):
        pub.drop(batch([stored([20 + k], prompt([k]), BS, None if k == 0 else 19 + k)]))
    last = pub.publish(batch([]))
    wait_applied(sub, "pod-a", last, timeout=10)
    s = pod_stats(sub, "pod-a")
    assert (s["replays"], s["replay_failures"], s["lost_batches"], s["replayed_batches"]) == (1, 0, 0, 7)


# ---------------------------------------------------------------------------------------------------
# socket faults (Deliver 2)


def test_replay_socket_that_cannot_be_opened_is_retried_while_live_batches_flow(make_table, publishers):
    table = make_table()
    pub = publishers(replay=True)
    other = publishers()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 3)  # the two SUB sockets and one socket of ours: no room for a DEALER
    blocker = ctx.socket(zmq.PAIR)
    sub = VLLMSubscriber(table, [pub.pod("pod-a"), other.pod("pod-b")], model=MODEL, context=ctx,
                         replay_timeout=30)
    try:
        sub.start()
        connect(pub, sub, "pod-a")
        connect(other, sub, "pod-b")
        pub.publish(batch([stored([1], prompt([0]), BS)]))
        pub.drop(batch([stored([2], prompt([1]), BS, 1)]))
        pub.publish(batch([stored([3], prompt([2]), BS, 2)]))
        wait_for(lambda: pod_stats(sub, "pod-a")["socket_errors"] >= 2, what="retries of the replay socket")
        seq = other.publish(batch([stored([9], prompt([5]), BS)]))  # the other pod is not held up
        wait_applied(sub, "pod-b", seq)
        assert table.match_blocks(MODEL, -1, prompt([5])) == {"pod-b": 1}
        blocker.close(0)  # a socket is free again: the next retry opens the replay socket
        last = pub.publish(batch([]))
        wait_applied(sub, "pod-a", last, timeout=10)
        assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 3}
        s = pod_stats(sub, "pod-a")
        assert (s["replays"], s["lost_batches"], s["replay_failures"]) == (1, 0, 0)
    finally:
        sub.stop()
        blocker_close = locals().get("blocker")
        if blocker_close is not None:
            blocker_close.close(0)  # (idempotent) else term() would wait for it forever
        ctx.term()


def test_pod_keeps_ingesting_when_its_replay_socket_never_opens(make_table, publishers, caplog):
    caplog.set_level(logging.WARNING, logger="prefixindex.vllm")
    table = make_table()
    pub = publishers(replay=True)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 1)
    sub = VLLMSubscriber(table, [pub.pod("pod-a")], model=MODEL, context=ctx, replay_timeout=0.3)
    try:
        sub.start()
        connect(pub, sub, "pod-a")
        for k in range(20):  # every other batch dropped: 10 gaps, none replayable
            (pub.drop if k % 2 else pub.publish)(batch([stored([100 + k], prompt([k]), BS)]))
        last = pub.publish(batch([stored([200], prompt([30]), BS)]))
        wait_applied(sub, "pod-a", last, timeout=30)
        s = pod_stats(sub, "pod-a")
        assert s["socket_errors"] >= 1 and s["lost_batches"] == 10
        assert all(table.match_blocks(MODEL, -1, prompt([k])) == {"pod-a": 1} for k in range(0, 20, 2))
        assert any("cannot open its replay socket" in r.getMessage() for r in caplog.records)
    finally:
        sub.stop()
        blocker_close = locals().get("blocker")
        if blocker_close is not None:
            blocker_close.close(0)  # (idempotent) else term() would wait for it forever
        ctx.term()


def test_sub_socket_that_cannot_be_opened_is_retried(make_table, publishers):
    table = make_table()
    pub = publishers()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 1)
    blocker = ctx.socket(zmq.PAIR)
    sub = VLLMSubscriber(table, [pub.pod("pod-a")], model=MODEL, context=ctx)
    try:
        sub.start()  # not an error: the pod is added and its socket retried
        wait_for(lambda: pod_stats(sub, "pod-a")["socket_errors"] >= 1, what="a failed SUB socket")
        assert sub.pods == ["pod-a"] and pod_stats(sub, "pod-a")["subscribed"] is False
        blocker.close(0)
        connect(pub, sub, "pod-a")
        assert pod_stats(sub, "pod-a")["subscribed"] is True
    finally:
        sub.stop()
        blocker_close = locals().get("blocker")
        if blocker_close is not None:
            blocker_close.close(0)  # (idempotent) else term() would wait for it forever
        ctx.term()


# ---------------------------------------------------------------------------------------------------
# lifecycle (Deliver 3)


class _BlockingTable:
    """A table whose process_events blocks until released: the loop thread is stuck in a table call."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.block_size = table.block_size
        self.entered = threading.Event()
        self.release = threading.Event()

    def process_events(self, events: Any) -> None:
        self.entered.set()
        assert self.release.wait(30)
        self.table.process_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_stop_that_times_out_then_start_never_runs_two_loops(make_table, publishers):
    table = _BlockingTable(make_table())
    pub = publishers()
    sub = VLLMSubscriber(table, [pub.pod("pod-a")], model=MODEL, command_timeout=0.3)
    try:
        sub.start()
        pub.publish_until(table.entered.is_set, payload=batch([stored([1], prompt([0]), BS)]))
        with pytest.raises(TimeoutError):
            sub.stop(timeout=0.2)
        assert not sub.running
        with pytest.raises(RuntimeError, match="not stopped yet"):
            sub.start()  # waited command_timeout for the old loop, which is still in the table
        assert len(loop_threads()) == 1
        table.release.set()
        wait_for(lambda: not loop_threads(), what="the old loop to end")
        sub.start()
        assert len(loop_threads()) == 1
        connect(pub, sub, "pod-a")
    finally:
        table.release.set()
        sub.stop()
    assert not loop_threads()


def test_add_pod_that_times_out_leaves_no_ghost(make_table, publishers):
    table = _BlockingTable(make_table())
    a, b = publishers(), publishers()
    sub = VLLMSubscriber(table, [a.pod("pod-a")], model=MODEL, command_timeout=0.3)
    try:
        sub.start()
        a.publish_until(table.entered.is_set, payload=batch([stored([1], prompt([0]), BS)]))
        with pytest.raises(TimeoutError, match="nothing was done"):
            sub.add_pod(b.pod("pod-b"))
        with pytest.raises(TimeoutError):
            sub.remove_pod("pod-a")
        assert sub.pods == ["pod-a"]
        table.release.set()
        for _ in range(30):  # pod-b's publisher sends, and nothing of it reaches the index
            b.publish(batch([stored([5], prompt([7]), BS)]))
            time.sleep(0.01)
        wait_for(lambda: pod_stats(sub, "pod-a")["batches"] >= 1, what="pod-a's batch")
        assert sub.pods == ["pod-a"] and "pod-b" not in sub.stats()["pods"]
        assert table.match_blocks(MODEL, -1, prompt([7])) == {}
        sub.add_pod(b.pod("pod-b"))  # and now for real
        connect(b, sub, "pod-b")
        wait_applied(sub, "pod-b", b.publish(batch([stored([5], prompt([7]), BS)])))
        assert table.match_blocks(MODEL, -1, prompt([7])) == {"pod-b": 1}
    finally:
        table.release.set()
        sub.stop()


def test_start_stop_and_pod_changes_from_many_threads(make_table, publishers):
    table = make_table()
    pubs = [publishers() for _ in range(4)]
    sub = VLLMSubscriber(table, model=MODEL)
    errors: List[BaseException] = []

    def churn(i: int) -> None:
        try:
            for round_ in range(15):
                name = f"pod-{i}"
                sub.add_pod(pubs[i].pod(name))
                sub.remove_pod(name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def flip() -> None:
        try:
            for _ in range(15):
                try:
                    sub.start()
                except RuntimeError:
                    pass
                sub.stop()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)] + [threading.Thread(target=flip)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sub.pods == [] and len(loop_threads()) <= 1
    sub.stop()
    assert not loop_threads()


# ---------------------------------------------------------------------------------------------------
# bytes (Deliver 4)


def test_held_batches_are_bounded_in_bytes(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True, mute=True)
    sub = subscribers(table, [pub.pod("pod-a")], replay_timeout=1.0, max_held_bytes=200_000).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([]))
    wait_applied(sub, "pod-a", first)
    pub.drop(batch([]))
    big = batch([stored([1], prompt([0]), BS)] + [{"type": "Padding", "x": b"\0" * 50_000}])
    for _ in range(10):  # 10 x 50 kB held: only 3 fit the budget
        last = pub.publish(big)
    wait_for(lambda: pod_stats(sub, "pod-a")["held_dropped"] == 7, what="the budget to be full")
    assert pod_stats(sub, "pod-a")["held_bytes"] <= 200_000
    wait_for(lambda: pod_stats(sub, "pod-a")["replay_failures"] == 1, what="the replay to be given up")
    after = pub.publish(batch([]))
    wait_applied(sub, "pod-a", after, timeout=10)
    s = pod_stats(sub, "pod-a")
    assert s["held_bytes"] == 0 and s["unknown_events"] == 3  # the held ones were applied
    # the dropped ones became a gap and were replayed from... a mute server: lost in the end
    wait_for(lambda: pod_stats(sub, "pod-a")["replay_failures"] == 2, timeout=10, what="the second replay")
    final = pub.publish(batch([]))
    wait_applied(sub, "pod-a", final, timeout=10)
    assert pod_stats(sub, "pod-a")["lost_batches"] == 1 + 7


def test_message_over_max_message_bytes_is_not_taken(make_table, publishers, subscribers):
    """libzmq drops the connection for good on an oversized message; a fresh socket heals it."""
    table = make_table()
    pub = publishers(replay=True)
    sub = subscribers(table, [pub.pod("pod-a")], max_message_bytes=100_000, resubscribe_idle=0.5,
                      replay_timeout=0.5).start()
    connect(pub, sub, "pod-a")
    big = pub.publish(batch([{"type": "Padding", "x": b"\0" * 200_000}]))
    pub.publish_until(lambda: pod_stats(sub, "pod-a")["last_seq"] > big, timeout=20)
    last = pub.publish(batch([]))
    wait_applied(sub, "pod-a", last, timeout=10)
    s = pod_stats(sub, "pod-a")
    assert s["unknown_events"] == 0  # never received, not even by the replay (its socket has the limit too)
    assert s["resubscribes"] >= 1 and s["gaps"] >= 1
    assert s["lost_batches"] >= 1 and sub.running


# ---------------------------------------------------------------------------------------------------
# scale (Deliver 5), IPv6 (Deliver 7)


def test_ten_thousand_pods_and_one_more_is_a_value_error():
    code = textwrap.dedent(f"""
        import resource, sys, time
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import zmq
        from prefixindex import SyncPrefixHashTable
        from prefixindex.vllm import Pod, VLLMSubscriber
        from test_vllm_decode import batch, stored
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        table = SyncPrefixHashTable(block_size=4, background_eviction=False)
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB); pub.bind("tcp://127.0.0.1:*")
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        sub = VLLMSubscriber(table, model="m").start()
        for i in range(9_999):  # publishers that are not up: ZeroMQ keeps retrying them
            sub.add_pod(Pod(f"pod-{{i}}", "tcp://127.0.0.1:9"))
        sub.add_pod(Pod("live", endpoint))
        try:
            sub.add_pod(Pod("one-too-many", endpoint))
        except ValueError as exc:
            print("ValueError:", exc)
        seq = 0
        deadline = time.monotonic() + 60
        while sub.stats()["pods"]["live"]["batches"] == 0 and time.monotonic() < deadline:
            pub.send_multipart([b"", seq.to_bytes(8, "big"), batch([stored([1], [1, 2, 3, 4], 4)])]); seq += 1
            time.sleep(0.01)
        print("pods", len(sub.pods), "live", table.match_blocks("m", -1, [1, 2, 3, 4]))
        t = time.perf_counter(); sub.remove_pod("pod-5"); print("removed", len(sub.pods))
        sub.stop(); pub.close(0); ctx.term()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ValueError: this subscriber already has max_pods=10000 pods" in out.stdout
    assert "pods 10000 live {'live': 1}" in out.stdout
    assert "removed 9999" in out.stdout


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback address (::1)")
def test_ipv6_endpoints(make_table, ctx, subscribers):
    table = make_table()
    pub = Publisher.__new__(Publisher)
    pub.ctx, pub.topic, pub.seq, pub.keep, pub.payloads = ctx, b"kv-events", 0, 10_000, {}
    pub._lock, pub._buffer, pub.replay = threading.Lock(), [], None
    pub.pub = ctx.socket(zmq.PUB)
    pub.pub.setsockopt(zmq.LINGER, 0)
    pub.pub.setsockopt(zmq.IPV6, 1)
    pub.pub.bind("tcp://[::1]:*")
    pub.endpoint = pub.pub.getsockopt_string(zmq.LAST_ENDPOINT)
    assert pub.endpoint.startswith("tcp://[::1]:")
    try:
        sub = subscribers(table, [Pod("pod-6", pub.endpoint, topic="kv-events")]).start()
        connect(pub, sub, "pod-6")
        seq = pub.publish(batch([stored([1], prompt([0]), BS)]))
        wait_applied(sub, "pod-6", seq)
        assert table.match_blocks(MODEL, -1, prompt([0])) == {"pod-6": 1}
    finally:
        pub.pub.close(0)


# ---------------------------------------------------------------------------------------------------
# LoRA over the wire (Deliver 6), placeholders and ranks (Deliver 8), one bad event per batch


def test_removal_reaches_only_the_adapter_that_holds_the_block(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")], lora_map={"sql": 3, "chat": 4}).start()
    connect(pub, sub, "pod-a")
    seq = pub.publish(batch([stored([1], prompt([0]), BS, lora_name="sql"), stored([2], prompt([0]), BS,
                                                                                   lora_name="chat")]))
    wait_applied(sub, "pod-a", seq)
    seq = pub.publish(batch([removed([1])]))
    wait_applied(sub, "pod-a", seq)
    assert table.match_blocks(MODEL, 3, prompt([0])) == {}
    assert table.match_blocks(MODEL, 4, prompt([0])) == {"pod-a": 1}
    assert pod_stats(sub, "pod-a")["blocks_removed"] == 1


def test_placeholder_stores_over_the_wire(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")], mediums=None).start()
    connect(pub, sub, "pod-a")
    seq = pub.publish(batch([stored([5, 6], [], 0, medium="CPU"), stored([1], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", seq)
    s = pod_stats(sub, "pod-a")
    assert (s["placeholders"], s["malformed"], s["events"]) == (1, 0, 1)


def test_data_parallel_ranks_are_pods_named_by_a_rule(make_table, publishers, subscribers):
    assert [p.name for p in data_parallel_pods("srv", "tcp://10.0.0.1:5557", 3,
                                               replay_endpoint="tcp://10.0.0.1:5558")] == [
        "srv/dp0", "srv/dp1", "srv/dp2"]
    pods = data_parallel_pods("srv", "tcp://[fd00::1]:6000", 2, rank_name=lambda n, r: f"{n}-rank{r}",
                              first_rank=4, topic="kv")
    assert [(p.name, p.endpoint, p.data_parallel_rank, p.topic) for p in pods] == [
        ("srv-rank4", "tcp://[fd00::1]:6000", 4, "kv"), ("srv-rank5", "tcp://[fd00::1]:6001", 5, "kv")]
    with pytest.raises(ValueError, match="same name"):
        data_parallel_pods("srv", "tcp://h:1", 2, rank_name="{name}")
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [Pod("srv/dp1", pub.endpoint, topic="kv-events", data_parallel_rank=1)]).start()
    pub.publish_until(lambda: pod_stats(sub, "srv/dp1")["batches"] >= 1, payload=batch([], rank=1))
    seq = pub.publish(batch([stored([1], prompt([0]), BS)], rank=0))  # not this rank's: skipped
    seq = pub.publish(batch([stored([2], prompt([1]), BS)], rank=None))  # no rank given: this publisher's
    wait_applied(sub, "srv/dp1", seq)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}
    assert table.match_blocks(MODEL, -1, prompt([1])) == {"srv/dp1": 1}
    assert pod_stats(sub, "srv/dp1")["other_rank"] == 1


class _PickyTable:
    """A table that rejects any batch holding a store into lora_id 13 (as the real one rejects a bad event)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.block_size = table.block_size
        self.calls = 0

    def process_events(self, events: Any) -> None:
        self.calls += 1
        events = list(events)
        for i, ev in enumerate(events):
            if getattr(ev, "lora_id", None) == 13:
                raise ValueError(f"events[{i}]: lora 13 is refused")
        self.table.process_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_one_event_the_table_rejects_does_not_lose_the_batch(make_table, publishers, subscribers):
    table = _PickyTable(make_table())
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    calls = table.calls
    seq = pub.publish(batch([stored([1], prompt([0]), BS), stored([2], prompt([1]), BS, lora_id=13),
                             stored([3], prompt([1]), BS, 1)]))
    wait_applied(sub, "pod-a", seq)
    assert table.match_blocks(MODEL, -1, prompt([0, 1])) == {"pod-a": 2}
    s = pod_stats(sub, "pod-a")
    assert (s["malformed"], s["events"], s["blocks_stored"]) == (1, 2, 2)
    assert table.calls - calls == 1 + 3  # the batch, then event by event


def test_log_lines_do_not_repeat_the_logger_name(make_table, publishers, subscribers, caplog):
    caplog.set_level(logging.INFO, logger="prefixindex.vllm")
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-x")]).start()
    connect(pub, sub, "pod-x")
    pub.send_raw([pub.topic])
    last = pub.publish(batch([]))
    wait_applied(sub, "pod-x", last)
    messages = [r.getMessage() for r in caplog.records if r.name == "prefixindex.vllm"]
    assert any("malformed" in m for m in messages)
    assert not [m for m in messages if "prefixindex.vllm" in m]


def test_subscribe_help_without_pyzmq_or_msgspec():
    code = ("import sys; sys.modules['zmq'] = None; sys.modules['msgspec'] = None\n"
            "from prefixindex.__main__ import main\n"
            "try:\n    main(['subscribe', '--help'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "try:\n    main(['subscribe', '--pod', 'p=tcp://h:1', '--model', 'm'])\n"
            "except SystemExit as e:\n    print('exit', e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "usage: python -m prefixindex subscribe" in out.stdout and "exit 0" in out.stdout
    assert "exit 2" in out.stdout
    assert "python -m pip install -e '.[vllm]'" in out.stderr
