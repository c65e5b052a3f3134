"""Decoding of vLLM's KV-event payloads (the msgpack of one published batch), and their conversion
into index events. No sockets here: ``prefixindex.vllm`` does the transport.

Every shape of /work/shared/VLLM_KV_EVENTS.md is accepted (docs/vllm.md, "What is decoded"):

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

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import msgspec
import numpy as np

from ._events import AllBlocksCleared, BlockRemoved, BlockStored

__all__ = [
    "FULL_ATTENTION_KINDS",
    "PodConverter",
    "UnknownEvent",
    "WireError",
    "decode_batch",
    "decode_event",
    "hash_from_wire",
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


_STORED = (_StoredA, _StoredM)
_REMOVED = (_RemovedA, _RemovedM)
_CLEARED = (_ClearedA, _ClearedM)
_KNOWN_TAGS = frozenset({"BlockStored", "BlockRemoved", "AllBlocksCleared"})

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


def _error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# decoding


def decode_batch(payload: Any) -> List[msgspec.Raw]:
    """The events (each still msgpack, as ``msgspec.Raw``) of one published batch.

    Raises WireError when the payload is not a batch in any of the accepted shapes.
    """
    view = memoryview(payload)
    if not view.nbytes:
        raise WireError("empty payload")
    shape = _container(view[0] if view.format == "B" else view.cast("B")[0])
    try:
        if shape == "array":
            return _batch_array.decode(payload).events
        if shape == "map":
            return _batch_map.decode(payload).events
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(f"not an event batch: {_error_text(exc)}") from None
    raise WireError("not an event batch: the payload is neither a msgpack array nor a map")


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
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        error = exc
    tag: Optional[str]
    try:  # which type was it? An unknown one is not an error, a known one with bad fields is.
        tag = _tag_array.decode(raw).tag if shape == "array" else _tag_map.decode(raw).type
    except (msgspec.DecodeError, msgspec.ValidationError):
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
    return value


def _hash_list(values: List[Any]) -> Any:
    for v in values:
        if type(v) is bytes:
            return [hash_from_wire(h, "block_hashes item") for h in values]
    return values


def _token_bytes_function() -> Callable[[Any], np.ndarray]:
    """The active backend's msgpack token reader (the compiled one avoids a Python int per token)."""
    import prefixindex

    fn = getattr(prefixindex._impl, "token_bytes_from_msgpack", None)
    if fn is None:
        from . import _core_py

        fn = _core_py.token_bytes_from_msgpack
    return fn


# ---------------------------------------------------------------------------------------------------
# conversion into index events


Converted = Tuple[str, Any]
"""(kind, payload): ("stored", BlockStored), ("removed", [BlockRemoved, one per lora_id]),
("cleared", AllBlocksCleared),
or a skip: ("filtered", reason), ("unknown", tag), ("unmapped_lora", lora_name)."""


class PodConverter:
    """Turns one pod's wire events into index events (docs/vllm.md, "What is indexed").

    - ``model``: the model name of every context this pod's events go to.
    - LoRA: ``lora_name`` through ``lora_map`` when it is mapped, else the event's ``lora_id``, else -1
      (no adapter) when the event names no adapter. A name that is not mapped, on an event without
      ``lora_id``, cannot be placed: the event is skipped as "unmapped_lora".
    - ``mediums``: the tiers that are indexed (``None`` on the wire counts as "GPU": publishers before
      the field existed sent GPU events only). Comparison ignores case.
    - ``spec_kinds``: the ``kv_cache_spec_kind`` values that are indexed. An event without a kind is
      indexed when its ``group_idx`` is absent or 0. A BlockRemoved (which carries no kind) follows the
      decision made for its ``group_idx`` by this pod's stores, and is applied for ``group_idx`` absent
      or 0 until a store said otherwise.
    - ``block_size``: the table's; a BlockStored with another block size, or whose token count is not
      ``len(block_hashes) * block_size``, is malformed (WireError).
    - BlockRemoved names no adapter: it is applied in every (model, lora_id) the pod stored into.
    - AllBlocksCleared clears the pod in every context (a pod name stands for one engine and its cache).
    """

    def __init__(self, pod: str, model: str, block_size: int, lora_map: Optional[Mapping[str, int]] = None,
                 mediums: Optional[Iterable[Optional[str]]] = ("GPU",),
                 spec_kinds: Optional[Iterable[str]] = FULL_ATTENTION_KINDS,
                 token_bytes: Optional[Callable[[Any], np.ndarray]] = None) -> None:
        self.pod = pod
        self.model = model
        self.block_size = int(block_size)
        self.lora_map: Dict[str, int] = dict(lora_map or {})
        self.mediums = None if mediums is None else frozenset(
            "GPU" if m is None else str(m).upper() for m in mediums)
        self.spec_kinds = None if spec_kinds is None else frozenset(str(k).lower() for k in spec_kinds)
        self.token_bytes = token_bytes or _token_bytes_function()
        self.groups: Dict[int, bool] = {}  # group_idx -> indexed?, learned from BlockStored kinds
        self.loras = {-1}  # the lora_ids this pod stored into (where a BlockRemoved must go)

    def reset(self) -> None:
        """Forget what was learned about this pod's engine (it restarted, or the pod was removed)."""
        self.groups.clear()
        self.loras = {-1}

    # -- filters -------------------------------------------------------------------------------------

    def _medium_ok(self, medium: Optional[str]) -> bool:
        if self.mediums is None:
            return True
        return ("GPU" if medium is None else medium.upper()) in self.mediums

    def _stored_group_ok(self, kind: Optional[str], group: Optional[int]) -> bool:
        if kind is None:
            ok = group is None or group == 0
        else:
            ok = self.spec_kinds is None or kind.lower() in self.spec_kinds
            if group is not None:
                self.groups[group] = ok
        return ok

    def _removed_group_ok(self, group: Optional[int]) -> bool:
        if group is None:
            return True
        known = self.groups.get(group)
        return (group == 0) if known is None else known

    def _lora(self, lora_name: Optional[str], lora_id: Optional[int]) -> Optional[int]:
        if lora_name is not None:
            mapped = self.lora_map.get(lora_name)
            if mapped is not None:
                return mapped
            return lora_id  # None: unmapped
        return -1 if lora_id is None else lora_id

    # -- conversion ----------------------------------------------------------------------------------

    def convert(self, ev: Any) -> Converted:
        """One decoded wire event as an index event or a skip; WireError when it is malformed."""
        if isinstance(ev, _STORED):
            return self._stored(ev)
        if isinstance(ev, _REMOVED):
            if not self._medium_ok(ev.medium):
                return "filtered", f"medium {ev.medium}"
            if not self._removed_group_ok(ev.group_idx):
                return "filtered", f"group_idx {ev.group_idx}"
            # vLLM's BlockRemoved names no adapter, and the index keeps engine hashes per context: the
            # removal goes to every (model, lora_id) this pod has stored into. A hash is known in one of
            # them at most (vLLM's hash covers the adapter), so the others ignore it.
            hashes = _hash_list(ev.block_hashes)
            return "removed", [_build(BlockRemoved, hashes, self.model, lora_id, self.pod)
                               for lora_id in sorted(self.loras)]
        if isinstance(ev, _CLEARED):
            self.loras = {-1}
            return "cleared", AllBlocksCleared(self.pod)
        if isinstance(ev, UnknownEvent):
            return "unknown", ev.tag
        raise WireError(f"not an event: {type(ev).__name__}")

    def _stored(self, ev: Any) -> Converted:
        if not self._medium_ok(ev.medium):
            return "filtered", f"medium {ev.medium}"
        if not self._stored_group_ok(ev.kv_cache_spec_kind, ev.group_idx):
            return "filtered", f"kv_cache_spec_kind {ev.kv_cache_spec_kind}, group_idx {ev.group_idx}"
        if ev.block_size != self.block_size:
            raise WireError(f"BlockStored has block_size {ev.block_size} but the index uses block_size "
                            f"{self.block_size} (set Config.block_size / AIBRIX_PREFIX_CACHE_BLOCK_SIZE "
                            "to vLLM's --block-size)")
        lora_id = self._lora(ev.lora_name, ev.lora_id)
        if lora_id is None:
            return "unmapped_lora", ev.lora_name
        n = len(ev.block_hashes)
        try:
            tokens = self.token_bytes(ev.token_ids)
        except (TypeError, ValueError) as exc:
            raise WireError(f"bad token_ids: {_error_text(exc)}") from None
        if len(tokens) != 4 * self.block_size * n:
            raise WireError(f"BlockStored has {len(tokens) // 4} token ids for {n} blocks of block_size "
                            f"{self.block_size} (expected {n * self.block_size})")
        parent = ev.parent_block_hash
        if parent is not None:
            parent = hash_from_wire(parent, "parent_block_hash")
        hashes = _hash_list(ev.block_hashes)
        event = _build(BlockStored, hashes, tokens.reshape(n, -1) if n else tokens, self.model, lora_id,
                       self.pod, parent_block_hash=parent)
        self.loras.add(event.lora_id)
        return "stored", event


def _build(cls: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise WireError(f"bad {cls.__name__}: {_error_text(exc)}") from None
