"""The positions a subscriber's save records (docs/snapshot.md, "Subscriber positions"), both backends:

- A save on another thread while the loop thread is in the middle of a batch (decoding it, or inside
  the table call) names only batches the table holds, and pairs each pod's seq with that batch's ts.
  The apply is stopped at those points by a hook that waits for an event, so no timing decides it.
- A batch whose table call raises does not move the position: a resume from it replays that batch.
- A batch whose ts is NaN or infinite is recorded with ts None, so later saves still work; a resume
  from it asks from the next seq, as for any position without a ts (docs/vllm.md, V12).
"""

from __future__ import annotations

import io
import threading
from typing import Any, Callable

import pytest

from prefixindex._subscriber_snapshot import load_subscriber_snapshot
from prefixindex.vllm import Pod, VLLMSubscriber

from test_vllm_decode import batch, stored
from test_vllm_zmq import (BS, MODEL, connect, ctx, pod_stats, prompt, publishers,  # noqa: F401
                           subscribers, wait_applied)

LIVENESS = 30.0  # seconds: only a hang fails
ENDPOINT = "tcp://127.0.0.1:1"  # never connected: these subscribers are not started


def _subscriber(table: Any, *names: str) -> VLLMSubscriber:
    return VLLMSubscriber(table, [Pod(name, ENDPOINT) for name in names], model=MODEL)


def _block(k: int, ts: float) -> bytes:
    """Batch k: one store of block k, chained on block k - 1 (a prompt of blocks 0..k matches k + 1)."""
    return batch([stored([100 + k], prompt([k]), BS, None if k == 0 else 99 + k)], ts=ts)


def _position(seq: int, ts: Any) -> dict:
    return {"seq": seq, "publisher": {"endpoint": ENDPOINT, "ts": ts}}


def _load(backend: Any, data: bytes) -> Any:
    return load_subscriber_snapshot(backend.SyncPrefixHashTable, io.BytesIO(data), {"background_eviction": False})


class _Pause:
    """Wraps a function so that its first call waits, after saying so, until ``release`` is set."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, *args: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(LIVENESS)
        return self.function(*args)


class _TableCall:
    """The stream's view of the table, whose process_events is ``process_events``; the rest is the table's."""

    def __init__(self, table: Any, process_events: Callable[..., Any]) -> None:
        self._table, self.process_events = table, process_events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


@pytest.mark.parametrize("where", ["decode", "table call"])
def test_a_save_in_the_middle_of_a_batch_names_only_what_the_table_holds(make_table, backend, where):
    table = make_table()
    sub = _subscriber(table, "pod-a")
    stream = sub._streams["pod-a"]
    stream.apply(6, _block(0, ts=1006.0))
    if where == "decode":  # where the saved pair was (7, batch 6's ts): a resume then refilled the pod
        pause = _Pause(stream.converter.read_plain)
        stream.converter.read_plain = pause
    else:  # where the saved seq was 7 with a table lacking batch 7: a resume never applied it
        pause = _Pause(table.process_events)
        stream.table = _TableCall(table, pause)
    worker = threading.Thread(target=stream.apply, args=(7, _block(1, ts=1007.0)))
    worker.start()
    try:
        assert pause.entered.wait(LIVENESS)
        out = io.BytesIO()
        saved = sub.save(out)  # on this thread, while the loop's stand-in is stopped mid-batch
    finally:
        pause.release.set()
        worker.join(LIVENESS)
    assert saved == {"pod-a": _position(6, 1006.0)}
    loaded, positions = _load(backend, out.getvalue())
    assert positions == saved
    assert loaded.match_blocks(MODEL, -1, prompt([0, 1])) == {"pod-a": 1}  # batch 6 in, batch 7 not yet
    assert sub.positions() == {"pod-a": _position(7, 1007.0)}  # once batch 7 is in
    assert table.match_blocks(MODEL, -1, prompt([0, 1])) == {"pod-a": 2}
    loaded.close()


def test_a_batch_whose_table_call_raises_does_not_move_the_position(make_table, backend):
    table = make_table()
    sub = _subscriber(table, "pod-a")
    stream = sub._streams["pod-a"]
    stream.apply(6, _block(0, ts=1006.0))

    def failing(events: Any) -> None:
        raise MemoryError("no room for the batch")  # not a rejected event: the whole call failed

    stream.table = _TableCall(table, failing)
    with pytest.raises(MemoryError):
        stream.apply(7, _block(1, ts=1007.0))
    assert sub.positions() == {"pod-a": _position(6, 1006.0)}
    out = io.BytesIO()
    assert sub.save(out) == {"pod-a": _position(6, 1006.0)}  # a resume replays batch 7
    stream.table = table
    stream.apply(8, _block(2, ts=1008.0))  # the live subscriber goes on past the failed batch
    assert sub.positions() == {"pod-a": _position(8, 1008.0)}
    assert table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 1}


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_a_ts_that_is_not_finite_is_saved_as_unknown(make_table, backend, ts):
    table = make_table()
    sub = _subscriber(table, "good", "odd")
    sub._streams["good"].apply(0, _block(0, ts=1733040000.5))
    sub._streams["odd"].apply(0, _block(0, ts=ts))
    expected = {"good": _position(0, 1733040000.5), "odd": _position(0, None)}
    assert sub.positions() == expected
    out = io.BytesIO()
    assert sub.save(out) == expected  # every pod's save, not only the odd one's, failed before
    loaded, positions = _load(backend, out.getvalue())
    assert positions == expected and loaded.snapshot() == table.snapshot()
    sub._streams["odd"].apply(1, _block(1, ts=1733040001.5))  # a finite ts later is recorded again
    assert sub.positions()["odd"] == _position(1, 1733040001.5)
    loaded.close()


def test_a_resume_after_a_batch_with_a_nan_ts_asks_from_the_next_seq(make_table, backend, tmp_path, publishers,
                                                                   subscribers):
    table = make_table()
    pub = publishers(replay=True)
    sub = subscribers(table, [pub.pod("pod-a")]).start()
    connect(pub, sub, "pod-a")
    pub.publish(_block(0, ts=1000.0))
    last = pub.publish(_block(1, ts=float("nan")))
    wait_applied(sub, "pod-a", last)
    path = tmp_path / "sub.pisnap"
    assert sub.save(str(path))["pod-a"] == {"seq": last, "publisher": {"endpoint": pub.pod("pod-a").endpoint,
                                                                       "ts": None}}
    sub.stop()
    final = pub.publish(_block(2, ts=1002.0))
    again = VLLMSubscriber.from_snapshot(str(path), [pub.pod("pod-a")], table_class=backend.SyncPrefixHashTable,
                                         overrides={"background_eviction": False}, model=MODEL, poll_interval=0.01)
    try:
        again.start()
        wait_applied(again, "pod-a", final)
        assert again.table.match_blocks(MODEL, -1, prompt([0, 1, 2])) == {"pod-a": 3}
        s = pod_stats(again, "pod-a")
        assert (s["resumes"], s["resume_refills"], s["lost_batches"]) == (1, 0, 0)
        assert pub.replay.requests == [last + 1]  # no ts to compare: asked from seq + 1, taken on trust
    finally:
        again.stop()
        again.table.close()


@pytest.mark.parametrize("resume, words", [
    ([("pod-a", 1)], "resume must be a mapping of pod name -> position, not list"),
    ({"pod-a": 3}, "resume['pod-a'] must be a mapping with an int 'seq' >= 0"),
    ({"pod-a": {"seq": -1}}, "resume['pod-a'] must be a mapping with an int 'seq' >= 0"),
    ({"pod-a": {"seq": True}}, "resume['pod-a'] must be a mapping with an int 'seq' >= 0"),
    ({"pod-a": _position(3, "1.5")}, "resume['pod-a']['publisher']['ts'] must be a finite number or None, got '1.5'"),
    ({"pod-a": _position(3, True)}, "resume['pod-a']['publisher']['ts'] must be a finite number or None, got True"),
    # no batch's ts can be one of these (they are recorded as None), and a save could not write them back
    *[({"pod-a": _position(3, bad)}, f"must be a finite number or None, got {bad}")
      for bad in (float("nan"), float("inf"), float("-inf"))],
])
def test_a_resume_given_by_hand_is_checked(make_table, resume, words):
    table = make_table()
    with pytest.raises((TypeError, ValueError)) as info:
        VLLMSubscriber(table, [Pod("pod-a", ENDPOINT)], model=MODEL, resume=resume)
    assert words in str(info.value)
    sub = _subscriber(table, "pod-a")
    with pytest.raises((TypeError, ValueError)) as info:
        sub.start(resume=resume)  # refused before anything is connected
    assert words in str(info.value) and not sub.running


def test_a_resume_given_by_hand_takes_ints_floats_and_none(make_table):
    positions = {"a": _position(3, 1007), "b": _position(0, 1007.5), "c": _position(9, None), "d": {"seq": 4}}
    sub = VLLMSubscriber(make_table(), [Pod(name, ENDPOINT) for name in "abcd"], model=MODEL, resume=positions)
    assert sub._resume == {"a": {"seq": 3, "publisher": {"ts": 1007}}, "b": {"seq": 0, "publisher": {"ts": 1007.5}},
                           "c": {"seq": 9, "publisher": {"ts": None}}, "d": {"seq": 4, "publisher": {"ts": None}}}
