// C++ pieces of the compiled core that Cython cannot express: the node pool and its allocator, the
// map types built on them, the per-context structures, the pause of the garbage collector around a
// critical section and the monotonic clock. All index logic lives in _core.pyx; this header only holds
// types and one-line helpers. XXH64 has its own header, _xxh64.h; what the core reaches inside
// libstdc++'s maps for (their bucket arrays, an insert without a second search), _map_internals.h.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <new>
#include <pthread.h>
#include <sched.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif
#include <unordered_map>
#include <utility>
#include <vector>

#include <Python.h>

namespace pi {

// A free-list pool of equal-sized nodes, one per table. Every unordered_map node of the index (both
// maps use 24-byte nodes) comes from here: glibc would round a 24-byte request up to a 32-byte chunk,
// which alone would cost 16 bytes per stored block. Only used under the table's exclusive lock.
// When the last node is freed, the slabs go back to the system. Slabs are malloc'd, or past the
// first few MiB mmap'd huge pages where the system has them (grow()).
class NodePool {
 public:
  explicit NodePool(size_t node_size) : node_size_(node_size < sizeof(void*) ? sizeof(void*) : node_size) {}
  NodePool(const NodePool&) = delete;
  NodePool& operator=(const NodePool&) = delete;
  ~NodePool() { release_all(); }

  size_t node_size() const { return node_size_; }
  size_t live() const { return live_; }
  size_t reserved_bytes() const { return reserved_; }
  size_t mapped_bytes() const { return mapped_; }  // the part in mmap'd slabs, which malloc does not count

  void* alloc() {
    if (free_ == nullptr) grow();
    void* node = free_;
    free_ = *static_cast<void**>(node);
    ++live_;
    return node;
  }

  void release(void* node) {
    *static_cast<void**>(node) = free_;
    free_ = node;
    if (--live_ == 0) release_all();
  }

 private:
  static constexpr size_t kSlabNodes = 4096;
  static constexpr size_t kHugeBytes = (size_t)2 << 20;
  static constexpr size_t kHugeFrom = (size_t)4 << 20;  // bytes in small slabs before huge ones

  void grow() {
    // The first slabs are small (a table of a few prompts stays small). Past kHugeFrom bytes a slab is
    // one 2 MiB page of its own, advised as a huge page: a large index's random probes then miss the
    // TLB once per 87,000 nodes instead of once per 170. At 10^6 entries over 100 contexts a full-hit
    // 1,024-token match went from 3.8-4.1 to 3.3-3.5 us (docs/architecture.md, "Storage").
    size_t bytes = kSlabNodes * node_size_;
    char* slab = nullptr;
    bool huge = false;
    if (reserved_ >= kHugeFrom) {
      slab = huge_slab();
      huge = slab != nullptr;
      if (huge) bytes = kHugeBytes;
    }
    if (slab == nullptr) slab = static_cast<char*>(std::malloc(bytes));
    if (slab == nullptr) throw std::bad_alloc();
    try {
      slabs_.push_back(Slab{slab, huge});
    } catch (...) {
      free_slab(Slab{slab, huge});
      throw;
    }
    reserved_ += bytes;
    if (huge) mapped_ += bytes;
    size_t nodes = bytes / node_size_;
    for (size_t i = nodes; i-- > 0;) {
      void* node = slab + i * node_size_;
      *static_cast<void**>(node) = free_;
      free_ = node;
    }
  }

  // A 2 MiB-aligned 2 MiB mapping, advised as a huge page; nullptr where there are none (then malloc).
  static char* huge_slab() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    void* p = mmap(nullptr, 2 * kHugeBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    uintptr_t start = reinterpret_cast<uintptr_t>(p);
    uintptr_t aligned = (start + kHugeBytes - 1) & ~(uintptr_t)(kHugeBytes - 1);
    if (aligned > start) munmap(p, aligned - start);  // trim to one aligned 2 MiB
    uintptr_t end = start + 2 * kHugeBytes;
    if (end > aligned + kHugeBytes) munmap(reinterpret_cast<void*>(aligned + kHugeBytes), end - aligned - kHugeBytes);
    madvise(reinterpret_cast<void*>(aligned), kHugeBytes, MADV_HUGEPAGE);  // a hint: fine if refused
    return reinterpret_cast<char*>(aligned);
#else
    return nullptr;
#endif
  }

  struct Slab {
    char* base;
    bool huge;
  };

  static void free_slab(const Slab& s) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (s.huge) {
      munmap(s.base, kHugeBytes);
      return;
    }
#endif
    std::free(s.base);
  }

  void release_all() {
    for (const Slab& s : slabs_) free_slab(s);
    slabs_.clear();
    slabs_.shrink_to_fit();
    free_ = nullptr;
    reserved_ = 0;
    mapped_ = 0;
  }

  size_t node_size_;
  size_t live_ = 0;
  size_t reserved_ = 0;
  size_t mapped_ = 0;
  void* free_ = nullptr;
  std::vector<Slab> slabs_;
};

// Single nodes come from the pool; bucket arrays and anything larger from operator new.
template <class T>
struct PoolAllocator {
  using value_type = T;
  NodePool* pool;

  explicit PoolAllocator(NodePool* p) noexcept : pool(p) {}
  template <class U>
  PoolAllocator(const PoolAllocator<U>& other) noexcept : pool(other.pool) {}

  T* allocate(size_t n) {
    if (n == 1 && sizeof(T) <= pool->node_size()) return static_cast<T*>(pool->alloc());
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n == 1 && sizeof(T) <= pool->node_size()) {
      pool->release(p);
    } else {
      ::operator delete(p);
    }
  }
  template <class U>
  bool operator==(const PoolAllocator<U>& o) const noexcept { return pool == o.pool; }
  template <class U>
  bool operator!=(const PoolAllocator<U>& o) const noexcept { return pool != o.pool; }
};

// One prefix of a context: its recency tick and its pods. `pods` is a pod id, or (kMulti | i) for the
// sorted pod list ctx.multi[i] when several pods hold the prefix. 32-bit ticks keep the node at 24
// bytes; a context renumbers its ticks (keeping their order) before they could overflow.
struct Entry {
  uint32_t tick;
  uint32_t pods;
};
static const uint32_t kMulti = 0x80000000u;
static const uint32_t kNoPod = 0xFFFFFFFFu;  // an entry whose last pod just went

// The hash that picks a key's bucket in the two maps: a mix keyed per table (D16). std::hash of an
// integer is the integer itself and libstdc++'s bucket counts are a fixed sequence of primes, so keys
// that a caller picks (add_prefix's prefix hashes, a snapshot's, a pod's engine hashes) could all be
// put into one bucket: 32,000 of them took 1.6 s to add against 0.003 s for ordinary ones, quadratic.
// Keyed with 128 random bits of the table's, which buckets keys share cannot be known from outside.
// One 64x64->128-bit multiply folded (a few cycles, beside the hash chain's ~50 a link); libstdc++ still
// stores no hash code in a node (the hash is "fast": its default), so a node stays 24 bytes.
struct BucketHash {
  uint64_t k0;
  uint64_t k1;  // odd
  size_t operator()(uint64_t key) const noexcept {
#if defined(__SIZEOF_INT128__)
    unsigned __int128 p = (unsigned __int128)(key ^ k0) * k1;
    return (size_t)((uint64_t)p ^ (uint64_t)(p >> 64));
#else
    uint64_t x = (key ^ k0) * k1;
    return (size_t)(x ^ (x >> 29) ^ (x >> 47));
#endif
  }
};
static inline size_t bucket_index(const BucketHash& hf, uint64_t key, size_t nb) { return hf(key) % nb; }

template <class V>
using U64Map = std::unordered_map<uint64_t, V, BucketHash, std::equal_to<uint64_t>,
                                  PoolAllocator<std::pair<const uint64_t, V>>>;
using PrefixMap = U64Map<Entry>;      // prefix hash -> entry
using EngineMap = U64Map<uint64_t>;   // engine block hash -> prefix hash

// The largest node of the two maps: libstdc++ stores no hash code for a fast hash (BucketHash), so a node
// is the next pointer plus the key/value pair.
static const size_t kNodeSize = sizeof(void*) + sizeof(std::pair<const uint64_t, uint64_t>);

struct PodState {
  EngineMap engine;
  uint32_t held = 0;       // entries (prefixes) this pod holds in the context
  double last_seen = 0.0;  // last accepted event from the pod in this context (D6)

  explicit PodState(NodePool* pool, float load_factor, BucketHash hf)
      : engine(0, hf, std::equal_to<uint64_t>(), PoolAllocator<std::pair<const uint64_t, uint64_t>>(pool)) {
    engine.max_load_factor(load_factor);
  }
};

struct Ctx {
  PrefixMap prefixes;
  std::unordered_map<uint32_t, PodState*> pods;  // pod id -> state; a handful per context
  std::vector<std::vector<uint32_t>> multi;      // pod lists of prefixes held by several pods
  std::vector<uint32_t> multi_free;              // free slots of `multi`
  uint64_t next_tick = 0;                        // next per-prefix recency tick (D4)
  double last_access = 0.0;                      // last store or match (D6)
  Ctx* older = nullptr;                          // the table's recency list (D5): least recent at its head,
  Ctx* newer = nullptr;                          //   so the context to evict is found without a scan
  PyObject* key = nullptr;                       // (model, lora_id), owned reference

  explicit Ctx(NodePool* pool, float load_factor, BucketHash hf)
      : prefixes(0, hf, std::equal_to<uint64_t>(), PoolAllocator<std::pair<const uint64_t, Entry>>(pool)) {
    prefixes.max_load_factor(load_factor);
  }
};

// A vector that keeps its first N elements inline: the per-query scratch lists (ready pods, pods still
// matching, results, touched entries) are tiny in the common case, and four heap allocations per query
// cost more than the map walk itself. For trivially copyable T only.
template <class T, size_t N>
class SmallVec {
 public:
  SmallVec() : data_(buf_), size_(0), cap_(N) {}
  SmallVec(const SmallVec&) = delete;
  SmallVec& operator=(const SmallVec&) = delete;
  ~SmallVec() {
    if (data_ != buf_) std::free(data_);
  }
  void push_back(const T& v) {
    if (size_ == cap_) grow();
    data_[size_++] = v;
  }
  T& operator[](size_t i) { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void clear() { size_ = 0; }
  void resize_down(size_t n) { size_ = n; }
  // After reserve(n), the next pushes up to n elements cannot throw: the walk that runs without the
  // GIL (docs/architecture.md, "Long walks") reserves everything it may push before it starts.
  void reserve(size_t n) {
    while (cap_ < n) grow();
  }
  // After reserve(n) and writing elements [size(), n) through begin(): they become the vector's (the
  // walk writes an entry a matched block this way, with no check of the capacity or store of the
  // size at each one).
  void resize_reserved(size_t n) { size_ = n; }

 private:
  void grow() {
    size_t cap = cap_ * 2;
    T* data = static_cast<T*>(std::malloc(cap * sizeof(T)));
    if (data == nullptr) throw std::bad_alloc();
    std::memcpy(data, data_, size_ * sizeof(T));
    if (data_ != buf_) std::free(data_);
    data_ = data;
    cap_ = cap;
  }
  T buf_[N];
  T* data_;
  size_t size_;
  size_t cap_;
};

struct PodRun {  // a pod and the number of leading blocks it holds
  uint32_t pod;
  uint32_t blocks;
};
using PodVec = SmallVec<uint32_t, 16>;
using RunVec = SmallVec<PodRun, 16>;
// 256 entries: a short query (under NOGIL_BYTES, 16 KiB of token bytes) of 64-byte blocks (block_size
// 16) has at most 255 blocks, so the walk's reserve of one entry a block allocates nothing, miss or
// hit; with smaller blocks a short query of more than 255 blocks allocates once
using EntryVec = SmallVec<Entry*, 256>;

// One query's walk: what its section, the walk (maybe outside the GIL) and its closing section share.
struct Walk {
  Ctx* c = nullptr;
  uint64_t* h = nullptr;
  size_t n = 0;
  size_t hashed = 0;
  size_t depth = 0;
  bool filter_ready = false;
  bool outside = false;       // the walk ran outside the GIL, in the table's WalkGate
  uint64_t generation = 0;    // the gate's generation in the query's first section
  bool ready_fresh = false;   // ready_ids were looked up, not copied: the table remembers them after the section
  uint64_t ready_when = 0;    // ... as of this pod_ids_changed
  PodVec ready_ids;
  PodVec alive;
  RunVec found;
  EntryVec touched;
};

// A branch the compiler should lay out of the hot path (the GCC/Clang builtin; plain elsewhere).
#if defined(__GNUC__)
static inline bool rarely(bool x) { return __builtin_expect(x, 0); }
#else
static inline bool rarely(bool x) { return x; }
#endif

// Reads the bucket of `key` and prefetches the bucket's first node: the loads a find() or an insert of
// it will make. Issued for a chunk of keys before their finds (a query's walk; a store's inserts use
// touch_for_updates in _map_internals.h, which fetches one node further),
// on a map that may be out of the caches (TOUCH_BUCKETS_FROM in _entries.pxd), so that the misses of
// the chunk overlap (issue 9, Deliver 4; docs/performance.md).
template <class V>
static inline size_t touch_bucket(const U64Map<V>& m, uint64_t key) {
  size_t b = m.bucket(key);
  auto it = m.begin(b);
  if (it != m.end(b)) __builtin_prefetch(&*it);
  return b;  // the bucket's index (a division by the prime bucket count), for find_in_bucket
}

// A cheap, monotonic enough tick count for WalkChoice: only the ratio of two of its readings matters,
// so cycles (x86's TSC, arm64's virtual counter) serve as well as nanoseconds, at a tenth of the cost.
static inline uint64_t walk_ticks() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#elif defined(__aarch64__)
  uint64_t v;
  asm volatile("mrs %0, cntvct_el0" : "=r"(v));
  return v;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

// Which way a table's queries walk (_entries.walk: chunked, or probes beside the hash chain), chosen by
// measurement: neither is faster everywhere. Beside the chain wins when the map's lines are in the
// core's caches (a 1,024-token match alone ~1.5 -> ~1.2 us); chunked wins when they are not (a million
// entries, or a map another thread keeps storing into, where each cold probe beside the chain stalls
// it: the matcher beside an ingest thread fell from ~290,000 to ~205,000 matches/s when it always walked
// beside). Each way's cost per hashed block is kept as a moving average; a walk takes the cheaper way,
// and now and then the other, so that the averages follow the workload as it changes: one walk in
// EXPLORE_NEAR while the two are within a quarter of each other, one in EXPLORE_FAR when they are not
// (each such walk costs the gap). The preferred way is timed one walk in TIME_EVERY (the timing is a
// few ns a walk), the other whenever it runs, and its rare samples weigh more. Read and written with
// the GIL held (a walk outside it hands its ticks to its closing section).
struct WalkChoice {
  enum { EXPLORE_NEAR = 64, EXPLORE_FAR = 1024, TIME_EVERY = 4, MIN_BLOCKS = 16 };
  enum { BESIDE = 1, TIMED = 2 };  // pick()'s bits
  double cost[2];  // ticks per hashed block: [0] chunked, [1] beside the chain; 0 = not measured yet
  uint32_t turn;

  int pick() noexcept {
    bool beside = cost[1] < cost[0];
    double lo = beside ? cost[1] : cost[0], hi = beside ? cost[0] : cost[1];
    uint32_t every = hi > 1.25 * lo && lo > 0 ? EXPLORE_FAR : EXPLORE_NEAR;
    bool timed = (++turn % TIME_EVERY) == 0;
    if (turn % every == 0) {
      beside = !beside;
      timed = true;
    }
    if (cost[beside ? 1 : 0] == 0) timed = true;
    return (beside ? BESIDE : 0) | (timed ? TIMED : 0);
  }

  // One timed walk's ticks over the `blocks` it hashed (walks too short to tell are left out).
  void learn(bool beside, uint64_t ticks, size_t blocks) noexcept {
    if (blocks < MIN_BLOCKS) return;
    double sample = (double)ticks / (double)blocks;
    double& c = cost[beside ? 1 : 0];
    if (c == 0) { c = sample; return; }
    // an interrupt or a migration in the walk is not the way's cost: one such sample at 4x moved the
    // average by 37% and could turn the choice for a while (the 32,768-token row read ±8%)
    if (sample > 2 * c) sample = 2 * c;
    bool preferred = beside == (cost[1] < cost[0]);
    c += (sample - c) / (preferred ? 8 : 2);
  }
};

// find(key)'s entry, or nullptr (find_in_bucket: given the bucket that touch_bucket computed). The
// same search as the map's own find() (the bucket's nodes, through the map's public bucket interface),
// but inlined into the walk, so that the compiler can interleave a probe with the hash chain's next
// link instead of calling out (and through the PLT) for each block.
static inline Entry* find_in_bucket(PrefixMap& m, size_t b, uint64_t key) {  // b: m.bucket(key)
  for (auto it = m.begin(b), end = m.end(b); it != end; ++it)
    if (it->first == key) return &it->second;
  return nullptr;
}

static inline Entry* find_entry(PrefixMap& m, uint64_t key) { return find_in_bucket(m, m.bucket(key), key); }

// Pointer aliases: Cython cannot spell a pointer type as a template argument.
using EntryPtr = Entry*;
using U64Ptr = uint64_t*;
using PodStatePtr = PodState*;
using CtxPtr = Ctx*;

// Critical sections run with the GIL held and the cyclic garbage collector paused, so that no
// finalizer (Python code) can run in the middle of one and call back into the table (SPEC 7,
// docs/architecture.md "Critical sections"). Returns whether it was enabled, for gc_resume.
static inline int gc_pause() {
#if PY_VERSION_HEX >= 0x030A0000
  return PyGC_Disable();
#else
  PyObject* gc = PyImport_ImportModule("gc");  // Python 3.9: no C API; the gc module's own functions
  if (gc == nullptr) { PyErr_Clear(); return 0; }
  PyObject* on = PyObject_CallMethod(gc, "isenabled", nullptr);
  int was = on != nullptr && PyObject_IsTrue(on) == 1;
  Py_XDECREF(on);
  if (was) Py_XDECREF(PyObject_CallMethod(gc, "disable", nullptr));
  Py_DECREF(gc);
  PyErr_Clear();
  return was;
#endif
}

static inline void gc_resume(int was) {
  if (!was) return;
#if PY_VERSION_HEX >= 0x030A0000
  PyGC_Enable();
#else
  PyObject* gc = PyImport_ImportModule("gc");
  if (gc != nullptr) {
    Py_XDECREF(PyObject_CallMethod(gc, "enable", nullptr));
    Py_DECREF(gc);
  }
  PyErr_Clear();
#endif
}

// The gate of the walks that run without the GIL (docs/architecture.md, "Long walks"). A long query
// leaves its first critical section and the GIL, hashes, then tries to enter the gate; if it gets in,
// it walks and leaves the gate *before* it takes the GIL back. A section that changes the index bumps
// `generation` and waits, GIL held, until no walker is inside: walkers need nothing to finish, so the
// wait is short and cannot deadlock. A walk enters only if `generation` is what it was in the walk's
// first section: no change began since, so the context it found is still there. That is the Dekker
// pattern (the walker increments the count, then reads the generation; the writer bumps the
// generation, then reads the count; all sequentially consistent), so one of the two always sees the
// other: either the writer waits for the walk, or the walk stays out. A walk that came while a writer
// waits stays out, so writers are never starved. The query's closing section compares the generation
// again, and walks again inside the section if anything changed since.
struct WalkGate {
  std::atomic<uint32_t> walkers{0};
  std::atomic<uint64_t> generation{0};
  WalkGate* older = nullptr;  // every live gate is on one list, for the fork handler
  WalkGate* newer = nullptr;
};

// Every live gate, newest first; changed with the GIL held (a table's creation and deallocation).
static WalkGate* walk_gates = nullptr;

static inline WalkGate* walk_gate_new() {
  WalkGate* g = new WalkGate();
  g->older = walk_gates;
  if (walk_gates != nullptr) walk_gates->newer = g;
  walk_gates = g;
  return g;
}

static inline void walk_gate_delete(WalkGate* g) noexcept {
  if (g->newer != nullptr) g->newer->older = g->older; else walk_gates = g->older;
  if (g->older != nullptr) g->older->newer = g->newer;
  delete g;
}

// In a child process after fork(), before anything else runs there: a thread that was walking in the
// parent does not exist in the child, so every gate is emptied (issue 8, Deliver 8).
static void walk_gate_on_fork_child() {
  for (WalkGate* g = walk_gates; g != nullptr; g = g->older) g->walkers.store(0, std::memory_order_relaxed);
}

static inline int walk_gate_install_fork_handler() {
  return pthread_atfork(nullptr, nullptr, walk_gate_on_fork_child);
}

static inline uint64_t walk_gate_generation(WalkGate* g) noexcept {  // in a section
  return g->generation.load(std::memory_order_relaxed);
}

// Without the GIL: enter if no change began since `generation` was read (in a section).
static inline bool walk_gate_try_enter(WalkGate* g, uint64_t generation) noexcept {
  g->walkers.fetch_add(1, std::memory_order_seq_cst);
  if (g->generation.load(std::memory_order_seq_cst) == generation) return true;
  g->walkers.fetch_sub(1, std::memory_order_release);
  return false;
}

static inline void walk_gate_enter(WalkGate* g) noexcept {  // tests only: a walker that surely enters
  g->walkers.fetch_add(1, std::memory_order_seq_cst);
}

static inline void walk_gate_leave(WalkGate* g) noexcept {  // without the GIL, before taking it back
  g->walkers.fetch_sub(1, std::memory_order_release);
}

static inline unsigned walk_gate_walkers(WalkGate* g) noexcept {  // tests only
  return g->walkers.load(std::memory_order_acquire);
}

// The start of a changing section (GIL held): from here to its end no walk runs (a walk that tries to
// enter sees the new generation).
static inline void walk_gate_wait(WalkGate* g) noexcept {
  g->generation.fetch_add(1, std::memory_order_seq_cst);
  if (g->walkers.load(std::memory_order_seq_cst) == 0) return;
  for (unsigned spins = 0; g->walkers.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 256) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      sched_yield();  // a walker preempted by the scheduler: give it the core
    }
  }
}

// The clock of time.monotonic(), readable without the GIL. On Linux the coarse variant of the same
// clock (updated every few milliseconds, read without a syscall or TSC read): staleness is measured in
// minutes, and this is read on every call.
static inline double monotonic_seconds() {
  struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
  clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace pi
