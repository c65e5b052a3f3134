# The entries of a context as the compiled table changes them (in a section), included by _core.pyx
# after _table.pxi: module functions on the table's C fields.


cdef int _drop_entry(SyncPrefixHashTable self, Ctx* c, uint64_t prefix, uint32_t pid, PodState* ps) except -1:
    """The pod no longer holds the prefix: 1 if it held it, else 0 (one find: no holds() first)."""
    cdef PrefixMap.iterator it = c.prefixes.find(prefix)
    if it == c.prefixes.end() or not entry_remove(c, &deref(it).second, pid):
        return 0
    ps.held -= 1
    if deref(it).second.pods == NO_POD:
        c.prefixes.erase(it)
    return 1

cdef int _drop_pod(SyncPrefixHashTable self, Ctx* c, uint32_t pid) except -1:
    """Remove every entry of the pod in this context, and its state."""
    cdef PodMap.iterator found = c.pods.find(pid)
    cdef PodState* ps
    cdef EngineMap.iterator eit
    cdef PrefixMap.iterator it
    if found == c.pods.end():
        return 0
    ps = deref(found).second
    # Entries reached through the engine map first (the usual case: no full scan) ...
    eit = ps.engine.begin()
    while ps.held and eit != ps.engine.end():
        _drop_entry(self, c, deref(eit).second, pid, ps)
        inc(eit)
    # ... then any made by add_prefix, which have no engine hash.
    it = c.prefixes.begin()
    while ps.held and it != c.prefixes.end():
        if entry_remove(c, &deref(it).second, pid):
            ps.held -= 1
            if deref(it).second.pods == NO_POD:
                it = c.prefixes.erase(it)
                continue
        inc(it)
    c.pods.erase(found)
    self._delete_pod_state(ps, pid)
    return 0

cdef int _place(SyncPrefixHashTable self, Ctx* c, PodState* ps, uint32_t pid, uint64_t* prefixes,
                const uint64_t* engines, size_t n, const uint8_t* tokens=NULL, uint64_t parent=0) except -1:
    """Store n chained prefixes for the pod (engines: their engine hashes, or NULL for add_prefix).
    Each block is placed whole or not at all, so a MemoryError leaves a shorter, valid chain.

    With `tokens`, the prefixes are not given but hashed here from the event's token bytes and
    `parent` (into prefixes[0:n]): each link is hashed in the loop that inserts the one before it, so
    the inserts run in the time each link waits for its parent's hash (a chain hashed first, then
    placed, spent ~12 ns a block on the chain alone)."""
    cdef size_t i
    cdef uint64_t p, tick
    cdef size_t width = self.block_bytes
    cdef pair[U64Ptr, bint] einserted
    cdef pair[EntryPtr, bint] inserted
    cdef Entry fresh
    cdef LinkStart start_from  # (what each link starts from, once: see _xxh64.h)
    if c.next_tick + n >= RENUMBER_AT:
        renumber(c)
    tick = c.next_tick
    c.next_tick += n
    fresh.pods = pid
    # a map of TOUCH_BUCKETS_FROM entries or more may be out of the caches: touch every bucket the
    # inserts will read first, so that their misses overlap instead of each stalling the insert loop
    # (as the walk does before its probes), and search each bucket only to its end (emplace_new's cold
    # way: the four nodes compared without branching are, in a cold map, three more misses, one after
    # the other). Laid out of the hot path: with the loops in line, a 1-block store into cached maps took
    # 3% longer. The touches need every prefix first.
    cdef bint cold_prefixes = c.prefixes.size() >= TOUCH_BUCKETS_FROM
    cdef bint cold_engines = ps.engine.size() >= TOUCH_BUCKETS_FROM
    if rarely(n > 1 and (cold_prefixes or cold_engines)):
        if tokens != NULL:
            hash_chain(tokens, n, width, self.seed, parent, prefixes)
            tokens = NULL
        if cold_prefixes:
            touch_for_updates(c.prefixes, prefixes, n)
        if engines != NULL and cold_engines:
            touch_for_updates(ps.engine, engines, n)
    link_start_init(&start_from, self.seed)
    for i in range(n):
        if tokens != NULL:
            parent = chain_link_from(&start_from, parent, tokens, i, width)
            prefixes[i] = parent
        p = prefixes[i]
        if engines != NULL:
            einserted = emplace_new(ps.engine, engines[i], p, cold_engines)  # (_map_internals.h: one search)
            if not einserted.second and einserted.first[0] != p:
                # a known engine hash with new content replaces its old entry (D3)
                _drop_entry(self, c, einserted.first[0], pid, ps)
                einserted.first[0] = p
        # block 0 gets the newest tick, so a trim drops the tails of chains first (D4)
        fresh.tick = <uint32_t>(tick + n - 1 - i)
        inserted = emplace_new(c.prefixes, p, fresh, cold_prefixes)
        if inserted.second:
            ps.held += 1
        else:
            if entry_add(c, inserted.first, pid):
                ps.held += 1
            inserted.first.tick = fresh.tick
    if c.prefixes.size() > self.max_prefixes:
        _trim(self, c)
    return 0

cdef int _trim(SyncPrefixHashTable self, Ctx* c) except -1:
    """SPEC 5 / D4: drop the prefixes with the oldest ticks until max - max // 4 remain."""
    cdef size_t target = self.max_prefixes - self.max_prefixes // 4
    cdef size_t k = c.prefixes.size() - target, j
    cdef vector[pair[uint32_t, uint64_t]] order
    cdef PrefixMap.iterator it = c.prefixes.begin()
    cdef Entry* e
    cdef vector[uint32_t]* v
    cdef uint32_t pod
    cdef PodMap.iterator pit
    cdef vector[uint32_t] gone
    cdef EngineMap.iterator eit
    order.reserve(c.prefixes.size())  # the allocations come first: a MemoryError changes nothing
    gone.reserve(c.pods.size())
    while it != c.prefixes.end():
        order.push_back(pair[uint32_t, uint64_t](deref(it).second.tick, deref(it).first))
        inc(it)
    nth_element(order.begin(), order.begin() + k, order.end())
    for j in range(k):
        it = c.prefixes.find(order[j].second)
        e = &deref(it).second
        if is_multi(e.pods):
            v = pod_list(c, e.pods)
            for pod in deref(v):
                deref(c.pods.find(pod)).second.held -= 1
            release_list(c, e.pods)
        else:
            deref(c.pods.find(e.pods)).second.held -= 1
        c.prefixes.erase(it)
    self.n[N_EVICTED_PREFIXES] += k
    # Each pod state forgets the engine hashes whose prefix it no longer holds (D3, memory bound).
    pit = c.pods.begin()
    while pit != c.pods.end():
        pod = deref(pit).first
        if deref(pit).second.held == 0:
            gone.push_back(pod)
        else:
            eit = deref(pit).second.engine.begin()
            while eit != deref(pit).second.engine.end():
                if holds(c, deref(eit).second, pod):
                    inc(eit)
                else:
                    eit = deref(pit).second.engine.erase(eit)
        inc(pit)
    for pod in gone:
        pit = c.pods.find(pod)
        self._delete_pod_state(deref(pit).second, pod)
        c.pods.erase(pit)
    return 0


def _debug_buckets(SyncPrefixHashTable table, model_name, lora_id, pod):
    """Tests only: (RAW_INSERTS, the context's prefix map's bucket count, the pod's engine map's bucket
    count there), to build keys that share a bucket (tests/test_map_inserts.py)."""
    cdef Ctx* c
    cdef uint32_t pid
    cdef PodMap.iterator found
    model, lora = _check_context(model_name, lora_id)
    cdef str name = check_pod(pod, "pod")
    table._begin_read()
    try:
        c = table._find_ctx(model, lora)
        pid = table._pod_id(name)
        if c != NULL and pid != NO_POD:
            found = c.pods.find(pid)
            if found != c.pods.end():
                return bool(RAW_INSERTS), c.prefixes.bucket_count(), deref(found).second.engine.bucket_count()
        raise KeyError((model, lora, name))
    finally:
        table._end()


def _debug_bucket_census(SyncPrefixHashTable table, model_name, lora_id, pod, keys):
    """Tests only: (the longest bucket of the context's prefix map, the longest of the pod's engine map
    there, [the prefix map's bucket of each key], [the engine map's bucket of each key]), to check that
    keys picked to share a bucket do not (D16) and to pick keys that do (tests/test_map_inserts.py)."""
    cdef Ctx* c
    cdef uint32_t pid
    cdef PodMap.iterator found
    cdef size_t b, longest_prefix = 0, longest_engine = 0, prefix_nb, engine_nb
    cdef BucketHash prefix_hf, engine_hf
    cdef EngineMap* engine
    model, lora = _check_context(model_name, lora_id)
    cdef str name = check_pod(pod, "pod")
    cdef list wanted = [<uint64_t>int(k) for k in keys]
    table._begin_read()
    try:
        c = table._find_ctx(model, lora)
        pid = table._pod_id(name)
        if c == NULL or pid == NO_POD:
            raise KeyError((model, lora, name))
        found = c.pods.find(pid)
        if found == c.pods.end():
            raise KeyError((model, lora, name))
        engine = &deref(found).second.engine
        prefix_hf, prefix_nb = c.prefixes.hash_function(), c.prefixes.bucket_count()
        engine_hf, engine_nb = engine.hash_function(), engine.bucket_count()
        for b in range(prefix_nb):
            longest_prefix = max(longest_prefix, c.prefixes.bucket_size(b))
        for b in range(engine_nb):
            longest_engine = max(longest_engine, engine.bucket_size(b))
        return (longest_prefix, longest_engine,
                [bucket_index(prefix_hf, k, prefix_nb) for k in wanted],
                [bucket_index(engine_hf, k, engine_nb) for k in wanted])
    finally:
        table._end()
