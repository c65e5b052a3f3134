# The table of the compiled core, included by _core.pyx (one module; the class is kept in its own file
# because it is most of it). Section banners, names and docstrings follow _core_py.py.


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
    cdef bint built
    cdef NodePool* pool
    cdef BucketHash bucket_hash   # the key of every map's bucket hash, random per table (D16)
    cdef dict _contexts           # model -> {lora_id: int(Ctx*)}: no tuple to build per lookup
    cdef Ctx* oldest              # the recency list of contexts (D5): evict from here ...
    cdef Ctx* newest              # ... touch to here
    cdef size_t n_contexts
    cdef dict _pod_ids            # pod name -> id
    cdef list _pod_names          # id -> pod name, None when free
    cdef vector[uint32_t] pod_refs    # id -> number of contexts with a pod state for it
    cdef vector[uint32_t] free_ids
    cdef vector[uint32_t] released    # ids whose last pod state went in this critical section
    cdef uint64_t pod_ids_changed     # bumped whenever a pod gets or loses an id
    # The ids of the last ready_pods list or tuple a query gave, by identity of the object and of its
    # names: a router passes the same list of ready pods again and again (_table_query.pxi, _ready_ids)
    cdef object ready_seen            # that list or tuple (held: its address cannot be reused) ...
    cdef tuple ready_names_seen       # ... the names it held then ...
    cdef vector[uint32_t] ready_ids_seen  # ... their known ids, sorted ...
    cdef uint64_t ready_ids_when      # ... as of this pod_ids_changed
    cdef size_t live_pods
    cdef uint64_t n[N_COUNTERS]
    cdef int gc_was
    cdef bint in_section          # between _begin/_begin_read and _end (a call from inside one is refused)
    cdef WalkGate* gate           # the long walks outside the GIL, waited for by changing sections
    cdef WalkChoice walk_short    # how short queries walk, and how long ones do (_native.h) ...
    cdef WalkChoice walk_long     # ... two workloads, measured apart
    cdef vector[uint8_t] id_scratch   # a short query's token ids as token bytes (_token_bytes) ...
    cdef bint id_scratch_busy         # ... while that query is not done with them
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
        key = os.urandom(16)
        self.bucket_hash.k0 = int.from_bytes(key[:8], "little")
        self.bucket_hash.k1 = int.from_bytes(key[8:], "little") | 1
        self.gate = walk_gate_new()
        self._contexts = {}
        self._pod_ids = {}
        self._pod_names = []

    def __dealloc__(self):
        cdef Ctx* c = self.oldest
        cdef Ctx* nxt
        while c != NULL:
            nxt = c.newer
            self._clear_ctx(c)
            Py_DECREF(<object>c.key)
            del c
            c = nxt
        del self.pool
        if self.gate != NULL:
            walk_gate_delete(self.gate)

    def __init__(self, config=None, *, clock=None, background_eviction=True, **overrides):
        if self.built or self.block_bytes:  # block_bytes is set first: a re-entrant __init__ sees it
            raise RuntimeError(REINIT_MESSAGE)
        config = resolve_config(config, overrides)
        settings = table_settings(config)  # whatever the config's class: it may have skipped validation
        if self.block_bytes:
            raise RuntimeError(REINIT_MESSAGE)  # a callback of the config re-initialised this table meanwhile
        self.block_bytes = 4 * <size_t>settings.block_size
        self.config = config
        self.seed = settings.seed
        self.block_size = settings.block_size
        self.max_contexts = settings.max_contexts
        self.max_prefixes = settings.max_prefixes
        self.stale_after = settings.stale_after
        # time.monotonic is read natively (the same CLOCK_MONOTONIC)
        self._clock = None if clock is None or clock is time.monotonic else clock
        self.built = True
        self._eviction = None
        if background_eviction:
            self._eviction = EvictionThread(self, settings.interval)

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

    # -- critical sections and time ----------------------------------------------------------------

    cdef inline int _begin(self) except -1:
        """Start a critical section that may change the index: the GIL is held, no finalizer may run
        until _end (SPEC 7), and no long walk is running outside the GIL (walk_gate_wait)."""
        self._begin_read()
        walk_gate_wait(self.gate)  # (spins with the GIL held: no other section can start meanwhile)
        return 0

    cdef inline int _begin_read(self) except -1:
        """Start a critical section that changes no map, pod list or pod id (reads, and a query's
        recency update): long walks outside the GIL may go on meanwhile, as they only read those."""
        if not self.built:
            raise RuntimeError(UNBUILT_MESSAGE)
        if self.in_section:  # Python code ran inside a section after all: it must not see it half-done
            raise RuntimeError(REENTERED_MESSAGE)
        self.gc_was = gc_pause()
        self.in_section = True
        return 0

    cdef void _end(self) noexcept:
        """End a critical section, the one epilogue of every section: recycle the pod ids it released,
        then let the garbage collector run again."""
        if not self.released.empty():
            self._drain_released()
        self.in_section = False
        gc_resume(self.gc_was)

    cdef inline double _now(self) except? -1.0:
        # Called before a section: a clock= is Python code and may call back into the table.
        if self._clock is None:
            return monotonic_seconds()
        return float(self._clock())

    # -- pods and contexts (in a section) ----------------------------------------------------------

    cdef inline uint32_t _pod_id(self, str pod) noexcept:
        cdef PyObject* found = dict_lookup(self._pod_ids, pod)
        return NO_POD if found is NULL else <uint32_t>(<object>found)

    cdef uint32_t _intern(self, str pod) except? 0xFFFFFFFF:
        cdef uint32_t pid = self._pod_id(pod)
        if pid != NO_POD:
            return pid
        if not self.free_ids.empty():
            pid = self.free_ids.back()
            self._pod_ids[pod] = pid
            self._pod_names[pid] = pod
            self.free_ids.pop_back()
            self.pod_ids_changed += 1
        else:
            pid = <uint32_t>len(self._pod_names)
            self.pod_refs.push_back(0)
            self._pod_names.append(pod)
            self._pod_ids[pod] = pid
            self.pod_ids_changed += 1
        return pid

    cdef void _drain_released(self) noexcept:
        # Pod ids whose pod holds nothing any more are recycled at the end of the section that released
        # them (D2): churned pod names do not pile up. Only plain str and int objects are released.
        cdef uint32_t pid
        for pid in self.released:
            if self.pod_refs[pid] == 0 and self._pod_names[pid] is not None:
                del self._pod_ids[self._pod_names[pid]]
                self._pod_names[pid] = None
                self.free_ids.push_back(pid)  # within the capacity pod_refs' growth reserved
                self.pod_ids_changed += 1
        self.released.clear()

    cdef PodState* _new_pod_state(self, Ctx* c, uint32_t pid, double now) except NULL:
        cdef PodState* ps = new PodState(self.pool, LOAD_FACTOR, self.bucket_hash)
        try:
            c.pods.emplace(pid, ps)
            self.released.reserve(self.released.size() + 1)  # so that _delete_pod_state cannot fail
            self.free_ids.reserve(self._pod_names.__len__())
        except BaseException:
            c.pods.erase(pid)
            del ps
            raise
        ps.last_seen = now
        if self.pod_refs[pid] == 0:
            self.live_pods += 1
        self.pod_refs[pid] += 1
        return ps

    cdef void _delete_pod_state(self, PodState* ps, uint32_t pid) noexcept:
        self.hot_ctx = NULL
        del ps
        self.pod_refs[pid] -= 1
        if self.pod_refs[pid] == 0:
            self.live_pods -= 1
            self.released.push_back(pid)  # reserved by _new_pod_state

    cdef inline Ctx* _find_ctx(self, str model, lora) noexcept:
        cdef PyObject* loras = dict_lookup(self._contexts, model)
        if loras is NULL:
            return NULL
        cdef PyObject* found = dict_lookup(<object>loras, lora)
        if found is NULL:
            return NULL
        return <Ctx*>PyLong_AsVoidPtr(<object>found)

    cdef inline void _touch(self, Ctx* c) noexcept:
        """c becomes the most recently used context (D5)."""
        if c == self.newest:
            return
        self._unlist(c)
        c.older = self.newest
        c.newer = NULL
        if self.newest != NULL:
            self.newest.newer = c
        self.newest = c
        if self.oldest == NULL:
            self.oldest = c

    cdef inline void _unlist(self, Ctx* c) noexcept:
        if c.older != NULL:
            c.older.newer = c.newer
        else:
            self.oldest = c.newer
        if c.newer != NULL:
            c.newer.older = c.older
        else:
            self.newest = c.older
        c.older = c.newer = NULL

    cdef Ctx* _new_ctx(self, str model, lora, double now) except NULL:
        cdef Ctx* c
        key = (model, lora)
        loras = self._contexts.get(model)
        if loras is None:
            loras = {}
        c = new Ctx(self.pool, LOAD_FACTOR, self.bucket_hash)
        try:
            loras[lora] = PyLong_FromVoidPtr(c)
            self._contexts[model] = loras
        except BaseException:
            if not loras:
                self._contexts.pop(model, None)
            del c
            raise
        if self.n_contexts >= self.max_contexts:  # SPEC 5: the least recently used context goes at once
            self._drop_ctx(self.oldest)
            self.n[N_EVICTED_CONTEXTS] += 1
        c.key = <PyObject*>key
        Py_INCREF(key)
        c.last_access = now
        self.n_contexts += 1
        c.older = self.newest
        if self.newest != NULL:
            self.newest.newer = c
        self.newest = c
        if self.oldest == NULL:
            self.oldest = c
        return c

    cdef void _clear_ctx(self, Ctx* c) noexcept:
        """Free everything a context holds; the context itself stays linked."""
        cdef PodMap.iterator it = c.pods.begin()
        while it != c.pods.end():
            self._delete_pod_state(deref(it).second, deref(it).first)
            inc(it)
        c.pods.clear()
        c.prefixes.clear()
        c.multi.clear()
        c.multi_free.clear()

    cdef void _unlink_ctx(self, Ctx* c) noexcept:
        self.hot_ctx = NULL
        model, lora = <object>c.key
        loras = <dict>self._contexts[model]
        del loras[lora]
        if not loras:
            del self._contexts[model]
        self._unlist(c)
        self.n_contexts -= 1
        Py_DECREF(<object>c.key)
        del c

    cdef void _drop_ctx(self, Ctx* c) noexcept:
        self._clear_ctx(c)
        self._unlink_ctx(c)

    cdef list _context_keys(self):
        """The (model, lora_id) of every context, least recently used first, in a section of its own:
        passes that visit the contexts one section each (evict_now, a save) look each one up again."""
        cdef Ctx* c
        self._begin_read()
        try:
            keys = []
            c = self.oldest
            while c != NULL:
                keys.append(<object>c.key)
                c = c.newer
        finally:
            self._end()
        return keys

    cdef inline void _drop_if_empty(self, Ctx* c) noexcept:
        if c.prefixes.size() == 0:  # a context lives while it holds something (D2)
            self._drop_ctx(c)

    cdef PodState* _context_and_pod(self, str model, lora, str pod, double now, Ctx* c, PodState* ps,
                                    uint32_t pid, Ctx** ctx_out, uint32_t* pid_out) except NULL:
        """The context and the pod's state in it, made if missing; c/ps/pid: what the caller already
        found (NULL / NO_POD when it did not look)."""
        if c == NULL:
            c = self._find_ctx(model, lora)
        if c == NULL:
            c = self._new_ctx(model, lora, now)
            ps = NULL
        else:
            self._touch(c)
            c.last_access = now
        ctx_out[0] = c
        if pid == NO_POD:
            pid = self._intern(pod)
        cdef PodMap.iterator it
        if ps == NULL:
            it = c.pods.find(pid)
            if it == c.pods.end():
                ps = self._new_pod_state(c, pid, now)
            else:
                ps = deref(it).second
        ps.last_seen = now
        pid_out[0] = pid
        return ps

    cdef void _repair(self, Ctx* c, uint32_t pid) noexcept:
        """After a MemoryError part-way through a store: no empty pod state or context is left (D2)."""
        cdef PodMap.iterator it
        self.hot_ctx = NULL
        if c == NULL:
            return
        it = c.pods.find(pid)
        if it != c.pods.end() and deref(it).second.held == 0:
            self._delete_pod_state(deref(it).second, pid)
            c.pods.erase(it)
        self._drop_if_empty(c)

    # -- entries: _table_entries.pxi; how events are applied: _table_events.pxi ---------------------

    # -- hashing -----------------------------------------------------------------------------------

    cdef void _hash_chain(self, const uint8_t* data, size_t n, uint64_t parent, uint64_t* out) noexcept:
        """Hash n chained blocks into out; without the GIL when that is long enough to be worth it.
        Never in a section: the memory is the caller's own."""
        if n * self.block_bytes >= NOGIL_BYTES:
            with nogil:
                hash_chain(data, n, self.block_bytes, self.seed, parent, out)
        else:
            hash_chain(data, n, self.block_bytes, self.seed, parent, out)

    def get_prefix_hashes(self, tokens):
        """The query's prefix hashes (SPEC, "The prefix hash chain"), one per whole block."""
        cdef const uint8_t* data = NULL
        cdef size_t nbytes = 0
        tokens = _token_bytes(self, tokens, &data, &nbytes)  # the object that owns the bytes stays referenced
        cdef cnp.npy_intp n = nbytes // self.block_bytes
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT64, 0)
        self._hash_chain(data, n, self.seed, <uint64_t*>cnp.PyArray_DATA(out))
        return out

    # -- events ------------------------------------------------------------------------------------

    def process_block_stored(self, event):
        """Index the event's chained blocks for its pod (SPEC 1); an unknown parent is an orphan."""
        if type(event) is not BlockStoredType and not isinstance(event, BlockStoredType):
            raise TypeError(f"process_block_stored takes a BlockStored, not {type(event).__name__}")
        cdef _Stored ev = _Stored.__new__(_Stored)
        ev.read(event, self.block_bytes, self.block_size)
        cdef double now = self._now()
        # an event's prefix hashes: on the stack for the usual few blocks (a malloc and a free were
        # ~12% of a 1-block store), else allocated before any section (a MemoryError changes nothing)
        cdef uint64_t few[SMALL_EVENT_BLOCKS]
        cdef vector[uint64_t] many
        cdef uint64_t* hashes = few
        if ev.n > SMALL_EVENT_BLOCKS:
            many.resize(ev.n)
            hashes = many.data()
        cdef uint64_t parent = 0
        cdef int mode = DEFER if ev.n * self.block_bytes >= NOGIL_BYTES else NOW
        self._begin()
        try:
            self.n[N_STORED_EVENTS] += 1
            if _apply_stored(self, ev, now, hashes, mode, &parent) == 0:
                return
        finally:
            self._end()
        while True:  # a long event: hashed without the GIL, placed if its parent is still what it was
            with nogil:
                hash_chain(<const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>ev.tokens), ev.n, self.block_bytes,
                           self.seed, parent, hashes)
            self._begin()
            try:
                if _apply_stored(self, ev, now, hashes, HASHED, &parent) == 0:
                    return
            finally:
                self._end()

    def process_block_removed(self, event):
        """Forget the event's blocks for its pod, or for every pod when source_pod is "" (SPEC 2)."""
        if type(event) is not BlockRemovedType and not isinstance(event, BlockRemovedType):
            raise TypeError(f"process_block_removed takes a BlockRemoved, not {type(event).__name__}")
        fields = _removed(event)
        cdef double now = self._now()
        self._begin()
        try:
            _apply_removed(self, fields, now)
        finally:
            self._end()

    def process_all_blocks_cleared(self, event):
        """Forget every entry of the pod, in the contexts the event names (SPEC 3)."""
        if type(event) is not AllBlocksClearedType and not isinstance(event, AllBlocksClearedType):
            raise TypeError(f"process_all_blocks_cleared takes an AllBlocksCleared, not {type(event).__name__}")
        fields = cleared_fields(event)
        self._begin()
        try:
            _apply_cleared(self, fields)
        finally:
            self._end()

    def process_events(self, events):
        """Apply a sequence of BlockStored / BlockRemoved / AllBlocksCleared in order, as the three
        methods would one by one, in one critical section. Every event is checked first: a bad one is
        an error naming its position, and nothing of the batch is applied."""
        _process_events(self, events)

    # -- direct prefix API (AIBrix's AddPrefix / RemovePrefix) ---------------------------------------

    def add_prefix(self, model_name, lora_id, pod, prefix_hashes):
        """Record that ``pod`` holds these prefix hashes (as a router does after sending it a request)."""
        model, lora = _check_context(model_name, lora_id)
        cdef str name = check_pod(pod, "pod")
        arr = hash_array(prefix_hashes, "prefix_hashes")
        cdef size_t n = len(arr)
        cdef double now = self._now()
        if n == 0:
            return
        cdef const uint64_t[::1] hashes = arr
        cdef Ctx* c = NULL
        cdef PodState* ps
        cdef uint32_t pid = NO_POD
        self._begin()
        try:
            ps = self._context_and_pod(model, lora, name, now, NULL, NULL, NO_POD, &c, &pid)
            try:
                _place(self, c, ps, pid, <uint64_t*>&hashes[0], NULL, n)  # (only read: no tokens)
            except BaseException:
                self._repair(c, pid)
                raise
        finally:
            self._end()

    def remove_prefix(self, model_name, lora_id, pod):
        """Forget every prefix ``pod`` holds in the context (AIBrix's RemovePrefix)."""
        model, lora = _check_context(model_name, lora_id)
        cdef str name = check_pod(pod, "pod")
        cdef Ctx* c
        cdef uint32_t pid
        self._begin()
        try:
            c = self._find_ctx(model, lora)
            if c == NULL:
                return
            pid = self._pod_id(name)
            if pid != NO_POD:
                _drop_pod(self, c, pid)
            self._drop_if_empty(c)
        finally:
            self._end()

    # -- queries -----------------------------------------------------------------------------------

    def match_prefix(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> percent of the query's blocks it holds from block 0 on, and the query's prefix hashes."""
        return _query(self, model_name, lora_id, tokens, ready_pods, PERCENT)

    def match_blocks(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> number of the query's blocks it holds from block 0 on."""
        return _query(self, model_name, lora_id, tokens, ready_pods, BLOCKS)

    def match(self, model_name, lora_id, tokens, ready_pods=None):
        """pod -> number of the query's blocks it holds from block 0 on, and the query's prefix hashes:
        what match_blocks and match_prefix say, from one walk and one recency update."""
        return _query(self, model_name, lora_id, tokens, ready_pods, BLOCKS_AND_HASHES)

    # -- maintenance -------------------------------------------------------------------------------

    def evict_now(self):
        """Run the staleness pass of SPEC 6 now; returns what it evicted.

        Each context is its own section, and a thread that waits for the GIL gets it within two
        switch intervals (_offer_gil), so a long pass does not stall the request path."""
        return _evict_now(self)

    def stats(self):
        """Sizes and running totals (STAT_KEYS): contexts, prefixes, entries, pods, events by kind, blocks
        stored/removed, orphan blocks, matches, and evicted contexts, pods and prefixes."""
        return _stats(self)

    def snapshot(self):
        """Everything the index holds: {(model, lora_id): {prefix hash: frozenset(pods)}}."""
        return _snapshot(self)

    def _debug_set_next_tick(self, model_name, lora_id, uint64_t value):
        """Tests only: move a context's tick counter (to exercise the 32-bit renumbering)."""
        cdef Ctx* c
        self._begin()
        try:
            c = self._find_ctx(model_name, lora_id)
            if c == NULL:
                raise KeyError((model_name, lora_id))
            c.next_tick = value
        finally:
            self._end()

    def _debug_walk_in_gate(self, double seconds):
        """Tests only: be a walk outside the GIL that takes `seconds` (enter the gate, release the GIL,
        sleep, leave the gate, take the GIL back), to show what waits for one and what does not
        (tests/hostile_cases/long_walk_cases.py)."""
        self._begin_read()
        walk_gate_enter(self.gate)
        self._end()
        with nogil:
            usleep(<unsigned int>(seconds * 1e6))
            walk_gate_leave(self.gate)

    def _debug_walkers(self):
        """Tests only: how many walks are in the gate now."""
        return walk_gate_walkers(self.gate)

    def _debug_memory(self):
        """Bytes the node pool has reserved and nodes in use, and bucket bytes (for the memory tests)."""
        return _debug_memory(self)

    # -- snapshots ---------------------------------------------------------------------------------
    # The state exchanged with _snapshot.py (docs/snapshot.md): canonical, so that both backends give
    # the same state for the same calls and so byte-identical files. The work is in _table_state.pxi.

    def save(self, file):
        """Write a snapshot of the index to a path (atomically) or to a binary stream (docs/snapshot.md).
        Matches go on meanwhile; events wait at most for the copy of the state."""
        from . import _snapshot
        _snapshot.save_table(self, file)

    @classmethod
    def load(cls, file, **overrides):
        """A new table from a snapshot (a path or a binary stream); ``overrides`` are the constructor's
        keywords. A bad snapshot is a ValueError that says what is wrong, and builds nothing."""
        from . import _snapshot
        return _snapshot.load_table(cls, file, overrides)

    def _export_state(self):
        """Everything the table holds, in the canonical form of docs/snapshot.md (contexts least
        recently used first, prefixes oldest tick first, pods by name, engine maps by key)."""
        return _export_state(self, self._now())

    @classmethod
    def _from_state(cls, state, *, clock=None, background_eviction=True, config=None):
        """A new table holding exactly `state` (as _export_state gives it, checked by _snapshot.py):
        ticks 0..n-1 in the given order, contexts' recency in the given order, idle times counted from
        the new table's clock. A smaller bound than the saved state's trims as a store would."""
        cdef SyncPrefixHashTable table = cls(state["config"] if config is None else config, clock=clock,
                                             background_eviction=background_eviction)
        try:
            _load_state(table, state, table._now())
        except BaseException:
            table.close()
            raise
        return table
