# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The compiled backend: the same API and results as _core_py.py, with the index in C++ maps.

Layout (docs/architecture.md): the table keeps a dict (model, lora_id) -> Ctx*, and per context a
PrefixMap (prefix hash -> Entry{tick, pods}) and per pod a PodState with its EngineMap (engine hash ->
prefix hash). Pods are interned to small integer ids; an id is released when its pod holds nothing.
Map nodes come from one NodePool per table (_native.h).

Locking (docs/architecture.md, "Locks"): one std::shared_mutex per table. Queries hold it shared,
everything that changes the index holds it exclusively. The rule that keeps it deadlock-free: a thread
never *waits* for the mutex while holding the GIL (it tries once, and on failure releases the GIL
before blocking). Holding the mutex while taking the GIL back is allowed, and is how results are
turned into Python objects while the pod ids they name cannot be recycled.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsVoidPtr, PyLong_FromVoidPtr
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libcpp.pair cimport pair
from libcpp.unordered_map cimport unordered_map
from libcpp.vector cimport vector

cimport numpy as cnp
from ._convert cimport c_token_bytes

import time

import numpy as np

from ._config import resolve_config
from ._eviction import EvictionThread
from ._events import (AllBlocksCleared, BlockRemoved, BlockStored, check_batch, check_event_width, check_lora_id,
                      check_str,
                      hash_array, query_token_bytes, ready_set)

cnp.import_array()

# The event classes as C globals: `type(event) is BlockStored` would look the name up in the module
# dict on every event.
cdef object BlockStoredType = BlockStored
cdef object BlockRemovedType = BlockRemoved
cdef object AllBlocksClearedType = AllBlocksCleared

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef Py_ssize_t _slot_offset(cls, str name) except -1:
    # Events are __slots__ classes: each field lives at a fixed offset in the object, which a member
    # descriptor records. Reading it there saves an attribute lookup per field on every event.
    descr = cls.__dict__[name]
    if type(descr).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef Py_ssize_t OFF_STORED_HASHES = _slot_offset(BlockStored, "block_hashes")
cdef Py_ssize_t OFF_STORED_TOKENS = _slot_offset(BlockStored, "tokens")
cdef Py_ssize_t OFF_STORED_MODEL = _slot_offset(BlockStored, "model_name")
cdef Py_ssize_t OFF_STORED_LORA = _slot_offset(BlockStored, "lora_id")
cdef Py_ssize_t OFF_STORED_POD = _slot_offset(BlockStored, "source_pod")
cdef Py_ssize_t OFF_STORED_PARENT = _slot_offset(BlockStored, "parent_block_hash")


cdef inline object _slot(object obj, Py_ssize_t offset):
    """The slot at offset of obj, whose type the caller has checked to be exactly the event class."""
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>obj) + offset))[0]
    if value is NULL:
        raise AttributeError("event is missing a field; build events with their constructor")
    return <object>value

__all__ = ["BACKEND", "SOURCE_HASH", "SyncPrefixHashTable", "prefix_hash_chain", "token_bytes_from_msgpack",
           "xxh64_digest"]

BACKEND = "cython"

cdef extern from *:
    const char* PREFIXINDEX_SOURCE_HASH

SOURCE_HASH = PREFIXINDEX_SOURCE_HASH.decode("ascii")

# Buckets per node: measured in docs/performance.md. 2.0 keeps the bucket arrays at 4-8 bytes per entry
# per map, which is what brings a stored block under 64 bytes, for about one more node visit per miss.
cdef float LOAD_FACTOR = 2.0
# Ticks are stored in 32 bits; a context renumbers them (keeping their order) once its counter passes
# this, long before 2**32, so concurrent matches under the shared lock can never wrap one.
cdef uint64_t RENUMBER_AT = 1u << 31
cdef uint32_t NO_POD = 0xFFFFFFFFu
# Below this many token bytes a query is hashed with the GIL held: releasing and retaking it costs more.
cdef size_t NOGIL_BYTES = 16384


def xxh64_digest(data, uint64_t seed=0):
    """XXH64 of a bytes-like object, by this project's implementation (tested against xxhash)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    return xxh64(&view[0] if view.shape[0] else <const uint8_t*>b"", view.shape[0], seed)


def prefix_hash_chain(data, size_t block_bytes, uint64_t seed, uint64_t parent, size_t n_blocks):
    """The chain of n_blocks prefix hashes over token bytes, as a list (the same as _core_py's)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    if n_blocks * block_bytes > <size_t>view.shape[0]:
        raise ValueError("data is shorter than n_blocks * block_bytes")
    cdef vector[uint64_t] out = vector[uint64_t](n_blocks)
    if n_blocks:
        hash_chain(&view[0], n_blocks, block_bytes, seed, parent, out.data())
    return [out[i] for i in range(n_blocks)]


# --- vLLM token ids in msgpack ----------------------------------------------------------------------

cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


def token_bytes_from_msgpack(raw):
    """A msgpack array of token ids (vLLM's ``token_ids``) as flat token bytes, with no Python int per token.

    Well-formed arrays of ids are parsed here; anything else goes to _core_py's version, which raises
    the error, so both backends give the same results and the same errors.
    """
    cdef const uint8_t[::1] view = memoryview(raw).cast("B")
    cdef size_t n = view.shape[0], pos = 0, count = 0, i, width
    cdef const uint8_t* p = &view[0] if n else NULL
    cdef uint8_t tag
    cdef uint64_t value
    if n == 0:
        return _msgpack_error(raw)
    tag = p[0]
    if 0x90 <= tag <= 0x9f:
        count, pos = tag & 0x0f, 1
    elif (tag == 0xdc and n >= 3) or (tag == 0xdd and n >= 5):
        width = 2 if tag == 0xdc else 4
        count, pos = _be(p + 1, <int>width), 1 + width
    else:
        return _msgpack_error(raw)
    if count > n - pos:  # every element takes at least one byte: do not trust a forged length
        return _msgpack_error(raw)
    out = np.empty(count * 4, dtype=np.uint8)
    cdef uint8_t[::1] dst = out
    for i in range(count):
        if pos >= n:
            return _msgpack_error(raw)
        tag = p[pos]
        if tag <= 0x7f:  # positive fixint
            value, pos = tag, pos + 1
        elif 0xcc <= tag <= 0xce or 0xd0 <= tag <= 0xd2:  # uint8/16/32, int8/16/32
            width = <size_t>1 << (tag & 0x03)
            if pos + 1 + width > n:
                return _msgpack_error(raw)
            value = _be(p + pos + 1, <int>width)
            if tag >= 0xd0 and (value >> (8 * width - 1)):  # a negative signed int
                return _msgpack_error(raw)
            pos += 1 + width
        else:  # uint64/int64 (too wide for a token id), negative fixint, or not an int at all
            return _msgpack_error(raw)
        dst[4 * i] = (value >> 24) & 0xff
        dst[4 * i + 1] = (value >> 16) & 0xff
        dst[4 * i + 2] = (value >> 8) & 0xff
        dst[4 * i + 3] = value & 0xff
    if pos != n:
        return _msgpack_error(raw)
    return out


def _msgpack_error(raw):
    from ._core_py import token_bytes_from_msgpack as reference
    result = reference(raw)  # raises for malformed input, with the reference's message
    # Only reached for valid input this parser does not take (uint64 or int64 encodings of small ids).
    return result


# --- the table --------------------------------------------------------------------------------------

cdef struct Counters:
    uint64_t events_block_stored
    uint64_t events_block_removed
    uint64_t events_all_blocks_cleared
    uint64_t blocks_stored
    uint64_t blocks_removed
    uint64_t orphan_blocks
    uint64_t matches
    uint64_t evicted_contexts
    uint64_t evicted_pods
    uint64_t evicted_prefixes


cdef inline bint _is_multi(uint32_t pods) noexcept nogil:
    return (pods & kMulti) != 0


cdef inline vector[uint32_t]* _pod_list(Ctx* c, uint32_t pods) noexcept nogil:
    return &c.multi[pods & ~kMulti]


cdef inline bint _has(Ctx* c, const Entry* e, uint32_t pod) noexcept nogil:
    cdef vector[uint32_t]* v
    if not _is_multi(e.pods):
        return e.pods == pod
    v = _pod_list(c, e.pods)
    return binary_search(v.begin(), v.end(), pod)


cdef bint _add(Ctx* c, Entry* e, uint32_t pod) noexcept nogil:
    """Add pod to the entry's pods; False if it was there."""
    cdef vector[uint32_t]* v
    cdef vector[uint32_t].iterator it
    cdef uint32_t slot
    if not _is_multi(e.pods):
        if e.pods == pod:
            return False
        if c.multi_free.empty():
            slot = <uint32_t>c.multi.size()
            c.multi.push_back(vector[uint32_t]())
        else:
            slot = c.multi_free.back()
            c.multi_free.pop_back()
        v = &c.multi[slot]
        v.push_back(e.pods if e.pods < pod else pod)
        v.push_back(pod if e.pods < pod else e.pods)
        e.pods = kMulti | slot
        return True
    v = _pod_list(c, e.pods)
    it = lower_bound(v.begin(), v.end(), pod)
    if it != v.end() and deref(it) == pod:
        return False
    v.insert(it, pod)
    return True


cdef inline void _release_list(Ctx* c, uint32_t pods) noexcept nogil:
    cdef uint32_t slot = pods & ~kMulti
    c.multi[slot].clear()
    c.multi[slot].shrink_to_fit()
    c.multi_free.push_back(slot)


cdef bint _remove(Ctx* c, Entry* e, uint32_t pod) noexcept nogil:
    """Remove pod from the entry's pods; False if it was not there. An emptied entry holds NO_POD."""
    cdef vector[uint32_t]* v
    cdef vector[uint32_t].iterator it
    cdef uint32_t single
    if not _is_multi(e.pods):
        if e.pods != pod:
            return False
        e.pods = NO_POD
        return True
    v = _pod_list(c, e.pods)
    it = lower_bound(v.begin(), v.end(), pod)
    if it == v.end() or deref(it) != pod:
        return False
    v.erase(it)
    if v.size() == 1:  # back to one pod: the list goes
        single = deref(v.begin())
        _release_list(c, e.pods)
        e.pods = single
    return True


cdef inline bint _holds(Ctx* c, uint64_t prefix, uint32_t pod) noexcept nogil:
    cdef PrefixMap.iterator it = c.prefixes.find(prefix)
    return it != c.prefixes.end() and _has(c, &deref(it).second, pod)


cdef void _renumber(Ctx* c) noexcept nogil:
    """Give the context's prefixes ticks 0..n-1 in their current order (D4: only the order matters)."""
    cdef vector[pair[uint32_t, EntryPtr]] order
    cdef PrefixMap.iterator it = c.prefixes.begin()
    cdef size_t i
    order.reserve(c.prefixes.size())
    while it != c.prefixes.end():
        order.push_back(pair[uint32_t, EntryPtr](deref(it).second.tick, &deref(it).second))
        inc(it)
    sort(order.begin(), order.end())
    for i in range(order.size()):
        order[i].second.tick = <uint32_t>i
    c.next_tick = order.size()


cdef inline size_t _array_len(object arr, int type_num, int ndim, const char* what) except? 0:
    # Events are built by _events.py, which guarantees these; this only guards against an event whose
    # attributes were replaced after construction.
    if not cnp.PyArray_Check(arr) or cnp.PyArray_TYPE(<cnp.ndarray>arr) != type_num \
            or cnp.PyArray_NDIM(<cnp.ndarray>arr) != ndim or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>arr):
        raise TypeError(f"{what.decode()} of this event is not the array its constructor made; "
                        "build a new event instead of assigning to its attributes")
    return <size_t>cnp.PyArray_DIM(<cnp.ndarray>arr, 0)


cdef class SyncPrefixHashTable:
    """Context (model, LoRA) -> prefix hash -> pods, fed by KV-cache events and asked for prefix matches."""

    cdef readonly object config
    cdef readonly uint64_t seed
    cdef readonly int block_size
    cdef size_t block_bytes
    cdef size_t max_contexts
    cdef size_t max_prefixes
    cdef double stale_after
    cdef object _clock
    cdef object _eviction
    cdef shared_mutex* mutex
    cdef NodePool* pool
    cdef dict _contexts           # model -> {lora_id: int(Ctx*)}: no tuple to build per lookup
    cdef vector[CtxPtr] all_ctx
    cdef dict _pod_ids            # pod name -> id
    cdef list _pod_names          # id -> pod name, None when free
    cdef vector[uint32_t] pod_refs    # id -> number of contexts with a pod state for it
    cdef vector[uint32_t] free_ids
    cdef vector[uint32_t] released    # ids whose last pod state went in this critical section
    cdef size_t live_pods
    cdef uint64_t ctx_clock
    cdef Counters n
    # The last (model, lora_id, pod) an event was stored for, by object identity, and where it went.
    # A subscriber streams one pod's events with the same str and int objects, so most events skip
    # three dict lookups. The objects are held (an address can be reused by another object once freed);
    # hot_ctx is set to NULL whenever any pod state or context is freed, which is when c/ps could go.
    cdef object hot_model, hot_lora, hot_pod
    cdef Ctx* hot_ctx
    cdef PodState* hot_ps
    cdef uint32_t hot_pid
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.pool = new NodePool(kNodeSize)
        self.mutex = new shared_mutex()
        self._contexts = {}
        self._pod_ids = {}
        self._pod_names = []

    def __dealloc__(self):
        cdef Ctx* c
        for c in self.all_ctx:
            self._clear_ctx(c)
            Py_DECREF(<object>c.key)
            del c
        self.all_ctx.clear()
        del self.pool
        del self.mutex

    def __init__(self, config=None, *, clock=None, background_eviction=True, **overrides):
        self.config = resolve_config(config, overrides)
        self.seed = self.config.seed
        self.block_size = self.config.block_size
        self.block_bytes = 4 * <size_t>self.block_size
        self.max_contexts = self.config.max_contexts
        self.max_prefixes = self.config.max_prefixes_per_context
        self.stale_after = self.config.eviction_duration_minutes * 60.0
        # time.monotonic is read natively (the same CLOCK_MONOTONIC) so that no call needs the GIL for it
        self._clock = None if clock is None or clock is time.monotonic else clock
        self._eviction = None
        if background_eviction:
            self._eviction = EvictionThread(self, self.config.eviction_interval_seconds)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self):
        """Stop the background eviction thread (idempotent). The table stays usable."""
        if self._eviction is not None:
            self._eviction.stop()
            self._eviction = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def eviction_thread_alive(self):
        return self._eviction is not None and self._eviction.alive

    # -- locking and time --------------------------------------------------------------------------

    cdef inline void _lock(self) noexcept:
        if not self.mutex.try_lock():
            with nogil:
                self.mutex.lock()

    cdef void _unlock(self):
        """End an exclusive section: recycle the pod ids it released (with the GIL), then unlock."""
        if not self.released.empty():
            self._drain_released()
        self.mutex.unlock()

    cdef inline void _lock_shared(self) noexcept:
        if not self.mutex.try_lock_shared():
            with nogil:
                self.mutex.lock_shared()

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return monotonic_seconds()
        return float(self._clock())

    # -- pods and contexts (exclusive lock held) ---------------------------------------------------

    cdef uint32_t _pod_id(self, pod) noexcept:
        cdef PyObject* found = PyDict_GetItem(self._pod_ids, pod)
        return NO_POD if found is NULL else <uint32_t>(<object>found)

    cdef uint32_t _intern(self, str pod) except? 0xFFFFFFFF:
        cdef uint32_t pid = self._pod_id(pod)
        if pid != NO_POD:
            return pid
        if not self.free_ids.empty():
            pid = self.free_ids.back()
            self.free_ids.pop_back()
            self._pod_names[pid] = pod
        else:
            pid = <uint32_t>len(self._pod_names)
            self._pod_names.append(pod)
            self.pod_refs.push_back(0)
        self._pod_ids[pod] = pid
        return pid

    cdef void _drain_released(self):
        # Pod ids whose pod holds nothing any more are recycled here, with the GIL, at the end of the
        # critical section that released them (D2): churned pod names do not pile up.
        cdef uint32_t pid
        for pid in self.released:
            if self.pod_refs[pid] == 0 and self._pod_names[pid] is not None:
                del self._pod_ids[self._pod_names[pid]]
                self._pod_names[pid] = None
                self.free_ids.push_back(pid)
        self.released.clear()

    cdef PodState* _new_pod_state(self, Ctx* c, uint32_t pid, double now) noexcept nogil:
        cdef PodState* ps = new PodState(self.pool, LOAD_FACTOR)
        ps.last_seen = now
        c.pods[pid] = ps
        if self.pod_refs[pid] == 0:
            self.live_pods += 1
        self.pod_refs[pid] += 1
        return ps

    cdef void _delete_pod_state(self, PodState* ps, uint32_t pid) noexcept nogil:
        self.hot_ctx = NULL
        del ps
        self.pod_refs[pid] -= 1
        if self.pod_refs[pid] == 0:
            self.live_pods -= 1
            self.released.push_back(pid)

    cdef inline Ctx* _find_ctx(self, model, lora) noexcept:
        cdef PyObject* loras = PyDict_GetItem(self._contexts, model)
        if loras is NULL:
            return NULL
        cdef PyObject* found = PyDict_GetItem(<object>loras, lora)
        if found is NULL:
            return NULL
        return <Ctx*>PyLong_AsVoidPtr(<object>found)

    cdef Ctx* _new_ctx(self, model, lora, double now) except NULL:
        cdef Ctx* victim
        cdef Ctx* c
        if self.all_ctx.size() >= self.max_contexts:
            victim = self.all_ctx[0]
            for c in self.all_ctx:
                if c.lru < victim.lru:
                    victim = c
            self._drop_ctx(victim)  # SPEC 5: the least recently used context goes at once
            self.n.evicted_contexts += 1
        c = new Ctx(self.pool, LOAD_FACTOR)
        key = (model, lora)
        c.key = <PyObject*>key
        Py_INCREF(key)
        c.slot = self.all_ctx.size()
        self.all_ctx.push_back(c)
        c.last_access = now
        c.lru = self.ctx_clock
        self.ctx_clock += 1
        loras = self._contexts.get(model)
        if loras is None:
            loras = self._contexts[model] = {}
        loras[lora] = PyLong_FromVoidPtr(c)
        return c

    cdef void _clear_ctx(self, Ctx* c) noexcept nogil:
        """Free everything a context holds (no GIL needed); the context itself stays linked."""
        cdef unordered_map[uint32_t, PodStatePtr].iterator it = c.pods.begin()
        while it != c.pods.end():
            self._delete_pod_state(deref(it).second, deref(it).first)
            inc(it)
        c.pods.clear()
        c.prefixes.clear()
        c.multi.clear()
        c.multi_free.clear()

    cdef void _unlink_ctx(self, Ctx* c):
        cdef Ctx* last = self.all_ctx.back()
        self.hot_ctx = NULL
        model, lora = <object>c.key
        loras = self._contexts[model]
        del loras[lora]
        if not loras:
            del self._contexts[model]
        self.all_ctx[c.slot] = last
        last.slot = c.slot
        self.all_ctx.pop_back()
        Py_DECREF(<object>c.key)
        del c

    cdef void _drop_ctx(self, Ctx* c):
        self._clear_ctx(c)
        self._unlink_ctx(c)

    cdef void _drop_if_empty(self, Ctx* c):
        if c.prefixes.size() == 0:  # a context lives while it holds something (D2)
            self._drop_ctx(c)

    cdef PodState* _context_and_pod(self, model, lora, str pod, double now, Ctx* c, PodState* ps, uint32_t pid,
                                    Ctx** ctx_out, uint32_t* pid_out) except NULL:
        """The context and the pod's state in it, made if missing; c/ps/pid: what the caller already
        found (NULL / NO_POD when it did not look)."""
        if c == NULL:
            c = self._find_ctx(model, lora)
        if c == NULL:
            c = self._new_ctx(model, lora, now)
            ps = NULL
        else:
            c.lru = self.ctx_clock
            self.ctx_clock += 1
            c.last_access = now
        if pid == NO_POD:
            pid = self._intern(pod)
        cdef unordered_map[uint32_t, PodStatePtr].iterator it
        if ps == NULL:
            it = c.pods.find(pid)
            if it == c.pods.end():
                ps = self._new_pod_state(c, pid, now)
            else:
                ps = deref(it).second
        ps.last_seen = now
        ctx_out[0] = c
        pid_out[0] = pid
        return ps

    # -- entries (exclusive lock held, no GIL needed) ----------------------------------------------

    cdef void _drop_entry(self, Ctx* c, uint64_t prefix, uint32_t pid, PodState* ps) noexcept nogil:
        cdef PrefixMap.iterator it = c.prefixes.find(prefix)
        if it == c.prefixes.end():
            return
        if _remove(c, &deref(it).second, pid):
            ps.held -= 1
            if deref(it).second.pods == NO_POD:
                c.prefixes.erase(it)

    cdef void _drop_pod(self, Ctx* c, uint32_t pid) noexcept nogil:
        """Remove every entry of the pod in this context, and its state."""
        cdef unordered_map[uint32_t, PodStatePtr].iterator found = c.pods.find(pid)
        cdef PodState* ps
        cdef EngineMap.iterator eit
        cdef PrefixMap.iterator it
        if found == c.pods.end():
            return
        ps = deref(found).second
        # Entries reached through the engine map first (the usual case: no full scan) ...
        eit = ps.engine.begin()
        while ps.held and eit != ps.engine.end():
            self._drop_entry(c, deref(eit).second, pid, ps)
            inc(eit)
        # ... then any made by add_prefix, which have no engine hash.
        it = c.prefixes.begin()
        while ps.held and it != c.prefixes.end():
            if _remove(c, &deref(it).second, pid):
                ps.held -= 1
                if deref(it).second.pods == NO_POD:
                    it = c.prefixes.erase(it)
                    continue
            inc(it)
        c.pods.erase(found)
        self._delete_pod_state(ps, pid)

    cdef void _place(self, Ctx* c, PodState* ps, uint32_t pid, const uint64_t* prefixes,
                     const uint64_t* engines, size_t n) noexcept nogil:
        """Store n chained prefixes for the pod (engines: their engine hashes, or NULL for add_prefix)."""
        cdef size_t i
        cdef uint64_t p, tick
        cdef pair[EngineMap.iterator, bint] einserted
        cdef pair[PrefixMap.iterator, bint] inserted
        cdef Entry fresh
        if c.next_tick + n >= RENUMBER_AT:
            _renumber(c)
        tick = c.next_tick
        c.next_tick += n
        fresh.pods = pid
        for i in range(n):
            p = prefixes[i]
            if engines != NULL:
                einserted = ps.engine.try_emplace(engines[i], p)
                if not einserted.second and deref(einserted.first).second != p:
                    if _holds(c, deref(einserted.first).second, pid):
                        # a known engine hash with new content replaces its old entry (D3)
                        self._drop_entry(c, deref(einserted.first).second, pid, ps)
                    deref(einserted.first).second = p
            # block 0 gets the newest tick, so a trim drops the tails of chains first (D4)
            fresh.tick = <uint32_t>(tick + n - 1 - i)
            inserted = c.prefixes.try_emplace(p, fresh)
            if inserted.second:
                ps.held += 1
            else:
                if _add(c, &deref(inserted.first).second, pid):
                    ps.held += 1
                deref(inserted.first).second.tick = fresh.tick
        if c.prefixes.size() > self.max_prefixes:
            self._trim(c)

    cdef void _trim(self, Ctx* c) noexcept nogil:
        """SPEC 5 / D4: drop the prefixes with the oldest ticks until max - max // 4 remain."""
        cdef size_t target = self.max_prefixes - self.max_prefixes // 4
        cdef size_t k = c.prefixes.size() - target, j
        cdef vector[pair[uint32_t, uint64_t]] order
        cdef PrefixMap.iterator it = c.prefixes.begin()
        cdef Entry* e
        cdef vector[uint32_t]* v
        cdef uint32_t pod
        cdef unordered_map[uint32_t, PodStatePtr].iterator pit
        cdef vector[uint32_t] gone
        cdef EngineMap.iterator eit
        order.reserve(c.prefixes.size())
        while it != c.prefixes.end():
            order.push_back(pair[uint32_t, uint64_t](deref(it).second.tick, deref(it).first))
            inc(it)
        nth_element(order.begin(), order.begin() + k, order.end())
        for j in range(k):
            it = c.prefixes.find(order[j].second)
            e = &deref(it).second
            if _is_multi(e.pods):
                v = _pod_list(c, e.pods)
                for pod in deref(v):
                    deref(c.pods.find(pod)).second.held -= 1
                _release_list(c, e.pods)
            else:
                deref(c.pods.find(e.pods)).second.held -= 1
            c.prefixes.erase(it)
        self.n.evicted_prefixes += k
        # Each pod state forgets the engine hashes whose prefix it no longer holds (D3, memory bound).
        pit = c.pods.begin()
        while pit != c.pods.end():
            pod = deref(pit).first
            if deref(pit).second.held == 0:
                gone.push_back(pod)
            else:
                eit = deref(pit).second.engine.begin()
                while eit != deref(pit).second.engine.end():
                    if _holds(c, deref(eit).second, pod):
                        inc(eit)
                    else:
                        eit = deref(pit).second.engine.erase(eit)
            inc(pit)
        for pod in gone:
            pit = c.pods.find(pod)
            self._delete_pod_state(deref(pit).second, pod)
            c.pods.erase(pit)

    # -- hashing -----------------------------------------------------------------------------------

    cdef object _token_bytes(self, tokens, const uint8_t** data, size_t* nbytes):
        """Point data at the query's token bytes; returns the object that owns them (keep it alive)."""
        if type(tokens) is bytes:
            data[0] = <const uint8_t*>PyBytes_AS_STRING(tokens)
            nbytes[0] = PyBytes_GET_SIZE(tokens)
            return tokens
        if not cnp.PyArray_CheckExact(tokens) or cnp.PyArray_TYPE(<cnp.ndarray>tokens) != cnp.NPY_UINT8 \
                or cnp.PyArray_NDIM(<cnp.ndarray>tokens) != 1 \
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>tokens):
            converted = c_token_bytes(tokens)  # lists and integer arrays in one inlined C pass (_convert.pxd)
            tokens = query_token_bytes(tokens) if converted is None else converted  # else the shared path
            if type(tokens) is bytes:
                return self._token_bytes(tokens, data, nbytes)
        data[0] = <const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>tokens)
        nbytes[0] = <size_t>cnp.PyArray_DIM(<cnp.ndarray>tokens, 0)
        return tokens

    cdef void _hash_chain(self, const uint8_t* data, size_t n, uint64_t parent, uint64_t* out) noexcept:
        """Hash n chained blocks into out; without the GIL when that is long enough to be worth it."""
        if n * self.block_bytes >= NOGIL_BYTES:
            with nogil:
                hash_chain(data, n, self.block_bytes, self.seed, parent, out)
        else:
            hash_chain(data, n, self.block_bytes, self.seed, parent, out)

    def get_prefix_hashes(self, tokens):
        cdef const uint8_t* data
        cdef size_t nbytes
        owner = self._token_bytes(tokens, &data, &nbytes)
        cdef cnp.npy_intp n = nbytes // self.block_bytes
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        self._hash_chain(data, n, self.seed, <uint64_t*>cnp.PyArray_DATA(out))
        return out

    # -- events ------------------------------------------------------------------------------------

    def process_block_stored(self, event):
        if type(event) is BlockStoredType:
            engine_arr = _slot(event, OFF_STORED_HASHES)
            tokens_arr = _slot(event, OFF_STORED_TOKENS)
            model = _slot(event, OFF_STORED_MODEL)
            lora = _slot(event, OFF_STORED_LORA)
            pod_obj = _slot(event, OFF_STORED_POD)
            parent_obj = _slot(event, OFF_STORED_PARENT)
        elif isinstance(event, BlockStoredType):
            engine_arr, tokens_arr = event.block_hashes, event.tokens
            model, lora = event.model_name, event.lora_id
            pod_obj, parent_obj = event.source_pod, event.parent_block_hash
        else:
            raise TypeError(f"process_block_stored takes a BlockStored, not {type(event).__name__}")
        cdef size_t n = _array_len(engine_arr, cnp.NPY_UINT64, 1, b"block_hashes")
        _array_len(tokens_arr, cnp.NPY_UINT8, 2, b"tokens")
        if n and <size_t>cnp.PyArray_DIM(<cnp.ndarray>tokens_arr, 1) != self.block_bytes:
            check_event_width(event, self.block_size)  # raises the shared message
        cdef str pod = pod_obj
        cdef bint has_parent = parent_obj is not None
        cdef uint64_t parent_engine = parent_obj if has_parent else 0
        cdef const uint64_t* engines = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>engine_arr)
        cdef const uint8_t* data = <const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>tokens_arr)
        cdef uint64_t small[64]
        cdef vector[uint64_t] large
        cdef uint64_t* hashes = small
        cdef Ctx* c
        cdef PodState* ps = NULL
        cdef uint32_t pid = NO_POD
        cdef uint64_t parent
        cdef EngineMap.iterator eit
        cdef unordered_map[uint32_t, PodStatePtr].iterator found
        cdef double now = self._now()
        self._lock()
        try:
            self.n.events_block_stored += 1
            if self.hot_ctx != NULL and model is self.hot_model and lora is self.hot_lora and pod is self.hot_pod:
                c, ps, pid = self.hot_ctx, self.hot_ps, self.hot_pid
                ps.last_seen = now
            else:
                c = self._find_ctx(model, lora)
                if c != NULL:
                    pid = self._pod_id(pod)
                    if pid != NO_POD:
                        found = c.pods.find(pid)
                        if found != c.pods.end():
                            ps = deref(found).second
                            ps.last_seen = now  # any event from a pod shows it is alive here (D6)
            parent = self.seed
            if has_parent:
                if ps == NULL:
                    self.n.orphan_blocks += n
                    return
                eit = ps.engine.find(parent_engine)
                if eit == ps.engine.end() or not _holds(c, deref(eit).second, pid):
                    # SPEC 1: an unknown parent cannot be placed; neither can anything chained after it
                    self.n.orphan_blocks += n
                    return
                parent = deref(eit).second
            if n == 0:
                return
            if n > 64:
                large.resize(n)
                hashes = large.data()
            ps = self._context_and_pod(model, lora, pod, now, c, ps, pid, &c, &pid)
            if n * self.block_bytes >= NOGIL_BYTES:
                with nogil:
                    hash_chain(data, n, self.block_bytes, self.seed, parent, hashes)
                    self._place(c, ps, pid, hashes, engines, n)
            else:
                hash_chain(data, n, self.block_bytes, self.seed, parent, hashes)
                self._place(c, ps, pid, hashes, engines, n)
            self.n.blocks_stored += n
            if c.pods.count(pid):  # still there after a trim: remember where this pod's events go
                if self.hot_model is not model:
                    self.hot_model = model
                if self.hot_lora is not lora:
                    self.hot_lora = lora
                if self.hot_pod is not pod:
                    self.hot_pod = pod
                self.hot_ctx, self.hot_ps, self.hot_pid = c, ps, pid
        finally:
            self._unlock()

    def process_block_removed(self, event):
        if type(event) is not BlockRemovedType and not isinstance(event, BlockRemovedType):
            raise TypeError(f"process_block_removed takes a BlockRemoved, not {type(event).__name__}")
        engine_arr = event.block_hashes
        cdef size_t n = _array_len(engine_arr, cnp.NPY_UINT64, 1, b"block_hashes")
        cdef const uint64_t* engines = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>engine_arr)
        model, lora = event.model_name, event.lora_id
        cdef str pod = event.source_pod
        cdef Ctx* c
        cdef uint32_t pid
        cdef PodState* ps
        cdef vector[pair[uint32_t, PodStatePtr]] targets
        cdef unordered_map[uint32_t, PodStatePtr].iterator found
        cdef EngineMap.iterator eit
        cdef uint64_t p, removed = 0
        cdef size_t i, t
        cdef double now = self._now()
        self._lock()
        try:
            self.n.events_block_removed += 1
            c = self._find_ctx(model, lora)
            if c == NULL:
                return
            if len(pod):
                pid = self._pod_id(pod)
                if pid != NO_POD:
                    found = c.pods.find(pid)
                    if found != c.pods.end():
                        deref(found).second.last_seen = now
                        targets.push_back(deref(found))
            else:  # SPEC 2: an empty source_pod removes the blocks for every pod that reported them
                found = c.pods.begin()
                while found != c.pods.end():
                    targets.push_back(deref(found))
                    inc(found)
            if n * targets.size() >= 256:
                with nogil:
                    removed = self._remove_blocks(c, &targets, engines, n)
            else:
                removed = self._remove_blocks(c, &targets, engines, n)
            self.n.blocks_removed += removed
            self._drop_if_empty(c)
        finally:
            self._unlock()

    cdef uint64_t _remove_blocks(self, Ctx* c, vector[pair[uint32_t, PodStatePtr]]* targets,
                                 const uint64_t* engines, size_t n) noexcept nogil:
        cdef uint64_t p, removed = 0
        cdef size_t i, t
        cdef uint32_t pid
        cdef PodState* ps
        cdef EngineMap.iterator eit
        for t in range(targets.size()):
            pid = deref(targets)[t].first
            ps = deref(targets)[t].second
            for i in range(n):
                eit = ps.engine.find(engines[i])
                if eit == ps.engine.end():
                    continue
                p = deref(eit).second
                ps.engine.erase(eit)
                if _holds(c, p, pid):
                    self._drop_entry(c, p, pid, ps)
                    removed += 1
            if ps.held == 0:
                c.pods.erase(pid)
                self._delete_pod_state(ps, pid)
        return removed

    def process_all_blocks_cleared(self, event):
        if type(event) is not AllBlocksClearedType and not isinstance(event, AllBlocksClearedType):
            raise TypeError(f"process_all_blocks_cleared takes an AllBlocksCleared, not {type(event).__name__}")
        model = event.model_name
        lora = event.lora_id
        cdef uint32_t pid
        cdef Ctx* c
        self._lock()
        try:
            self.n.events_all_blocks_cleared += 1
            pid = self._pod_id(event.source_pod)
            if pid == NO_POD:
                return
            for address in [address for loras in self._contexts.values() for address in loras.values()]:
                c = <Ctx*>PyLong_AsVoidPtr(address)
                if (model is None or (<object>c.key)[0] == model) and (lora is None or (<object>c.key)[1] == lora):
                    with nogil:
                        self._drop_pod(c, pid)
                    self._drop_if_empty(c)
        finally:
            self._unlock()

    def process_events(self, events):
        """Apply a sequence of BlockStored / BlockRemoved / AllBlocksCleared in order, as the three
        methods would one by one. Every event is checked first: a bad one is an error naming its
        position, and nothing of the batch is applied."""
        batch = check_batch(events, self.block_size)
        for event in batch:
            if isinstance(event, BlockStoredType):
                self.process_block_stored(event)
            elif isinstance(event, BlockRemovedType):
                self.process_block_removed(event)
            else:
                self.process_all_blocks_cleared(event)

    # -- direct prefix API (AIBrix's AddPrefix / RemovePrefix) ---------------------------------------

    def add_prefix(self, model_name, lora_id, pod, prefix_hashes):
        """Record that ``pod`` holds these prefix hashes (as a router does after sending it a request)."""
        lora = _check_context(model_name, lora_id)
        check_str(pod, "pod")
        arr = hash_array(prefix_hashes, "prefix_hashes")
        cdef size_t n = len(arr)
        if n == 0:
            return
        cdef const uint64_t[::1] hashes = arr
        cdef Ctx* c
        cdef PodState* ps
        cdef uint32_t pid
        cdef double now = self._now()
        self._lock()
        try:
            ps = self._context_and_pod(model_name, lora, pod, now, NULL, NULL, NO_POD, &c, &pid)
            if n >= 256:
                with nogil:
                    self._place(c, ps, pid, &hashes[0], NULL, n)
            else:
                self._place(c, ps, pid, &hashes[0], NULL, n)
        finally:
            self._unlock()

    def remove_prefix(self, model_name, lora_id, pod):
        """Forget every prefix ``pod`` holds in the context (AIBrix's RemovePrefix)."""
        lora = _check_context(model_name, lora_id)
        check_str(pod, "pod")
        cdef Ctx* c
        cdef uint32_t pid
        self._lock()
        try:
            c = self._find_ctx(model_name, lora)
            if c == NULL:
                return
            pid = self._pod_id(pod)
            if pid != NO_POD:
                with nogil:
                    self._drop_pod(c, pid)
            self._drop_if_empty(c)
        finally:
            self._unlock()

    # -- queries -----------------------------------------------------------------------------------

    def match_prefix(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> percent of the query's blocks it holds from block 0 on, and the query's prefix hashes."""
        lora = _check_context(model_name, lora_id)
        cdef const uint8_t* data
        cdef size_t nbytes, hashed = 0
        owner = self._token_bytes(tokens, &data, &nbytes)
        ready = _ready_names(ready_pods)
        cdef cnp.npy_intp n = nbytes // self.block_bytes
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        cdef uint64_t* h = <uint64_t*>cnp.PyArray_DATA(out)
        result = self._match(model_name, lora, data, h, n, ready, True, &hashed)
        if hashed < <size_t>n:  # the walk stopped early; match_prefix returns every hash
            self._hash_chain(data + hashed * self.block_bytes, n - hashed, h[hashed - 1] if hashed else self.seed,
                             h + hashed)
        return result, out

    def match_blocks(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> number of the query's blocks it holds from block 0 on."""
        lora = _check_context(model_name, lora_id)
        cdef const uint8_t* data
        cdef size_t nbytes, hashed = 0
        owner = self._token_bytes(tokens, &data, &nbytes)
        ready = _ready_names(ready_pods)
        cdef size_t n = nbytes // self.block_bytes
        cdef vector[uint64_t] h = vector[uint64_t](n)
        return self._match(model_name, lora, data, h.data(), n, ready, False, &hashed)

    def match(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> number of the query's blocks it holds from block 0 on, and the query's prefix hashes:
        what match_blocks and match_prefix say, from one walk and one recency update."""
        lora = _check_context(model_name, lora_id)
        cdef const uint8_t* data
        cdef size_t nbytes, hashed = 0
        owner = self._token_bytes(tokens, &data, &nbytes)
        ready = _ready_names(ready_pods)
        cdef cnp.npy_intp n = nbytes // self.block_bytes
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        cdef uint64_t* h = <uint64_t*>cnp.PyArray_DATA(out)
        result = self._match(model_name, lora, data, h, n, ready, False, &hashed)
        if hashed < <size_t>n:
            self._hash_chain(data + hashed * self.block_bytes, n - hashed, h[hashed - 1] if hashed else self.seed,
                             h + hashed)
        return result, out

    cdef dict _match(self, model, lora, const uint8_t* data, uint64_t* h, size_t n, ready, bint percent, size_t* hashed):
        """The walk of SPEC 4 under the shared lock. Blocks are hashed as the walk reaches them, in the
        same nogil section, so hashing stops where matching does; *hashed says how far it got."""
        cdef double now = self._now()
        cdef Ctx* c
        cdef PodVec ready_ids
        cdef bint filter_ready = ready is not None
        cdef RunVec found
        cdef EntryVec touched
        cdef size_t depth, i
        cdef uint64_t tick
        cdef uint32_t pid
        cdef PyObject* known
        cdef bint renumber = False
        cdef dict result = {}
        self._lock_shared()
        try:
            fetch_add_u64(&self.n.matches, 1)
            c = self._find_ctx(model, lora)
            if c == NULL:
                return result
            if filter_ready:
                for name in ready:
                    known = PyDict_GetItem(self._pod_ids, name)
                    if known is not NULL:
                        ready_ids.push_back(<uint32_t>(<object>known))
                sort(ready_ids.begin(), ready_ids.end())
            with nogil:
                depth = _walk(c, h, n, data, self.block_bytes, self.seed,
                              &ready_ids if filter_ready else NULL, &found, &touched, hashed)
                # the matched blocks were used just now; block 0 gets the newest tick (D4)
                tick = fetch_add_u64(&c.next_tick, depth)
                for i in range(depth):
                    store_tick(touched[i], <uint32_t>(tick + depth - 1 - i))
                store_u64(&c.lru, fetch_add_u64(&self.ctx_clock, 1))
                store_f64(&c.last_access, now)
                renumber = c.next_tick >= RENUMBER_AT
            for i in range(found.size()):
                result[self._pod_names[found[i].pod]] = found[i].blocks * 100 // n if percent else found[i].blocks
        finally:
            self.mutex.unlock_shared()
        if renumber:
            self._renumber_context(model, lora)
        return result

    cdef void _renumber_context(self, model, lora):
        cdef Ctx* c
        self._lock()
        try:
            c = self._find_ctx(model, lora)
            if c != NULL and c.next_tick >= RENUMBER_AT:
                with nogil:
                    _renumber(c)
        finally:
            self.mutex.unlock()

    # -- maintenance -------------------------------------------------------------------------------

    def evict_now(self):
        """Run the staleness pass of SPEC 6 now; returns what it evicted."""
        cdef double now = self._now()
        cdef vector[CtxPtr] contexts
        cdef vector[CtxPtr] dead
        cdef vector[uint32_t] stale
        cdef Ctx* c
        cdef uint32_t pid
        cdef unordered_map[uint32_t, PodStatePtr].iterator it
        cdef size_t n_contexts = 0, n_pods = 0
        self._lock()
        try:
            contexts = self.all_ctx
            with nogil:
                for c in contexts:
                    if now - c.last_access > self.stale_after:
                        self._clear_ctx(c)
                        dead.push_back(c)
                        n_contexts += 1
                        continue
                    stale.clear()
                    it = c.pods.begin()
                    while it != c.pods.end():
                        if now - deref(it).second.last_seen > self.stale_after:
                            stale.push_back(deref(it).first)
                        inc(it)
                    for pid in stale:
                        self._drop_pod(c, pid)
                    n_pods += stale.size()
                    if c.prefixes.size() == 0:
                        dead.push_back(c)
            for c in dead:
                self._unlink_ctx(c)
            self.n.evicted_contexts += n_contexts
            self.n.evicted_pods += n_pods
        finally:
            self._unlock()
        return {"contexts": n_contexts, "pods": n_pods}

    def stats(self):
        cdef size_t prefixes = 0, entries = 0
        cdef Ctx* c
        cdef unordered_map[uint32_t, PodStatePtr].iterator it
        self._lock_shared()
        try:
            for c in self.all_ctx:
                prefixes += c.prefixes.size()
                it = c.pods.begin()
                while it != c.pods.end():
                    entries += deref(it).second.held
                    inc(it)
            out = {"contexts": self.all_ctx.size(), "prefixes": prefixes, "entries": entries,
                   "pods": self.live_pods}
            out.update(self.n)
        finally:
            self.mutex.unlock_shared()
        return out

    def snapshot(self):
        """Everything the index holds: {(model, lora_id): {prefix hash: frozenset(pods)}}."""
        cdef Ctx* c
        cdef PrefixMap.iterator it
        cdef Entry* e
        cdef uint32_t pod
        out = {}
        self._lock_shared()
        try:
            for c in self.all_ctx:
                prefixes = {}
                it = c.prefixes.begin()
                while it != c.prefixes.end():
                    e = &deref(it).second
                    if _is_multi(e.pods):
                        prefixes[deref(it).first] = frozenset([self._pod_names[pod]
                                                               for pod in deref(_pod_list(c, e.pods))])
                    else:
                        prefixes[deref(it).first] = frozenset([self._pod_names[e.pods]])
                    inc(it)
                out[<object>c.key] = prefixes
        finally:
            self.mutex.unlock_shared()
        return out

    def _debug_set_next_tick(self, model_name, lora_id, uint64_t value):
        """Tests only: move a context's tick counter (to exercise the 32-bit renumbering)."""
        cdef Ctx* c
        self._lock()
        try:
            c = self._find_ctx(model_name, lora_id)
            if c == NULL:
                raise KeyError((model_name, lora_id))
            c.next_tick = value
        finally:
            self.mutex.unlock()

    def _debug_memory(self):
        """Bytes the node pool has reserved and nodes in use, and bucket bytes (for the memory tests)."""
        cdef Ctx* c
        cdef size_t buckets = 0
        cdef unordered_map[uint32_t, PodStatePtr].iterator it
        self._lock_shared()
        try:
            for c in self.all_ctx:
                buckets += c.prefixes.bucket_count()
                it = c.pods.begin()
                while it != c.pods.end():
                    buckets += deref(it).second.engine.bucket_count()
                    inc(it)
            return {"pool_bytes": self.pool.reserved_bytes(), "pool_nodes": self.pool.live(),
                    "bucket_bytes": buckets * sizeof(void*), "pod_ids": len(self._pod_names),
                    "free_pod_ids": self.free_ids.size()}
        finally:
            self.mutex.unlock_shared()


cdef inline object _check_context(model_name, lora_id):
    """Check a context's model name and LoRA id and return the LoRA id as an int; the shared validators
    raise the errors, so that they read the same as the pure-Python backend's."""
    cdef int overflow = 0
    if type(model_name) is not str:
        check_str(model_name, "model_name")
    if type(lora_id) is not int:
        lora_id = check_lora_id(lora_id)
    else:
        PyLong_AsLongLongAndOverflow(lora_id, &overflow)
        if overflow:
            check_lora_id(lora_id)
    return lora_id


cdef object _ready_names(ready_pods):
    """ready_pods as an iterable of str to look up, or None; the shared ready_set for anything unusual."""
    if ready_pods is None:
        return None
    t = type(ready_pods)
    if t is list or t is tuple or t is set or t is frozenset:
        for name in ready_pods:
            if type(name) is not str:
                return ready_set(ready_pods)
        return ready_pods
    return ready_set(ready_pods)


cdef size_t _walk(Ctx* c, uint64_t* h, size_t n, const uint8_t* data, size_t width, uint64_t seed,
                  PodVec* ready, RunVec* found, EntryVec* touched, size_t* hashed) noexcept nogil:
    """SPEC 4: each ready pod's run of blocks held from block 0. Returns the longest run.

    h[i] is computed as the walk reaches block i (the map probe of one block overlaps the hashing of
    the next), and *hashed tells how many were.
    """
    cdef PodVec alive
    cdef size_t i, j, kept, depth = 0
    cdef PrefixMap.iterator it
    cdef Entry* e
    cdef uint32_t pod
    cdef uint64_t parent = seed
    cdef PodRun run
    hashed[0] = 0
    for i in range(n):
        parent = xxh64_link(parent, data + i * width, width, seed)
        h[i] = parent
        hashed[0] = i + 1
        it = c.prefixes.find(parent)
        if it == c.prefixes.end():
            break
        e = &deref(it).second
        if i == 0:
            if _is_multi(e.pods):
                for pod in deref(_pod_list(c, e.pods)):
                    if ready == NULL or binary_search(ready.begin(), ready.end(), pod):
                        alive.push_back(pod)
            elif ready == NULL or binary_search(ready.begin(), ready.end(), e.pods):
                alive.push_back(e.pods)
        else:
            kept = 0
            for j in range(alive.size()):
                if _has(c, e, alive[j]):
                    alive[kept] = alive[j]
                    kept += 1
                else:  # this pod's run ends here
                    run.pod = alive[j]
                    run.blocks = <uint32_t>i
                    found.push_back(run)
            alive.resize_down(kept)
        if alive.empty():
            break
        touched.push_back(e)
        depth = i + 1
    for j in range(alive.size()):
        run.pod = alive[j]
        run.blocks = <uint32_t>depth
        found.push_back(run)
    return depth
