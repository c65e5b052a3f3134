# The passes of the compiled table over every context (the staleness pass of SPEC 6, stats, snapshot
# and the memory figures of the tests), included by _core.pyx after _table.pxi; the methods of the
# same names call these.

cdef _evict_now(SyncPrefixHashTable self):
    cdef double now = self._now()
    cdef Ctx* c
    cdef size_t n_contexts = 0, n_pods = 0
    cdef vector[uint32_t] stale
    cdef PodMap.iterator it
    cdef uint32_t pid
    keys = self._context_keys()
    cdef GilOffers offers = _gil_offers()
    for model, lora in keys:
        _offer_gil(&offers)  # between contexts (here: the sections below may end in a continue)
        self._begin()
        try:
            c = self._find_ctx(model, lora)
            if c == NULL:
                continue
            if now - c.last_access > self.stale_after:
                self._drop_ctx(c)
                self.n[N_EVICTED_CONTEXTS] += 1
                n_contexts += 1
                continue
            stale.clear()
            it = c.pods.begin()
            while it != c.pods.end():
                if now - deref(it).second.last_seen > self.stale_after:
                    stale.push_back(deref(it).first)
                inc(it)
            for pid in stale:
                _drop_pod(self, c, pid)
            self.n[N_EVICTED_PODS] += stale.size()
            n_pods += stale.size()
            self._drop_if_empty(c)
        finally:
            self._end()
    return {"contexts": n_contexts, "pods": n_pods}


cdef _stats(SyncPrefixHashTable self):
    cdef size_t prefixes = 0, entries = 0
    cdef Ctx* c
    cdef PodMap.iterator it
    cdef int i
    self._begin_read()
    try:
        c = self.oldest
        while c != NULL:
            prefixes += c.prefixes.size()
            it = c.pods.begin()
            while it != c.pods.end():
                entries += deref(it).second.held
                inc(it)
            c = c.newer
        out = {"contexts": self.n_contexts, "prefixes": prefixes, "entries": entries, "pods": self.live_pods}
        for i in range(N_COUNTERS):
            out[COUNTER_KEYS[i]] = self.n[i]
    finally:
        self._end()
    return out


cdef _snapshot(SyncPrefixHashTable self):
    cdef Ctx* c
    cdef PrefixMap.iterator it
    cdef Entry* e
    out = {}
    self._begin_read()
    try:
        c = self.oldest
        while c != NULL:
            prefixes = {}
            it = c.prefixes.begin()
            while it != c.prefixes.end():
                e = &deref(it).second
                if is_multi(e.pods):
                    prefixes[deref(it).first] = frozenset([self._pod_names[pod]
                                                           for pod in deref(pod_list(c, e.pods))])
                else:
                    prefixes[deref(it).first] = frozenset([self._pod_names[e.pods]])
                inc(it)
            out[<object>c.key] = prefixes
            c = c.newer
    finally:
        self._end()
    return out


cdef _debug_memory(SyncPrefixHashTable self):
    cdef Ctx* c
    cdef size_t buckets = 0
    cdef PodMap.iterator it
    self._begin_read()
    try:
        c = self.oldest
        while c != NULL:
            buckets += c.prefixes.bucket_count()
            it = c.pods.begin()
            while it != c.pods.end():
                buckets += deref(it).second.engine.bucket_count()
                inc(it)
            c = c.newer
        return {"pool_bytes": self.pool.reserved_bytes(), "pool_mapped_bytes": self.pool.mapped_bytes(),
                "pool_nodes": self.pool.live(),
                "bucket_bytes": buckets * sizeof(void*), "pod_ids": len(self._pod_names),
                "free_pod_ids": self.free_ids.size()}
    finally:
        self._end()
