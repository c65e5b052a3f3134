# cython: language_level=3
"""The C routines of prefixindex._convert, inlined into every module that cimports them.

``prefixindex._convert`` wraps them for Python (``_events`` calls them there); the compiled core can
``cimport`` them and convert a query's tokens on its own call path without a Python call. Every routine
answers "not on the happy path" (None, False, or a negative count) instead of raising: the caller then
hands the input to the careful validators of ``prefixindex._events``, which raise the documented errors.

Conversions (SPEC, Terms): a token id is an int in [0, 2**32), written as 4 bytes unsigned big-endian;
an engine hash is an int in [-2**63, 2**64) taken modulo 2**64, or ``bytes`` of 8 or more read as their
last 8 bytes big-endian.
"""

from cpython.object cimport PyObject, Py_SIZE
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cimport numpy as cnp
from cpython cimport array as pyarray

# Raw-pointer forms of the C API (no reference counting, no exception checks): the loops below call them
# only on objects whose exact type they checked, for which these calls cannot fail or run Python code.
cdef extern from "Python.h":
    bint _int_exact "PyLong_CheckExact"(PyObject* o) noexcept nogil
    long long _int_as_i64 "PyLong_AsLongLongAndOverflow"(PyObject* o, int* overflow) noexcept
    unsigned long long _int_as_u64 "PyLong_AsUnsignedLongLong"(PyObject* o) noexcept
    PyObject* _err_occurred "PyErr_Occurred"() noexcept
    void _err_clear "PyErr_Clear"() noexcept
    bint _bytes_exact "PyBytes_CheckExact"(PyObject* o) noexcept nogil
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* o) noexcept nogil
    Py_ssize_t _bytes_len "PyBytes_GET_SIZE"(PyObject* o) noexcept nogil
    PyObject** _seq_items "PySequence_Fast_ITEMS"(object o) noexcept
    Py_ssize_t _seq_len "PySequence_Fast_GET_SIZE"(object o) noexcept


cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define PREFIXINDEX_BIG_ENDIAN_HOST 1
    #else
    #define PREFIXINDEX_BIG_ENDIAN_HOST 0
    #endif
    """
    const bint BIG_ENDIAN_HOST "PREFIXINDEX_BIG_ENDIAN_HOST"


# The contiguous loops, one per item type, built for AVX2 too where the compiler can pick at load time
# (_ids.h): 1 when every id is in range, else 0.
cdef extern from "_ids.h" nogil:
    int ids_i8 "pi_ids_i8"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_u8 "pi_ids_u8"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_i16 "pi_ids_i16"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_u16 "pi_ids_u16"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_i32 "pi_ids_i32"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_u32 "pi_ids_u32"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_i64 "pi_ids_i64"(const char* data, size_t n, uint8_t* out) noexcept
    int ids_u64 "pi_ids_u64"(const char* data, size_t n, uint8_t* out) noexcept


ctypedef fused token_int:
    int8_t
    uint8_t
    int16_t
    uint16_t
    int32_t
    uint32_t
    int64_t
    uint64_t


# ---------------------------------------------------------------------------------------------------
# token ids -> token bytes


cdef inline void put_be32(uint8_t* out, uint32_t value) noexcept nogil:
    # One byte swap and one 4-byte store (memcpy: out need not be aligned). Four single-byte stores
    # would be portable too, but GCC then fails to merge them in the 8- and 1-byte loops (measured: 8x
    # slower for int64 arrays).
    if not BIG_ENDIAN_HOST:
        value = (((value & 0xFF) << 24) | ((value & 0xFF00) << 8) | ((value >> 8) & 0xFF00) | (value >> 24))
    memcpy(out, &value, 4)


cdef inline uint64_t get_be64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) | (<uint64_t>p[3] << 32)
            | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline token_int swapped(token_int x) noexcept nogil:
    """x with its bytes in the other order (for arrays not in the machine's byte order)."""
    cdef uint64_t u
    if token_int is int8_t or token_int is uint8_t:
        return x
    elif token_int is int16_t or token_int is uint16_t:
        u = <uint16_t>x
        return <token_int>(((u & 0xFF) << 8) | (u >> 8))
    elif token_int is int32_t or token_int is uint32_t:
        u = <uint32_t>x
        return <token_int>(((u & 0xFF) << 24) | ((u & 0xFF00) << 8) | ((u >> 8) & 0xFF00) | (u >> 24))
    else:
        u = <uint64_t>x
        u = ((u & 0x00000000FFFFFFFFULL) << 32) | (u >> 32)
        u = ((u & 0x0000FFFF0000FFFFULL) << 16) | ((u >> 16) & 0x0000FFFF0000FFFFULL)
        u = ((u & 0x00FF00FF00FF00FFULL) << 8) | ((u >> 8) & 0x00FF00FF00FF00FFULL)
        return <token_int>u


cdef inline bint strided_ids_be32(const token_int* first, Py_ssize_t n, Py_ssize_t stride, bint swap,
                                  uint8_t* out) noexcept nogil:
    """n token ids, stride bytes apart from first, as token bytes into out (4 * n bytes).

    False when any id is outside [0, 2**32) (out is then partly written). One pass, no early exit: the
    range check is an OR of the high bits, so the loop has no branch on the data.
    """
    cdef const char* p = <const char*>first
    cdef token_int x
    cdef uint64_t u
    cdef uint64_t high = 0
    cdef Py_ssize_t i
    if stride == sizeof(token_int) and not swap:
        # contiguous, the machine's order (what tokenizers and numpy give): a loop over whole items that
        # the compiler vectorizes (the range check is an OR, the byte swap a shuffle), in _ids.h
        if token_int is int8_t:
            return ids_i8(p, n, out)
        elif token_int is uint8_t:
            return ids_u8(p, n, out)
        elif token_int is int16_t:
            return ids_i16(p, n, out)
        elif token_int is uint16_t:
            return ids_u16(p, n, out)
        elif token_int is int32_t:
            return ids_i32(p, n, out)
        elif token_int is uint32_t:
            return ids_u32(p, n, out)
        elif token_int is int64_t:
            return ids_i64(p, n, out)
        else:
            return ids_u64(p, n, out)
    if swap:
        for i in range(n):
            memcpy(&x, p + i * stride, sizeof(token_int))  # memcpy: the array may be unaligned
            u = <uint64_t>swapped(x)  # a negative id wraps to a value >= 2**32
            high |= u >> 32
            put_be32(out + 4 * i, <uint32_t>u)
    else:
        for i in range(n):
            memcpy(&x, p + i * stride, sizeof(token_int))
            u = <uint64_t>x
            high |= u >> 32
            put_be32(out + 4 * i, <uint32_t>u)
    return high == 0


cdef inline int raw_ids_be32(const char* data, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t itemsize,
                             bint is_signed, bint swap, uint8_t* out) noexcept nogil:
    """Token ids in memory of any integer layout as token bytes: 1 done, 0 an id out of range, -1 a
    layout (item size) this does not handle."""
    if is_signed:
        if itemsize == 1:
            return strided_ids_be32(<const int8_t*>data, n, stride, swap, out)
        if itemsize == 2:
            return strided_ids_be32(<const int16_t*>data, n, stride, swap, out)
        if itemsize == 4:
            return strided_ids_be32(<const int32_t*>data, n, stride, swap, out)
        if itemsize == 8:
            return strided_ids_be32(<const int64_t*>data, n, stride, swap, out)
    else:
        if itemsize == 1:
            return strided_ids_be32(<const uint8_t*>data, n, stride, swap, out)
        if itemsize == 2:
            return strided_ids_be32(<const uint16_t*>data, n, stride, swap, out)
        if itemsize == 4:
            return strided_ids_be32(<const uint32_t*>data, n, stride, swap, out)
        if itemsize == 8:
            return strided_ids_be32(<const uint64_t*>data, n, stride, swap, out)
    return -1


cdef inline Py_ssize_t items_ids_be32(PyObject** items, Py_ssize_t n, uint8_t* out) noexcept:
    """Python objects that must be exact ints in [0, 2**32), as token bytes into out (4 * n bytes).

    -1 when all are; else the index of the first that is not (a bool, a numpy scalar, a float, an int out
    of range). Runs no Python code, so the items cannot change under it (the GIL is held).
    """
    cdef Py_ssize_t i
    cdef int overflow
    cdef long long value
    cdef PyObject* item
    for i in range(n):
        item = items[i]
        if not _int_exact(item):
            return i
        value = _int_as_i64(item, &overflow)
        if overflow or (<unsigned long long>value) >> 32:
            return i
        put_be32(out + 4 * i, <uint32_t>value)
    return -1


cdef inline Py_ssize_t ids_count(object tokens) noexcept:
    """How many token ids tokens holds when it is a container of token ids the fast path converts (a
    list or tuple, an ``array.array`` of an integer typecode, a 1-D numpy integer array other than uint8,
    which is token bytes); -1 for anything else."""
    cdef type kind = type(tokens)
    cdef cnp.ndarray arr
    cdef pyarray.array buf
    if kind is list or kind is tuple:
        return _seq_len(tokens)
    if cnp.PyArray_Check(tokens):
        arr = <cnp.ndarray>tokens
        if cnp.PyArray_NDIM(arr) != 1 or not cnp.PyArray_ISINTEGER(arr) or cnp.PyArray_TYPE(arr) == cnp.NPY_UINT8:
            return -1
        return cnp.PyArray_DIM(arr, 0)
    if kind is pyarray.array:
        buf = <pyarray.array>tokens
        if buf.ob_descr.typecode not in b"bBhHiIlLqQ":
            return -1
        return Py_SIZE(buf)
    return -1


cdef inline bint ids_fill(object tokens, Py_ssize_t n, uint8_t* out) noexcept:
    """The n token ids of tokens (ids_count gave n) as token bytes into out; False when an id is not a
    plain int in range, or when tokens no longer holds n ids (a finalizer run by the allocation of out
    may have resized it: everything is read again here)."""
    cdef type kind = type(tokens)
    cdef cnp.ndarray arr
    cdef pyarray.array buf
    if kind is list or kind is tuple:
        if _seq_len(tokens) != n:
            return False
        return items_ids_be32(_seq_items(tokens), n, out) < 0
    if kind is pyarray.array:
        buf = <pyarray.array>tokens
        if Py_SIZE(buf) != n:
            return False
        return raw_ids_be32(buf.data.as_chars, n, buf.ob_descr.itemsize, buf.ob_descr.itemsize,
                            buf.ob_descr.typecode in b"bhilq", False, out) == 1
    arr = <cnp.ndarray>tokens
    if cnp.PyArray_DIM(arr, 0) != n:
        return False
    return raw_ids_be32(<const char*>cnp.PyArray_DATA(arr), n, cnp.PyArray_STRIDE(arr, 0),
                        cnp.PyArray_ITEMSIZE(arr), cnp.PyArray_ISSIGNED(arr),
                        not cnp.PyArray_ISNOTSWAPPED(arr), out) == 1


# The most token ids one conversion takes: 4 bytes each must fit in an array's size (a Py_ssize_t). A
# zero-stride numpy array of 2**62 int8 ids is one byte, and 4 * n wrapped: a buffer far too small was
# filled (a crash). Past it the converters return None and the shared path (_events) says why.
cdef extern from *:
    """
    #define PREFIXINDEX_MAX_TOKEN_IDS (PY_SSIZE_T_MAX / 4)
    """
    const Py_ssize_t C_MAX_TOKEN_IDS "PREFIXINDEX_MAX_TOKEN_IDS"


cdef inline object c_token_bytes(object tokens):
    """A query's tokens as token bytes: ``bytes`` and 1-D C-contiguous uint8 arrays as they are, token
    ids (see ids_count) as a new 1-D uint8 array; None for anything else or any odd element."""
    cdef cnp.ndarray arr
    cdef cnp.npy_intp size
    cdef Py_ssize_t n
    if type(tokens) is bytes:
        return tokens
    if cnp.PyArray_CheckExact(tokens) and cnp.PyArray_TYPE(<cnp.ndarray>tokens) == cnp.NPY_UINT8:
        arr = <cnp.ndarray>tokens
        if cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(arr):
            return tokens
        return None
    n = ids_count(tokens)
    if n < 0 or n > C_MAX_TOKEN_IDS:
        return None
    size = 4 * n
    arr = cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT8, 0)
    if not ids_fill(tokens, n, <uint8_t*>cnp.PyArray_DATA(arr)):
        return None
    return arr


cdef inline object c_token_ids_block_bytes(object tokens, Py_ssize_t n_blocks):
    """An event's tokens given as flat token ids (see ids_count) as the (n_blocks, 4 * ids per block)
    uint8 array; None for anything else, for no blocks, for ids that do not divide into n_blocks, or for
    any odd element."""
    cdef cnp.ndarray arr
    cdef cnp.npy_intp dims[2]
    cdef Py_ssize_t n = ids_count(tokens)
    if n < 0 or n > C_MAX_TOKEN_IDS or n_blocks <= 0 or n % n_blocks:
        return None
    dims[0] = n_blocks
    dims[1] = 4 * (n // n_blocks)
    arr = cnp.PyArray_EMPTY(2, dims, cnp.NPY_UINT8, 0)
    if not ids_fill(tokens, n, <uint8_t*>cnp.PyArray_DATA(arr)):
        return None
    return arr


# ---------------------------------------------------------------------------------------------------
# engine and prefix hashes


cdef inline Py_ssize_t items_hashes_u64(PyObject** items, Py_ssize_t n, uint64_t* out) noexcept:
    """Python objects that must be exact ints in [-2**63, 2**64) (taken modulo 2**64) or exact ``bytes``
    of 8 or more (their last 8 bytes, big-endian), as uint64 into out. -1 when all are; else the index of
    the first that is not. Runs no Python code."""
    cdef Py_ssize_t i
    cdef int overflow
    cdef long long value
    cdef unsigned long long big
    cdef PyObject* item
    for i in range(n):
        item = items[i]
        if _int_exact(item):
            value = _int_as_i64(item, &overflow)
            if overflow == 0:
                out[i] = <uint64_t>value
            elif overflow > 0:  # in [2**63, 2**64), or too large
                big = _int_as_u64(item)
                if big == <unsigned long long>-1 and _err_occurred() != NULL:
                    _err_clear()  # OverflowError of an int >= 2**64: the careful path says so
                    return i
                out[i] = big
            else:
                return i
        elif _bytes_exact(item) and _bytes_len(item) >= 8:
            out[i] = get_be64(<const uint8_t*>_bytes_data(item) + _bytes_len(item) - 8)
        else:
            return i
    return -1


cdef inline object c_hashes_u64(object values):
    """A list or tuple of engine or prefix hashes as a new 1-D uint64 array; None for anything else or
    any odd element."""
    cdef cnp.ndarray arr
    cdef cnp.npy_intp size
    cdef type kind = type(values)
    if kind is not list and kind is not tuple:
        return None
    size = _seq_len(values)
    arr = cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT64, 0)
    if _seq_len(values) != size:  # resized by a finalizer during the allocation
        return None
    if items_hashes_u64(_seq_items(values), size, <uint64_t*>cnp.PyArray_DATA(arr)) >= 0:
        return None
    return arr
