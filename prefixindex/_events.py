"""KV-cache events and the normalisation of every input, shared by both backends.

Everything a caller hands the index passes through here first, so both backends see the same
canonical arrays and raise the same errors with the same messages. Validation is complete before
an event object exists: a table never sees a half-checked event, and a rejected input changes nothing.

Canonical forms:
- engine block hashes and prefix hashes: a 1-D C-contiguous ``numpy.uint64`` array;
- token bytes of an event: a 2-D C-contiguous ``numpy.uint8`` array, one row per block;
- token bytes of a query: a 1-D C-contiguous ``numpy.uint8`` array (or the caller's ``bytes``);
- names (models, pods): plain ``str`` (a ``str`` subclass, such as an ``enum`` of pods, gives its text).

Every conversion tries the fast converter first (``prefixindex._convert``, one C pass, or its vectorised
twin ``_convert_py``), which returns None for anything off the happy path; the careful code below then
runs, and raises the documented error. So the happy path costs no per-element Python work, and the
errors are the same whichever converter ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbcSet
from typing import Any, Callable, Iterable, List, NoReturn, Optional, Tuple

import numpy as np

from . import _backend

# The converters of the backend in use (the same rules as the table's, prefixindex/_backend.py).
CONVERTERS = _backend.choose("prefixindex._convert", "prefixindex._convert_py")
_fast_token_bytes: Callable[[Any], Any] = CONVERTERS.token_bytes
_fast_block_bytes: Callable[[Any, int], Optional[np.ndarray]] = CONVERTERS.token_ids_block_bytes
_fast_hashes: Callable[[Any], Optional[np.ndarray]] = CONVERTERS.hashes_u64
_MAX_TOKEN_IDS: int = CONVERTERS.MAX_TOKEN_IDS  # 4 bytes an id must fit in an array's size

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "encode_tokens",
]

_U64_MASK = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_TOKEN_LIMIT = 1 << 32
_BYTES_LIKE = (bytes, bytearray, memoryview)
_U8 = np.dtype(np.uint8)  # `dtype is _U8` first: `dtype == np.uint8` costs ~0.3 us a time


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------------
# scalars


def check_str(value: Any, what: str) -> str:
    """A name as a plain ``str``: a str subclass (an Enum of pods, say) becomes the str of the same text,
    so that the index never calls a subclass's ``__hash__``/``__eq__`` (SPEC, Public API; SPEC 7)."""
    if type(value) is str:
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {_type_name(value)}")
    return str.__str__(value)  # not str(value): that is "Pod.A" for a str enum


def check_pod(value: Any, what: str = "pod") -> str:
    """A pod name: a non-empty str, as a plain str. ``""`` is only the "every pod" of BlockRemoved."""
    if type(value) is str and value:
        return value
    pod = check_str(value, what)
    if not pod:
        raise ValueError(f"{what} must be a non-empty pod name (\"\" means every pod only in BlockRemoved)")
    return pod


def check_lora_id(value: Any, what: str = "lora_id") -> int:
    if not _is_int(value):
        raise TypeError(f"{what} must be an int (-1 for no adapter), not {_type_name(value)}")
    number = _exact_int(value)
    if not _I64_MIN <= number <= _I64_MAX:
        raise ValueError(f"{what} must fit in a signed 64-bit integer, got {number}")
    return number


def to_u64(value: Any, what: str) -> int:
    """An engine or prefix hash: any int in [-2**63, 2**64), taken modulo 2**64, or bytes of 8 or more
    read as their last 8 bytes, big-endian (vLLM's digest form; SPEC, Terms)."""
    if isinstance(value, bytes):
        if len(value) < 8:
            raise ValueError(f"{what} as bytes must hold at least 8 bytes (the last 8 are the hash), "
                             f"got {len(value)}")
        return int.from_bytes(value[-8:], "big")
    if not _is_int(value):
        raise TypeError(f"{what} must be an int, not {_type_name(value)}")
    number = _exact_int(value)  # an int subclass by its value, as a seed or a LoRA id is (not its __int__)
    if not _I64_MIN <= number <= _U64_MASK:
        raise ValueError(f"{what} must be in [-2**63, 2**64), got {number}")
    return number & _U64_MASK


def hash_array(values: Any, what: str) -> np.ndarray:
    """A sequence or integer array of hashes as a 1-D C-contiguous uint64 array (values modulo 2**64;
    ``bytes`` elements by their last 8 bytes, big-endian)."""
    if type(values) is not np.ndarray:  # the fast converter takes lists and tuples
        out = _fast_hashes(values)
        if out is not None:
            return out
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{what} must be one-dimensional, got an array of shape {values.shape}")
        kind = values.dtype.kind
        if kind == "u" or kind == "i":
            # int64 -> uint64 wraps negatives modulo 2**64, which is the rule for hashes
            out = np.ascontiguousarray(values, dtype=np.uint64) if kind == "u" else \
                np.ascontiguousarray(values.astype(np.int64, copy=False)).view(np.uint64)
        elif kind == "O":
            out = _hash_list(values.tolist(), what)
        else:
            raise TypeError(f"{what} must hold ints, got an array of dtype {values.dtype}")
    elif isinstance(values, (str,) + _BYTES_LIKE) or not isinstance(values, Iterable) or _unordered(values):
        raise TypeError(f"{what} must be a sequence of ints, not {_type_name(values)}")
    else:
        out = _hash_list(values if isinstance(values, list) else list(values), what)
    return out


def _hash_list(values: List[Any], what: str) -> np.ndarray:
    out = _fast_hashes(values)  # a list made from an iterator or an object array may be plain after all
    if out is not None:
        return out
    return np.array([to_u64(v, f"{what}[{i}]") for i, v in enumerate(values)], dtype=np.uint64)


# ---------------------------------------------------------------------------------------------------
# tokens


def _token_ids_to_bytes(ids: np.ndarray, what: str) -> np.ndarray:
    """An integer array of token ids as flat big-endian 4-byte token bytes (uint8)."""
    if type(ids) is not np.ndarray:  # a subclass as its plain data: a masked array's masked ids are ids too,
        ids = np.asarray(ids)        # and its min()/max() would leave them out of the range check
    kind = ids.dtype.kind
    if kind not in "iu":
        raise TypeError(f"{what} must be token ids (ints) or token bytes (uint8), "
                        f"got an array of dtype {ids.dtype}")
    if ids.size > _MAX_TOKEN_IDS:  # (a zero-stride array of 2**62 int8 ids is one byte; 4 * n would wrap)
        raise ValueError(f"{ids.size:,} token ids are more than an array can hold (at most {_MAX_TOKEN_IDS:,})")
    if ids.size and (kind == "i" or ids.dtype.itemsize > 4):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= _TOKEN_LIMIT:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what}: token ids must be in [0, 2**32), got {bad}")
    return np.ascontiguousarray(ids.reshape(-1), dtype=">u4").view(np.uint8)


def _list_to_ids(values: List[Any], what: str) -> np.ndarray:
    for i, v in enumerate(values):
        if not _is_int(v):
            raise TypeError(f"{what}: token ids must be ints, got {_type_name(v)} at index {i}")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        big = next(v for v in values if not _I64_MIN <= int(v) <= _I64_MAX)
        raise ValueError(f"{what}: token ids must be in [0, 2**32), got {int(big)}") from None


def encode_tokens(token_ids: Any) -> np.ndarray:
    """Token ids as token bytes: each id as 4 bytes, unsigned big-endian (SPEC, Terms).

    Accepts a list of ints or a 1-D integer array (any dtype, byte order or strides).
    """
    # bytes and uint8 arrays are token *ids* here (each id < 256), not token bytes as in a query
    if type(token_ids) is not bytes and not (type(token_ids) is np.ndarray and token_ids.dtype == _U8):
        out: Optional[np.ndarray] = _fast_token_bytes(token_ids)  # an array: bytes are excluded above
        if out is not None:
            return out
    if isinstance(token_ids, np.ndarray):
        if token_ids.ndim != 1:
            raise ValueError(f"token ids must be one-dimensional, got an array of shape {token_ids.shape}")
        return _token_ids_to_bytes(token_ids, "token ids")
    if isinstance(token_ids, (str,) + _BYTES_LIKE) or not isinstance(token_ids, Iterable) or _unordered(token_ids):
        raise TypeError(f"token ids must be a list of ints or an integer array, not {_type_name(token_ids)}")
    return _token_ids_to_bytes(_list_to_ids(list(token_ids), "token ids"), "token ids")


def query_token_bytes(tokens: Any) -> Any:
    """The token bytes of a query: ``bytes`` as given, else a 1-D C-contiguous uint8 array.

    bytes-like or a 1-D uint8 array are token bytes; any other 1-D integer array or a list of ints
    are token ids (SPEC, Public API).
    """
    if type(tokens) is bytes:
        return tokens
    out = _fast_token_bytes(tokens)
    if out is not None:
        return out
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one-dimensional, got an array of shape {tokens.shape}")
        if tokens.dtype is _U8 or tokens.dtype == _U8:
            return np.ascontiguousarray(tokens)
        return _token_ids_to_bytes(tokens, "tokens")
    if isinstance(tokens, _BYTES_LIKE):
        arr = np.frombuffer(tokens, dtype=np.uint8) if not isinstance(tokens, memoryview) \
            else np.asarray(tokens)
        return query_token_bytes(arr) if arr.dtype != np.uint8 or arr.ndim != 1 else np.ascontiguousarray(arr)
    if isinstance(tokens, str) or not isinstance(tokens, Iterable) or _unordered(tokens):
        raise TypeError(f"tokens must be token bytes or token ids, not {_type_name(tokens)}")
    return _token_ids_to_bytes(_list_to_ids(list(tokens), "tokens"), "tokens")


def _unordered(value: Any) -> bool:
    """A set or a mapping: iterable, but in no order a sequence of tokens or hashes could mean."""
    return isinstance(value, (AbcSet, Mapping))


def _is_block(value: Any) -> bool:
    """Whether an element of an event's tokens is one block (token bytes or token ids), not a token."""
    return isinstance(value, (np.ndarray,) + _BYTES_LIKE) or (
        isinstance(value, Iterable) and not isinstance(value, str))


def event_token_bytes(tokens: Any, n_blocks: int) -> np.ndarray:
    """The tokens of a BlockStored as a 2-D (n_blocks, bytes_per_block) C-contiguous uint8 array."""
    if type(tokens) is not np.ndarray or tokens.ndim == 1:  # the subscriber's 2-D token bytes skip it
        out = _fast_block_bytes(tokens, n_blocks)  # flat token ids: the common form outside the subscriber
        if out is not None:
            return out
    if isinstance(tokens, np.ndarray):
        if tokens.dtype is _U8 or tokens.dtype == _U8:
            if tokens.ndim == 2:
                if tokens.shape[0] != n_blocks:
                    raise ValueError(f"tokens has {tokens.shape[0]} rows (blocks) but the event has "
                                     f"{n_blocks} block hashes")
                return np.ascontiguousarray(tokens)
            if tokens.ndim == 1:
                return _split_blocks(np.ascontiguousarray(tokens), n_blocks, 1)
            raise ValueError(f"tokens must be a 1-D or 2-D array, got shape {tokens.shape}")
        if tokens.ndim > 2:
            raise ValueError(f"tokens must be a 1-D or 2-D array, got shape {tokens.shape}")
        if tokens.dtype.kind in "iu":  # the count decides these errors: say them before a pass over the ids
            _check_block_split(int(np.asarray(tokens).size), n_blocks)  # (a zero-stride array of 2**61 is a byte)
        return _split_blocks(_token_ids_to_bytes(tokens, "tokens"), n_blocks, 4)
    if isinstance(tokens, _BYTES_LIKE):
        return _split_blocks(query_token_bytes(tokens), n_blocks, 1)
    if isinstance(tokens, str) or not isinstance(tokens, Iterable) or _unordered(tokens):
        raise TypeError(f"tokens must be token bytes or token ids, not {_type_name(tokens)}")
    items = tokens if isinstance(tokens, list) else list(tokens)
    if not items or not _is_block(items[0]):  # a flat list of token ids (anything else in it: TypeError)
        return _split_blocks(_token_ids_to_bytes(_list_to_ids(items, "tokens"), "tokens"), n_blocks, 4)
    # a sequence of blocks, each token bytes or token ids
    if len(items) != n_blocks:
        raise ValueError(f"tokens holds {len(items)} blocks but the event has {n_blocks} block hashes")
    blocks = []
    for i, block in enumerate(items):
        if _is_int(block) or isinstance(block, (str, bool, float)) or not (
                isinstance(block, (np.ndarray,) + _BYTES_LIKE) or isinstance(block, Iterable)):
            raise TypeError(f"tokens[{i}] must be a block of token bytes or token ids, "
                            f"not {_type_name(block)}")
        if isinstance(block, np.ndarray) and block.ndim != 1:
            raise ValueError(f"tokens[{i}] must be one-dimensional, got an array of shape {block.shape}")
        blocks.append(query_token_bytes(block))
    widths = {len(b) for b in blocks}
    if len(widths) != 1:
        raise ValueError(f"the blocks in tokens differ in length: {sorted(widths)} token bytes")
    return np.frombuffer(b"".join(bytes(b) for b in blocks), dtype=np.uint8).reshape(n_blocks, -1)


def _check_block_split(n_ids: int, n_blocks: int) -> None:
    """_split_blocks's errors for n_ids token ids, from their count alone."""
    if n_blocks == 0 and n_ids:
        raise ValueError(f"the event has no block hashes but {n_ids} tokens")
    if n_blocks and n_ids % n_blocks:
        raise ValueError(f"{n_ids} tokens do not divide into {n_blocks} equal blocks")


def _split_blocks(flat: Any, n_blocks: int, unit: int) -> np.ndarray:
    """Flat token bytes cut into n_blocks equal rows; unit is 4 for token ids, 1 for token bytes."""
    rows: np.ndarray = np.frombuffer(flat, dtype=np.uint8) if isinstance(flat, bytes) else np.asarray(flat)
    what = "tokens" if unit == 4 else "token bytes"
    if n_blocks == 0:
        if len(rows):
            raise ValueError(f"the event has no block hashes but {len(rows) // unit} {what}")
        return rows.reshape(0, 0)
    if len(rows) % n_blocks:
        raise ValueError(f"{len(rows) // unit} {what} do not divide into {n_blocks} equal blocks")
    return rows.reshape(n_blocks, -1)


# ---------------------------------------------------------------------------------------------------
# events


_new_object = object.__new__


def _refuse_set(self: Any, name: str, value: Any) -> NoReturn:
    raise AttributeError(f"{type(self).__name__} events are immutable: cannot set {name!r} "
                         "(build a new event instead)")


def _refuse_delete(self: Any, name: str) -> NoReturn:
    raise AttributeError(f"{type(self).__name__} events are immutable: cannot delete {name!r}")


# Events are built in __new__, not __init__: an event is complete when it exists, and calling __init__
# again on a live one (object.__init__) changes nothing (SPEC, Public API: immutable once built). The
# compiled core reads the slots by offset, so their names and order stay as they are.


class BlockStored:
    """A pod stored ``len(block_hashes)`` chained blocks in its KV cache (SPEC, Semantics 1).

    ``tokens`` holds the tokens of all blocks: a 2-D uint8 array ``(n_blocks, 4 * block_size)``, a
    sequence of per-block token bytes or token ids, flat token bytes (bytes-like or a 1-D uint8 array),
    or token ids (a flat or 2-D integer array, or a list of ints). The table checks that each block holds
    exactly its ``block_size`` tokens. ``source_pod`` must name the pod (non-empty). Immutable once built.
    """

    __slots__ = ("block_hashes", "tokens", "model_name", "lora_id", "source_pod", "parent_block_hash")
    block_hashes: np.ndarray
    tokens: np.ndarray
    model_name: str
    lora_id: int
    source_pod: str
    parent_block_hash: Optional[int]

    def __new__(cls, block_hashes: Any, tokens: Any, model_name: str, lora_id: int = -1,
                source_pod: str = "", parent_block_hash: Optional[int] = None) -> BlockStored:
        # exact-type checks first: the careful validators run only for input off the happy path
        hashes = _fast_hashes(block_hashes) if type(block_hashes) is list else None
        if hashes is None:
            hashes = hash_array(block_hashes, "block_hashes")
        if type(model_name) is not str:
            model_name = check_str(model_name, "model_name")
        if type(lora_id) is not int or not _I64_MIN <= lora_id <= _I64_MAX:
            lora_id = check_lora_id(lora_id)
        if type(source_pod) is not str or not source_pod:
            source_pod = _check_source_pod(source_pod, "a block is always stored by some pod")
        if parent_block_hash is not None and (type(parent_block_hash) is not int
                                              or not 0 <= parent_block_hash <= _U64_MASK):
            parent_block_hash = to_u64(parent_block_hash, "parent_block_hash")
        rows = _fast_block_bytes(tokens, len(hashes))
        if rows is None:
            rows = event_token_bytes(tokens, len(hashes))
        self = _new_object(cls)
        _write_stored(self, hashes, rows, model_name, lora_id, source_pod, parent_block_hash)
        return self

    __setattr__ = _refuse_set
    __delattr__ = _refuse_delete

    def __reduce__(self) -> Tuple[Any, ...]:
        # pickle and copy rebuild through __new__ (the checked arrays pass its checks again unchanged)
        return (type(self), (self.block_hashes, self.tokens, self.model_name, self.lora_id, self.source_pod,
                             self.parent_block_hash))

    @property
    def n_blocks(self) -> int:
        return len(self.block_hashes)

    def __repr__(self) -> str:
        return (f"BlockStored(n_blocks={len(self.block_hashes)}, bytes_per_block={self.tokens.shape[1]}, "
                f"model_name={self.model_name!r}, lora_id={self.lora_id}, source_pod={self.source_pod!r}, "
                f"parent_block_hash={self.parent_block_hash})")


class BlockRemoved:
    """A pod removed blocks; an empty ``source_pod`` means every pod of the context (SPEC 2).
    Immutable once built."""

    __slots__ = ("block_hashes", "model_name", "lora_id", "source_pod")
    block_hashes: np.ndarray
    model_name: str
    lora_id: int
    source_pod: str

    def __new__(cls, block_hashes: Any, model_name: str, lora_id: int = -1,
                source_pod: str = "") -> BlockRemoved:
        hashes = _fast_hashes(block_hashes) if type(block_hashes) is list else None
        if hashes is None:
            hashes = hash_array(block_hashes, "block_hashes")
        if type(model_name) is not str:
            model_name = check_str(model_name, "model_name")
        if type(lora_id) is not int or not _I64_MIN <= lora_id <= _I64_MAX:
            lora_id = check_lora_id(lora_id)
        if type(source_pod) is not str:
            source_pod = check_str(source_pod, "source_pod")  # "" stays: every pod (SPEC 2)
        self = _new_object(cls)
        _write_removed(self, hashes, model_name, lora_id, source_pod)
        return self

    __setattr__ = _refuse_set
    __delattr__ = _refuse_delete

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.block_hashes, self.model_name, self.lora_id, self.source_pod))

    def __repr__(self) -> str:
        return (f"BlockRemoved(n_blocks={len(self.block_hashes)}, model_name={self.model_name!r}, "
                f"lora_id={self.lora_id}, source_pod={self.source_pod!r})")


class AllBlocksCleared:
    """A pod dropped its whole cache: in one context, or (``None``) in every matching context (SPEC 3).

    ``model_name`` and ``lora_id`` are filters: ``None`` matches any value, so
    ``AllBlocksCleared("pod")`` clears every context and ``AllBlocksCleared("pod", "m")`` every LoRA of m.
    ``source_pod`` must name the pod (non-empty). Immutable once built.
    """

    __slots__ = ("source_pod", "model_name", "lora_id")
    source_pod: str
    model_name: Optional[str]
    lora_id: Optional[int]

    def __new__(cls, source_pod: str, model_name: Optional[str] = None,
                lora_id: Optional[int] = None) -> AllBlocksCleared:
        if type(source_pod) is not str or not source_pod:
            source_pod = _check_source_pod(source_pod, "a pod clears its own cache")
        if model_name is not None and type(model_name) is not str:
            model_name = check_str(model_name, "model_name")
        if lora_id is not None:
            lora_id = check_lora_id(lora_id)
        self = _new_object(cls)
        _write_cleared(self, source_pod, model_name, lora_id)
        return self

    __setattr__ = _refuse_set
    __delattr__ = _refuse_delete

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.source_pod, self.model_name, self.lora_id))

    def matches(self, model_name: str, lora_id: int) -> bool:
        return ((self.model_name is None or self.model_name == model_name)
                and (self.lora_id is None or self.lora_id == lora_id))

    def __repr__(self) -> str:
        return (f"AllBlocksCleared(source_pod={self.source_pod!r}, model_name={self.model_name!r}, "
                f"lora_id={self.lora_id})")


# The one way to fill an event: the class's own __setattr__ refuses, and a writer sets the real slots
# even where a subclass shadows a name (compiled: one call writes every slot at its offset).
_write_stored = CONVERTERS.slot_writer(BlockStored)
_write_removed = CONVERTERS.slot_writer(BlockRemoved)
_write_cleared = CONVERTERS.slot_writer(AllBlocksCleared)


def _check_source_pod(value: Any, why: str) -> str:
    """The source_pod of a BlockStored or AllBlocksCleared: a non-empty pod name (SPEC, Public API)."""
    pod = check_str(value, "source_pod")
    if not pod:
        raise ValueError(f'source_pod must be a non-empty pod name: {why}, and "" means every pod, '
                         "only in BlockRemoved")
    return pod


def ready_set(ready_pods: Any) -> Optional[frozenset[str]]:
    """``None`` (every pod) or the frozenset of ready pod names."""
    if ready_pods is None:
        return None
    if isinstance(ready_pods, (str,) + _BYTES_LIKE) or not isinstance(ready_pods, Iterable):
        raise TypeError(f"ready_pods must be an iterable of pod names or None, not {_type_name(ready_pods)}")
    pods = list(ready_pods)  # iterated once: ready_pods may be a generator
    for i, pod in enumerate(pods):
        if type(pod) is not str:
            if not isinstance(pod, str):
                raise TypeError(f"ready_pods must hold pod names (str), got {_type_name(pod)}")
            pods[i] = str.__str__(pod)  # plain str: no subclass __hash__/__eq__ runs inside the index
    return frozenset(pods)


# ---------------------------------------------------------------------------------------------------
# what a table reads from an event
#
# Events are immutable once built, but object.__setattr__ and subclasses can still hand a table
# anything. A table reads each field once, through these, and trusts only what they checked on the
# values in hand (SPEC 8): rows of tokens == block hashes, width == the block size, names as plain str.
# The compiled core checks the same facts inline and calls these only when something is unusual, so
# that both backends raise the same errors.


def _event_array(value: Any, dtype: Any, ndim: int, what: str) -> np.ndarray:
    if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != ndim \
            or not value.flags.c_contiguous:
        raise TypeError(f"{what} of this event is not the array its constructor made; "
                        "build a new event instead of changing its fields")
    return value


def stored_fields(event: Any, block_size: int) -> Tuple[Any, ...]:
    """(block_hashes, tokens, model_name, lora_id, source_pod, parent_block_hash) of a BlockStored."""
    hashes = _event_array(event.block_hashes, np.uint64, 1, "block_hashes")
    tokens = _event_array(event.tokens, np.uint8, 2, "tokens")
    model = check_str(event.model_name, "model_name")
    lora = check_lora_id(event.lora_id)
    pod = check_pod(event.source_pod, "source_pod")
    parent = event.parent_block_hash
    if parent is not None:
        parent = to_u64(parent, "parent_block_hash")
    n = len(hashes)
    if tokens.shape[0] != n:
        raise ValueError(f"tokens has {tokens.shape[0]} rows (blocks) but the event has {n} block hashes")
    width = tokens.shape[1]
    if n and width != 4 * block_size:
        have = f"{width // 4} tokens" if width % 4 == 0 else f"{width} token bytes"
        raise ValueError(f"each block must hold block_size={block_size} tokens ({4 * block_size} token "
                         f"bytes), but this event's blocks hold {have}")
    return hashes, tokens, model, lora, pod, parent


def removed_fields(event: Any) -> Tuple[Any, ...]:
    """(block_hashes, model_name, lora_id, source_pod) of a BlockRemoved; source_pod "" = every pod."""
    hashes = _event_array(event.block_hashes, np.uint64, 1, "block_hashes")
    return (hashes, check_str(event.model_name, "model_name"), check_lora_id(event.lora_id),
            check_str(event.source_pod, "source_pod"))


def cleared_fields(event: Any) -> Tuple[Any, ...]:
    """(source_pod, model_name or None, lora_id or None) of an AllBlocksCleared."""
    model, lora = event.model_name, event.lora_id
    return (check_pod(event.source_pod, "source_pod"), None if model is None else check_str(model, "model_name"),
            None if lora is None else check_lora_id(lora))


def batch_event_fields(i: int, event: Any, block_size: int) -> Tuple[Any, ...]:
    """(kind, fields) of events[i] of a process_events batch; kind 0 stored, 1 removed, 2 cleared.
    An error names the position, and comes before anything of the batch is applied (SPEC)."""
    try:
        if isinstance(event, BlockStored):
            return 0, stored_fields(event, block_size)
        if isinstance(event, BlockRemoved):
            return 1, removed_fields(event)
        if isinstance(event, AllBlocksCleared):
            return 2, cleared_fields(event)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"events[{i}]: {exc}") from None
    raise TypeError(f"events[{i}] must be a BlockStored, BlockRemoved or AllBlocksCleared, not {_type_name(event)}")


def batch_list(events: Any) -> List[Any]:
    """The events of a process_events call as a list (iterated once: it may be a generator)."""
    if type(events) is list:
        return events
    if isinstance(events, (str,) + _BYTES_LIKE) or not isinstance(events, Iterable):
        raise TypeError(f"process_events takes a sequence of events, not {_type_name(events)}")
    return list(events)


# prefix_hash_chain with block_bytes=0 hashes n_blocks links of the parent alone: a check of the hash,
# which the index never asks for (its blocks hold a token or more); the input does not bound the work
MAX_EMPTY_BLOCKS = 1 << 20


def check_chain_args(data_len: int, block_bytes: Any, seed: Any, parent: Any, n_blocks: Any) -> None:
    """The arguments of the module function prefix_hash_chain, checked without overflow."""
    for value, what in ((block_bytes, "block_bytes"), (n_blocks, "n_blocks")):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} must be an int, not {_type_name(value)}")
        if value < 0:
            raise ValueError(f"{what} must be >= 0, got {value}")
    for value, what in ((seed, "seed"), (parent, "parent")):
        check_u64(value, what)
    if block_bytes == 0 and n_blocks > MAX_EMPTY_BLOCKS:  # no data bounds a chain of empty blocks
        raise ValueError(f"a chain of empty blocks (block_bytes=0) has at most {MAX_EMPTY_BLOCKS} blocks, "
                         f"got n_blocks={n_blocks}")
    if block_bytes and n_blocks > data_len // block_bytes:  # no product: it could overflow a size_t
        raise ValueError(f"data is shorter than n_blocks * block_bytes ({n_blocks} * {block_bytes} > {data_len})")


def check_u64(value: Any, what: str) -> int:
    """A seed or parent hash: an int in [0, 2**64)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {_type_name(value)}")
    number = _exact_int(value)
    if not 0 <= number < 1 << 64:
        raise ValueError(f"{what} must be in [0, 2**64), got {number}")
    return number


def _exact_int(value: Any) -> int:
    """An int's own value as a plain int: an int subclass's __int__, __index__ or comparisons are its
    author's code and may answer anything (the compiled core reads the value itself)."""
    return int.__int__(value) if isinstance(value, int) else int(value)
