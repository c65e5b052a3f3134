# Queries of the compiled table (SPEC 4), included by _core.pyx after _table.pxi: a query's tokens as
# token bytes, then the one section of a match, or for a long query two sections with its hashing and
# walk between them, outside the GIL (docs/architecture.md, "Long walks"). The methods match_prefix,
# match_blocks and match call _query; get_prefix_hashes calls _token_bytes.

cdef object _query(SyncPrefixHashTable self, model_name, lora_id, tokens, ready_pods, int kind):
    # Everything that may run Python code comes first: names, the tokens' conversion, the ready_pods
    # iterator, the clock. Then one section, or for a long query two (_long_query).
    model, lora = _check_context(model_name, lora_id)
    cdef const uint8_t* data = NULL
    cdef size_t nbytes = 0
    cdef bint was_busy = self.id_scratch_busy
    tokens = _token_bytes(self, tokens, &data, &nbytes, True)  # the object that owns the bytes stays referenced
    cdef bint in_scratch = self.id_scratch_busy and not was_busy  # this query's ids are in the table's scratch
    try:
        return _query_bytes(self, model, lora, data, nbytes, ready_pods, kind)
    finally:
        if in_scratch:
            self.id_scratch_busy = False


cdef inline object _query_bytes(SyncPrefixHashTable self, str model, lora, const uint8_t* data, size_t nbytes,
                                ready_pods, int kind):
    """The rest of _query, once the tokens are token bytes at data[0:nbytes]."""
    # the clock first: it is Python code, and the ready list is not read again before the section
    cdef double now = self._now()
    ready = _ready_names(ready_pods)
    cdef cnp.npy_intp n = nbytes // self.block_bytes
    cdef cnp.ndarray out = None
    cdef uint64_t few[SMALL_QUERY_BLOCKS]  # match_blocks' hashes of a 1,024-token query, with no malloc
    cdef vector[uint64_t] scratch
    cdef uint64_t* h
    cdef Walk w
    if kind == BLOCKS:
        if n <= SMALL_QUERY_BLOCKS:
            h = few
        else:
            scratch.resize(n)
            h = scratch.data()
    else:
        out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        h = <uint64_t*>cnp.PyArray_DATA(out)
    w.h = h
    w.n = n
    if nbytes >= NOGIL_BYTES:
        result = _long_query(self, model, lora, data, ready, kind, now, &w)
    else:
        self._begin_read()
        try:
            self.n[N_MATCHES] += 1
            result = _walk_here(self, model, lora, data, ready, kind, now, &w, &self.walk_short)
        finally:
            self._end()
        if kind != BLOCKS and w.hashed < <size_t>n:  # the walk stopped early; every hash is returned
            hash_chain(data + w.hashed * self.block_bytes, n - w.hashed, self.block_bytes, self.seed,
                       h[w.hashed - 1] if w.hashed else self.seed, h + w.hashed)
    _remember_ready(self, ready, &w)
    if kind == BLOCKS:
        return result
    return result, out


cdef object _token_bytes(SyncPrefixHashTable self, tokens, const uint8_t** data, size_t* nbytes,
                         bint scratch=False):
    """Point data at the query's token bytes; returns the object that owns them (keep it alive).

    With `scratch`, token ids of a short query are converted into the table's id_scratch instead of
    a new array (~0.08 us of a 1,024-id query): the caller then holds it (id_scratch_busy) until it
    is done with the bytes, and a query that comes in meanwhile (from Python code that the caller
    runs, or another thread while that code lets the GIL go) converts into an array of its own."""
    cdef Py_ssize_t n_ids
    if not self.built:
        raise RuntimeError(UNBUILT_MESSAGE)
    if scratch and not self.id_scratch_busy and type(tokens) is not bytes \
            and not (cnp.PyArray_CheckExact(tokens) and cnp.PyArray_TYPE(<cnp.ndarray>tokens) == cnp.NPY_UINT8):
        n_ids = ids_count(tokens)
        if 0 <= n_ids and <size_t>n_ids < NOGIL_BYTES // 4:  # (not n_ids * 4: it can wrap)
            self.id_scratch.resize(<size_t>n_ids * 4 + 1)  # (+1: data() of an empty query)
            # no Python code runs between the count and the fill: the ids cannot change in between
            if ids_fill(tokens, n_ids, self.id_scratch.data()):
                self.id_scratch_busy = True
                data[0] = self.id_scratch.data()
                nbytes[0] = <size_t>n_ids * 4
                return tokens
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
            return _token_bytes(self, tokens, data, nbytes)
    data[0] = <const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>tokens)
    nbytes[0] = <size_t>cnp.PyArray_DIM(<cnp.ndarray>tokens, 0)
    return tokens


cdef inline int _walk_how(WalkChoice* choice) noexcept:
    """How the next walk goes (WalkChoice in _native.h, or WALK_MODE): WALK_BESIDE set if it probes
    beside the hash chain, WALK_TIMED if its ticks are to be learnt."""
    if WALK_MODE:
        return (WALK_BESIDE if WALK_MODE == 2 else 0) | WALK_TIMED
    return choice.pick()


cdef dict _walk_here(SyncPrefixHashTable self, str model, lora, const uint8_t* data, ready, int kind,
                     double now, Walk* w, WalkChoice* choice):
    """SPEC 4's walk and its result, all in the caller's section (hashing as it goes, past w.hashed),
    the way `choice` measures best; the walk's ticks go back into it."""
    cdef size_t prehashed = w.hashed
    cdef uint64_t start = 0
    cdef int how
    cdef bint beside
    w.c = self._find_ctx(model, lora)
    if w.c == NULL:
        return {}
    _ready_ids(self, ready, w)
    how = _walk_how(choice)
    beside = (how & WALK_BESIDE) != 0
    if how & WALK_TIMED:
        start = walk_ticks()
    w.depth = walk(w.c, w.h, w.n, data, self.block_bytes, self.seed, w.hashed, PROBE_CHUNK, beside,
                   &w.ready_ids if w.filter_ready else NULL, &w.alive, &w.found, &w.touched, &w.hashed)
    if how & WALK_TIMED:
        choice.learn(beside, walk_ticks() - start, w.hashed - prehashed)
    return _matched(self, w, kind == PERCENT, now)


cdef dict _long_query(SyncPrefixHashTable self, str model, lora, const uint8_t* data, ready, int kind,
                      double now, Walk* w):
    """A query of NOGIL_BYTES or more (docs/architecture.md, "Long walks"): a first section finds the
    context and reserves all that the walk may push; without the GIL the query is hashed, and walked if
    it gets into the walk gate (no change began since the first section); it leaves the gate before it
    takes the GIL back. A closing section then builds the result, or walks again if it could not enter
    or anything changed since. One handover of the GIL per query, however long."""
    cdef bint want = False
    cdef size_t pods, walked = 0
    cdef uint64_t start, ticks = 0
    cdef bint beside = False
    self._begin_read()
    try:
        self.n[N_MATCHES] += 1
        w.c = self._find_ctx(model, lora)
        if w.c != NULL:
            _ready_ids(self, ready, w)
            # every pod of an entry has a pod state in the context: the walk pushes at most this many
            # pods, and an entry per block; reserved, the pushes cannot fail (or need the GIL)
            pods = w.c.pods.size()
            w.alive.reserve(pods)
            w.found.reserve(pods)
            w.touched.reserve(w.n)
            w.generation = walk_gate_generation(self.gate)
            beside = (_walk_how(&self.walk_long) & WALK_BESIDE) != 0  # long walks: always timed
            want = True
    finally:
        self._end()
    if not want and kind == BLOCKS:
        return {}  # nothing to walk, no hashes to return
    with nogil:
        if want and walk_gate_try_enter(self.gate, w.generation):
            # everything reserved: this cannot fail. It hashes as it walks (in the gate: a changing
            # section waits for it, ~20 ns a block), so that it can probe beside the hash chain
            start = walk_ticks()
            w.depth = walk(w.c, w.h, w.n, data, self.block_bytes, self.seed, 0, PROBE_CHUNK, beside,
                           &w.ready_ids if w.filter_ready else NULL, &w.alive, &w.found, &w.touched,
                           &w.hashed)
            ticks = walk_ticks() - start
            walked = w.hashed
            walk_gate_leave(self.gate)
            w.outside = True
        if w.hashed < w.n:  # every hash is returned (and a walk again inside a section needs them)
            hash_chain(data + w.hashed * self.block_bytes, w.n - w.hashed, self.block_bytes, self.seed,
                       w.h[w.hashed - 1] if w.hashed else self.seed, w.h + w.hashed)
            w.hashed = w.n
    if not want:
        return {}
    if _after_walk_hook is not None and w.outside:
        _after_walk_hook()
    self._begin_read()
    try:
        if w.outside:
            self.walk_long.learn(beside, ticks, walked)
        if w.outside and walk_gate_generation(self.gate) == w.generation:
            return _matched(self, w, kind == PERCENT, now)
        # it could not walk outside, or the index changed since the walk (its entries may be gone):
        # walk here, inside this section, as of now
        w.alive.clear()
        w.found.clear()
        w.touched.clear()
        w.ready_ids.clear()
        return _walk_here(self, model, lora, data, ready, kind, now, w, &self.walk_long)
    finally:
        self._end()


cdef int _ready_ids(SyncPrefixHashTable self, ready, Walk* w) except -1:
    """The ids of the ready pods the table knows, sorted (in a section).

    The same list or tuple as last time, holding the same name objects, with no pod id given or taken
    since, has the same ids: they are copied, not looked up and sorted again (64 ready pods: ~1.5 us).
    A list changed in place fails the check of its names; the names are the caller's plain str, so
    comparing them by identity runs no Python code."""
    cdef PyObject* known
    cdef Py_ssize_t i, k
    cdef tuple seen
    w.filter_ready = ready is not None
    if not w.filter_ready:
        return 0
    if ready is self.ready_seen and self.ready_ids_when == self.pod_ids_changed:
        seen = self.ready_names_seen
        k = len(seen)
        if len(ready) == k:
            for i in range(k):
                if <PyObject*>ready[i] is not <PyObject*>seen[i]:
                    break
            else:
                for i in range(<Py_ssize_t>self.ready_ids_seen.size()):
                    w.ready_ids.push_back(self.ready_ids_seen[i])
                return 0
    for name in ready:
        # _ready_names saw only plain str, but another thread may have changed the list since, while a
        # long query let the GIL go: anything else would run its __hash__ here (it counts as not given)
        if type(name) is not str:
            continue
        known = dict_lookup(self._pod_ids, name)
        if known is not NULL:
            w.ready_ids.push_back(<uint32_t>(<object>known))
    sort(w.ready_ids.begin(), w.ready_ids.end())
    w.ready_fresh = type(ready) is list or type(ready) is tuple
    w.ready_when = self.pod_ids_changed
    return 0


cdef void _remember_ready(SyncPrefixHashTable self, ready, Walk* w) noexcept:
    """After the query's last section: remember its ready list and the ids found for it (_ready_ids).
    Not inside the section: replacing the list remembered before drops the table's reference to it,
    and the caller may have put anything in it since, whose finalizer runs when it goes (SPEC 7). The
    old objects are held until this returns, once the three parts of the memory agree again."""
    if not w.ready_fresh:
        return
    cdef int was = gc_pause()  # the copy of a list reads its items after allocating the tuple: no
    try:                       # collection (and no finalizer changing the list) may come in between
        names = tuple(ready)
    except BaseException:  # a MemoryError: the query's answer stands, the memory is only not updated
        return
    finally:
        gc_resume(was)
    old_list, old_names = self.ready_seen, self.ready_names_seen  # (released when this returns)
    self.ready_ids_seen.assign(w.ready_ids.begin(), w.ready_ids.end())
    self.ready_names_seen = names
    self.ready_seen = ready
    self.ready_ids_when = w.ready_when


cdef inline bint _newest_already(Ctx* c, Walk* w, size_t depth) noexcept:
    """Whether the matched blocks are already the context's newest, block 0 first: then new ticks
    would leave the order of every prefix as it is (D4 is an order), so none are written. Writing them
    anyway costs more than the reading: every match would make each node's cache line the writer
    core's own, and a second thread matching the same prompt would take every line back (two threads
    matching 32,768-token prompts did 1.6x the work of one with the writes, 1.96x without)."""
    cdef size_t i = 0
    cdef Entry** t = w.touched.begin()
    cdef uint64_t last = c.next_tick - 1  # block i's tick if the run is the newest: last - i
    if depth == 0 or c.next_tick < depth:
        return depth == 0
    # four blocks a branch: ~140 fewer instructions in a 1,024-token match (callgrind)
    while i + 4 <= depth:
        if ((t[i].tick + i) ^ last) | ((t[i + 1].tick + i + 1) ^ last) | \
                ((t[i + 2].tick + i + 2) ^ last) | ((t[i + 3].tick + i + 3) ^ last):
            return False
        i += 4
    while i < depth:
        if t[i].tick + i != last:
            return False
        i += 1
    return True


cdef dict _matched(SyncPrefixHashTable self, Walk* w, bint percent, double now):
    """The end of SPEC 4's walk, in a section: the recency update and the result, built while the pod
    ids it names cannot be recycled (the collector is paused: building it runs no Python code)."""
    cdef Ctx* c = w.c
    cdef size_t depth = w.depth, i
    cdef uint64_t tick
    cdef dict result = {}
    # the matched blocks were used just now; block 0 gets the newest tick (D4)
    if not _newest_already(c, w, depth):
        if c.next_tick + depth >= RENUMBER_AT:
            renumber(c)
        tick = c.next_tick
        c.next_tick += depth
        for i in range(depth):
            w.touched[i].tick = <uint32_t>(tick + depth - 1 - i)
    self._touch(c)
    if c.last_access != now:  # the coarse clock moves every few ms: most matches write nothing here
        c.last_access = now
    if w.found.size() > 5:  # one allocation instead of a resize at 6, 11, 22, 43 ... pods
        result = _PyDict_NewPresized(w.found.size())
    for i in range(w.found.size()):
        result[self._pod_names[w.found[i].pod]] = w.found[i].blocks * 100 // w.n if percent else w.found[i].blocks
    return result


def _debug_walk_costs(SyncPrefixHashTable table):
    """Tests and benchmarks only: each WalkChoice's costs (ticks per hashed block, 0 while unmeasured) as
    {"short": (chunked, beside), "long": (chunked, beside)}."""
    return {"short": (table.walk_short.cost[0], table.walk_short.cost[1]),
            "long": (table.walk_long.cost[0], table.walk_long.cost[1])}


def _debug_walk_choice(phases):
    """Tests only: drive a fresh WalkChoice as walks of 64 hashed blocks would, phase by phase, each
    phase (walks, chunked ticks a block, beside ticks a block); returns one bool per walk, True where
    it walked beside the chain. Shows how the choice follows a workload without a clock."""
    cdef WalkChoice choice
    cdef int how
    choice.cost[0] = choice.cost[1] = 0
    choice.turn = 0
    out = []
    for walks, chunked, beside in phases:
        for _ in range(walks):
            how = choice.pick()
            if how & WALK_TIMED:
                choice.learn((how & WALK_BESIDE) != 0, <uint64_t>(64 * (beside if how & WALK_BESIDE else chunked)), 64)
            out.append((how & WALK_BESIDE) != 0)
    return out


def _debug_raw_probes(SyncPrefixHashTable table, model_name, lora_id, keys):
    """Tests only: whether the prefix map of a context holds each key (a uint64), asked through the map's
    own interface (find_entry), through its bucket array (find_raw, the staged walk's probe) and by
    find_near (the plain beside-the-chain walk's), as (RAW_BUCKETS, [(find_entry, find_raw, find_near),
    ...]); find_raw's answer is None without a bucket array (not libstdc++)."""
    cdef Ctx* c
    cdef uint64_t key
    cdef size_t nb
    cdef BucketHash hf
    model, lora = _check_context(model_name, lora_id)
    keys = [int(k) for k in keys]
    out = []
    table._begin_read()
    try:
        c = table._find_ctx(model, lora)
        if c == NULL:
            raise KeyError((model, lora))
        nb = c.prefixes.bucket_count()
        hf = c.prefixes.hash_function()
        for k in keys:
            key = <uint64_t>k
            out.append((find_entry(c.prefixes, key) != NULL,
                        (find_raw(hf, bucket_array(c.prefixes), nb, bucket_index(hf, key, nb), key) != NULL)
                        if RAW_BUCKETS else None,
                        find_near(c.prefixes, key) != NULL))
    finally:
        table._end()
    return bool(RAW_BUCKETS), out
