"""Decoding of vLLM KV-event payloads (prefixindex.vllm._wire, ._convert), without sockets.

The encoders below are written with msgspec from vLLM's wire format as docs/vllm.md describes it (checked
against a vLLM 0.33.0 publisher), in both encodings: legacy tagged arrays and current tagged maps.
test_vllm_zmq.py publishes with them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored
from prefixindex.vllm._convert import PodConverter
from prefixindex.vllm._wire import (FULL_ATTENTION_KINDS, UnknownEvent, WireError, decode_batch, decode_event,
                                    hash_from_wire)

ENCODINGS = ("array", "map")
_encode = msgspec.msgpack.Encoder().encode

# ---------------------------------------------------------------------------------------------------
# encoders, from the wire doc

_STORED_ORDER = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                 "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window")
_STORED_REQUIRED = 7  # up to lora_name: required (possibly None) fields, which stay in
_REMOVED_ORDER = ("block_hashes", "medium", "group_idx")
_REMOVED_REQUIRED = 2


def _event(tag: str, order: tuple, required: int, fields: Dict[str, Any], enc: str,
           trailing: bool, extra: Optional[Dict[str, Any]]) -> Any:
    """One tagged event. ``trailing``: write the optional fields even when at their default (None).
    ``extra``: fields a newer vLLM may append (unknown to the decoder)."""
    values = [fields.get(name) for name in order]
    if not trailing:  # omit_defaults: trailing optional fields at their default are left out
        n = len(values)
        while n > required and values[n - 1] is None:
            n -= 1
        values = values[:n]
    if enc == "array":
        out = [tag] + values
        if extra:
            out += [None] * (len(order) - len(values)) + list(extra.values())
        return out
    out = {"type": tag}
    for name, value in zip(order, values):
        out[name] = value
    if extra:
        out.update(extra)
    return out


def stored(hashes: List[Any], tokens: List[int], block_size: int, parent: Any = None, *, enc: str = "map",
           lora_id: Optional[int] = None, medium: Optional[str] = "GPU", lora_name: Optional[str] = None,
           group_idx: Optional[int] = None, kind: Optional[str] = None, trailing: bool = False,
           extra: Optional[Dict[str, Any]] = None) -> Any:
    fields = {"block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens, "block_size": block_size,
              "lora_id": lora_id, "medium": medium, "lora_name": lora_name, "group_idx": group_idx,
              "kv_cache_spec_kind": kind}
    return _event("BlockStored", _STORED_ORDER, _STORED_REQUIRED, fields, enc, trailing, extra)


def removed(hashes: List[Any], *, enc: str = "map", medium: Optional[str] = "GPU", group_idx: Optional[int] = None,
            trailing: bool = False, extra: Optional[Dict[str, Any]] = None) -> Any:
    fields = {"block_hashes": hashes, "medium": medium, "group_idx": group_idx}
    return _event("BlockRemoved", _REMOVED_ORDER, _REMOVED_REQUIRED, fields, enc, trailing, extra)


def cleared(*, enc: str = "map") -> Any:
    return ["AllBlocksCleared"] if enc == "array" else {"type": "AllBlocksCleared"}


def batch(events: List[Any], *, shape: str = "array3", ts: Optional[float] = None, rank: Optional[int] = 0) -> bytes:
    """A batch payload: "array3" ([ts, events, rank], current), "array2" (older), or "map"."""
    ts = time.time() if ts is None else ts
    if shape == "array3":
        return _encode([ts, events, rank])
    if shape == "array2":
        return _encode([ts, events])
    assert shape == "map"
    return _encode({"ts": ts, "events": events, "data_parallel_rank": rank})


def convert_all(conv: PodConverter, payload: bytes) -> List[Any]:
    return [conv.convert(decode_event(raw)) for raw in decode_batch(payload)]


def conv(block_size: int = 4, **kwargs: Any) -> PodConverter:
    return PodConverter("pod-a", "model", block_size, **kwargs)


TOKENS8 = list(range(100, 108))  # two blocks of 4 tokens
BIG = 2**64 - 5                  # an unsigned 64-bit hash above 2**63


# ---------------------------------------------------------------------------------------------------
# batches


@pytest.mark.parametrize("shape", ["array3", "array2", "map"])
@pytest.mark.parametrize("enc", ENCODINGS)
def test_every_batch_shape_and_event_encoding_decodes_to_the_same_event(shape, enc):
    payload = batch([stored([BIG, 7], TOKENS8, 4, enc=enc)], shape=shape)
    [(kind, event)] = convert_all(conv(), payload)
    assert kind == "stored"
    assert isinstance(event, BlockStored)
    assert event.block_hashes.tolist() == [BIG, 7]
    assert event.tokens.shape == (2, 16)
    assert bytes(event.tokens[1]) == b"".join(t.to_bytes(4, "big") for t in TOKENS8[4:])
    assert (event.model_name, event.lora_id, event.source_pod, event.parent_block_hash) == ("model", -1, "pod-a", None)


def test_batch_map_without_ts_and_rank_and_with_unknown_keys():
    payload = _encode({"events": [cleared()], "something_new": [1, 2]})
    [(kind, event)] = convert_all(conv(), payload)
    assert kind == "cleared" and event.source_pod == "pod-a"


def test_batch_array_with_more_elements_than_known():
    payload = _encode([1.5, [cleared(enc="array")], None, "future", {"x": 1}])
    assert [k for k, _ in convert_all(conv(), payload)] == ["cleared"]


def test_integer_timestamp_is_accepted():
    assert len(decode_batch(_encode([17, [], 0]))) == 0


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"\x92", b"garbage that is not msgpack", _encode(5), _encode("batch"), _encode([1.0]),
    _encode([1.0, "not a list"]), _encode({"ts": 1.0}), _encode({"events": 3}), _encode(None),
    _encode([[1.0], []]),
], ids=lambda p: repr(p[:12]))
def test_malformed_batches_are_wire_errors(payload):
    with pytest.raises(WireError):
        decode_batch(payload)


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


# ---------------------------------------------------------------------------------------------------
# events


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("trailing", [False, True])
def test_trailing_defaults_present_or_absent(enc, trailing):
    events = [stored([1, 2], TOKENS8, 4, enc=enc, trailing=trailing),
              removed([2], enc=enc, trailing=trailing), cleared(enc=enc)]
    if not trailing and enc == "array":
        assert len(events[0]) == 1 + _STORED_REQUIRED  # the encoder really left the defaults out
    out = convert_all(conv(), batch(events))
    assert [k for k, _ in out] == ["stored", "removed", "cleared"]
    [rem] = out[1][1]
    assert isinstance(rem, BlockRemoved) and rem.block_hashes.tolist() == [2] and rem.source_pod == "pod-a"


@pytest.mark.parametrize("enc", ENCODINGS)
def test_unknown_extra_fields_are_ignored(enc):
    extra = {"locality": "LOCAL", "ownership": None, "session_id": "s-1", "added_in_2027": [1, {"a": 2}]}
    events = [stored([1, 2], TOKENS8, 4, enc=enc, group_idx=0, kind="full_attention", extra=extra),
              removed([1], enc=enc, extra={"locality": "LOCAL", "ownership": "x"})]
    if enc == "array":
        events.append(["AllBlocksCleared", "future field"])
    else:
        events.append({"type": "AllBlocksCleared", "future": 1})
    assert [k for k, _ in convert_all(conv(), batch(events))] == ["stored", "removed", "cleared"]


def test_minimal_legacy_array_without_medium_and_lora_name():
    # the oldest publishers: ["BlockStored", hashes, parent, token_ids, block_size, lora_id]
    payload = batch([["BlockStored", [1, 2], None, TOKENS8, 4, None], ["BlockRemoved", [2]]], shape="array2")
    assert [k for k, _ in convert_all(conv(), payload)] == ["stored", "removed"]


@pytest.mark.parametrize("enc", ENCODINGS)
def test_unknown_event_type_is_reported_not_malformed(enc):
    ev = ["BlockMigrated", [1], "GPU", "CPU"] if enc == "array" else {"type": "BlockMigrated", "block_hashes": [1]}
    [raw] = decode_batch(batch([ev]))
    decoded = decode_event(raw)
    assert isinstance(decoded, UnknownEvent) and decoded.tag == "BlockMigrated"
    assert conv().convert(decoded) == ("unknown", "BlockMigrated")


@pytest.mark.parametrize("event", [
    ["BlockStored", [1], None],                          # required fields missing
    ["BlockStored", "not a list", None, [1, 2, 3, 4], 4],
    ["BlockStored", [1.5], None, [1, 2, 3, 4], 4],        # a float hash
    ["BlockStored", [1], None, [1, 2, 3, 4], "four"],
    {"type": "BlockStored", "block_hashes": [1]},
    {"type": "BlockRemoved"},
    {"type": "BlockRemoved", "block_hashes": [None]},
    {"block_hashes": [1]},                                # no tag
    [],                                                   # no tag
    [42, 1, 2],                                           # tag not a str
    "BlockStored",
    17,
    None,
])
def test_malformed_events_are_wire_errors(event):
    [raw] = decode_batch(batch([event]))
    with pytest.raises(WireError):
        conv().convert(decode_event(raw))


def test_one_bad_event_does_not_spoil_the_others():
    payload = batch([stored([1], TOKENS8[:4], 4), ["BlockStored", "bad"], removed([1])])
    raws = decode_batch(payload)
    results = []
    for raw in raws:
        try:
            results.append(conv().convert(decode_event(raw))[0])
        except WireError:
            results.append("malformed")
    assert results == ["stored", "malformed", "removed"]


# ---------------------------------------------------------------------------------------------------
# block hashes


def test_bytes_hash_is_its_last_8_bytes_big_endian():
    h = bytes(range(24)) + BIG.to_bytes(8, "big")  # a 32-byte hash, as vLLM's sha256 ones
    assert hash_from_wire(h) == BIG
    assert hash_from_wire(b"\x01\x02") == 0x0102
    with pytest.raises(WireError):
        hash_from_wire(b"")


@pytest.mark.parametrize("enc", ENCODINGS)
def test_bytes_and_int_hashes_give_the_same_event(enc):
    as_bytes = [b"\xaa" * 24 + BIG.to_bytes(8, "big"), (2**63).to_bytes(8, "big")]
    parent_bytes = b"\x00" * 24 + (2**64 - 1).to_bytes(8, "big")
    c1, c2 = conv(), conv()
    [(_, a)] = convert_all(c1, batch([stored([BIG, 2**63], TOKENS8, 4, 2**64 - 1, enc=enc)]))
    [(_, b)] = convert_all(c2, batch([stored(as_bytes, TOKENS8, 4, parent_bytes, enc=enc)]))
    assert a.block_hashes.tolist() == b.block_hashes.tolist() == [BIG, 2**63]
    assert a.parent_block_hash == b.parent_block_hash == 2**64 - 1
    [(_, [ra])] = convert_all(c1, batch([removed([BIG], enc=enc)]))
    [(_, [rb])] = convert_all(c2, batch([removed([as_bytes[0]], enc=enc)]))
    assert ra.block_hashes.tolist() == rb.block_hashes.tolist() == [BIG]


def test_bytes_hashes_that_look_like_digits_are_read_as_bytes():
    [(_, ev)] = convert_all(conv(), batch([stored([b"12", 7], TOKENS8, 4)]))
    assert ev.block_hashes.tolist() == [0x3132, 7]


def test_negative_int_hashes_are_taken_modulo_2_64():
    [(_, ev)] = convert_all(conv(), batch([stored([-1], TOKENS8[:4], 4)]))
    assert ev.block_hashes.tolist() == [2**64 - 1]


def test_empty_bytes_hash_is_malformed():
    [raw] = decode_batch(batch([stored([b""], TOKENS8[:4], 4)]))
    with pytest.raises(WireError):
        conv().convert(decode_event(raw))


# ---------------------------------------------------------------------------------------------------
# tokens and block size


def test_block_size_mismatch_is_malformed_and_names_both_sizes():
    [raw] = decode_batch(batch([stored([1], TOKENS8, 8)]))
    with pytest.raises(WireError, match="block_size 8.*block_size 4"):
        conv(block_size=4).convert(decode_event(raw))


@pytest.mark.parametrize("tokens", [TOKENS8[:7], TOKENS8 + [1], []])
def test_token_count_must_be_blocks_times_block_size(tokens):
    [raw] = decode_batch(batch([stored([1, 2], tokens, 4)]))
    with pytest.raises(WireError, match="token ids"):
        conv().convert(decode_event(raw))


@pytest.mark.parametrize("tokens", [[1, 2, 3, -4], [1, 2, 3, 2**32], [1, 2, 3, "x"], [1, 2, 3, 4.0], "abcd"])
def test_bad_token_ids_are_malformed(tokens):
    [raw] = decode_batch(batch([stored([1], tokens, 4)]))
    with pytest.raises(WireError):
        conv().convert(decode_event(raw))


def test_empty_block_stored_is_valid():
    [(kind, ev)] = convert_all(conv(), batch([stored([], [], 4)]))
    assert kind == "stored" and ev.n_blocks == 0


def test_token_ids_stay_raw_until_the_backend_reads_them():
    seen = []

    def token_bytes(raw):
        seen.append(type(raw))
        from prefixindex import _core_py
        return _core_py.token_bytes_from_msgpack(raw)

    c = PodConverter("p", "m", 4, token_bytes=token_bytes)
    convert_all(c, batch([stored([1, 2], TOKENS8, 4)]))
    assert seen == [msgspec.Raw]


# ---------------------------------------------------------------------------------------------------
# filters


@pytest.mark.parametrize("medium,mediums,kept", [
    ("GPU", ("GPU",), True), (None, ("GPU",), True), ("gpu", ("GPU",), True), ("CPU", ("GPU",), False),
    ("STORAGE", ("GPU",), False), ("CPU", ("cpu", "GPU"), True), ("GPU", ("CPU",), False),
    (None, ("CPU",), False), ("DISK", None, True), (None, None, True),
])
def test_medium_filter(medium, mediums, kept):
    c = conv(mediums=mediums)
    out = convert_all(c, batch([stored([1], TOKENS8[:4], 4, medium=medium), removed([1], medium=medium)]))
    assert [k for k, _ in out] == (["stored", "removed"] if kept else ["filtered", "filtered"])


@pytest.mark.parametrize("kind,group,kept", [
    (None, None, True), (None, 0, True), (None, 1, False), ("full_attention", 0, True),
    ("full_attention", 3, True), ("mla_attention", 1, True), ("sink_full_attention", 2, True),
    ("sliding_window", 0, False), ("sliding_window_mla", 1, False), ("mamba", 1, False), ("unknown", 0, False),
])
def test_kv_cache_spec_kind_filter(kind, group, kept):
    [(k, _)] = convert_all(conv(), batch([stored([1], TOKENS8[:4], 4, group_idx=group, kind=kind)]))
    assert (k == "stored") is kept
    assert k in ("stored", "filtered")


def test_block_removed_follows_what_stores_said_about_its_group():
    c = conv()
    out = convert_all(c, batch([
        removed([1], group_idx=0), removed([1], group_idx=1), removed([1]),  # nothing learned yet
        stored([1], TOKENS8[:4], 4, group_idx=0, kind="sliding_window"),
        stored([1], TOKENS8[:4], 4, group_idx=1, kind="full_attention"),
        removed([1], group_idx=0), removed([1], group_idx=1), removed([1], group_idx=2),
    ]))
    assert [k for k, _ in out] == ["removed", "filtered", "removed", "filtered", "stored",
                                   "filtered", "removed", "filtered"]
    c.reset()  # a restarted engine may group its layers differently
    assert [k for k, _ in convert_all(c, batch([removed([1], group_idx=0)]))] == ["removed"]


def test_every_kind_when_spec_kinds_is_none():
    out = convert_all(conv(spec_kinds=None), batch([stored([1], TOKENS8[:4], 4, group_idx=1, kind="mamba")]))
    assert out[0][0] == "stored"


def test_full_attention_kinds_constant():
    assert "full_attention" in FULL_ATTENTION_KINDS and "sliding_window" not in FULL_ATTENTION_KINDS


# ---------------------------------------------------------------------------------------------------
# LoRA


@pytest.mark.parametrize("lora_name,lora_id,expected", [
    (None, None, -1), (None, 7, 7), ("sql", None, 11), ("sql", 7, 11), ("other", 7, 7), ("other", None, None),
])
@pytest.mark.parametrize("enc", ENCODINGS)
def test_lora_from_name_mapping_or_id(lora_name, lora_id, expected, enc):
    c = conv(lora_map={"sql": 11})
    [(kind, ev)] = convert_all(c, batch([stored([1], TOKENS8[:4], 4, enc=enc, lora_name=lora_name,
                                                lora_id=lora_id)]))
    if expected is None:
        assert (kind, ev) == ("unmapped_lora", "other")
    else:
        assert kind == "stored" and ev.lora_id == expected


def test_block_removed_goes_only_to_the_context_that_holds_each_hash():
    c = conv(lora_map={"a": 1, "b": 2})
    convert_all(c, batch([stored([1], TOKENS8[:4], 4, lora_name="a"), stored([2], TOKENS8[:4], 4, lora_name="b"),
                          stored([3], TOKENS8[:4], 4)]))
    assert c.loras == [-1, 1, 2]
    [(kind, events)] = convert_all(c, batch([removed([1, 2, 3, 99])]))
    assert kind == "removed"
    assert sorted((e.lora_id, e.block_hashes.tolist()) for e in events) == [(-1, [3, 99]), (1, [1]), (2, [2])]
    assert c.loras == [-1]  # the adapters' blocks are gone: nothing left to route removals to
    [(kind, events)] = convert_all(c, batch([removed([1])]))
    assert [e.lora_id for e in events] == [-1]
    convert_all(c, batch([stored([5], TOKENS8[:4], 4, lora_name="a")]))
    [(kind, _)] = convert_all(c, batch([cleared()]))
    assert c.loras == [-1] and c.lora_blocks == {}  # after a clear the pod holds nothing under any adapter


def test_removals_cost_one_event_however_many_adapters_were_seen():
    c = conv(lora_map={f"a{i}": i for i in range(10_000)})
    for i in range(10_000):
        convert_all(c, batch([stored([i + 1], TOKENS8[:4], 4, lora_name=f"a{i}")]))
        convert_all(c, batch([removed([i + 1])]))
    [(kind, events)] = convert_all(c, batch([removed([123456])]))
    assert [(e.lora_id, e.block_hashes.tolist()) for e in events] == [(-1, [123456])]
    assert c.lora_blocks == {}


def test_a_lora_map_is_checked_as_the_index_checks_lora_ids():
    """A lora_id past 64 bits was accepted, and every event mapped to it then refused as malformed; a
    name or id of a subclass is kept as its plain value (the index never runs a subclass's code)."""
    from prefixindex.vllm import Pod
    from prefixindex.vllm._pod import check_lora_map

    class Name(str):
        pass

    class Id(int):
        pass

    with pytest.raises(ValueError, match=r"lora_map\['sql'\] must fit in a signed 64-bit integer, got 9223372036854775808"):
        check_lora_map({"sql": 2**63}, "lora_map")
    with pytest.raises(ValueError, match="must fit in a signed 64-bit integer"):
        Pod("p", "tcp://127.0.0.1:1", lora_map={"sql": -2**63 - 1})
    out = check_lora_map({Name("sql"): Id(5), "base": -2**63}, "lora_map")
    assert out == {"sql": 5, "base": -2**63}
    assert all(type(k) is str and type(v) is int for k, v in out.items())


def test_lora_tracking_is_bounded():
    c = conv(lora_map={"a": 1}, max_lora_blocks=100)
    for i in range(1000):
        convert_all(c, batch([stored([i], TOKENS8[:4], 4, lora_name="a")]))
    assert len(c.lora_blocks) == 100 and min(c.lora_blocks) == 900  # the oldest are forgotten first
    [(_, events)] = convert_all(c, batch([removed([950, 5])]))
    assert sorted((e.lora_id, e.block_hashes.tolist()) for e in events) == [(-1, [5]), (1, [950])]


def test_group_state_is_bounded_and_keeps_only_non_defaults():
    c = conv()
    for g in range(1, 100_000):
        convert_all(c, batch([stored([g], TOKENS8[:4], 4, group_idx=g, kind="sliding_window")]))
    assert c.groups == {}  # group > 0 not indexed is the default: nothing to remember
    for g in range(1, 5000):
        convert_all(c, batch([stored([g], TOKENS8[:4], 4, group_idx=g, kind="full_attention")]))
    from prefixindex.vllm._convert import MAX_GROUPS
    assert len(c.groups) == MAX_GROUPS
    assert [k for k, _ in convert_all(c, batch([removed([1], group_idx=1), removed([1], group_idx=4999)]))] == [
        "removed", "filtered"]  # learned; past the bound the default applies


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("medium", ["CPU", "GPU"])
def test_placeholder_stores_are_counted_not_malformed(enc, medium):
    c = conv(mediums=None)
    ev = stored([1, 2], [], 0, enc=enc, medium=medium)
    assert convert_all(c, batch([ev])) == [("placeholder", None)]
    [raw] = decode_batch(batch([stored([1], [], 4, enc=enc)]))  # block_size 4 without tokens: still bad
    with pytest.raises(WireError, match="token ids"):
        c.convert(decode_event(raw))


def test_all_blocks_cleared_clears_every_context_of_the_pod():
    [(kind, ev)] = convert_all(conv(), batch([cleared()]))
    assert isinstance(ev, AllBlocksCleared)
    assert (ev.source_pod, ev.model_name, ev.lora_id) == ("pod-a", None, None)


# ---------------------------------------------------------------------------------------------------
# into the index, both backends


def _apply(table, converter, payload):
    for kind, item in convert_all(converter, payload):
        if kind == "stored":
            table.process_block_stored(item)
        elif kind == "removed":
            for ev in item:
                table.process_block_removed(ev)
        elif kind == "cleared":
            table.process_all_blocks_cleared(item)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_decoded_events_build_the_same_index_as_direct_events(make_table, enc):
    wired, direct = make_table(), make_table()
    c = conv()
    tokens = list(range(1, 17))  # four blocks
    _apply(wired, c, batch([stored([11, 12], tokens[:8], 4, enc=enc),
                            stored([13, 14], tokens[8:], 4, 12, enc=enc)]))
    direct.process_block_stored(BlockStored([11, 12], tokens[:8], "model", -1, "pod-a"))
    direct.process_block_stored(BlockStored([13, 14], tokens[8:], "model", -1, "pod-a", parent_block_hash=12))
    assert wired.match_blocks("model", -1, tokens) == direct.match_blocks("model", -1, tokens) == {"pod-a": 4}
    _apply(wired, c, batch([removed([13], enc=enc)]))
    assert wired.match_blocks("model", -1, tokens) == {"pod-a": 2}
    _apply(wired, c, batch([cleared(enc=enc)]))
    assert wired.match_blocks("model", -1, tokens) == {}
    assert wired.stats()["entries"] == 0


def test_removal_reaches_a_lora_context(make_table):
    table = make_table()
    c = conv(lora_map={"sql": 5})
    _apply(table, c, batch([stored([1, 2], TOKENS8, 4, lora_name="sql")]))
    assert table.match_blocks("model", 5, TOKENS8) == {"pod-a": 2}
    _apply(table, c, batch([removed([2])]))
    assert table.match_blocks("model", 5, TOKENS8) == {"pod-a": 1}


_hash = st.one_of(st.integers(0, 2**64 - 1), st.binary(min_size=8, max_size=32))


@settings(max_examples=60, deadline=None)
@given(n_blocks=st.integers(0, 4), block_size=st.integers(1, 5), data=st.data())
def test_both_encodings_agree_on_random_events(n_blocks, block_size, data):
    hashes = data.draw(st.lists(_hash, min_size=n_blocks, max_size=n_blocks))
    tokens = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=n_blocks * block_size,
                                max_size=n_blocks * block_size))
    parent = data.draw(st.one_of(st.none(), _hash))
    lora_id = data.draw(st.one_of(st.none(), st.integers(0, 2**31)))
    trailing = data.draw(st.booleans())
    shape = data.draw(st.sampled_from(["array2", "array3", "map"]))
    results = []
    for enc in ENCODINGS:
        payload = batch([stored(hashes, tokens, block_size, parent, enc=enc, lora_id=lora_id, trailing=trailing)],
                        shape=shape)
        [(kind, ev)] = convert_all(PodConverter("p", "m", block_size), payload)
        assert kind == "stored"
        results.append((ev.block_hashes.tolist(), ev.tokens.tobytes(), ev.parent_block_hash, ev.lora_id))
    expected_hashes = [h if isinstance(h, int) else int.from_bytes(h[-8:], "big") for h in hashes]
    expected_parent = None if parent is None else (
        parent if isinstance(parent, int) else int.from_bytes(parent[-8:], "big"))
    expected_tokens = np.array(tokens, dtype=">u4").tobytes()
    assert results[0] == results[1] == (expected_hashes, expected_tokens, expected_parent,
                                        -1 if lora_id is None else lora_id)


# ---------------------------------------------------------------------------------------------------
# optional dependencies


def test_import_prefixindex_does_not_import_zmq_or_msgspec():
    code = ("import sys, prefixindex; t = prefixindex.SyncPrefixHashTable(background_eviction=False); "
            "print(sorted(m for m in ('zmq', 'msgspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["zmq", "msgspec"])
def test_missing_extra_is_a_clear_import_error(missing):
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "try:\n    import prefixindex.vllm\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and "pip install -e '.[vllm]'" in out.stdout
