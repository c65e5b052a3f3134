# cython: language_level=3
"""Declarations of _native.h (the C++ types of the compiled core) and the standard library pieces used.

Everything that can allocate is declared `except +`, so that running out of memory is a MemoryError
and never an abort (SPEC 8). XXH64 is declared in _xxh64.pxd.
"""

from libc.stdint cimport uint32_t, uint64_t
from cpython.ref cimport PyObject
from libcpp.pair cimport pair
from libcpp.vector cimport vector


cdef extern from "_native.h" namespace "pi" nogil:
    cdef cppclass NodePool:
        NodePool(size_t node_size) except +
        size_t node_size()
        size_t live()
        size_t reserved_bytes()
        size_t mapped_bytes()

    cdef struct Entry:
        uint32_t tick
        uint32_t pods

    ctypedef Entry* EntryPtr
    ctypedef uint64_t* U64Ptr
    ctypedef PodState* PodStatePtr

    cdef uint32_t kMulti
    cdef uint32_t NO_POD "pi::kNoPod"
    cdef size_t kNodeSize

    # the keyed hash of both maps' buckets (D16): k1 odd
    cdef struct BucketHash:
        uint64_t k0
        uint64_t k1
    size_t bucket_index(const BucketHash& hf, uint64_t key, size_t nb)

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
        pair[iterator, bint] try_emplace(const uint64_t&, V&) except +
        void reserve(size_t) except +
        size_t size()
        size_t bucket_count()
        size_t bucket_size(size_t)
        BucketHash hash_function()
        void clear()

    ctypedef U64Map[Entry] PrefixMap
    ctypedef U64Map[uint64_t] EngineMap
    size_t touch_bucket(const PrefixMap& m, uint64_t key)
    Entry* find_entry(PrefixMap& m, uint64_t key)
    Entry* find_in_bucket(PrefixMap& m, size_t bucket, uint64_t key)
    size_t touch_bucket(const EngineMap& m, uint64_t key)
    bint rarely(bint x)

    # pod id -> its state in a context
    cdef cppclass PodMap "std::unordered_map<uint32_t, pi::PodState*>":
        cppclass iterator:
            pair[uint32_t, PodStatePtr]& operator*()
            iterator operator++()
            bint operator==(iterator)
            bint operator!=(iterator)
        iterator begin()
        iterator end()
        iterator find(uint32_t)
        iterator erase(iterator)
        size_t erase(uint32_t)
        size_t count(uint32_t)
        pair[iterator, bint] emplace(uint32_t, PodStatePtr) except +
        size_t size()
        void clear()

    cdef cppclass PodState:
        PodState(NodePool* pool, float load_factor, BucketHash hf) except +
        EngineMap engine
        uint32_t held
        double last_seen

    cdef cppclass Ctx:
        Ctx(NodePool* pool, float load_factor, BucketHash hf) except +
        PrefixMap prefixes
        PodMap pods
        vector[vector[uint32_t]] multi
        vector[uint32_t] multi_free
        uint64_t next_tick
        double last_access
        Ctx* older
        Ctx* newer
        PyObject* key

    ctypedef Ctx* CtxPtr

    cdef struct PodRun:
        uint32_t pod
        uint32_t blocks

    cdef cppclass PodVec:
        void push_back(uint32_t) except +
        uint32_t& operator[](size_t)
        uint32_t* begin()
        uint32_t* end()
        size_t size()
        bint empty()
        void clear()
        void resize_down(size_t)
        void reserve(size_t) except +

    cdef cppclass RunVec:
        void push_back(PodRun) except +
        void reserve(size_t) except +
        void clear()
        PodRun& operator[](size_t)
        size_t size()

    cdef cppclass EntryVec:
        void push_back(Entry*) except +
        void reserve(size_t) except +
        Entry** begin()
        void resize_reserved(size_t)
        void clear()
        Entry*& operator[](size_t)
        size_t size()

    cdef cppclass Walk:
        Ctx* c
        uint64_t* h
        size_t n
        size_t hashed
        size_t depth
        bint filter_ready
        bint outside
        uint64_t generation
        bint ready_fresh
        uint64_t ready_when
        PodVec ready_ids
        PodVec alive
        RunVec found
        EntryVec touched

    cdef cppclass WalkGate:
        pass

    cdef cppclass WalkChoice:
        double cost[2]
        uint32_t turn
        int pick()
        void learn(bint beside, uint64_t ticks, size_t blocks)

    uint64_t walk_ticks() nogil
    enum:
        WALK_BESIDE "pi::WalkChoice::BESIDE"
        WALK_TIMED "pi::WalkChoice::TIMED"

    WalkGate* walk_gate_new() except +
    void walk_gate_delete(WalkGate*)
    int walk_gate_install_fork_handler()
    uint64_t walk_gate_generation(WalkGate*)
    bint walk_gate_try_enter(WalkGate*, uint64_t generation)
    void walk_gate_enter(WalkGate*)
    void walk_gate_leave(WalkGate*)
    void walk_gate_wait(WalkGate*)
    unsigned walk_gate_walkers(WalkGate*)

    int gc_pause()
    void gc_resume(int was)
    double monotonic_seconds()


cdef extern from "<algorithm>" namespace "std" nogil:
    void nth_element[Iter](Iter first, Iter nth, Iter last) except +
    void sort[Iter](Iter first, Iter last) except +
    Iter lower_bound[Iter, T](Iter first, Iter last, const T& value)
    bint binary_search[Iter, T](Iter first, Iter last, const T& value)

# What the core reaches inside libstdc++'s maps for (_map_internals.h): the prefix map's bucket array
# for the walk's staged prefetches and probes, and an insert that searches the bucket once.
cdef extern from "_map_internals.h" namespace "pi" nogil:
    cdef cppclass NodeBase:
        pass
    int RAW_BUCKETS
    NodeBase** bucket_array(PrefixMap& m)
    void fetch_slot(NodeBase** bk, size_t b)
    void fetch_before(NodeBase** bk, size_t b)
    void fetch_first(NodeBase** bk, size_t b)
    void fetch_second(NodeBase** bk, size_t b, uint64_t key)
    Entry* find_raw(const BucketHash& hf, NodeBase** bk, size_t nb, size_t b, uint64_t key)
    Entry* find_near(PrefixMap& m, uint64_t key)
    void touch_for_updates(PrefixMap& m, const uint64_t* keys, size_t n)
    void touch_for_updates(EngineMap& m, const uint64_t* keys, size_t n)
    int RAW_INSERTS
    pair[EntryPtr, bint] emplace_new(PrefixMap& m, uint64_t key, const Entry& value, bint cold) except +
    pair[U64Ptr, bint] emplace_new(EngineMap& m, uint64_t key, const uint64_t& value, bint cold) except +
