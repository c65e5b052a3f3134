"""Warm restarts (issue 12, Deliver 3, the subscriber's side): ``positions()`` of one run, and a later
run that starts from them with ``resume=``. The index kept between the runs stands for a snapshot
taken with the positions. Stand-in publishers from test_vllm_zmq.py: one that moved on, one that
restarted, one whose replay buffer no longer reaches back to the saved position."""

from __future__ import annotations

import pytest

from prefixindex.vllm import VLLMSubscriber

from test_vllm_decode import batch, stored
from test_vllm_zmq import (BS, MODEL, connect, ctx, pod_stats, prompt, publishers,  # noqa: F401
                           subscribers, wait_applied, wait_for)


def _first_run(table, pub, subscribers, n=3):
    """Subscribe, apply n stores (blocks 0..n-1 chained), return the positions and the seq of the last."""
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    for k in range(n):
        last = pub.publish(batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)]))
    wait_applied(sub, "pod-a", last)
    positions = sub.positions()
    sub.stop()
    return positions, last


@pytest.mark.parametrize("shape", ["3", "4"])
def test_resume_from_a_publisher_that_moved_on(make_table, publishers, subscribers, shape):
    table = make_table()
    pub = publishers(replay=True, shape=shape)
    positions, last = _first_run(table, pub, subscribers)
    assert positions["pod-a"]["seq"] == last
    assert positions["pod-a"]["publisher"]["endpoint"] == pub.endpoint
    assert isinstance(positions["pod-a"]["publisher"]["ts"], float)
    for k in range(3, 6):  # published while no subscriber runs
        pub.publish(batch([stored([100 + k], prompt([k]), BS, 99 + k)]))
    stored_before = table.stats()["events_block_stored"]
    sub = subscribers(table, [pub.pod("pod-a")], resume=positions).start()
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt(list(range(6)))) == {"pod-a": 6}, what="the delta")
    s = pod_stats(sub, "pod-a")
    assert pub.replay.requests == [last]  # the saved seq itself, to compare its batch with the one applied
    assert (s["resumes"], s["resume_refills"], s["restarts"], s["lost_batches"]) == (1, 0, 0, 0)
    assert s["replayed_batches"] == 3
    assert table.stats()["events_block_stored"] == stored_before + 3  # only the delta was applied
    assert table.stats()["orphan_blocks"] == 0


def test_resume_from_a_publisher_that_restarted(make_table, publishers, subscribers):
    table = make_table()
    old = publishers(replay=True)
    endpoint, replay_endpoint = old.endpoint, old.replay_endpoint
    positions, last = _first_run(table, old, subscribers)
    old.close()
    new = publishers(endpoint=endpoint, replay=True, replay_bind=replay_endpoint)  # same ports, seq from 0
    for k in range(last + 3):  # it is already past the saved seq: only the batch at that seq tells
        new.publish(batch([stored([500 + k], prompt([20 + k]), BS, None if k == 0 else 499 + k)]))
    sub = subscribers(table, [new.pod("pod-a")], resume=positions).start()
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([20 + k for k in range(last + 3)]))
             == {"pod-a": last + 3}, what="the refill")
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {}  # the old publisher's blocks are gone
    s = pod_stats(sub, "pod-a")
    assert new.replay.requests == [last, 0]
    assert (s["resumes"], s["resume_refills"], s["lost_batches"]) == (0, 1, 0)


def test_resume_from_a_restarted_publisher_that_is_not_there_yet(make_table, publishers, subscribers):
    table = make_table()
    old = publishers(replay=True, shape="4")
    endpoint, replay_endpoint = old.endpoint, old.replay_endpoint
    positions, last = _first_run(table, old, subscribers, n=5)
    old.close()
    new = publishers(endpoint=endpoint, replay=True, replay_bind=replay_endpoint, shape="4")
    new.publish(batch([stored([900], prompt([40]), BS)]))  # seq 0: below the saved seq
    sub = subscribers(table, [new.pod("pod-a")], resume=positions).start()
    wait_for(lambda: pod_stats(sub, "pod-a")["resume_refills"] == 1, what="the refill")
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([40])) == {"pod-a": 1}, what="seq 0 replayed")
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}


def test_resume_when_the_buffer_no_longer_reaches(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True, keep=3)
    positions, last = _first_run(table, pub, subscribers)
    for k in range(3, 10):  # more than the publisher keeps
        pub.publish(batch([stored([100 + k], prompt([k]), BS, 99 + k)]))
    sub = subscribers(table, [pub.pod("pod-a")], resume=positions).start()
    wait_for(lambda: pod_stats(sub, "pod-a")["resume_refills"] == 1, what="the refill")
    wait_for(lambda: pod_stats(sub, "pod-a")["last_seq"] == pub.seq - 1 and not pod_stats(sub, "pod-a")["replaying"],
             what="the buffer replayed")
    s = pod_stats(sub, "pod-a")
    assert pub.replay.requests == [last, 0]
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}  # cleared: what came between is unknown
    assert s["replayed_batches"] == 3 and s["lost_batches"] == pub.seq - 3
    assert table.stats()["orphan_blocks"] == 3  # the buffered chain hangs off a parent that was not replayed


def test_resume_without_the_ts_asks_from_the_next_seq(make_table, publishers, subscribers):
    table = make_table()
    pub = publishers(replay=True)
    positions, last = _first_run(table, pub, subscribers)
    pub.publish(batch([stored([200], prompt([3]), BS, 102)]))
    sub = subscribers(table, [pub.pod("pod-a")]).start(resume={"pod-a": {"seq": last}})
    wait_for(lambda: table.match_blocks(MODEL, -1, prompt([0, 1, 2, 3])) == {"pod-a": 4}, what="the delta")
    assert pub.replay.requests == [last + 1]
    assert pod_stats(sub, "pod-a")["resumes"] == 1


def test_resume_then_a_live_seq_below_it_is_a_restart(make_table, publishers, subscribers):
    table = make_table()
    old = publishers()  # no replay endpoint: the saved position cannot be checked up front
    endpoint = old.endpoint
    positions, last = _first_run(table, old, subscribers, n=3)
    old.close()
    new = publishers(endpoint=endpoint)
    sub = subscribers(table, [new.pod("pod-a")], resume=positions).start()
    new.publish_until(lambda: pod_stats(sub, "pod-a")["restarts"] == 1)
    assert table.match_blocks(MODEL, -1, prompt([0])) == {}


@pytest.mark.parametrize("resume,error", [
    ([1, 2], TypeError), ({"p": 3}, ValueError), ({"p": {"seq": -1}}, ValueError),
    ({"p": {"seq": "1"}}, ValueError), ({"p": {"seq": 1, "publisher": {"ts": "x"}}}, ValueError),
])
def test_bad_positions_are_refused(make_table, resume, error):
    with pytest.raises(error):
        VLLMSubscriber(make_table(), model=MODEL, resume=resume)
    sub = VLLMSubscriber(make_table(), model=MODEL)
    with pytest.raises(error):
        sub.start(resume=resume)
    assert not sub.running
