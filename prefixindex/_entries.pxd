# cython: language_level=3
"""The entries of one context, and the walk of a query over them (SPEC 4), for _core.pyx.

An Entry's `pods` is one pod id, or (kMulti | i) for the sorted pod list ctx.multi[i] when several pods
hold the prefix. These functions touch one context only and call no Python code; the ones that can
allocate raise MemoryError (their C++ calls are declared `except +` in _core.pxd).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp
from libcpp.pair cimport pair
from libcpp.vector cimport vector
from cython.operator cimport dereference as deref, preincrement as inc

from prefixindex._native cimport (NO_POD, RAW_BUCKETS, BucketHash, Ctx, Entry, EntryPtr, EntryVec, NodeBase, PodRun,
                                  PodVec, PrefixMap, RunVec, binary_search, bucket_array, fetch_before,
                                  fetch_first, fetch_second, fetch_slot, find_entry, find_in_bucket, find_near,
                                  bucket_index, find_raw, kMulti, lower_bound, sort, touch_bucket)
from prefixindex._xxh64 cimport LinkStart, chain_link_from, hash_chain, link_start_init


# From this many entries on, a map is taken to be possibly out of the caches: the walk touches a chunk's
# buckets before it probes them (touch_bucket in _native.h), and a store an event's buckets before it
# inserts and then searches each bucket only to its end (touch_for_updates and emplace_new's cold way
# in _map_internals.h). A map need not be large to be cold: beside a thread that stores into the same contexts,
# the matcher finds them cold often, and touching from 256 entries on (4,096 before) took it from
# ~300,000 to 318,000-333,000 matches/s with no single-thread row slower; on the smallest maps (every
# context of 64 prefixes) touching took a 1,024-token match from 1.62 to 1.78 us (docs/performance.md).
cdef enum:
    TOUCH_BUCKETS_FROM = 256
    # Blocks between the prefetch stages of a probe beside the chain, on a map that may be cold: a
    # link takes ~14 ns, a miss to memory ~100; 6, 8 and 10 measured alike, 4 worse (10^6 entries)
    STAGE = 8


cdef inline bint is_multi(uint32_t pods) noexcept nogil:
    return (pods & kMulti) != 0


cdef inline vector[uint32_t]* pod_list(Ctx* c, uint32_t pods) noexcept nogil:
    return &c.multi[pods & ~kMulti]


cdef inline bint entry_has(Ctx* c, const Entry* e, uint32_t pod) noexcept nogil:
    cdef vector[uint32_t]* v
    if not is_multi(e.pods):
        return e.pods == pod
    v = pod_list(c, e.pods)
    return binary_search(v.begin(), v.end(), pod)


cdef inline int entry_add(Ctx* c, Entry* e, uint32_t pod) except -1:
    """Add pod to the entry's pods: 1 if added, 0 if it was there. Nothing changes when it raises
    MemoryError: every allocation comes before the first change."""
    cdef vector[uint32_t]* v
    cdef vector[uint32_t].iterator it
    cdef vector[uint32_t] two
    cdef uint32_t slot
    if not is_multi(e.pods):
        if e.pods == pod:
            return 0
        two.reserve(2)
        two.push_back(e.pods if e.pods < pod else pod)
        two.push_back(pod if e.pods < pod else e.pods)
        if c.multi_free.empty():
            # multi_free can then take every slot back without allocating (release_list cannot fail)
            c.multi_free.reserve(c.multi.size() + 1)
            c.multi.push_back(two)
            slot = <uint32_t>(c.multi.size() - 1)
        else:
            slot = c.multi_free.back()
            c.multi[slot].swap(two)
            c.multi_free.pop_back()
        e.pods = kMulti | slot
        return 1
    v = pod_list(c, e.pods)
    it = lower_bound(v.begin(), v.end(), pod)
    if it != v.end() and deref(it) == pod:
        return 0
    v.insert(it, pod)
    return 1


cdef inline int release_list(Ctx* c, uint32_t pods) except -1:
    cdef uint32_t slot = pods & ~kMulti
    cdef vector[uint32_t] empty
    c.multi[slot].swap(empty)  # frees the list without allocating (shrink_to_fit may allocate)
    c.multi_free.push_back(slot)  # within the capacity entry_add reserved: cannot allocate
    return 0


cdef inline int entry_remove(Ctx* c, Entry* e, uint32_t pod) except -1:
    """Remove pod from the entry's pods: 1 if removed, 0 if it was not there. An emptied entry holds NO_POD."""
    cdef vector[uint32_t]* v
    cdef vector[uint32_t].iterator it
    cdef uint32_t single
    if not is_multi(e.pods):
        if e.pods != pod:
            return 0
        e.pods = NO_POD
        return 1
    v = pod_list(c, e.pods)
    it = lower_bound(v.begin(), v.end(), pod)
    if it == v.end() or deref(it) != pod:
        return 0
    v.erase(it)
    if v.size() == 1:  # back to one pod: the list goes
        single = deref(v.begin())
        release_list(c, e.pods)
        e.pods = single
    return 1


cdef inline bint holds(Ctx* c, uint64_t prefix, uint32_t pod) noexcept nogil:
    cdef PrefixMap.iterator it = c.prefixes.find(prefix)
    return it != c.prefixes.end() and entry_has(c, &deref(it).second, pod)


cdef inline int renumber(Ctx* c) except -1:
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
    return 0


cdef inline int keep_holders(Ctx* c, const Entry* e, PodVec* alive, RunVec* found, uint32_t depth) except -1 nogil:
    """Keep the alive pods (sorted) that hold e; a pod that does not has matched `depth` blocks.

    One merge of two sorted lists instead of a binary search per pod: the common case is that every
    pod still alive holds the block, and then this is a single pass with no branch mispredicted."""
    cdef size_t i = 0, j = 0, kept = 0, n = alive.size(), m
    cdef const uint32_t* held
    cdef uint32_t single
    cdef vector[uint32_t]* v
    cdef PodRun run
    # the same pods hold this block as the last: the common case (one pod, or a prefix shared by many);
    # one pod in one entry is two compares, before anything is read through a pointer to it
    if is_multi(e.pods):
        v = pod_list(c, e.pods)
        held = v.data()
        m = v.size()
        if m == n and n > 1 and memcmp(held, alive.begin(), n * sizeof(uint32_t)) == 0:
            return 0
    else:
        if n == 1 and e.pods == deref(alive)[0]:
            return 0
        single = e.pods
        held = &single
        m = 1
    run.blocks = depth
    while i < n:
        while j < m and held[j] < deref(alive)[i]:
            j += 1
        if j < m and held[j] == deref(alive)[i]:
            deref(alive)[kept] = deref(alive)[i]
            kept += 1
        else:  # this pod's run ends here
            run.pod = deref(alive)[i]
            found.push_back(run)
        i += 1
    alive.resize_down(kept)
    return 0


cdef inline int start_pods(Ctx* c, const Entry* e, PodVec* ready, PodVec* alive) except -1 nogil:
    """The pods (the ready ones, when `ready` is given) that hold block 0's entry e, into the empty `alive`."""
    cdef vector[uint32_t]* v
    cdef size_t j
    if is_multi(e.pods):
        v = pod_list(c, e.pods)
        for j in range(v.size()):
            if ready == NULL or binary_search(ready.begin(), ready.end(), deref(v)[j]):
                alive.push_back(deref(v)[j])
    elif ready == NULL or binary_search(ready.begin(), ready.end(), e.pods):
        alive.push_back(e.pods)
    return 0


cdef inline Py_ssize_t walk(Ctx* c, uint64_t* h, size_t n, const uint8_t* data, size_t width, uint64_t seed,
                            size_t prehashed, size_t chunk, bint beside, PodVec* ready, PodVec* alive,
                            RunVec* found, EntryVec* touched, size_t* hashed) except -1 nogil:
    """SPEC 4: each ready pod's run of blocks held from block 0. Returns the longest run.

    h[0:prehashed] are given; past them the walk hashes as it goes, in one of two ways, which give the
    same answer (the table chooses by measurement, WalkChoice in _native.h; docs/performance.md):
    - chunked (`beside` false): the blocks are hashed a chunk at a time (`chunk` blocks first, then
      64) and then probed. The probes of a chunk do not depend on each other, so the processor
      overlaps their cache misses; the best way when the map's lines are out of the core's caches (a
      million entries, or a map another thread keeps writing), where a probe beside the serial hash
      chain would stall it at every miss.
    - beside the chain (`beside` true): after the first `chunk` blocks, each step hashes one block
      further and probes one whose hash is long done, so each probe runs in the time the chain waits
      for its parent's hash; the best way when the map is in the caches (a 1,024-token match ~1.5 ->
      ~1.3 us; its probe, find_near, does not branch on where in its bucket a key is). On a map of
      TOUCH_BUCKETS_FROM entries or more (which may be cold) each probe is prefetched in stages as the
      chain is hashed, through the map's bucket array (libstdc++), so that its misses overlap the
      hashing too (10^6 entries over 100 contexts: ~3.3 us a match where the chunked way takes ~3.6,
      and probing beside without the stages ~10).
    The first chunk is small because the most common miss is at block 0 (a new prompt). Hashing
    stops soon after matching does; *hashed says how many of h are valid on return. `ready` is
    sorted, or NULL for every pod; `alive` is empty scratch space.

    It allocates only by reserving n entries in touched and by pushing to alive and found (hashing
    allocates nothing): with those reserved (n entries, the context's pod count) it cannot fail, so it
    can run without the GIL (_table_query.pxi)."""
    cdef size_t i = 0, j, start, end, depth = 0
    cdef Entry* e
    cdef Entry* probed[64]
    cdef size_t buckets[64]
    cdef PodRun run
    cdef uint64_t link
    hashed[0] = prehashed
    # each matched block's entry goes into touched in place (resize_reserved at the end): a push_back
    # read and wrote the vector's size through memory at every block
    cdef size_t base = touched.size()
    touched.reserve(base + n)
    cdef Entry** matched = touched.begin() + base
    cdef size_t size = chunk if chunk < 64 else 64
    cdef NodeBase** bk
    cdef BucketHash hf
    cdef size_t nb, k, first, done
    cdef LinkStart start_from
    if beside:
        end = size if size < n else n
        if end > hashed[0]:
            hash_chain(data + hashed[0] * width, end - hashed[0], width, seed,
                       h[hashed[0] - 1] if hashed[0] else seed, h + hashed[0])
            hashed[0] = end
        link = h[hashed[0] - 1] if hashed[0] else seed
        # the count of hashed blocks is kept here, not in *hashed: h and hashed are both pointers to
        # 64-bit integers, so the compiler read and wrote *hashed through memory at every link
        done = hashed[0]
        link_start_init(&start_from, seed)
        if RAW_BUCKETS and c.prefixes.size() >= TOUCH_BUCKETS_FROM:
            # A map that may be cold: each block's probe is prefetched in stages as the chain is
            # hashed, STAGE blocks apart (its bucket's slot, the node before the bucket's first, that
            # first node, the next one if the first holds another key), and probed 4 * STAGE blocks
            # after its hash. Nothing waits for a miss while the chain has links to hash; once it is
            # hashed, the stages the last blocks still lack run as passes whose misses overlap.
            # (bucket_array and the fetches in _map_internals.h; docs/architecture.md, "The walk")
            bk = bucket_array(c.prefixes)
            nb = c.prefixes.bucket_count()
            hf = c.prefixes.hash_function()
            # block 0's stages run at once, so that its probe (and the common miss there) comes about
            # as soon as it would walking chunked, not after 32 more links; every later block's are
            # spread over the hashing (1 measured best: 2 or 8 blocks at once made full hits slower)
            first = 1 if done > 0 else 0
            if first:
                buckets[0] = bucket_index(hf, h[0], nb)  # m.bucket(h[0])
                fetch_slot(bk, buckets[0])
                fetch_before(bk, buckets[0])
                fetch_first(bk, buckets[0])
                fetch_second(bk, buckets[0], h[0])
            k = first  # the next block to hash and to prefetch
            while i < n:
                while i >= first and k < n and k <= i + 4 * STAGE:
                    if k >= done:
                        link = chain_link_from(&start_from, link, data, done, width)
                        h[done] = link
                        done += 1
                    buckets[k & 63] = bucket_index(hf, h[k], nb)
                    fetch_slot(bk, buckets[k & 63])
                    if k >= STAGE:
                        fetch_before(bk, buckets[(k - STAGE) & 63])
                    if k >= 2 * STAGE:
                        fetch_first(bk, buckets[(k - 2 * STAGE) & 63])
                    if k >= 3 * STAGE:
                        fetch_second(bk, buckets[(k - 3 * STAGE) & 63], h[k - 3 * STAGE])
                    k += 1
                    if k == n:
                        for j in range(n - STAGE if n > STAGE else 0, n):
                            fetch_before(bk, buckets[j & 63])
                        for j in range(n - 2 * STAGE if n > 2 * STAGE else 0, n):
                            fetch_first(bk, buckets[j & 63])
                        for j in range(n - 3 * STAGE if n > 3 * STAGE else 0, n):
                            fetch_second(bk, buckets[j & 63], h[j])
                e = find_raw(hf, bk, nb, buckets[i & 63], h[i])
                if e == NULL:
                    break
                # (the same step as in the other two loops, written out in each: see below)
                if i == 0:
                    start_pods(c, e, ready, alive)
                else:
                    keep_holders(c, e, alive, found, <uint32_t>i)
                if alive.empty():
                    break
                matched[i] = e
                i += 1
        else:
            while i < n:
                if done < n:
                    link = chain_link_from(&start_from, link, data, done, width)
                    h[done] = link
                    done += 1
                e = find_near(c.prefixes, h[i])
                if e == NULL:
                    break
                # (the same step as the chunked way's below, written out in each: as one inline helper
                # function the 32,768-token walk took 10% longer, 33.1-33.8 -> 36.2-37.4 us; tried again
                # with the staged loop's copy too, 45.5-48.0 -> 51.0-52.7 us, and 1,024 tokens cycling
                # 100 contexts 1.54-1.58 -> 1.75-1.84)
                if i == 0:
                    start_pods(c, e, ready, alive)
                else:
                    keep_holders(c, e, alive, found, <uint32_t>i)
                if alive.empty():
                    break
                matched[i] = e
                i += 1
        hashed[0] = done  # (a MemoryError from the pushes leaves it behind: nothing reads it then)
        depth = i
    else:
        while i < n:
            end = i + size if i + size < n else n
            size = 64  # after the first chunk (small, for the common miss at block 0), the most one can hold
            if end > hashed[0]:
                hash_chain(data + hashed[0] * width, end - hashed[0], width, seed,
                           h[hashed[0] - 1] if hashed[0] else seed, h + hashed[0])
                hashed[0] = end
            # every probe of the chunk first, with nothing between them: their misses overlap. The
            # first block not held ends them (the walk ends there): a probe for a key the map lacks
            # scans its whole bucket, and a half hit spent ~0.3 us on the rest of its chunk. The branch
            # is taken once, so the processor still runs ahead through the probes of a chunk that is
            # all held. On a map that may be cold the chunk's buckets are touched first, and the probes
            # reuse the bucket indexes the touches computed (a division each)
            if c.prefixes.size() >= TOUCH_BUCKETS_FROM:
                for j in range(i, end):
                    buckets[j - i] = touch_bucket(c.prefixes, h[j])
                for j in range(i, end):
                    probed[j - i] = find_in_bucket(c.prefixes, buckets[j - i], h[j])
                    if probed[j - i] == NULL:
                        break
            else:
                for j in range(i, end):
                    probed[j - i] = find_entry(c.prefixes, h[j])
                    if probed[j - i] == NULL:
                        break
            start = i
            while i < end:
                e = probed[i - start]
                if e == NULL:
                    break
                if i == 0:
                    start_pods(c, e, ready, alive)
                else:
                    keep_holders(c, e, alive, found, <uint32_t>i)
                if alive.empty():
                    break
                matched[i] = e
                i += 1
                depth = i
            if i < end:  # the walk ended inside this chunk
                break
    touched.resize_reserved(base + depth)
    run.blocks = <uint32_t>depth
    for j in range(alive.size()):
        run.pod = deref(alive)[j]
        found.push_back(run)
    return depth
