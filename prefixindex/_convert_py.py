"""Fast conversions of natural inputs (lists of ints, integer arrays, engine hashes) to canonical arrays.

Pure-Python twin of ``prefixindex._convert`` (same names, same results). Each function takes the happy
path with C-level builtins and numpy (one type census, one conversion, one range check; no per-element
Python loop) and returns None for anything else; ``prefixindex._events`` then runs its careful
validators, which raise the documented errors. Nothing here raises for bad input.
"""

from __future__ import annotations

import array
import marshal
import operator
import sys
import types
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["hashes_u64", "slot_writer", "token_bytes", "token_ids_block_bytes"]

# array.array typecodes of integers; the lower-case ones are signed
_INT_TYPECODES = frozenset("bBhHiIlLqQ")
# an unsigned typecode of exactly 4 bytes: array.array() of it range-checks [0, 2**32) in C
_U32_TYPECODE = next(code for code in "IL" if array.array(code).itemsize == 4)
_LITTLE_ENDIAN = sys.byteorder == "little"
_U64_MASK = (1 << 64) - 1


def _all_exact(values: Any, kind: type) -> bool:
    # one C-level pass over the types (countOf compares by identity first): ~10 ns an element
    return operator.countOf(map(type, values), kind) == len(values)


# ---------------------------------------------------------------------------------------------------
# token ids -> token bytes


#: The most token ids one conversion takes: 4 bytes each must fit in an array's size (as the compiled
#: converters' C_MAX_TOKEN_IDS, _convert.pxd); past it the converters return None and _events raises.
MAX_TOKEN_IDS = (2**63 - 1) // 4


def _ids_count(tokens: Any) -> int:
    """How many token ids tokens holds when the fast path converts it; -1 for anything else."""
    kind = type(tokens)
    if kind is list or kind is tuple:
        return len(tokens)
    if isinstance(tokens, np.ndarray):
        dtype = tokens.dtype  # kind and itemsize: comparing dtypes with == costs ~0.5 us a time
        if tokens.ndim != 1 or dtype.kind not in "iu" or dtype.itemsize == 1 and dtype.kind == "u":
            return -1
        return int(tokens.shape[0])  # (not len(): a subclass's own; the compiled core reads the dimension)
    if kind is array.array:
        return len(tokens) if tokens.typecode in _INT_TYPECODES else -1
    return -1


def _marshalled_ids(values: Any) -> Optional[np.ndarray]:
    """A list or tuple of exact ints in [0, 2**31) as flat token bytes; None for anything else (the
    caller then takes the general path, which also takes ids in [2**31, 2**32)).

    marshal (format 2: no back-references) writes the sequence in one C pass as a 5-byte header and,
    for each exact int in [-2**31, 2**31), the type code b"i" and the value in 4 little-endian bytes.
    It refuses int subclasses and objects with __index__, and writes bools and other types with other
    codes or lengths; so a dump of exactly 5 + 5 n bytes with b"i" at every fifth byte holds n exact
    small ints. That check and the conversion cost ~11 us for 1,024 ids, against ~17 us for the type
    census and array.array below (docs/performance.md). No Python code runs during the dump."""
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.uint8)
    try:
        raw = marshal.dumps(values, 2)
    except ValueError:  # an element marshal cannot write (an int subclass, a numpy scalar, ...)
        return None
    if len(raw) != 5 + 5 * n or raw[5::5] != b"i" * n:
        return None
    # a negative id has the top bit of its last (most significant) byte set: isascii() checks every
    # such byte in one C pass (~0.9 us with the slice, against ~1.7 for the array's min())
    if not raw[9::5].isascii():
        return None
    ids = np.ndarray((n,), dtype="<i4", buffer=raw, offset=6, strides=(5,))
    out: np.ndarray = ids.astype(">u4").view(np.uint8)
    return out


def _ids_to_bytes(tokens: Any, rows: int = 0) -> Optional[np.ndarray]:
    """Token ids (_ids_count says which) as flat token bytes, or as `rows` rows of them, or None for an
    odd element."""
    if type(tokens) is list or type(tokens) is tuple:
        small = _marshalled_ids(tokens)
        if small is not None:
            return small
        if not _all_exact(tokens, int):
            return None
        try:
            ids = array.array(_U32_TYPECODE, tokens)  # C-level conversion with the [0, 2**32) check
        except (OverflowError, IndexError):  # IndexError: shrunk by a finalizer during the conversion
            return None
        if _LITTLE_ENDIAN:
            ids.byteswap()
        return np.frombuffer(ids, dtype=np.uint8) if len(ids) else np.empty(0, dtype=np.uint8)
    # an ndarray subclass as its plain data (a masked array's masked ids are ids too; a subclass's own
    # len() or reductions are its author's code), as the compiled core reads it
    arr = np.frombuffer(tokens, dtype=tokens.typecode) if type(tokens) is array.array else np.asarray(tokens)
    if len(arr) > MAX_TOKEN_IDS:  # 4 bytes each must fit in an array's size: _events says why
        return None
    dtype = arr.dtype
    # the output first, as the compiled core allocates it: ids that cannot fit in memory are its
    # MemoryError at once (a zero-stride array of 2**40 ids is 8 bytes), before a pass over them
    out: np.ndarray = np.empty((rows, 4 * len(arr) // rows) if rows else 4 * len(arr), dtype=np.uint8)
    if dtype.kind == "i" or dtype.itemsize > 4:
        # one pass: the OR of all ids is negative if one is, and has high bits if one is >= 2**32
        if int(np.bitwise_or.reduce(arr)) >> 32:
            return None
    out.reshape(-1).view(">u4")[:] = arr
    return out


def token_bytes(tokens: Any) -> Any:
    """A query's tokens as token bytes, or None when they are not on the happy path.

    ``bytes`` and a 1-D C-contiguous uint8 array come back as they are; token ids (a list or tuple of
    exact ints in [0, 2**32), an ``array.array`` of an integer typecode, a 1-D numpy integer array of any
    other dtype, byte order or strides) as a new 1-D C-contiguous uint8 array, 4 bytes per id, unsigned
    big-endian (SPEC, Terms).
    """
    if type(tokens) is bytes:
        return tokens
    if type(tokens) is np.ndarray and tokens.dtype.kind == "u" and tokens.dtype.itemsize == 1:
        return tokens if tokens.ndim == 1 and tokens.flags.c_contiguous else None
    if _ids_count(tokens) < 0:
        return None
    return _ids_to_bytes(tokens)


def token_ids_block_bytes(tokens: Any, n_blocks: int) -> Optional[np.ndarray]:
    """An event's tokens given as flat token ids as the (n_blocks, 4 * block_size) uint8 array, or None.

    The token ids are as for ``token_bytes`` (uint8 arrays are token bytes, not ids: None); None too when
    n_blocks is not positive or the ids do not divide into n_blocks equal blocks.
    """
    n = _ids_count(tokens)
    if n < 0 or n_blocks <= 0 or n % n_blocks:
        return None
    out = _ids_to_bytes(tokens, n_blocks)
    if out is None or out.size != 4 * n:  # a finalizer resized tokens during the conversion
        return None
    return out.reshape(n_blocks, -1)


# ---------------------------------------------------------------------------------------------------
# engine and prefix hashes


def hashes_u64(values: Any) -> Optional[np.ndarray]:
    """A list or tuple of engine or prefix hashes as a new 1-D C-contiguous uint64 array, or None.

    Exact ints in [-2**63, 2**64) are taken modulo 2**64; exact ``bytes`` of 8 or more are read as their
    last 8 bytes, big-endian (SPEC, Terms). Anything else: None.
    """
    if type(values) is not list and type(values) is not tuple:
        return None
    try:
        return _hashes_u64(values)
    except (OverflowError, IndexError, TypeError, ValueError):  # the list changed during the conversion
        return None


def _hashes_u64(values: Any) -> Optional[np.ndarray]:
    if not values:
        return np.empty(0, dtype=np.uint64)
    kinds = set(map(type, values))
    if kinds == {int}:
        try:
            return np.array(values, dtype=np.uint64)  # every value in [0, 2**64): the common case
        except OverflowError:
            pass
        lo, hi = min(values), max(values)
        if lo < -(1 << 63) or hi > _U64_MASK:
            return None
        if hi < 1 << 63:
            return np.array(values, dtype=np.int64).view(np.uint64)
        return (np.array(values, dtype=object) & _U64_MASK).astype(np.uint64)  # both signs: rare
    if kinds == {bytes}:
        if min(map(len, values)) < 8:
            return None
        tails = b"".join(map(operator.itemgetter(slice(-8, None)), values))
        return np.frombuffer(tails, dtype=">u8").astype(np.uint64)
    if kinds == {int, bytes}:  # mixed forms: rare enough for one element at a time
        out = np.empty(len(values), dtype=np.uint64)
        for i, value in enumerate(values):
            if type(value) is bytes:
                if len(value) < 8:
                    return None
                out[i] = int.from_bytes(value[-8:], "big")
            elif -(1 << 63) <= value <= _U64_MASK:
                out[i] = value & _U64_MASK
            else:
                return None
        return out
    return None


# ---------------------------------------------------------------------------------------------------
# events


def slot_writer(cls: type) -> Callable[..., None]:
    """A function ``write(obj, *values)`` that sets every slot of ``obj`` (a ``cls``, or a subclass), in
    ``cls.__slots__`` order, past the class's own ``__setattr__`` (which refuses, for immutable events),
    and past any name a subclass shadows."""
    names = cls.__slots__  # type: ignore[attr-defined]
    descriptors = [cls.__dict__[name] for name in names]
    for name, descr in zip(names, descriptors):
        if type(descr) is not types.MemberDescriptorType or descr.__objclass__ is not cls:
            raise TypeError(f"{cls.__name__}.{name} is not an object slot of {cls.__name__}")
    setters = tuple(descr.__set__ for descr in descriptors)
    n = len(setters)

    def write(obj: Any, *values: Any) -> None:
        if not isinstance(obj, cls):
            raise TypeError(f"expected a {cls.__name__}, not {type(obj).__name__}")
        if len(values) != n:
            raise TypeError(f"{cls.__name__} has {n} slots, got {len(values)} values")
        for setter, value in zip(setters, values):
            setter(obj, value)

    return write
