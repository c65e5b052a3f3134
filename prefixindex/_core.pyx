# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The compiled backend: the same API and results as _core_py.py, with the index in C++ maps.

Layout (docs/architecture.md): the table keeps a dict model -> {lora_id: int(Ctx*)}, and per context a
PrefixMap (prefix hash -> Entry{tick, pods}) and per pod a PodState with its EngineMap (engine hash ->
prefix hash). Pods are interned to small integer ids; an id is released when its pod holds nothing.
Map nodes come from one NodePool per table (_native.h). Contexts are kept in a recency list.

Critical sections (docs/architecture.md, "Critical sections"): the table has no lock of its own. Every
section runs with the GIL held and the garbage collector paused (`_begin`/`_end`), and inside one no
user object is called or released: names are exact str/int (the shared validators make them so) and
callbacks (the clock, a ready_pods iterator, a name's conversion) run before the section starts. So no
Python code can run in a section, and no other thread or callback can see a half-made change; a writer
waits for the GIL like any thread, never behind a stream of readers. Work long enough to be worth it
(hashing past NOGIL_BYTES) runs without the GIL, outside any section, on memory no other call writes;
so does the walk of a long query, in the table's walk gate, which every changing section waits to be empty
(docs/architecture.md, "Long walks").
"""

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsVoidPtr, PyLong_FromVoidPtr
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp, memcpy
from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from posix.unistd cimport usleep
from libcpp.pair cimport pair
from libcpp.vector cimport vector

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "Python.h":
    # The table's dicts are keyed by exact str (pod names to ids, models to their LoRA dicts) and
    # exact int (LoRA ids to contexts), and asked only with such keys (_check_context, the names'
    # checks): hashing and comparing them cannot fail, so a lookup cannot raise. PyDict_GetItem would
    # also save and restore the error state around every lookup (~50 instructions in CPython 3.11,
    # three lookups in a short match).
    PyObject* dict_lookup "PyDict_GetItemWithError"(object d, object key)

cimport numpy as cnp

from prefixindex._native cimport (BucketHash, Ctx, CtxPtr, EngineMap, Entry, EntryVec, NodePool, PodMap, PodRun, PodState,
                                  NO_POD, EntryPtr, PodStatePtr, PodVec, PrefixMap, RunVec, gc_pause, gc_resume, kMulti,
                                  kNodeSize, Walk, WalkChoice, WalkGate, monotonic_seconds, nth_element, sort,
                                  walk_gate_delete, walk_gate_enter, walk_gate_generation,
                                  walk_gate_install_fork_handler, walk_gate_leave, walk_gate_new,
                                  walk_gate_try_enter, walk_gate_wait, walk_gate_walkers, walk_ticks, touch_for_updates,
                                  WALK_BESIDE, WALK_TIMED, RAW_BUCKETS, RAW_INSERTS, U64Ptr, bucket_array, emplace_new,
                                  bucket_index, find_entry, find_near, find_raw, rarely)
from prefixindex._entries cimport (entry_add, entry_has, entry_remove, holds, is_multi, pod_list,
                                   release_list, renumber, walk, TOUCH_BUCKETS_FROM)
from prefixindex._xxh64 cimport LinkStart, chain_link_from, hash_chain, link_start_init, xxh64
from prefixindex._convert cimport c_token_bytes, ids_count, ids_fill

import os
import time
from sys import getswitchinterval as _switch_interval  # (bound at import: a later sys patch changes nothing)

import numpy as np

from ._config import (COUNTER_KEYS, REENTERED_MESSAGE, REINIT_MESSAGE, UNBUILT_MESSAGE, resolve_config,
                      table_settings)
from ._eviction import EvictionThread
from ._events import (AllBlocksCleared, BlockRemoved, BlockStored, batch_event_fields, batch_list, check_chain_args,
                      check_lora_id, check_pod, check_str, check_u64, cleared_fields, hash_array, query_token_bytes,
                      ready_set, removed_fields, stored_fields)

cnp.import_array()

__all__ = ["BACKEND", "SOURCE_HASH", "SyncPrefixHashTable", "prefix_hash_chain", "read_plain_batch",
           "token_bytes_from_msgpack", "xxh64_digest"]

BACKEND = "cython"

cdef extern from *:
    const char* PREFIXINDEX_SOURCE_HASH

SOURCE_HASH = PREFIXINDEX_SOURCE_HASH.decode("ascii")

# The event classes as C globals: `type(event) is BlockStored` would look the name up in the module
# dict on every event.
cdef object BlockStoredType = BlockStored
cdef object BlockRemovedType = BlockRemoved
cdef object AllBlocksClearedType = AllBlocksCleared

# Buckets per node: measured in docs/performance.md. 2.0 keeps the bucket arrays at 4-8 bytes per entry
# per map, which is what brings a stored block under 64 bytes, for about one more node visit per miss.
cdef float LOAD_FACTOR = 2.0
# Ticks are stored in 32 bits; a context renumbers them (keeping their order) once its counter passes
# this, long before 2**32.
cdef uint64_t RENUMBER_AT = 1u << 31
# From this many token bytes on, hashing runs without the GIL (docs/performance.md, "GIL"): below it,
# handing the GIL over and back costs more than the hashing, and a second thread makes it a convoy.
cdef size_t NOGIL_BYTES = 16384
# process_block_stored keeps the prefix hashes of an event of up to SMALL_EVENT_BLOCKS on the C stack,
# match_blocks those of a query of up to SMALL_QUERY_BLOCKS; a removal goes REMOVE_CHUNK blocks at a
# time (_remove_blocks).
cdef enum:
    SMALL_EVENT_BLOCKS = 16
    SMALL_QUERY_BLOCKS = 64
    REMOVE_CHUNK = 16
# A query's first blocks are hashed this many at a time, then probed; later ones 64 at a time
# (_entries.walk, docs/performance.md).
cdef size_t PROBE_CHUNK = 8


def _debug_set_probe_chunk(size_t chunk):
    """Benchmarks and tests only: how many blocks a query hashes before its first probes (later chunks
    are 64); the answers do not change (tests/test_compiled.py)."""
    global PROBE_CHUNK
    PROBE_CHUNK = chunk if chunk else 1

# How queries walk (_entries.walk): 0 as each table's WalkChoice measures best, 1 always chunked, 2 always
# with the probes beside the hash chain.
cdef int WALK_MODE = 0


def _debug_set_walk_mode(int mode):
    """Benchmarks and tests only: 0 chooses each walk's way by measurement (the default), 1 walks chunked,
    2 with the probes beside the hash chain; the answers do not change (tests/test_walk_choice.py)."""
    global WALK_MODE
    if mode not in (0, 1, 2):
        raise ValueError(f"walk mode must be 0, 1 or 2, got {mode}")
    WALK_MODE = mode


# Tests only: called (outside any section) between a walk outside the GIL and its closing section.
_after_walk_hook = None


def _debug_set_after_walk(hook):
    """Tests only: a callable run after every walk outside the GIL, before its result is built (to
    change the index there, as another thread could; tests/test_long_walks.py). None removes it."""
    global _after_walk_hook
    _after_walk_hook = hook


if walk_gate_install_fork_handler() != 0:
    raise ImportError("prefixindex._core: pthread_atfork failed")

# A long pass over the contexts (evict_now, a save's copy) offers the GIL between two of its sections,
# at most once in two switch intervals. More often helps nobody: a thread that waits for the GIL asks
# for it only when its wait of one switch interval times out, and every release wakes it and starts
# that wait again, so with a release every context (some 12 us) it never asked and had to win the
# race for the GIL against the passing thread, which it lost on a slow machine nearly every time.
# Two intervals apart, its wait has timed out and asked before the next offer, and CPython's forced
# switch (the asked holder waits until the other thread has taken the GIL) hands it over.
cdef struct GilOffers:
    double every  # seconds between offers
    double last   # when the last was made (monotonic_seconds)


cdef inline GilOffers _gil_offers() except *:
    """The offers of a pass that starts now (reads the switch interval: call it outside a section)."""
    cdef GilOffers offers
    offers.every = 2.0 * _switch_interval()
    offers.last = monotonic_seconds()
    return offers


cdef inline void _offer_gil(GilOffers* offers) noexcept:
    """Between two sections of a long pass: let a thread that waits for the GIL have it, when one
    offer's time has come (the yield gives it the moment to take it)."""
    if monotonic_seconds() - offers.last < offers.every:
        return
    with nogil:
        sched_yield()
    offers.last = monotonic_seconds()


# Running totals, indexed in the order of COUNTER_KEYS (checked below, at import).
cdef enum:
    N_STORED_EVENTS, N_REMOVED_EVENTS, N_CLEARED_EVENTS, N_BLOCKS_STORED, N_BLOCKS_REMOVED, N_ORPHANS,
    N_MATCHES, N_EVICTED_CONTEXTS, N_EVICTED_PODS, N_EVICTED_PREFIXES, N_COUNTERS

# How a store runs (SyncPrefixHashTable._apply_stored) and what a query returns.
cdef enum:
    NOW, DEFER, HASHED
cdef enum:
    PERCENT, BLOCKS, BLOCKS_AND_HASHES

if len(COUNTER_KEYS) != N_COUNTERS or COUNTER_KEYS[N_ORPHANS] != "orphan_blocks" \
        or COUNTER_KEYS[N_EVICTED_PREFIXES] != "evicted_prefixes":
    raise ImportError("prefixindex._core: the counters do not match _config.COUNTER_KEYS; rebuild the extension")



# --- module functions --------------------------------------------------------------------------------

def xxh64_digest(data, seed=0):
    """XXH64 of a bytes-like object, by this project's implementation (tested against xxhash)."""
    cdef uint64_t s = check_u64(seed, "seed")
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    return xxh64(&view[0] if view.shape[0] else <const uint8_t*>b"", view.shape[0], s)


def prefix_hash_chain(data, block_bytes, seed, parent, n_blocks):
    """The chain of n_blocks prefix hashes over token bytes, as a list (the same as _core_py's)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    check_chain_args(view.shape[0], block_bytes, seed, parent, n_blocks)  # sizes checked without overflow
    cdef size_t n = n_blocks
    cdef vector[uint64_t] out = vector[uint64_t](n)
    if n:
        hash_chain(&view[0] if view.shape[0] else <const uint8_t*>b"", n, <size_t>block_bytes, <uint64_t>seed,
                   <uint64_t>parent, out.data())
    return [out[i] for i in range(n)]


# --- events as the table reads them ------------------------------------------------------------------

cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)
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


cdef Py_ssize_t OFF_HASHES = _slot_offset(BlockStored, "block_hashes")
cdef Py_ssize_t OFF_TOKENS = _slot_offset(BlockStored, "tokens")
cdef Py_ssize_t OFF_MODEL = _slot_offset(BlockStored, "model_name")
cdef Py_ssize_t OFF_LORA = _slot_offset(BlockStored, "lora_id")
cdef Py_ssize_t OFF_POD = _slot_offset(BlockStored, "source_pod")
cdef Py_ssize_t OFF_PARENT = _slot_offset(BlockStored, "parent_block_hash")


cdef inline PyObject* _slot(object obj, Py_ssize_t offset) noexcept:
    """The slot at offset of obj (borrowed; NULL when unset), whose type is exactly the event class."""
    return (<PyObject**>((<char*><PyObject*>obj) + offset))[0]


cdef inline bint _is_u64_array(object arr) noexcept:
    return cnp.PyArray_CheckExact(arr) and cnp.PyArray_TYPE(<cnp.ndarray>arr) == cnp.NPY_UINT64 \
        and cnp.PyArray_NDIM(<cnp.ndarray>arr) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>arr)


cdef inline bint _is_lora(object lora) noexcept:
    cdef int overflow = 0
    if type(lora) is not int:
        return False
    PyLong_AsLongLongAndOverflow(lora, &overflow)
    return overflow == 0


cdef class _Stored:
    """A BlockStored as checked: the arrays in hand and plain names (what the table trusts, SPEC 8)."""
    cdef object hashes, tokens, model, lora, pod
    cdef bint has_parent
    cdef uint64_t parent
    cdef size_t n

    cdef int read(self, object event, size_t block_bytes, int block_size) except -1:
        cdef PyObject* f[6]
        cdef bint ok = False
        cdef int i
        if type(event) is BlockStoredType:
            f[0] = _slot(event, OFF_HASHES)
            f[1] = _slot(event, OFF_TOKENS)
            f[2] = _slot(event, OFF_MODEL)
            f[3] = _slot(event, OFF_LORA)
            f[4] = _slot(event, OFF_POD)
            f[5] = _slot(event, OFF_PARENT)
            ok = True
            for i in range(6):
                ok = ok and f[i] != NULL
            # the facts the table relies on, checked on the very objects it will use
            ok = ok and _is_u64_array(<object>f[0]) and cnp.PyArray_CheckExact(<object>f[1]) \
                and cnp.PyArray_TYPE(<cnp.ndarray>f[1]) == cnp.NPY_UINT8 \
                and cnp.PyArray_NDIM(<cnp.ndarray>f[1]) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>f[1]) \
                and cnp.PyArray_DIM(<cnp.ndarray>f[1], 0) == cnp.PyArray_DIM(<cnp.ndarray>f[0], 0) \
                and (cnp.PyArray_DIM(<cnp.ndarray>f[0], 0) == 0
                     or <size_t>cnp.PyArray_DIM(<cnp.ndarray>f[1], 1) == block_bytes) \
                and type(<object>f[2]) is str and _is_lora(<object>f[3]) \
                and type(<object>f[4]) is str and len(<str>f[4]) > 0 \
                and (<object>f[5] is None or (type(<object>f[5]) is int and 0 <= <object>f[5] < 2**64))
        if ok:
            self.hashes, self.tokens, self.model, self.lora, self.pod = \
                <object>f[0], <object>f[1], <object>f[2], <object>f[3], <object>f[4]
            parent = <object>f[5]
        else:  # a subclass, or something forced into the event: the shared validator reads and says
            self.hashes, self.tokens, self.model, self.lora, self.pod, parent = stored_fields(event, block_size)
        self.has_parent = parent is not None
        self.parent = parent if self.has_parent else 0
        self.n = <size_t>cnp.PyArray_DIM(<cnp.ndarray>self.hashes, 0)
        return 0


cdef tuple _removed(object event):
    """(block_hashes, model, lora, pod) of a BlockRemoved, checked as stored ones are. A subclass goes
    to the shared validator alone: its fields may be properties, which must be read once, as the
    fallback reads them."""
    if type(event) is BlockRemovedType:
        hashes, model, lora, pod = event.block_hashes, event.model_name, event.lora_id, event.source_pod
        if _is_u64_array(hashes) and type(model) is str and _is_lora(lora) and type(pod) is str:
            return hashes, model, lora, pod
    return removed_fields(event)


cdef inline tuple _check_context(model_name, lora_id):
    """(model, lora_id) as plain str and int; the shared validators raise the errors (same as _core_py)."""
    if type(model_name) is not str:
        model_name = check_str(model_name, "model_name")
    if not _is_lora(lora_id):
        lora_id = check_lora_id(lora_id)
    return model_name, lora_id


cdef object _ready_names(ready_pods):
    """ready_pods as a collection of plain str to look up, or None; the shared ready_set otherwise. Runs
    before a section: a generator or a name's conversion is Python code."""
    if ready_pods is None:
        return None
    t = type(ready_pods)
    if t is list or t is tuple or t is set or t is frozenset or t is dict:
        for name in ready_pods:
            if type(name) is not str:
                return ready_set(ready_pods)
        return ready_pods
    return ready_set(ready_pods)


include "_table.pxi"
include "_table_query.pxi"
include "_table_passes.pxi"
include "_table_entries.pxi"
include "_table_events.pxi"
include "_table_state.pxi"
include "_msgpack_reader.pxi"
