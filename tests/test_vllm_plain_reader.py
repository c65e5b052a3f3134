"""The backends' one-pass reader of plain batches (``read_plain_batch``, docs/vllm.md V13).

The compiled core reads a batch of plain stores and removals straight from its msgpack: what it returns
is exactly what the general path (msgspec's decoders, then ``PodConverter``) makes of the same payload,
and for anything else it returns None, so that the general path reads it (and says what is wrong). The
pure-Python backend has no such reader: its answer is always None. Malformed input is tried in a
subprocess, so that a crash of the reader is a failure and not the end of the run.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from typing import Any, List, Optional, Tuple

import msgspec
import numpy as np
import pytest

from helpers import BACKENDS, COMPILED
from prefixindex import _core_py
from prefixindex.vllm._convert import PodConverter
from prefixindex.vllm._wire import WireError, decode_event, read_batch

from test_vllm_decode import batch, cleared, removed, stored

BS = 4
MODEL, POD = "model", "pod-a"
compiled_only = pytest.mark.skipif(COMPILED is None, reason="the compiled core is not built in this run")


def converter(**kwargs: Any) -> PodConverter:
    return PodConverter(POD, MODEL, BS, {"sql": 5}, **kwargs)


def read(payload: bytes, conv: Optional[PodConverter] = None, backend: Any = None) -> Any:
    """What a backend's reader makes of a payload, for a converter's pod (the compiled one by default)."""
    conv = conv or converter()
    module = backend or COMPILED
    return module.read_plain_batch(payload, conv.model, conv.pod, conv.block_size, conv._plain_mediums,
                                   not conv.lora_blocks and not conv.groups)


def general(payload: bytes, conv: Optional[PodConverter] = None) -> Optional[Tuple[Any, List[Any], Any]]:
    """(ts, events, rank) by the general path, or None when it reads the batch as anything but plain
    stores and removals of the base model (a malformed batch or event, a skip, a clear, an adapter)."""
    conv = conv or converter()
    try:
        ts, raws, rank = read_batch(payload)
        events: List[Any] = []
        for raw in raws:
            kind, item = conv.convert(decode_event(raw))
            if kind == "stored" and item.lora_id == -1:
                events.append(item)
            elif kind == "removed":
                events.extend(item)
            else:
                return None
    except (WireError, TypeError, ValueError):
        return None
    return ts, events, rank


def same_events(a: List[Any], b: List[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if type(x) is not type(y):
            return False
        for name in type(x).__slots__:
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray):
                if not (isinstance(v, np.ndarray) and u.dtype == v.dtype and u.shape == v.shape
                        and u.flags.c_contiguous == v.flags.c_contiguous and np.array_equal(u, v)):
                    return False
            elif type(u) is not type(v) or u != v:
                return False
    return True


def check(payload: bytes, conv: Optional[PodConverter] = None) -> Any:
    """The reader's answer, asserted to be None or the general path's; returns it."""
    got = read(payload, conv)
    if got is not None:
        want = general(payload, conv)
        assert want is not None, "the reader took a batch the general path does not read as plain"
        assert got[0] == want[0] and type(got[0]) is type(want[0]) and got[2] == want[2]
        assert same_events(got[1], want[1])
    return got


def _store(enc: str = "map", hashes: Any = (5, 6), parent: Any = None, **fields: Any) -> Any:
    hashes = list(hashes)
    tokens = fields.pop("tokens", list(range(100, 100 + BS * len(hashes))))
    return stored(hashes, tokens, fields.pop("block_size", BS), parent, enc=enc, **fields)


# ---------------------------------------------------------------------------------------------------
# what is read, and what is left


@compiled_only
@pytest.mark.parametrize("enc", ["map", "array"])
@pytest.mark.parametrize("shape,rank", [("array3", 0), ("array3", None), ("array3", 7), ("array3", -2),
                                        ("array2", None)])
def test_vllms_usual_batches_are_read_in_one_pass(enc, shape, rank):
    events = [_store(enc, [2**64 - 5, 7], parent=9), _store(enc, [8], medium=None),
              _store(enc, [11, 12], group_idx=0, trailing=True), removed([7], enc=enc),
              removed([2**64 - 1, 3], enc=enc, medium=None, group_idx=0)]
    payload = batch(events, shape=shape, rank=rank)
    got = check(payload)
    assert got is not None and len(got[1]) == 5
    assert got[1][0].parent_block_hash == 9 and got[1][0].block_hashes.tolist() == [2**64 - 5, 7]
    assert got[2] == (rank if shape == "array3" else None)


@compiled_only
def test_a_float32_timestamp_and_an_empty_batch_are_read():
    # msgspec writes floats as float64; other encoders may write float32 (0xca)
    body = msgspec.msgpack.encode([_store()])
    payload = b"\x93\xca" + struct.pack(">f", 1.5) + body + b"\x00"
    assert check(payload)[0] == 1.5
    assert check(batch([])) is not None and check(batch([]))[1] == []


@compiled_only
def test_every_tier_is_read_when_the_subscriber_indexes_all_tiers():
    conv = converter(mediums=None)
    payload = batch([_store(medium="CPU"), _store(hashes=[9], medium="disk"), removed([5], medium="CPU")])
    assert check(payload, conv) is not None
    assert read(batch([_store(medium="CPU")])) is None  # the default indexes GPU only


# one way each of not being a plain batch (the general path reads each of them, differently)
NOT_PLAIN = {
    "bytes hash": batch([_store(hashes=[b"\x01" * 8, 6])]),
    "negative hash": batch([_store(hashes=[-5, 6])]),
    "bytes parent": batch([_store(parent=b"\x02" * 8)]),
    "negative parent": batch([_store(parent=-3)]),
    "block size": batch([_store(block_size=2, tokens=list(range(4)))]),
    "placeholder": batch([_store(block_size=0, tokens=[])]),
    "token count": batch([_store(tokens=list(range(7)))]),
    "no blocks": batch([_store(hashes=[], tokens=[])]),
    "wide token": batch([_store(tokens=[2**32] + list(range(7)))]),
    "lora_id": batch([_store(lora_id=3)]),
    "lora_name": batch([_store(lora_name="sql")]),
    "extra_keys": batch([_store(extra={"extra_keys": [["sql"]]})]),
    "group 1": batch([_store(group_idx=1)]),
    "spec kind": batch([_store(kind="full_attention")]),
    "sliding window": batch([_store(extra={"kv_cache_spec_sliding_window": 128})]),
    "tier": batch([_store(medium="CPU")]),
    "lower-case tier": batch([_store(medium="gpu")]),
    "unknown field": batch([_store(extra={"something_new": 1})]),
    "cleared": batch([_store(), cleared()]),
    "unknown event": batch([_store(), {"type": "BlockSomething", "x": 1}]),
    "removal tier": batch([removed([5], medium="CPU")]),
    "removal group": batch([removed([5], group_idx=1)]),
    "removal bytes hash": batch([removed([b"\x05"])]),
    "map batch": batch([_store()], shape="map"),
    "int timestamp": msgspec.msgpack.encode([17, [_store()], 0]),
    "four elements": msgspec.msgpack.encode([1.0, [_store()], 0, None]),
    "trailing byte": batch([_store()]) + b"\xc0",
    "duplicate key": batch([_store()]).replace(b"\xa7lora_id\xc0", b"\xa6medium\xc0"),
    "event not a container": msgspec.msgpack.encode([1.0, ["BlockStored"], 0]),
    "array store too long": batch([["BlockStored", [5], None, list(range(4)), BS] + [None] * 8]),
    "array removal too long": batch([["BlockRemoved", [5], None, None, None]]),
    "forged array length": b"\x93\xcb" + struct.pack(">d", 1.0) + b"\xdd\xff\xff\xff\xff\x00",
    "forged hash count": batch([_store()]).replace(b"\xacblock_hashes\x92", b"\xacblock_hashes\xdd\xff\xff\xff\xf0"),
}


@compiled_only
@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_anything_else_is_left_to_the_general_path(name):
    payload = NOT_PLAIN[name]
    assert read(payload) is None
    assert read(batch([_store()])) is not None  # the same converter reads the plain batch


@compiled_only
def test_a_payload_that_is_not_one_contiguous_buffer_is_left_to_the_general_path():
    payload = batch([_store()])
    assert read(memoryview(payload)) is not None and read(bytearray(payload)) is not None
    spread = memoryview(payload + payload)[::2]  # not contiguous
    for odd in (payload.decode("latin-1"), None, 17, spread):
        assert read(odd) is None


@compiled_only
def test_the_duplicate_key_case_really_has_a_duplicate_key():
    # (the replace above turns the lora_id key into a second "medium" key, which this reader refuses)
    assert NOT_PLAIN["duplicate key"].count(b"\xa6medium") == 2


@compiled_only
def test_removals_are_left_to_the_general_path_while_the_pod_tracks_adapter_blocks_or_groups():
    conv = converter()
    with_removal = batch([_store(), removed([5])])
    assert check(with_removal, conv) is not None
    conv.lora_blocks[5] = 5  # a block stored under the "sql" adapter: its removal goes to that context
    assert read(with_removal, conv) is None
    assert check(batch([_store()]), conv) is not None  # stores of the base model are still plain
    conv.lora_blocks.clear()
    conv.groups[3] = True
    assert read(with_removal, conv) is None


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_only_the_compiled_backend_reads_batches_itself(name):
    answer = read(batch([_store()]), backend=BACKENDS[name])
    assert (answer is None) == (name == "python")
    assert _core_py.read_plain_batch(batch([_store()]), MODEL, POD, BS, None, True) is None


@compiled_only
def test_the_subscribers_converter_uses_the_active_backends_reader_and_can_be_given_another():
    import prefixindex

    assert converter()._plain_reader is prefixindex._impl.read_plain_batch
    calls = []
    conv = converter(plain_reader=lambda *args: calls.append(args))
    assert conv.read_plain(batch([_store()])) is None and len(calls) == 1
    assert calls[0][1:] == (MODEL, POD, BS, conv._plain_mediums, True)
    # a caller's own token reader is honoured: the batch goes the general path, which calls it
    assert converter(token_bytes=_core_py.token_bytes_from_msgpack)._plain_reader is None


# ---------------------------------------------------------------------------------------------------
# malformed input, in a subprocess


def _seeds() -> List[bytes]:
    return [batch([_store("map", [2**64 - 5, 7], parent=9), removed([7])]),
            batch([_store("array", [3], medium=None), removed([3], enc="array")], shape="array2"),
            batch([_store("map", [1, 2, 3], group_idx=0, trailing=True)], rank=None)]


def fuzz() -> int:
    """Every truncation and every single-byte change (to a few telling values) of the seed payloads:
    the reader answers None or what the general path gives. Returns how many payloads it read."""
    done = 0
    for seed in _seeds():
        variants = [seed[:k] for k in range(len(seed))]
        for i in range(len(seed)):
            for byte in (0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xca, 0xcb, 0xcc, 0xcf,
                         0xd3, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff, seed[i] ^ 0x01):
                variants.append(seed[:i] + bytes([byte]) + seed[i + 1:])
        for payload in variants:
            check(payload)
            done += 1
    return done


@compiled_only
def test_truncated_and_corrupted_batches_are_none_or_the_general_result_and_never_crash():
    here = os.path.dirname(os.path.abspath(__file__))
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_vllm_plain_reader import fuzz
        print(fuzz())
    """)
    proc = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(here))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 10_000
