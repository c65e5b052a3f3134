"""Calls of the module-level functions, for the differential tests (issue 8, Deliver 4 and 9; SPEC 9).

Every backend module exports ``xxh64_digest``, ``prefix_hash_chain`` and ``token_bytes_from_msgpack``;
each item calls one with hostile arguments and returns its result (the parent compares the result, or the
exception's type and message, across backends). EXPECT_VALUE_ERROR lists the calls that must be a
ValueError on every backend: a size that overflows, or that exceeds the data.
"""

from __future__ import annotations

import functools
from typing import Tuple, Any, Callable, Dict

import numpy as np

X64 = b"x" * 64
_strided = memoryview(bytes(range(64)))[::2]


class LyingInt(int):
    """An int whose __int__, __index__ and comparisons answer for another value: its own value counts."""

    def __int__(self) -> int:
        return int.__int__(self) + 1

    def __index__(self) -> int:
        return int.__int__(self) + 1

    def __lt__(self, other: object) -> bool:
        return False

    def __ge__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__

CHAIN: Dict[str, Tuple[Any, ...]] = {
    "spec_vector": (bytes(range(64)), 16, 0, 0, 4),
    "seed_and_parent": (bytes(range(64)), 16, 12345, 2**64 - 1, 4),
    "partial_use": (X64, 16, 0, 0, 3),
    "no_blocks": (X64, 16, 0, 0, 0),
    "empty_data_no_blocks": (b"", 16, 0, 0, 0),
    "zero_width_blocks": (X64, 0, 7, 7, 3),
    "zero_width_no_blocks": (X64, 0, 7, 7, 0),
    "zero_width_huge_n_blocks": (b"", 0, 0, 0, 2**64 - 1),  # the fallback looped 2**64 times
    "zero_width_2_40_blocks": (b"", 0, 0, 0, 2**40),
    "zero_width_at_the_bound": (b"", 0, 5, 6, 2**20),
    "zero_width_past_the_bound": (b"", 0, 5, 6, 2**20 + 1),
    "lying_int_seed_and_parent": (X64, 16, LyingInt(2), LyingInt(9), 4),
    "bytearray": (bytearray(X64), 8, 1, 2, 8),
    "uint64_array": (np.arange(8, dtype=np.uint64), 16, 0, 0, 4),
    "2d_uint8_array": (np.zeros((4, 16), dtype=np.uint8), 16, 0, 0, 4),
    # sizes that overflow or exceed the data: ValueError
    "wrapping_size": (X64, 2**63, 0, 0, 2),
    "wrapping_size_2": (X64, 2**32, 0, 0, 2**32),
    "wrapping_size_3": (X64, 2**62 + 1, 0, 0, 4),
    "huge_block_bytes": (X64, 2**64 - 1, 0, 0, 1),
    "huge_n_blocks": (X64, 1, 0, 0, 2**64 - 1),
    "one_block_too_many": (X64, 16, 0, 0, 5),
    "block_past_the_end": (X64, 65, 0, 0, 1),
    "empty_data_one_block": (b"", 1, 0, 0, 1),
    # out-of-range or wrong-type arguments: whatever error, the same on both backends
    "negative_block_bytes": (X64, -1, 0, 0, 1),
    "negative_n_blocks": (X64, 16, 0, 0, -1),
    "seed_too_big": (X64, 16, 2**64, 0, 1),
    "seed_negative": (X64, 16, -1, 0, 1),
    "parent_too_big": (X64, 16, 0, 2**64, 1),
    "parent_negative": (X64, 16, 0, -1, 1),
    "float_block_bytes": (X64, 16.0, 0, 0, 1),
    "float_seed": (X64, 16, 0.5, 0, 1),
    "str_data": ("x" * 64, 16, 0, 0, 1),
    "none_data": (None, 16, 0, 0, 1),
    "strided_memoryview": (_strided, 16, 0, 0, 2),
}
EXPECT_VALUE_ERROR = {"chain_" + k for k in (
    "wrapping_size", "wrapping_size_2", "wrapping_size_3", "huge_block_bytes", "huge_n_blocks",
    "one_block_too_many", "block_past_the_end", "empty_data_one_block",
    # blocks of 0 bytes: no data bounds how many (docs/decisions.md)
    "zero_width_huge_n_blocks", "zero_width_2_40_blocks", "zero_width_past_the_bound")}

DIGEST: Dict[str, Tuple[Any, ...]] = {
    "empty": (b"",),
    "abc": (b"abc", 0),
    "max_seed": (b"abc", 2**64 - 1),
    "seed_too_big": (b"abc", 2**64),
    "seed_negative": (b"abc", -1),
    "seed_float": (b"abc", 1.5),
    "seed_bool": (b"abc", True),
    "seed_lying_int": (b"abc", LyingInt(2)),  # the fallback hashed with __int__'s 3, the core with 2
    "seed_lying_int_huge": (b"abc", LyingInt(2**64)),  # out of range, whatever its comparisons say
    "bad_data_and_bad_seed": (None, -1),  # two bad arguments: the seed's error, on both backends
    "str_data_and_float_seed": ("abc", 1.5),
    "bytearray": (bytearray(b"abc" * 100), 3),
    "uint32_array": (np.arange(100, dtype=np.uint32), 9),
    "readonly_array": (np.frombuffer(b"abcdefgh" * 8, dtype=np.uint8), 1),
    "strided_memoryview": (_strided, 0),
    "str": ("abc", 0),
    "none": (None, 0),
    "int": (5, 0),
}

MSGPACK: Dict[str, bytes] = {
    "fixarray": bytes([0x93, 0x01, 0x02, 0x03]),
    "empty_array": bytes([0x90]),
    "array16_uint8_16_32": bytes([0xDC, 0x00, 0x03, 0xCC, 0xFF, 0xCD, 0x01, 0x00, 0xCE, 0xFF, 0xFF, 0xFF, 0xFF]),
    "uint64_small_id": bytes([0x91, 0xCF]) + (5).to_bytes(8, "big"),
    "int64_small_id": bytes([0x91, 0xD3]) + (5).to_bytes(8, "big"),
    "id_too_big": bytes([0x91, 0xCF]) + (2**32).to_bytes(8, "big"),
    "negative_fixint": bytes([0x91, 0xFF]),
    "negative_int8": bytes([0x91, 0xD0, 0x80]),
    "float": bytes([0x91, 0xCB]) + bytes(8),
    "nested": bytes([0x91, 0x91, 0x01]),
    "str_element": bytes([0x91, 0xA1, 0x61]),
    "map": bytes([0x81, 0x01, 0x02]),
    "bare_int": bytes([0x05]),
    "empty": b"",
    "truncated": bytes([0x93, 0x01, 0x02]),
    "truncated_uint32": bytes([0x91, 0xCE, 0x00]),
    "forged_array32_count": bytes([0xDD, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
    "forged_array16_count": bytes([0xDC, 0xFF, 0xFF, 0x01, 0x02]),
    "trailing_bytes": bytes([0x91, 0x01, 0x01]),
    "array16_truncated_header": bytes([0xDC, 0x00]),
}


def _chain(args: Tuple[Any, ...], backend: Any) -> Any:
    return backend.prefix_hash_chain(*args)


def _digest(args: Tuple[Any, ...], backend: Any) -> Any:
    return backend.xxh64_digest(*args)


def _msgpack(raw: Any, backend: Any) -> Any:
    return backend.token_bytes_from_msgpack(raw)


ITEMS: Dict[str, Callable[[Any], Any]] = {}
for _k, _a in CHAIN.items():
    ITEMS["chain_" + _k] = functools.partial(_chain, _a)
for _k, _a in DIGEST.items():
    ITEMS["digest_" + _k] = functools.partial(_digest, _a)
for _k, _raw in MSGPACK.items():
    ITEMS["msgpack_" + _k] = functools.partial(_msgpack, _raw)
    ITEMS["msgpack_" + _k + "_bytearray"] = functools.partial(_msgpack, bytearray(_raw))
ITEMS["msgpack_str_input"] = functools.partial(_msgpack, "\x91\x01")
ITEMS["msgpack_none_input"] = functools.partial(_msgpack, None)
ITEMS["msgpack_strided_input"] = functools.partial(_msgpack, memoryview(bytes([0x92, 0, 1, 0, 2]))[::2])
ITEMS["msgpack_long_array"] = functools.partial(
    _msgpack, bytes([0xDD]) + (100000).to_bytes(4, "big") + bytes([0xCE]) + b"".join(
        (i * 40000).to_bytes(4, "big") + bytes([0xCE]) for i in range(99999)) + (7).to_bytes(4, "big"))
