# Queries of the compiled table (SPEC 4), included by _core.pyx after _table.pxi: the one section of a
# match, or for a long walk two sections with the walk between them outside the GIL (docs/architecture.md,
# "Long walks"). The methods match_prefix, match_blocks and match call _query.

cdef object _query(SyncPrefixHashTable self, model_name, lora_id, tokens, ready_pods, int kind):
    # Everything that may run Python code comes first: names, the tokens' conversion, the ready_pods
    # iterator, the clock. Then one section; a long walk goes outside it (_walk_outside).
    model, lora = _check_context(model_name, lora_id)
    cdef const uint8_t* data = NULL
    cdef size_t nbytes = 0, hashed = 0, prehashed = 0
    tokens = self._token_bytes(tokens, &data, &nbytes)  # the object that owns the bytes stays referenced
    ready = _ready_names(ready_pods)
    cdef double now = self._now()
    cdef cnp.npy_intp n = nbytes // self.block_bytes
    cdef cnp.ndarray out = None
    cdef vector[uint64_t] scratch
    cdef uint64_t* h
    cdef Walk w
    if kind == BLOCKS:
        scratch.resize(n)
        h = scratch.data()
    else:
        out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        h = <uint64_t*>cnp.PyArray_DATA(out)
    if nbytes >= NOGIL_BYTES:
        # Long: hash it all without the GIL first (the query's memory is ours), then walk.
        self._hash_chain(data, n, self.seed, h)
        prehashed = n
    w.h = h
    w.n = n
    w.prehashed = prehashed
    w.hashed = prehashed
    w.outside = False
    self._begin_read()
    try:
        self.n[N_MATCHES] += 1
        w.c = self._find_ctx(model, lora)
        if w.c == NULL:
            result = {}
        else:
            _ready_ids(self, ready, &w)
            if not _walk_outside(self, &w):
                w.depth = walk(w.c, h, n, data, self.block_bytes, self.seed, prehashed, PROBE_CHUNK,
                               &w.ready_ids if w.filter_ready else NULL, &w.alive, &w.found, &w.touched,
                               &w.hashed)
                result = _matched(self, &w, kind == PERCENT, now)
    finally:
        self._end()
    if w.outside:
        with nogil:
            # no allocation (all reserved) and no hashing (prehashed == n): this cannot fail, and the
            # gate is left before the GIL is taken back (_native.h, WalkGate)
            w.depth = walk(w.c, h, n, data, self.block_bytes, self.seed, prehashed, PROBE_CHUNK,
                           &w.ready_ids if w.filter_ready else NULL, &w.alive, &w.found, &w.touched,
                           &w.hashed)
            walk_gate_leave(self.gate)
        if _after_walk_hook is not None:
            _after_walk_hook()
        self._begin_read()
        try:
            if self.gate.generation != w.generation:
                # the index changed between the walk and now: its entries may be gone; walk again,
                # inside this section
                w.c = self._find_ctx(model, lora)
                w.alive.clear()
                w.found.clear()
                w.touched.clear()
                w.ready_ids.clear()
                if w.c == NULL:
                    result = {}
                else:
                    _ready_ids(self, ready, &w)
                    w.depth = walk(w.c, h, n, data, self.block_bytes, self.seed, prehashed, PROBE_CHUNK,
                                   &w.ready_ids if w.filter_ready else NULL, &w.alive, &w.found,
                                   &w.touched, &w.hashed)
                    result = _matched(self, &w, kind == PERCENT, now)
            else:
                result = _matched(self, &w, kind == PERCENT, now)
        finally:
            self._end()
    if kind == BLOCKS:
        return result
    hashed = w.hashed
    if hashed < <size_t>n:  # the walk stopped early; every hash is returned
        self._hash_chain(data + hashed * self.block_bytes, n - hashed, h[hashed - 1] if hashed else self.seed,
                         h + hashed)
    return result, out


cdef int _ready_ids(SyncPrefixHashTable self, ready, Walk* w) except -1:
    """The ids of the ready pods the table knows, sorted (in a section)."""
    cdef PyObject* known
    w.filter_ready = ready is not None
    if w.filter_ready:
        for name in ready:
            known = PyDict_GetItem(self._pod_ids, name)
            if known is not NULL:
                w.ready_ids.push_back(<uint32_t>(<object>known))
        sort(w.ready_ids.begin(), w.ready_ids.end())
    return 0


cdef bint _walk_outside(SyncPrefixHashTable self, Walk* w) except -1:
    """Whether this query walks outside the GIL, and if so prepare it (in the first section).

    Only a walk that will be long pays for handing the GIL over and back (~1 us, and a convoy when
    another thread wants it): the query is hashed already (NOGIL_BYTES) and its block
    WALK_NOGIL_BLOCKS - 1 is in the context, so most likely every block before it matches. The
    walk then cannot fail: all it may push is reserved here, and it hashes nothing."""
    cdef size_t pods
    if w.prehashed != w.n or w.n < WALK_NOGIL_BLOCKS or w.c.prefixes.count(w.h[WALK_NOGIL_BLOCKS - 1]) == 0:
        return False
    pods = first_holders(w.c, w.h[0])
    if pods == 0:
        return False
    w.alive.reserve(pods)
    w.found.reserve(pods)
    w.touched.reserve(w.n)
    w.generation = self.gate.generation
    w.outside = True
    walk_gate_enter(self.gate)  # the last step of the section: nothing can fail after it
    return True


cdef dict _matched(SyncPrefixHashTable self, Walk* w, bint percent, double now):
    """The end of SPEC 4's walk, in a section: the recency update and the result, built while the pod
    ids it names cannot be recycled (the collector is paused: building it runs no Python code)."""
    cdef Ctx* c = w.c
    cdef size_t depth = w.depth, i
    cdef uint64_t tick
    cdef dict result = {}
    # the matched blocks were used just now; block 0 gets the newest tick (D4)
    if c.next_tick + depth >= RENUMBER_AT:
        renumber(c)
    tick = c.next_tick
    c.next_tick += depth
    for i in range(depth):
        w.touched[i].tick = <uint32_t>(tick + depth - 1 - i)
    self._touch(c)
    c.last_access = now
    if w.found.size() > 5:  # one allocation instead of a resize at 6, 11, 22, 43 ... pods
        result = _PyDict_NewPresized(w.found.size())
    for i in range(w.found.size()):
        result[self._pod_names[w.found[i].pod]] = w.found[i].blocks * 100 // w.n if percent else w.found[i].blocks
    return result
