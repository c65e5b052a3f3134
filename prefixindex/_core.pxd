# cython: language_level=3
"""Declarations of the compiled core, and XXH64 written for this project.

XXH64 follows the published algorithm (Yann Collet's xxHash specification). The chain step hashes
le_u64(parent) || block without building that buffer: the 8 parent bytes are exactly the first 64-bit
lane of the first stripe, so every lane after it comes straight from the block.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from cpython.ref cimport PyObject
from libc.string cimport memcpy
from libcpp.pair cimport pair
from libcpp.unordered_map cimport unordered_map
from libcpp.vector cimport vector


cdef extern from "_native.h" namespace "pi" nogil:
    cdef cppclass NodePool:
        NodePool(size_t node_size) except +
        size_t node_size()
        size_t live()
        size_t reserved_bytes()

    cdef struct Entry:
        uint32_t tick
        uint32_t pods

    ctypedef Entry* EntryPtr
    ctypedef PodState* PodStatePtr

    cdef uint32_t kMulti
    cdef size_t kNodeSize

    # prefix hash -> Entry, and engine hash -> prefix hash: one template, two instantiations
    cdef cppclass U64Map[V]:
        cppclass iterator:
            pair[const uint64_t, V]& operator*()
            iterator operator++()
            bint operator==(iterator)
            bint operator!=(iterator)
        iterator begin()
        iterator end()
        iterator find(uint64_t)
        iterator erase(iterator)
        size_t erase(uint64_t)
        size_t count(uint64_t)
        pair[iterator, bint] try_emplace(const uint64_t&, V&)
        size_t size()
        size_t bucket_count()
        void clear()

    ctypedef U64Map[Entry] PrefixMap
    ctypedef U64Map[uint64_t] EngineMap

    cdef cppclass PodState:
        PodState(NodePool* pool, float load_factor) except +
        EngineMap engine
        uint32_t held
        double last_seen

    cdef cppclass Ctx:
        Ctx(NodePool* pool, float load_factor) except +
        PrefixMap prefixes
        unordered_map[uint32_t, PodStatePtr] pods
        vector[vector[uint32_t]] multi
        vector[uint32_t] multi_free
        uint64_t next_tick
        uint64_t lru
        double last_access
        size_t slot
        PyObject* key

    ctypedef Ctx* CtxPtr

    cdef struct PodRun:
        uint32_t pod
        uint32_t blocks

    cdef cppclass PodVec:
        void push_back(uint32_t)
        uint32_t& operator[](size_t)
        uint32_t* begin()
        uint32_t* end()
        size_t size()
        bint empty()
        void clear()
        void resize_down(size_t)

    cdef cppclass RunVec:
        void push_back(PodRun)
        PodRun& operator[](size_t)
        size_t size()

    cdef cppclass EntryVec:
        void push_back(Entry*)
        Entry*& operator[](size_t)
        size_t size()

    void store_tick(Entry* e, uint32_t tick)
    uint64_t fetch_add_u64(uint64_t* p, uint64_t v)
    void store_f64(double* p, double v)
    void store_u64(uint64_t* p, uint64_t v)
    double monotonic_seconds()


# Declared here without `except +`: these cannot throw for our arguments (the mutex only on a broken
# system), and the exception plumbing would otherwise sit on every hot path.
cdef extern from "<shared_mutex>" namespace "std" nogil:
    cdef cppclass shared_mutex:
        void lock()
        bint try_lock()
        void unlock()
        void lock_shared()
        bint try_lock_shared()
        void unlock_shared()

cdef extern from "<algorithm>" namespace "std" nogil:
    void nth_element[Iter](Iter first, Iter nth, Iter last)
    void sort[Iter](Iter first, Iter last)
    Iter lower_bound[Iter, T](Iter first, Iter last, const T& value)
    bint binary_search[Iter, T](Iter first, Iter last, const T& value)


# --- XXH64 -----------------------------------------------------------------------------------------

cdef extern from "_native.h" namespace "pi" nogil:
    # the five 64-bit primes of the XXH64 specification
    const uint64_t XXH_P1
    const uint64_t XXH_P2
    const uint64_t XXH_P3
    const uint64_t XXH_P4
    const uint64_t XXH_P5


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const uint8_t* p) noexcept nogil:
    # XXH64 reads lanes little-endian; memcpy compiles to one unaligned load on x86-64 and arm64.
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint32_t _read32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc = acc + lane * XXH_P2
    return _rotl(acc, 31) * XXH_P1


cdef inline uint64_t _merge(uint64_t h, uint64_t v) noexcept nogil:
    h = h ^ _round(0, v)
    return h * XXH_P1 + XXH_P4


cdef inline uint64_t _finish(uint64_t h, const uint8_t* p, size_t n) noexcept nogil:
    # the last n < 32 bytes, then the avalanche
    while n >= 8:
        h = h ^ _round(0, _read64(p))
        h = _rotl(h, 27) * XXH_P1 + XXH_P4
        p += 8
        n -= 8
    if n >= 4:
        h = h ^ (<uint64_t>_read32(p) * XXH_P1)
        h = _rotl(h, 23) * XXH_P2 + XXH_P3
        p += 4
        n -= 4
    while n > 0:
        h = h ^ (<uint64_t>p[0] * XXH_P5)
        h = _rotl(h, 11) * XXH_P1
        p += 1
        n -= 1
    h = h ^ (h >> 33)
    h = h * XXH_P2
    h = h ^ (h >> 29)
    h = h * XXH_P3
    return h ^ (h >> 32)


cdef inline uint64_t _converge(uint64_t v1, uint64_t v2, uint64_t v3, uint64_t v4) noexcept nogil:
    cdef uint64_t h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
    h = _merge(h, v1)
    h = _merge(h, v2)
    h = _merge(h, v3)
    return _merge(h, v4)


cdef inline void _start(uint64_t* acc, uint64_t seed) noexcept nogil:
    acc[0] = seed + XXH_P1 + XXH_P2
    acc[1] = seed + XXH_P2
    acc[2] = seed
    acc[3] = seed - XXH_P1


cdef inline size_t _stripes(uint64_t* acc, const uint8_t* p, size_t n) noexcept nogil:
    """Fold every whole 32-byte stripe of p[0:n] into the four accumulators; returns the bytes used."""
    cdef size_t used = 0
    while n - used >= 32:
        acc[0] = _round(acc[0], _read64(p + used))
        acc[1] = _round(acc[1], _read64(p + used + 8))
        acc[2] = _round(acc[2], _read64(p + used + 16))
        acc[3] = _round(acc[3], _read64(p + used + 24))
        used += 32
    return used


cdef inline uint64_t xxh64(const uint8_t* p, size_t n, uint64_t seed) noexcept nogil:
    """XXH64 of n bytes at p."""
    cdef uint64_t acc[4]
    cdef size_t used
    if n < 32:
        return _finish(seed + XXH_P5 + n, p, n)
    _start(acc, seed)
    used = _stripes(acc, p, n)
    return _finish(_converge(acc[0], acc[1], acc[2], acc[3]) + n, p + used, n - used)


cdef inline uint64_t xxh64_link(uint64_t parent, const uint8_t* block, size_t n, uint64_t seed) noexcept nogil:
    """XXH64(le_u64(parent) || block[0:n], seed): one link of the prefix hash chain (SPEC)."""
    cdef uint64_t acc[4]
    cdef uint64_t h
    cdef size_t used
    if n + 8 >= 32:
        # first stripe: the parent is lane 0, the block supplies lanes 1-3
        _start(acc, seed)
        acc[0] = _round(acc[0], parent)
        acc[1] = _round(acc[1], _read64(block))
        acc[2] = _round(acc[2], _read64(block + 8))
        acc[3] = _round(acc[3], _read64(block + 16))
        used = 24 + _stripes(acc, block + 24, n - 24)
        return _finish(_converge(acc[0], acc[1], acc[2], acc[3]) + n + 8, block + used, n - used)
    # fewer than 32 bytes: the parent is the first 8-byte lane of the tail
    h = seed + XXH_P5 + n + 8
    h = h ^ _round(0, parent)
    h = _rotl(h, 27) * XXH_P1 + XXH_P4
    return _finish(h, block, n)


cdef inline void hash_chain(const uint8_t* data, size_t n_blocks, size_t width, uint64_t seed,
                            uint64_t parent, uint64_t* out) noexcept nogil:
    """out[i] = xxh64_link(out[i-1], block i) with out[-1] = parent: one loop, no GIL."""
    cdef size_t i
    for i in range(n_blocks):
        parent = xxh64_link(parent, data + i * width, width, seed)
        out[i] = parent
