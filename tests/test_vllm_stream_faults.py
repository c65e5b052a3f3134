"""One pod's stream driven directly (no sockets), where what a peer sends once broke it:

- a publisher that restarts after a resume had to refill the pod (no live seq seen since that refill's
  replay) is still a restart, and a late live copy of a batch that replay applied is still a duplicate;
- a value nested deeper than msgspec decodes is one malformed batch, live or held during a replay that
  is given up, and never takes the batches after it along.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import msgspec

from prefixindex.vllm import Pod
from prefixindex.vllm._convert import PodConverter
from prefixindex.vllm._stream import HeldBudget, PodStream

from test_vllm_decode import batch, stored

BS = 4
MODEL = "model"
DEEP = 3000  # levels of nesting: well past msgspec's depth limit


class _Transport:
    """Records the replays the stream asks for; the test answers them itself."""

    def __init__(self) -> None:
        self.requests: List[int] = []

    def request_replay(self, stream: PodStream, start: int) -> None:
        self.requests.append(start)

    def cancel_replay(self, stream: PodStream) -> None:
        pass


def _stream(table: Any) -> Tuple[PodStream, _Transport]:
    stream = PodStream(Pod("pod", "tcp://127.0.0.1:1", replay_endpoint="tcp://127.0.0.1:2"),
                       PodConverter("pod", MODEL, BS), table, HeldBudget(1 << 30), replay_timeout=1.0,
                       replay_on_connect=False, model=MODEL)
    transport = _Transport()
    stream.transport = transport
    return stream, transport


def _store(block: int, parent: Any = None) -> Any:
    return stored([100 + block], [block] * BS, BS, parent)


def _replayed(stream: PodStream, seq: int, payload: bytes) -> None:
    stream.on_replay([b"", seq.to_bytes(8, "big", signed=True), payload])


def _end_of_replay(stream: PodStream) -> None:
    stream.on_replay([b"", (-1).to_bytes(8, "big", signed=True), b""])


def _live(stream: PodStream, seq: int, payload: bytes) -> None:
    stream.on_live_batch(b"", seq.to_bytes(8, "big"), payload)


def _refilled(table: Any) -> Tuple[PodStream, _Transport, List[bytes]]:
    """A stream resumed from seq 5 of a publisher that is gone: the new one's buffer (seq 0..2) replays."""
    stream, transport = _stream(table)
    stream.set_resume(5, 123.0)
    stream.begin()
    assert transport.requests == [5]
    published = [batch([_store(k, 100 + k - 1 if k else None)], ts=1000.0 + k) for k in range(3)]
    _end_of_replay(stream)  # asked from seq 5, the new publisher holds nothing there: it restarted
    assert stream.stats["resume_refills"] == 1 and transport.requests == [5, 0]
    for seq, payload in enumerate(published):
        _replayed(stream, seq, payload)
    _end_of_replay(stream)
    assert (stream.applied, stream.replay, stream.live_last) == (2, None, None)
    assert table.match_blocks(MODEL, -1, [0] * BS + [1] * BS + [2] * BS) == {"pod": 3}
    return stream, transport, published


def test_a_restart_after_a_refill_is_seen_though_no_live_seq_came_since(make_table):
    table = make_table()
    stream, _, _ = _refilled(table)
    # the engine restarts before sending anything live: new content, seq from 0, published later
    _live(stream, 0, batch([_store(50)], ts=2000.0))
    _live(stream, 1, batch([_store(51, 150)], ts=2001.0))
    assert (stream.stats["restarts"], stream.stats["duplicates"], stream.applied) == (1, 0, 1)
    assert table.match_blocks(MODEL, -1, [0] * BS) == {}  # the old publisher's blocks are gone
    assert table.match_blocks(MODEL, -1, [50] * BS + [51] * BS) == {"pod": 2}


def test_a_late_live_copy_of_a_replayed_batch_is_still_a_duplicate(make_table):
    table = make_table()
    stream, _, published = _refilled(table)
    _live(stream, 1, published[1])  # published before the applied seq 2: late on the SUB socket
    _live(stream, 2, published[2])  # the applied batch itself
    assert (stream.stats["restarts"], stream.stats["duplicates"], stream.applied) == (0, 2, 2)
    _live(stream, 3, batch([_store(3, 102)], ts=1003.0))
    assert table.match_blocks(MODEL, -1, [k for b in range(4) for k in [b] * BS]) == {"pod": 4}
    assert stream.stats["restarts"] == 0


def test_a_restart_cannot_be_read_from_a_nan_ts(make_table):
    table = make_table()
    stream, _, _ = _refilled(table)
    _live(stream, 1, batch([_store(60)], ts=float("nan")))
    assert (stream.stats["restarts"], stream.stats["duplicates"]) == (0, 1)


def _deep_batch(ts: float) -> bytes:
    """A batch of one good store and one whose ignored extra_keys is nested DEEP levels."""
    good = msgspec.msgpack.encode(_store(7))
    d = _store(8)
    d["extra_keys"] = None
    bad = msgspec.msgpack.encode(d).replace(b"\xaaextra_keys\xc0", b"\xaaextra_keys" + b"\x91" * DEEP + b"\xc0")
    assert bad != msgspec.msgpack.encode(d)
    return b"\x93\xcb" + msgspec.msgpack.encode(ts)[1:] + b"\x92" + good + bad + b"\x00"


def test_a_value_nested_too_deep_is_one_malformed_batch_live(make_table):
    table = make_table()
    stream, _ = _stream(table)
    _live(stream, 0, batch([_store(1)], ts=1.0))
    _live(stream, 1, _deep_batch(2.0))
    _live(stream, 2, batch([_store(2, 101)], ts=3.0))
    assert (stream.stats["malformed"], stream.applied, stream.stats["lost_batches"]) == (1, 2, 0)
    assert table.match_blocks(MODEL, -1, [1] * BS + [2] * BS) == {"pod": 2}


def test_a_value_nested_too_deep_in_a_held_batch_loses_only_that_batch(make_table):
    table = make_table()
    stream, transport = _stream(table)
    _live(stream, 0, batch([_store(1)], ts=1.0))
    # seq 1 never arrives: a gap, a replay that gets no answer; 2 (deep), 3 and 4 are held meanwhile
    _live(stream, 2, _deep_batch(3.0))
    _live(stream, 3, batch([_store(3)], ts=4.0))
    _live(stream, 4, batch([_store(4, 103)], ts=5.0))
    assert transport.requests == [1] and len(stream.held) == 3
    stream.end_replay(False)  # given up: the held batches are applied in order
    s = stream.stats
    assert (s["malformed"], s["lost_batches"], s["replay_failures"], stream.applied) == (1, 1, 1, 4)
    assert table.match_blocks(MODEL, -1, [3] * BS + [4] * BS) == {"pod": 2}
