"""The subscriber's fast paths give what the general ones give (issue 10, the ingest target).

- ``PodConverter.read_plain`` (the backend's one-pass ``read_plain_batch``, tested on its own in
  tests/test_vllm_plain_reader.py) and ``PodConverter.plain_stored``, which builds the common store (int
  hashes, the index's block size, an indexed tier, no adapter, no group) without the general path's
  steps and leaves every other event to ``convert``: a batch applied with them leaves the same index,
  counters and converter state as the general path alone, on both backends, whatever the events.
- The loop reads a live message frame by frame: messages of the wrong shape are counted malformed
  one each and never take frames of the next message; payloads of any size are handed on uncopied.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixindex import BlockStored
from prefixindex.vllm import Pod
from prefixindex.vllm._convert import PodConverter
from prefixindex.vllm._stream import HeldBudget, PodStream
from prefixindex.vllm._wire import INT_STORED_TYPES, read_batch_fast

from test_vllm_decode import batch, cleared, removed, stored
from test_vllm_zmq import (BS, MODEL, connect, ctx, pod_stats, prompt, publishers,  # noqa: F401
                           subscribers, wait_applied)

LORA_MAP = {"sql": 5}
HASH_POOL = [1, 2, 3, 2**63 + 7, 2**64 - 1]  # a small pool, so that removals find stored blocks


def _stream(table: Any, plain: bool) -> PodStream:
    converter = PodConverter("pod-a", "model", 4, LORA_MAP, mediums=("GPU", "CPU"))
    if not plain:  # the general path only: neither the one-pass reader of plain batches nor plain stores
        converter._plain_reader = None
        converter.plain_stored = lambda ev: None  # type: ignore[method-assign]
    return PodStream(Pod("pod-a", "tcp://127.0.0.1:1"), converter, table, HeldBudget(1 << 30),
                     replay_timeout=1.0, replay_on_connect=False, model="model")


def _state(stream: PodStream) -> Any:
    counters = {k: v for k, v in stream.stats.items() if isinstance(v, int)}
    conv = stream.converter
    return stream.table.snapshot(), stream.table.stats(), counters, dict(conv.lora_blocks), dict(conv.groups)


_hash = st.one_of(st.sampled_from(HASH_POOL), st.integers(0, 2**64 - 1), st.integers(-2**63, -1),
                  st.binary(min_size=1, max_size=12))


# what can make a store other than plain, drawn a few at a time, so that plain stores are common and
# each way of not being plain is too
_DEVIATIONS = {
    "bytes_hash": lambda d: dict(hashes=[b"\x00" * 7 + bytes([d(st.integers(1, 3))])]),
    "negative_hash": lambda d: dict(hashes=[d(st.integers(-2**63, -1))]),
    "bytes_parent": lambda d: dict(parent=d(st.binary(min_size=1, max_size=12))),
    "block_size": lambda d: dict(block_size=d(st.sampled_from([2, 0]))),
    "tokens": lambda d: dict(extra_tokens=d(st.sampled_from([1, -1]))),
    "lora_id": lambda d: dict(lora_id=3),
    "lora_name": lambda d: dict(lora_name=d(st.sampled_from(["sql", "unmapped"]))),
    "medium": lambda d: dict(medium=d(st.sampled_from([None, "gpu", "CPU", "disk"]))),
    "group_idx": lambda d: dict(group_idx=d(st.sampled_from([0, 1]))),
    "kind": lambda d: dict(kind=d(st.sampled_from(["full_attention", "sliding_window"]))),
}


@st.composite
def _stored_event(draw: Any, enc: str) -> Any:
    n = draw(st.integers(0, 3))
    fields: dict = dict(hashes=draw(st.lists(st.sampled_from(HASH_POOL) | st.integers(0, 2**64 - 1),
                                             min_size=n, max_size=n)),
                        parent=draw(st.none() | st.sampled_from(HASH_POOL)), block_size=4, extra_tokens=0)
    for name in draw(st.lists(st.sampled_from(sorted(_DEVIATIONS)), max_size=3)):
        update = _DEVIATIONS[name](draw)
        if "hashes" in update and fields["hashes"]:
            fields["hashes"] = fields["hashes"][:-1] + update["hashes"]  # one hash of the other kind
            del update["hashes"]
        fields.update(update)
    count = max(0, len(fields["hashes"]) * fields["block_size"] + fields.pop("extra_tokens"))
    tokens = draw(st.lists(st.integers(0, 2**32 - 1), min_size=count, max_size=count))
    return stored(fields.pop("hashes"), tokens, fields.pop("block_size"), fields.pop("parent"), enc=enc, **fields)


@st.composite
def _batch(draw: Any) -> bytes:
    enc = draw(st.sampled_from(["map", "array"]))
    events = draw(st.lists(st.one_of(
        _stored_event(enc),
        st.builds(lambda h, m, g: removed(h, enc=enc, medium=m, group_idx=g), st.lists(_hash, max_size=3),
                  st.sampled_from(["GPU", None, "CPU"]), st.sampled_from([None, 0, 1])),
        st.just(cleared(enc=enc))), max_size=6))
    return batch(events, shape=draw(st.sampled_from(["array3", "array2", "map"])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(_batch(), min_size=1, max_size=4))
def test_plain_path_leaves_what_the_general_path_leaves(make_table, payloads):
    fast, general = _stream(make_table(), plain=True), _stream(make_table(), plain=False)
    for seq, payload in enumerate(payloads):
        fast.apply(seq, payload)
        general.apply(seq, payload)
        assert _state(fast) == _state(general)


@pytest.mark.parametrize("enc", ["map", "array"])
def test_plain_path_is_taken_for_vllms_usual_store(enc):
    """Not only equal results: the common store really goes the plain way (else the fast path is dead)."""
    payload = batch([stored([2**64 - 5, 7], list(range(8)), 4, 9, enc=enc), stored([8], list(range(4)), 4, enc=enc)])
    converter = PodConverter("pod-a", "model", 4)
    events = read_batch_fast(payload)[1]  # type: ignore[index]
    assert len(events) == 2 and {type(ev) for ev in events} <= INT_STORED_TYPES
    for ev in events:
        plain = converter.plain_stored(ev)
        kind, general = converter.convert(ev)
        assert kind == "stored" and isinstance(plain, BlockStored)
        assert plain.block_hashes.tolist() == general.block_hashes.tolist()
        assert plain.tokens.tobytes() == general.tokens.tobytes()
        assert (plain.model_name, plain.lora_id, plain.source_pod, plain.parent_block_hash) == \
            (general.model_name, general.lora_id, general.source_pod, general.parent_block_hash)
    assert converter.plain_stored(events[0]).parent_block_hash == 9  # type: ignore[union-attr]


# one way each of not being the plain store
NOT_PLAIN = [
    dict(hashes=[b"\x01" * 8, 6]), dict(hashes=[5, b"\x00" * 3 + b"\x07"]), dict(parent=b"\x02" * 8),
    dict(block_size=2), dict(block_size=2, tokens=list(range(4))), dict(block_size=0, tokens=[]),
    dict(block_size=0), dict(lora_id=3), dict(lora_name="sql"), dict(lora_name="unmapped"),
    dict(lora_name="sql", lora_id=4), dict(medium="gpu"), dict(medium="CPU"),
    dict(medium="disk"), dict(group_idx=1), dict(kind="full_attention"),
    dict(kind="sliding_window"), dict(kind="sliding_window", group_idx=0), dict(tokens=list(range(7))),
    dict(tokens=list(range(6))), dict(tokens=list(range(12))), dict(hashes=[], tokens=[]),
]
# plain after all: no tier named (GPU), negative ints (wrapped by the event's own rule), the largest hash,
# fields a newer vLLM appends, the GPU block pool's group_idx 0 (vLLM 0.33)
PLAIN = [dict(medium=None), dict(hashes=[-5, 6]), dict(parent=-3), dict(parent=2**64 - 1),
         dict(extra={"something_new": [1, 2]}), dict(group_idx=0)]


def _store(variant: Any, enc: str = "map") -> Any:
    fields = dict(hashes=[5, 6], tokens=list(range(8)), block_size=4, parent=None)
    fields.update(variant)
    return stored(fields.pop("hashes"), fields.pop("tokens"), fields.pop("block_size"), fields.pop("parent"),
                  enc=enc, **fields)


def _variant_id(variant: Any) -> str:
    return ",".join(f"{k}={v!r}"[:16] for k, v in variant.items())


@pytest.mark.parametrize("enc", ["map", "array"])
@pytest.mark.parametrize("variant", NOT_PLAIN + PLAIN, ids=_variant_id)
def test_each_way_of_not_being_plain_gives_the_general_result(make_table, variant, enc):
    """Each variant beside a plain store, in one batch, then removed and cleared: same state at each step."""
    fast, general = _stream(make_table(), plain=True), _stream(make_table(), plain=False)
    payloads = [batch([_store({}, enc), _store(dict(variant, parent=variant.get("parent", 6)), enc)]),
                batch([_store(dict(variant, hashes=[7], tokens=list(range(4)), parent=None), enc)]),
                batch([removed([6, 7], enc=enc)]), batch([cleared(enc=enc)])]
    for seq, payload in enumerate(payloads):
        fast.apply(seq, payload)
        general.apply(seq, payload)
        assert _state(fast) == _state(general), seq


@pytest.mark.parametrize("variant", NOT_PLAIN + PLAIN, ids=_variant_id)
def test_anything_but_the_plain_store_is_left_to_convert(variant):
    [ev] = read_batch_fast(batch([_store(variant)]))[1]  # type: ignore[index]
    plain = PodConverter("pod-a", "model", 4, LORA_MAP).plain_stored(ev)
    assert (plain is None) == (variant in NOT_PLAIN)


# ---------------------------------------------------------------------------------------------------
# frame by frame over a real socket


def test_wrong_shapes_never_take_the_next_messages_frames(make_table, publishers, subscribers):
    table = make_table(max_prefixes_per_context=100_000)
    pub = publishers()
    sub = subscribers(table, [pub.pod("pod-x")]).start()
    connect(pub, sub, "pod-x")
    before = pod_stats(sub, "pod-x")["batches"]
    t = pub.topic
    big = b"\xc1" * 300_000  # over any copy threshold, and not msgpack
    shapes: List[List[bytes]] = [[t], [t, (0).to_bytes(8, "big")], [t, big], [t, b"s" * 8, b"p", b"x"],
                                 [t, b"s" * 8, big, big, b"x"], [t + b"-other"]]
    good = []
    for k, frames in enumerate(shapes):
        pub.send_raw(frames)
        good.append(pub.publish(batch([stored([100 + k], prompt([k]), BS)])))
    last = pub.publish(big)  # a large payload of the right shape: decoded in place, malformed
    wait_applied(sub, "pod-x", last)
    s = pod_stats(sub, "pod-x")
    # every shape is malformed (the frame count is checked before the topic), and so is the last payload
    assert (s["malformed"], s["batches"] - before, s["blocks_stored"]) == (len(shapes) + 1, len(good), len(good))
    assert (s["gaps"], s["lost_batches"], s["restarts"]) == (0, 0, 0)
    for k in range(len(shapes)):
        assert table.match_blocks(MODEL, -1, prompt([k])) == {"pod-x": 1}


def test_held_payloads_small_ones_copied_large_ones_kept_as_views(make_table):
    """During a replay live payloads are held: a view keeps ZeroMQ's frame and ~600 bytes of objects,
    so small ones are copied (the byte budget stays true) and large ones stay views, counted more."""
    import zmq

    table = make_table(max_prefixes_per_context=100_000)
    stream = PodStream(Pod("pod-a", "tcp://127.0.0.1:1", replay_endpoint="tcp://127.0.0.1:2"),
                       PodConverter("pod-a", "model", 4), table, HeldBudget(1 << 30), replay_timeout=1.0,
                       replay_on_connect=False, model="model")
    stream.apply(0, batch([]))
    n = 6000  # about 100 kB of msgpack
    small = batch([stored([1], list(range(4)), 4)])
    large = batch([stored([(2 << 40) | k for k in range(n)], [t for k in range(n) for t in (9, k, k >> 8, 7)], 4)])
    assert len(small) < 1 << 16 < len(large)
    for seq, payload in ((2, small), (3, large)):  # seq 1 missed: a gap, so a replay, so these are held
        stream.on_live_batch(b"", seq.to_bytes(8, "big"), zmq.Frame(payload).buffer)
    assert stream.replay is not None
    (s2, p2), (s3, p3) = stream.held
    assert (s2, type(p2), bytes(p2)) == (2, bytes, small)
    assert (s3, type(p3), bytes(p3)) == (3, memoryview, large)
    assert stream.held_bytes == len(small) + 64 + len(large) + 64 + 640
    stream.end_replay(False)  # given up: the held batches are applied, seq 1 counted lost
    assert (stream.stats["lost_batches"], stream.stats["blocks_stored"], stream.held_bytes) == (1, 1 + n, 0)
    assert table.match_blocks("model", -1, list(range(4))) == {"pod-a": 1}


# ---------------------------------------------------------------------------------------------------
# what another thread reads in the stats


class _RecordingStats(dict):
    """The stream's stats, noting the replay counters at the moment "replaying" goes False."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.at_end: List[Any] = []

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "replaying" and value is False:
            self.at_end.append((self["replays"], self["replay_failures"]))
        super().__setitem__(key, value)


def test_a_replay_is_counted_before_the_stats_say_it_is_over(make_table):
    """A reader that waits for "replaying" to be False (as tests and benchmarks do, from another thread)
    must find the replay's outcome already counted."""
    stream = _stream(make_table(), plain=True)
    stats = _RecordingStats(stream.stats)
    stream.stats = stats
    stream._start_replay(0)
    stream.end_replay(True)
    stream._start_replay(0)
    stream.end_replay(False)
    assert stats.at_end == [(1, 0), (1, 1)]
