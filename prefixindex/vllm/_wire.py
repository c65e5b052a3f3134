"""Decoding of vLLM's KV-event payloads (the msgpack of one published batch) and of the frames around
them. No sockets and no index here: ``_loop`` does the transport, ``_convert`` makes index events.

Every shape vLLM has published is accepted (docs/vllm.md, V3):

- the batch as an array ``[ts, events]`` / ``[ts, events, data_parallel_rank]`` or as a map;
- each event as a tagged array ``["BlockStored", ...]`` or a tagged map ``{"type": "BlockStored", ...}``,
  with trailing defaults present or left out and unknown extra fields (array elements past the known
  ones, unknown map keys) ignored;
- block hashes as msgpack unsigned 64-bit ints (or any int in [-2**63, 2**64)) or as bytes, of which
  the last 8 are read big-endian.

The batch is decoded with its events left as ``msgspec.Raw``; each event is then decoded on its own,
so one bad or unknown event costs only itself. ``token_ids`` stays ``msgspec.Raw`` too and goes to the
backend's ``token_bytes_from_msgpack`` (the compiled core reads it without a Python int per token).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import msgspec
import numpy as np

__all__ = [
    "END_OF_REPLAY",
    "FULL_ATTENTION_KINDS",
    "INT_STORED_TYPES",
    "Batch",
    "CLEARED_TYPES",
    "REMOVED_TYPES",
    "STORED_TYPES",
    "UnknownEvent",
    "WireError",
    "decode_batch",
    "decode_event",
    "hash_from_wire",
    "hash_list",
    "plain_batch_function",
    "read_batch",
    "read_batch_fast",
    "read_seq",
    "token_bytes_function",
]

#: ``kv_cache_spec_kind`` values whose blocks the index holds: attention over the whole prefix.
FULL_ATTENTION_KINDS = frozenset({"full_attention", "mla_attention", "sink_full_attention"})

_U64 = (1 << 64) - 1


class WireError(ValueError):
    """A payload or event that cannot be read: the subscriber counts it as malformed and skips it."""


# ---------------------------------------------------------------------------------------------------
# wire types

_Hash = Union[int, bytes]


class _BatchArray(msgspec.Struct, array_like=True):
    ts: Optional[float]
    events: List[msgspec.Raw]
    data_parallel_rank: Optional[int] = None


class _BatchMap(msgspec.Struct):
    events: List[msgspec.Raw]
    ts: Optional[float] = None
    data_parallel_rank: Optional[int] = None


# The three event types, once as tagged arrays (legacy) and once as tagged maps (vLLM PR 42892).
# Field order is the wire order; everything after block_size may be left out.

class _StoredA(msgspec.Struct, array_like=True, tag="BlockStored"):
    block_hashes: List[_Hash]
    parent_block_hash: Optional[_Hash]
    token_ids: msgspec.Raw
    block_size: int
    lora_id: Optional[int] = None
    medium: Optional[str] = None
    lora_name: Optional[str] = None
    extra_keys: Any = None
    group_idx: Optional[int] = None
    kv_cache_spec_kind: Optional[str] = None


class _RemovedA(msgspec.Struct, array_like=True, tag="BlockRemoved"):
    block_hashes: List[_Hash]
    medium: Optional[str] = None
    group_idx: Optional[int] = None


class _ClearedA(msgspec.Struct, array_like=True, tag="AllBlocksCleared"):
    pass


class _StoredM(msgspec.Struct, tag_field="type", tag="BlockStored"):
    block_hashes: List[_Hash]
    token_ids: msgspec.Raw
    block_size: int
    parent_block_hash: Optional[_Hash] = None
    lora_id: Optional[int] = None
    medium: Optional[str] = None
    lora_name: Optional[str] = None
    extra_keys: Any = None
    group_idx: Optional[int] = None
    kv_cache_spec_kind: Optional[str] = None


class _RemovedM(msgspec.Struct, tag_field="type", tag="BlockRemoved"):
    block_hashes: List[_Hash]
    medium: Optional[str] = None
    group_idx: Optional[int] = None


class _ClearedM(msgspec.Struct, tag_field="type", tag="AllBlocksCleared"):
    pass


# The same stores with int hashes only (what vLLM sends): a batch that decodes with these needs no
# per-hash type check, and its stores can take the converter's plain path (PodConverter.plain_stored).
# A subclass keeps the field order and is still one of STORED_TYPES; the narrower field types are
# what msgspec checks (mypy sees a list type changed in a subclass, hence the ignores).

class _StoredIntA(_StoredA, tag="BlockStored"):
    block_hashes: List[int]  # type: ignore[assignment]
    parent_block_hash: Optional[int]


class _StoredIntM(_StoredM, tag="BlockStored"):
    block_hashes: List[int]  # type: ignore[assignment]
    parent_block_hash: Optional[int] = None


class _TagA(msgspec.Struct, array_like=True):
    tag: str


class _TagM(msgspec.Struct):
    type: str


class UnknownEvent:
    """An event of a type this decoder does not know (a newer vLLM): skipped, counted, not malformed."""

    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"UnknownEvent({self.tag!r})"


STORED_TYPES = (_StoredA, _StoredM)   # (and their int-hash subclasses)
INT_STORED_TYPES = frozenset({_StoredIntA, _StoredIntM})
REMOVED_TYPES = (_RemovedA, _RemovedM)
CLEARED_TYPES = (_ClearedA, _ClearedM)
_KNOWN_TAGS = frozenset({"BlockStored", "BlockRemoved", "AllBlocksCleared"})

class _TypedMapBatch(msgspec.Struct, array_like=True):
    ts: Optional[float]
    events: List[Union[_StoredM, _RemovedM, _ClearedM]]
    data_parallel_rank: Optional[int] = None


class _TypedArrayBatch(msgspec.Struct, array_like=True):
    ts: Optional[float]
    events: List[Union[_StoredA, _RemovedA, _ClearedA]]
    data_parallel_rank: Optional[int] = None


class _IntMapBatch(msgspec.Struct, array_like=True):
    ts: Optional[float]
    events: List[Union[_StoredIntM, _RemovedM, _ClearedM]]
    data_parallel_rank: Optional[int] = None


class _IntArrayBatch(msgspec.Struct, array_like=True):
    ts: Optional[float]
    events: List[Union[_StoredIntA, _RemovedA, _ClearedA]]
    data_parallel_rank: Optional[int] = None


# read_batch_fast tries these in turn. A decoder that does not fit stops at the first event that does not
# fit it: at once for the other encoding, and at the first hash for a pod that sends bytes hashes.
_TYPED_BATCH_DECODERS = tuple(msgspec.msgpack.Decoder(t).decode for t in (
    _IntMapBatch, _IntArrayBatch, _TypedMapBatch, _TypedArrayBatch))
_batch_array = msgspec.msgpack.Decoder(_BatchArray)
_batch_map = msgspec.msgpack.Decoder(_BatchMap)
_event_array = msgspec.msgpack.Decoder(Union[_StoredA, _RemovedA, _ClearedA])
_event_map = msgspec.msgpack.Decoder(Union[_StoredM, _RemovedM, _ClearedM])
_tag_array = msgspec.msgpack.Decoder(_TagA)
_tag_map = msgspec.msgpack.Decoder(_TagM)


def _container(first: int) -> str:
    """What a msgpack value starting with this byte is: "array", "map" or "other"."""
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "array"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "map"
    return "other"


#: What msgspec raises for bytes it cannot decode as the type asked for. RecursionError too: a value
#: nested thousands deep (even one that is only skipped, as an ignored field) exceeds msgspec's depth
#: limit, and that is one bad event or batch from the peer, not a failure of the subscriber (V3, V8).
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def _error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# decoding


#: The seq of the message that ends a replay (both reply shapes), as a signed 8-byte frame.
END_OF_REPLAY = -1


def read_seq(frame: bytes) -> int:
    """The seq of a message: 8 bytes big-endian, read signed so that the end-of-replay marker is -1."""
    if len(frame) != 8:
        raise WireError(f"the seq frame has {len(frame)} bytes, not 8")
    return int.from_bytes(frame, "big", signed=True)


Batch = Tuple[Optional[float], List[msgspec.Raw], Optional[int]]
"""(ts, events, data_parallel_rank) of one published batch; each event still msgpack."""


def read_batch(payload: Any) -> Batch:
    """One published batch as (ts, events, data_parallel_rank); WireError when it is not a batch."""
    view = memoryview(payload)
    if not view.nbytes:
        raise WireError("empty payload")
    shape = _container(view[0] if view.format == "B" else view.cast("B")[0])
    try:
        if shape == "array":
            b: Any = _batch_array.decode(payload)
        elif shape == "map":
            b = _batch_map.decode(payload)
        else:
            raise WireError("not an event batch: the payload is neither a msgpack array nor a map")
    except _UNDECODABLE as exc:
        raise WireError(f"not an event batch: {_error_text(exc)}") from None
    return b.ts, b.events, b.data_parallel_rank


def read_batch_fast(payload: Any) -> Optional[Tuple[Optional[float], List[Any], Optional[int]]]:
    """The batch with its events decoded in one go, when they are all known and well formed in one
    encoding (the usual case: one decoder call instead of one per event); None otherwise, and the
    caller takes ``read_batch`` and ``decode_event`` (which say what is wrong with which event).
    Stores whose hashes are all ints come back as INT_STORED_TYPES, others as the general store types."""
    for decode in _TYPED_BATCH_DECODERS:
        try:
            b: Any = decode(payload)
        except _UNDECODABLE:
            continue
        return b.ts, b.events, b.data_parallel_rank
    return None


def decode_batch(payload: Any) -> List[msgspec.Raw]:
    """The events (each still msgpack, as ``msgspec.Raw``) of one published batch (WireError if none)."""
    return read_batch(payload)[1]


def decode_event(raw: Any) -> Any:
    """One event as a wire struct (array or map form), or an ``UnknownEvent``; WireError if malformed."""
    view = memoryview(raw)
    if not view.nbytes:
        raise WireError("empty event")
    shape = _container(view.cast("B")[0] if view.format != "B" else view[0])
    if shape == "other":
        raise WireError("an event must be a tagged msgpack array or map")
    decoder: Any = _event_array if shape == "array" else _event_map
    try:
        return decoder.decode(raw)
    except _UNDECODABLE as exc:
        error = exc
    tag: Optional[str]
    try:  # which type was it? An unknown one is not an error, a known one with bad fields is.
        tag = _tag_array.decode(raw).tag if shape == "array" else _tag_map.decode(raw).type
    except _UNDECODABLE:
        tag = None
    if tag is not None and tag not in _KNOWN_TAGS:
        return UnknownEvent(tag)
    raise WireError(f"bad {tag or 'event'}: {_error_text(error)}")


def hash_from_wire(value: Any, what: str = "block hash") -> int:
    """A block hash as vLLM sends it (an int, or bytes whose last 8 are big-endian) as an int."""
    if type(value) is bytes:
        if not value:
            raise WireError(f"{what} is empty bytes")
        return int.from_bytes(value[-8:], "big")
    return value  # type: ignore[no-any-return]  # an int; the index checks its range


def hash_list(values: List[Any]) -> Any:
    """Block hashes as decoded (ints and/or bytes) for the event constructors. A list of ints goes as it
    is: the constructors take ints (modulo 2**64) in one C pass where the compiled converters are loaded
    (numpy's conversion of a list of large ints cost ~0.8 us an event). Bytes are read here, by the
    wire's rule (the last 8 bytes, big-endian, however few there are)."""
    if bytes not in set(map(type, values)):
        return values if type(values) is list else list(values)
    return [hash_from_wire(h, "block_hashes item") for h in values]


def token_bytes_function() -> Callable[[Any], np.ndarray]:
    """The active backend's msgpack token reader (the compiled one avoids a Python int per token)."""
    import prefixindex

    fn: Any = getattr(prefixindex._impl, "token_bytes_from_msgpack", None)
    if fn is None:
        from .. import _core_py

        fn = _core_py.token_bytes_from_msgpack
    return fn  # type: ignore[no-any-return]


def plain_batch_function() -> Callable[..., Any]:
    """The active backend's one-pass reader of plain batches (docs/vllm.md, V13); the pure-Python
    backend's always answers None (the general path)."""
    import prefixindex

    return prefixindex._impl.read_plain_batch


