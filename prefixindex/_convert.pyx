# cython: language_level=3
"""Fast conversions of natural inputs (lists of ints, integer arrays, engine hashes) to canonical arrays.

Compiled twin of ``prefixindex._convert_py`` (same names, same results). Each function takes the happy
path in one C pass (the loops are the inline routines of ``_convert.pxd``, which the compiled core
cimports too) and returns None for anything else; ``prefixindex._events`` then runs its careful
validators, which raise the documented errors. Nothing here raises for bad input.
"""

cimport numpy as cnp

cnp.import_array()

__all__ = ["hashes_u64", "slot_writer", "token_bytes", "token_ids_block_bytes"]

cdef extern from *:
    const char* PREFIXINDEX_SOURCE_HASH

# The sources this module was built from (setup.py): the tests refuse a stale in-place build.
SOURCE_HASH = PREFIXINDEX_SOURCE_HASH.decode("ascii")

#: The most token ids one conversion takes (4 bytes each must fit in an array's size); past it the
#: converters return None and _events raises its error.
MAX_TOKEN_IDS = C_MAX_TOKEN_IDS


# ---------------------------------------------------------------------------------------------------
# token ids -> token bytes


def token_bytes(tokens):
    """A query's tokens as token bytes, or None when they are not on the happy path.

    ``bytes`` and a 1-D C-contiguous uint8 array come back as they are; token ids (a list or tuple of
    exact ints in [0, 2**32), an ``array.array`` of an integer typecode, a 1-D numpy integer array of any
    other dtype, byte order or strides) as a new 1-D C-contiguous uint8 array, 4 bytes per id, unsigned
    big-endian (SPEC, Terms).
    """
    return c_token_bytes(tokens)


def token_ids_block_bytes(tokens, Py_ssize_t n_blocks):
    """An event's tokens given as flat token ids as the (n_blocks, 4 * block_size) uint8 array, or None.

    The token ids are as for ``token_bytes`` (uint8 arrays are token bytes, not ids: None); None too when
    n_blocks is not positive or the ids do not divide into n_blocks equal blocks.
    """
    return c_token_ids_block_bytes(tokens, n_blocks)


# ---------------------------------------------------------------------------------------------------
# engine and prefix hashes


def hashes_u64(values):
    """A list or tuple of engine or prefix hashes as a new 1-D C-contiguous uint64 array, or None.

    Exact ints in [-2**63, 2**64) are taken modulo 2**64; exact ``bytes`` of 8 or more are read as their
    last 8 bytes, big-endian (SPEC, Terms). Anything else: None.
    """
    return c_hashes_u64(values)


# ---------------------------------------------------------------------------------------------------
# events


from cpython.object cimport PyObject, PyObject_TypeCheck, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

from types import MemberDescriptorType

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX
    int READONLY


cdef class _SlotWriter:
    """Fills every slot of an instance of one __slots__ class, in __slots__ order (see slot_writer)."""
    cdef type cls
    cdef Py_ssize_t n
    cdef Py_ssize_t offsets[16]

    def __call__(self, obj, *values):
        cdef Py_ssize_t i
        cdef PyObject** slot
        cdef PyObject* old
        if self.cls is None:  # made by _SlotWriter() instead of slot_writer()
            raise TypeError("a slot writer comes from slot_writer(cls)")
        if not PyObject_TypeCheck(obj, <PyTypeObject*>self.cls):
            raise TypeError(f"expected a {self.cls.__name__}, not {type(obj).__name__}")
        if len(values) != self.n:
            raise TypeError(f"{self.cls.__name__} has {self.n} slots, got {len(values)} values")
        for i in range(self.n):
            value = values[i]
            slot = <PyObject**>((<char*><PyObject*>obj) + self.offsets[i])
            old = slot[0]
            Py_INCREF(value)
            slot[0] = <PyObject*>value
            Py_XDECREF(old)


def slot_writer(cls):
    """A function ``write(obj, *values)`` that sets every slot of ``obj`` (a ``cls``, or a subclass), in
    ``cls.__slots__`` order, past the class's own ``__setattr__`` (which refuses, for immutable events),
    and past any name a subclass shadows."""
    cdef _SlotWriter writer = _SlotWriter.__new__(_SlotWriter)
    names = cls.__slots__
    if len(names) > 16:
        raise ValueError("at most 16 slots")
    writer.cls = cls
    writer.n = len(names)
    for i, name in enumerate(names):
        descr = cls.__dict__[name]
        # a member descriptor of another class (put into cls's dict) has that class's offsets: writing
        # at them into a cls would write past its end
        if type(descr) is not MemberDescriptorType or descr.__objclass__ is not cls or \
                (<PyMemberDescrObject*>descr).d_member.type != T_OBJECT_EX:
            raise TypeError(f"{cls.__name__}.{name} is not an object slot of {cls.__name__}")
        writer.offsets[i] = (<PyMemberDescrObject*>descr).d_member.offset
    return writer
