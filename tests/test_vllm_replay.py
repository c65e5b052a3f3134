"""Sequence numbers over real sockets: gaps replayed in order (both reply shapes), replays that skip,
time out or come up short, restarted publishers, stop and start. The stand-in publisher and the
fixtures are test_vllm_zmq.py's."""

from __future__ import annotations

import time

import pytest

from prefixindex.vllm import Pod

from test_vllm_decode import batch, stored
from test_vllm_zmq import (BS, MODEL, connect, ctx, pod_stats, prompt, publishers,  # noqa: F401
                           subscribers, wait_applied, wait_for)


@pytest.mark.parametrize("shape", ["3", "4"])
def test_dropped_messages_are_replayed_in_order(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([stored([10], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", first)
    pub.drop(batch([stored([11], prompt([1]), BS, 10)]))
    pub.drop(batch([stored([12], prompt([2]), BS, 11, enc="array")]))
    last = pub.publish(batch([stored([13], prompt([3]), BS, 12)]))
    wait_applied(sub, "pod-a", last)
    # without the replay the last store would be an orphan (its parent came in a dropped batch)
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2, 3])) == {"pod-a": 4}
    assert table.stats()["orphan_blocks"] == 0
    s = pod_stats(sub, "pod-a")
    assert pub.replay.requests == [first + 1]
    assert (s["gaps"], s["replays"], s["replayed_batches"], s["lost_batches"], s["replay_failures"]) == (1, 1, 3, 0, 0)
    assert s["duplicates"] == 1  # the live copy of the last batch, already applied from the replay


@pytest.mark.parametrize("shape", ["3", "4"])
def test_replay_skips_batches_already_applied(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape, ignore_start=True)  # answers with its whole buffer
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([stored([10], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", first)
    before = table.stats()["events_block_stored"]
    pub.drop(batch([stored([11], prompt([1]), BS, 10)]))
    last = pub.publish(batch([stored([12], prompt([2]), BS, 11)]))
    wait_applied(sub, "pod-a", last)
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 3}
    assert table.stats()["events_block_stored"] == before + 2  # nothing applied twice
    s = pod_stats(sub, "pod-a")
    assert s["replayed_batches"] == 2 and s["lost_batches"] == 0
    assert s["duplicates"] == first + 1 + 1  # every batch up to `first`, and the live copy of `last`


def test_gap_without_replay_endpoint_is_counted_as_lost(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    pub.publish(batch([stored([10], prompt([0]), BS)]))
    pub.drop(batch([stored([11], prompt([1]), BS, 10)]))
    pub.drop(batch([]))
    last = pub.publish(batch([stored([12], prompt([2]), BS, 11)]))
    wait_applied(sub, "pod-a", last)
    s = pod_stats(sub, "pod-a")
    assert (s["gaps"], s["lost_batches"], s["replays"]) == (1, 2, 0)
    assert table.stats()["orphan_blocks"] == 1  # its parent was in a lost batch
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 1}


def test_replay_that_gets_no_answer_is_given_up(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True, mute=True)
    sub = subscribers(table, [pub.pod("pod-a")], replay_timeout=0.3).start()
    connect(pub, sub, "pod-a")
    pub.publish(batch([stored([10], prompt([0]), BS)]))
    pub.drop(batch([]))
    last = pub.publish(batch([stored([12], prompt([2]), BS)]))
    started = time.monotonic()
    wait_applied(sub, "pod-a", last)
    assert time.monotonic() - started < 3.0
    s = pod_stats(sub, "pod-a")
    assert (s["gaps"], s["replay_failures"], s["replays"], s["lost_batches"]) == (1, 1, 0, 1)
    assert table.match_blocks(MODEL, -1, prompt([2])) == {"pod-a": 1}  # the held-back batch was applied
    assert sub.running


@pytest.mark.parametrize("shape", ["3", "4"])
def test_replay_buffer_that_lost_part_of_the_gap(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape, keep=2)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    first = pub.publish(batch([]))
    wait_applied(sub, "pod-a", first)
    pub.drop(batch([]))
    pub.drop(batch([]))
    pub.drop(batch([stored([20], prompt([4]), BS)]))
    last = pub.publish(batch([stored([21], prompt([5]), BS, 20)]))
    wait_applied(sub, "pod-a", last)
    s = pod_stats(sub, "pod-a")
    assert (s["gaps"], s["replays"], s["replayed_batches"], s["lost_batches"]) == (1, 1, 2, 2)
    assert table.match_blocks(MODEL, -1, prompt([4, 5])) == {"pod-a": 2}


def test_restarted_publisher_clears_the_pod_first(make_table, publishers, subscribers):
    table = make_table()
    old = publishers(start_seq=1000)
    endpoint = old.endpoint
    sub = subscribers(table, [Pod("pod-a", endpoint, topic="kv-events")]).start()
    connect(old, sub, "pod-a")
    seq = old.publish(batch([stored([1, 2], prompt([0, 1]), BS)]))
    wait_applied(sub, "pod-a", seq)
    assert table.match_blocks(MODEL, -1, prompt([0, 1])) == {"pod-a": 2}
    old.close()
    new = publishers(endpoint=endpoint)  # same port, seq from 0 again, a new cache
    new.publish_until(lambda: pod_stats(sub, "pod-a")["restarts"] >= 1,
                      payload=batch([stored([1, 3], prompt([5, 6]), BS)]))
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([5, 6])) == {"pod-a": 2}, what="the new store")
    # the old publisher's blocks are gone although the new one reused engine hash 1 for other content
    assert table.match_blocks(MODEL, -1, prompt([0, 1])) == {}
    s = pod_stats(sub, "pod-a")
    assert s["restarts"] == 1 and s["last_seq"] < 1000


@pytest.mark.parametrize("shape", ["3", "4"])
def test_restart_then_replay_from_zero(make_table, publishers, subscribers, shape):
    table = make_table()
    old = publishers(start_seq=500, replay=True, shape=shape)
    endpoint, replay_endpoint = old.endpoint, old.replay_endpoint
    sub = subscribers(table, [old.pod("pod-a")]).start()
    connect(old, sub, "pod-a")
    seq = old.publish(batch([stored([1], prompt([0]), BS)]))
    wait_applied(sub, "pod-a", seq)
    old.close()
    new = publishers(endpoint=endpoint, replay=True, shape=shape, replay_bind=replay_endpoint)  # vLLM restarted, same ports
    new.drop(batch([stored([7], prompt([9]), BS)]))  # seq 0, published before the subscriber reconnected
    new.publish_until(lambda: pod_stats(sub, "pod-a")["restarts"] >= 1)
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([9])) == {"pod-a": 1}, what="seq 0 replayed")
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}
    s = pod_stats(sub, "pod-a")
    assert new.replay.requests == [0]
    assert (s["restarts"], s["lost_batches"], s["replay_failures"]) == (1, 0, 0)


@pytest.mark.parametrize("shape", ["3", "4"])
def test_large_batches_live_held_and_replayed(make_table, publishers, subscribers, shape):
    """Batches over 64 KiB are handed on without a copy (a view of ZeroMQ's frame): live, held
    back during a replay, and replayed."""
    table = make_table(max_prefixes_per_context=100_000)
    pub = publishers(replay=True, shape=shape)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    n = 6000  # 6,000 blocks of 4 tokens, 9-byte hashes: about 100 kB of msgpack per batch
    chains = [[(c + 1) << 40 | k for k in range(n)] for c in range(3)]
    tokens = [[t for k in range(n) for t in (c, k, k >> 8, 7)] for c in range(3)]
    payloads = [batch([stored(chains[c], tokens[c], BS)]) for c in range(3)]
    assert all(len(p) > 65_536 for p in payloads)
    first = pub.publish(payloads[0])
    wait_applied(sub, "pod-a", first)
    pub.drop(payloads[1])  # replayed
    last = pub.publish(payloads[2])  # held back during the replay
    wait_applied(sub, "pod-a", last)
    for c in range(3):
        assert table.match_blocks(MODEL, -1, tokens[c]) == {"pod-a": n}
    s = pod_stats(sub, "pod-a")
    assert (s["replays"], s["lost_batches"], s["malformed"], s["blocks_stored"]) == (1, 0, 0, 3 * n)
