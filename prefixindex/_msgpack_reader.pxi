# Readers of vLLM's msgpack payloads for the subscriber, included by _core.pyx: token ids as token bytes
# without a Python int per token, and a whole "plain" batch read in one pass (docs/vllm.md, V13).
# Everything here reads through a bounds-checked cursor and gives up (returns None) on anything it does
# not take; the caller then takes the general path, which says what is wrong.


cdef struct Cursor:
    const uint8_t* p
    size_t n
    size_t pos


cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef inline bint _has(Cursor* c, size_t k) noexcept nogil:
    """Whether k more bytes are there (pos <= n always holds, so this cannot wrap)."""
    return k <= c.n - c.pos


cdef inline bint _read_header(Cursor* c, uint8_t fix, uint8_t t16, uint8_t t32, size_t* count) noexcept nogil:
    """An array (fix 0x90) or map (fix 0x80) header: fix..fix+15, or the 16/32-bit length forms."""
    cdef uint8_t tag
    cdef int width
    if not _has(c, 1):
        return False
    tag = c.p[c.pos]
    if fix <= tag <= fix + 0x0f:
        count[0] = tag & 0x0f
        c.pos += 1
        return True
    width = 2 if tag == t16 else (4 if tag == t32 else 0)
    if width == 0 or not _has(c, 1 + width):
        return False
    count[0] = <size_t>_be(c.p + c.pos + 1, width)
    c.pos += 1 + width
    return True


cdef inline bint _read_array(Cursor* c, size_t* count) noexcept nogil:
    return _read_header(c, 0x90, 0xdc, 0xdd, count)


cdef inline bint _read_map(Cursor* c, size_t* count) noexcept nogil:
    return _read_header(c, 0x80, 0xde, 0xdf, count)


cdef inline bint _read_nil(Cursor* c) noexcept nogil:
    if _has(c, 1) and c.p[c.pos] == 0xc0:
        c.pos += 1
        return True
    return False


cdef inline bint _read_str(Cursor* c, const uint8_t** s, size_t* length) noexcept nogil:
    cdef uint8_t tag
    cdef int width
    if not _has(c, 1):
        return False
    tag = c.p[c.pos]
    if 0xa0 <= tag <= 0xbf:
        length[0] = tag & 0x1f
        width = 0
    elif 0xd9 <= tag <= 0xdb:
        width = 1 << (tag - 0xd9)
        if not _has(c, 1 + width):
            return False
        length[0] = <size_t>_be(c.p + c.pos + 1, width)
    else:
        return False
    if not _has(c, 1 + width + length[0]):
        return False
    s[0] = c.p + c.pos + 1 + width
    c.pos += 1 + width + length[0]
    return True


cdef inline bint _read_uint(Cursor* c, uint64_t* value, bint wide) noexcept nogil:
    """A non-negative int in msgpack's int forms: all of them, or with `wide` False only those of up to
    32 bits (a token id). Every caller passes a constant `wide`: inlined, each gets its own branches."""
    cdef uint8_t tag
    cdef int width
    cdef uint8_t last = 0x03 if wide else 0x02  # the widest form: 64 or 32 bits
    if not _has(c, 1):
        return False
    tag = c.p[c.pos]
    if tag <= 0x7f:
        value[0] = tag
        c.pos += 1
        return True
    if 0xcc <= tag <= 0xcc + last or 0xd0 <= tag <= 0xd0 + last:  # uint8.., int8..
        width = 1 << (tag & 0x03)
        if not _has(c, 1 + width):
            return False
        value[0] = _be(c.p + c.pos + 1, width)
        if tag >= 0xd0 and (value[0] >> (8 * width - 1)):  # a negative signed int
            return False
        c.pos += 1 + width
        return True
    return False


cdef inline bint _read_token_ids(Cursor* c, size_t count, uint8_t* dst) noexcept nogil:
    """count token ids (ints in [0, 2**32) in their 8-, 16- or 32-bit forms) as 4 big-endian bytes each.
    The 64-bit forms are left to the caller's fallback: this loop runs for every token of every event."""
    cdef size_t i
    cdef uint64_t value
    for i in range(count):
        if not _read_uint(c, &value, False):
            return False
        dst[4 * i] = (value >> 24) & 0xff
        dst[4 * i + 1] = (value >> 16) & 0xff
        dst[4 * i + 2] = (value >> 8) & 0xff
        dst[4 * i + 3] = value & 0xff
    return True


def token_bytes_from_msgpack(raw):
    """A msgpack array of token ids (vLLM's ``token_ids``) as flat token bytes, with no Python int per token.

    Well-formed arrays of ids are parsed here; anything else goes to _core_py's version, which raises
    the error, so both backends give the same results and the same errors.
    """
    cdef Py_buffer buf
    try:
        PyObject_GetBuffer(raw, &buf, PyBUF_SIMPLE)
    except (TypeError, BufferError):
        memoryview(raw).cast("B")  # raises what the fallback raises for this input (a str, None ...)
        return _msgpack_error(raw)
    try:
        out = _parse_token_ids(<const uint8_t*>buf.buf, <size_t>buf.len)
    finally:
        PyBuffer_Release(&buf)
    return _msgpack_error(raw) if out is None else out


cdef object _parse_token_ids(const uint8_t* p, size_t n):
    """The token bytes of a well-formed msgpack array of ids at p[0:n], or None (then the fallback
    parses it and raises). Written through raw pointers: a typed memoryview would cost more than the
    parsing of a 256-token event."""
    cdef Cursor c
    cdef size_t count
    cdef cnp.npy_intp dim
    c.p, c.n, c.pos = p, n, 0
    if not _read_array(&c, &count) or count > n - c.pos:  # an element takes a byte: no forged length
        return None
    dim = <cnp.npy_intp>(count * 4)
    out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_UINT8, 0)
    if not _read_token_ids(&c, count, <uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>out)) or c.pos != n:
        return None
    return out


def _msgpack_error(raw):
    from ._core_py import token_bytes_from_msgpack as reference
    result = reference(raw)  # raises for malformed input, with the reference's message
    # Only reached for valid input this parser does not take (uint64 or int64 encodings of small ids).
    return result


# --- the plain batch -----------------------------------------------------------------------------------
# A batch whose events are all plain stores and removals of the base model: int hashes, the index's block
# size, an indexed tier, no adapter, no KV-cache group other than 0, no spec kind, no field this reader
# does not know. The subscriber's general path (msgspec, then PodConverter) gives exactly these events
# for such a batch; this reader gives them without a wire struct, a Python int per hash or a
# constructor call per event (tests/test_vllm_plain_reader.py holds the two to the same events).

cdef enum:
    F_TYPE = 1 << 0
    F_HASHES = 1 << 1
    F_PARENT = 1 << 2
    F_TOKENS = 1 << 3
    F_BLOCK_SIZE = 1 << 4
    F_LORA_ID = 1 << 5
    F_MEDIUM = 1 << 6
    F_LORA_NAME = 1 << 7
    F_EXTRA_KEYS = 1 << 8
    F_GROUP = 1 << 9
    F_SPEC_KIND = 1 << 10
    F_SLIDING_WINDOW = 1 << 11
    # the fields a removal may have; a store may have all
    F_REMOVED_FIELDS = F_TYPE | F_HASHES | F_MEDIUM | F_GROUP

cdef enum:
    EV_STORED = 1
    EV_REMOVED = 2

# The fields of an event in array form after its tag, in the wire's order (docs/vllm.md, V3): a store's
# first four are required, a removal's first one.
cdef int STORED_ARRAY_FIELDS[11]
STORED_ARRAY_FIELDS[:] = [F_HASHES, F_PARENT, F_TOKENS, F_BLOCK_SIZE, F_LORA_ID, F_MEDIUM, F_LORA_NAME,
                          F_EXTRA_KEYS, F_GROUP, F_SPEC_KIND, F_SLIDING_WINDOW]
cdef int REMOVED_ARRAY_FIELDS[3]
REMOVED_ARRAY_FIELDS[:] = [F_HASHES, F_MEDIUM, F_GROUP]

cdef Py_ssize_t OFF_R_HASHES = _slot_offset(BlockRemoved, "block_hashes")
cdef Py_ssize_t OFF_R_MODEL = _slot_offset(BlockRemoved, "model_name")
cdef Py_ssize_t OFF_R_LORA = _slot_offset(BlockRemoved, "lora_id")
cdef Py_ssize_t OFF_R_POD = _slot_offset(BlockRemoved, "source_pod")
cdef object _object_new = object.__new__
cdef object BASE_LORA_ID = -1


cdef inline bint _is(const uint8_t* s, size_t k, const char* name, size_t length) noexcept nogil:
    return k == length and memcmp(s, name, length) == 0


cdef int _field_id(const uint8_t* s, size_t k) noexcept nogil:
    """The field a map key names, or 0 for one this reader does not take."""
    if _is(s, k, b"type", 4):
        return F_TYPE
    if _is(s, k, b"block_hashes", 12):
        return F_HASHES
    if _is(s, k, b"parent_block_hash", 17):
        return F_PARENT
    if _is(s, k, b"token_ids", 9):
        return F_TOKENS
    if _is(s, k, b"block_size", 10):
        return F_BLOCK_SIZE
    if _is(s, k, b"lora_id", 7):
        return F_LORA_ID
    if _is(s, k, b"medium", 6):
        return F_MEDIUM
    if _is(s, k, b"lora_name", 9):
        return F_LORA_NAME
    if _is(s, k, b"extra_keys", 10):
        return F_EXTRA_KEYS
    if _is(s, k, b"group_idx", 9):
        return F_GROUP
    if _is(s, k, b"kv_cache_spec_kind", 18):
        return F_SPEC_KIND
    if _is(s, k, b"kv_cache_spec_sliding_window", 28):
        return F_SLIDING_WINDOW
    return 0


cdef class _PlainEvent:
    """One event as the reader has it so far."""
    cdef int kind, seen
    cdef object hashes, tokens, medium
    cdef bint has_parent
    cdef uint64_t parent, block_size


cdef inline void _set_slot(object obj, Py_ssize_t offset, object value) noexcept:
    """Fill an unset slot of a freshly allocated event."""
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + offset))[0] = <PyObject*>value


cdef bint _read_tag(Cursor* c, _PlainEvent ev):
    cdef const uint8_t* s
    cdef size_t k
    if not _read_str(c, &s, &k):
        return False
    if _is(s, k, b"BlockStored", 11):
        ev.kind = EV_STORED
    elif _is(s, k, b"BlockRemoved", 12):
        ev.kind = EV_REMOVED
    else:
        return False
    return True


cdef bint _read_value(Cursor* c, int field, _PlainEvent ev, size_t block_size):
    """The value of one field, read into ev; False for a value this reader does not take."""
    cdef size_t count, i
    cdef uint64_t value
    cdef uint64_t* out
    cdef const uint8_t* s
    cdef size_t k
    cdef cnp.npy_intp dims[2]
    ev.seen |= field
    if field == F_TYPE:
        return _read_tag(c, ev)
    if field == F_HASHES:
        if not _read_array(c, &count) or count > c.n - c.pos:
            return False
        dims[0] = <cnp.npy_intp>count
        ev.hashes = cnp.PyArray_EMPTY(1, dims, cnp.NPY_UINT64, 0)
        out = <uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>ev.hashes)
        for i in range(count):
            if not _read_uint(c, &out[i], True):
                return False
        return True
    if field == F_PARENT:
        if _read_nil(c):
            return True
        ev.has_parent = _read_uint(c, &ev.parent, True)
        return ev.has_parent
    if field == F_TOKENS:
        if not _read_array(c, &count) or count > c.n - c.pos or count % block_size:
            return False
        dims[0] = <cnp.npy_intp>(count // block_size)
        dims[1] = <cnp.npy_intp>(4 * block_size)
        ev.tokens = cnp.PyArray_EMPTY(2, dims, cnp.NPY_UINT8, 0)
        return _read_token_ids(c, count, <uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>ev.tokens))
    if field == F_BLOCK_SIZE:
        return _read_uint(c, &ev.block_size, True)
    if field == F_MEDIUM:
        if _read_nil(c):
            return True
        if not _read_str(c, &s, &k):
            return False
        try:
            ev.medium = PyUnicode_DecodeUTF8(<const char*>s, <Py_ssize_t>k, NULL)
        except UnicodeDecodeError:
            return False
        return True
    if field == F_GROUP:
        if _read_nil(c):
            return True
        return _read_uint(c, &value, True) and value == 0
    return _read_nil(c)  # lora_id, lora_name, extra_keys and the spec's kind and window: only when unset


cdef object _read_event(Cursor* c, size_t block_size, mediums, bint removals, str model, str pod):
    """One plain event, built; None for anything else."""
    cdef _PlainEvent ev = _PlainEvent.__new__(_PlainEvent)
    cdef size_t count, i, k
    cdef const uint8_t* s
    cdef int field
    ev.medium = None
    if not _has(c, 1):
        return None
    if 0x80 <= c.p[c.pos] <= 0x8f or c.p[c.pos] in (0xde, 0xdf):
        if not _read_map(c, &count):
            return None
        for i in range(count):
            if not _read_str(c, &s, &k):
                return None
            field = _field_id(s, k)
            if field == 0 or ev.seen & field:  # a field this reader does not know, or twice
                return None
            if not _read_value(c, field, ev, block_size):
                return None
    else:
        if not _read_array(c, &count) or count == 0 or not _read_tag(c, ev):
            return None
        ev.seen = F_TYPE
        if ev.kind == EV_STORED:
            if not 5 <= count <= 12:
                return None
            for i in range(count - 1):
                if not _read_value(c, STORED_ARRAY_FIELDS[i], ev, block_size):
                    return None
        else:
            if not 2 <= count <= 4:
                return None
            for i in range(count - 1):
                if not _read_value(c, REMOVED_ARRAY_FIELDS[i], ev, block_size):
                    return None
    if not (ev.seen & F_TYPE and ev.seen & F_HASHES):
        return None
    if mediums is not None and ev.medium not in mediums:
        return None
    if ev.kind == EV_REMOVED:
        if not removals or ev.seen & ~F_REMOVED_FIELDS:
            return None
        out = _object_new(BlockRemovedType)
        _set_slot(out, OFF_R_HASHES, ev.hashes)
        _set_slot(out, OFF_R_MODEL, model)
        _set_slot(out, OFF_R_LORA, BASE_LORA_ID)
        _set_slot(out, OFF_R_POD, pod)
        return out
    if not (ev.seen & F_TOKENS and ev.seen & F_BLOCK_SIZE) or ev.block_size != block_size \
            or cnp.PyArray_DIM(<cnp.ndarray>ev.hashes, 0) == 0 \
            or cnp.PyArray_DIM(<cnp.ndarray>ev.tokens, 0) != cnp.PyArray_DIM(<cnp.ndarray>ev.hashes, 0):
        return None
    out = _object_new(BlockStoredType)
    _set_slot(out, OFF_HASHES, ev.hashes)
    _set_slot(out, OFF_TOKENS, ev.tokens)
    _set_slot(out, OFF_MODEL, model)
    _set_slot(out, OFF_LORA, BASE_LORA_ID)
    _set_slot(out, OFF_POD, pod)
    _set_slot(out, OFF_PARENT, ev.parent if ev.has_parent else None)
    return out


def read_plain_batch(payload, str model, str pod, size_t block_size, mediums, bint removals):
    """A published batch of plain events as ``(ts, events, data_parallel_rank)``, read in one pass, or
    None when any part of it is not plain (then the subscriber takes its general path).

    Plain: the batch as an array ``[ts, events]`` or ``[ts, events, rank]``; every event a BlockStored or
    (with ``removals``) a BlockRemoved, in map or array form, with int hashes, no adapter, a tier in
    ``mediums`` (None: any), ``group_idx`` unset or 0, no ``kv_cache_spec_kind`` and no other field; a
    store of ``block_size`` with its tokens. The events are those the general path gives for ``model`` and
    ``pod`` and the base model's lora_id.
    """
    cdef Py_buffer buf
    cdef Cursor c
    cdef size_t count, n_events, i
    cdef uint64_t value
    cdef double ts_value
    cdef uint32_t bits32
    cdef uint64_t bits64
    if block_size == 0:
        return None
    try:
        PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    except (TypeError, BufferError):  # not one contiguous buffer: the general path says what it is
        return None
    try:
        c.p, c.n, c.pos = <const uint8_t*>buf.buf, <size_t>buf.len, 0
        if not _read_array(&c, &count) or not 2 <= count <= 3 or not _has(&c, 1):
            return None
        if _read_nil(&c):
            ts = None
        elif c.p[c.pos] == 0xcb and _has(&c, 9):
            bits64 = _be(c.p + c.pos + 1, 8)
            memcpy(&ts_value, &bits64, 8)
            ts = ts_value
            c.pos += 9
        elif c.p[c.pos] == 0xca and _has(&c, 5):
            bits32 = <uint32_t>_be(c.p + c.pos + 1, 4)
            ts = <double>(<float*>&bits32)[0]
            c.pos += 5
        else:
            return None
        if not _read_array(&c, &n_events) or n_events > c.n - c.pos:
            return None
        events = []
        for i in range(n_events):
            event = _read_event(&c, block_size, mediums, removals, model, pod)
            if event is None:
                return None
            events.append(event)
        rank = None
        if count == 3 and not _read_nil(&c):
            if not _has(&c, 1):
                return None
            if c.p[c.pos] >= 0xe0:  # a negative fixint
                rank = <int>(<signed char>c.p[c.pos])
                c.pos += 1
            elif _read_uint(&c, &value, True):
                rank = value
            else:
                return None
        if c.pos != c.n:
            return None
        return ts, events, rank
    finally:
        PyBuffer_Release(&buf)
