# How the compiled table applies an event that has been read and checked (SPEC 1-3), in a section;
# included by _core.pyx after _table.pxi. process_events (_process_events, at the end) runs several of
# these in one section.


cdef int _apply_stored(SyncPrefixHashTable self, _Stored ev, double now, uint64_t* hashes, int mode,
                       uint64_t* parent_io) except -1:
    """SPEC 1, in a section. NOW: hash and place. DEFER: find the parent, and if the event can be
    placed return 1 with *parent_io set, to be hashed without the GIL. HASHED: hashes were computed
    from *parent_io; place them, or return 1 with the new parent if it changed meanwhile (D3)."""
    cdef str model = ev.model, pod = ev.pod
    lora = ev.lora
    cdef Ctx* c
    cdef PodState* ps = NULL
    cdef uint32_t pid = NO_POD
    cdef uint64_t parent
    cdef EngineMap.iterator eit
    cdef PodMap.iterator found
    cdef size_t n = ev.n
    if self.hot_ctx != NULL and model is self.hot_model and lora is self.hot_lora and pod is self.hot_pod:
        c, ps, pid = self.hot_ctx, self.hot_ps, self.hot_pid
        ps.last_seen = now
    else:
        c = self._find_ctx(model, lora)
        if c != NULL:
            pid = self._pod_id(pod)
            if pid != NO_POD:
                found = c.pods.find(pid)
                if found != c.pods.end():
                    ps = deref(found).second
                    ps.last_seen = now  # any event from a pod shows it is alive here (D6)
    parent = self.seed
    if ev.has_parent:
        if ps == NULL:
            self.n[N_ORPHANS] += n
            return 0
        eit = ps.engine.find(ev.parent)
        if eit == ps.engine.end() or not holds(c, deref(eit).second, pid):
            # SPEC 1: an unknown parent cannot be placed; neither can anything chained after it
            self.n[N_ORPHANS] += n
            return 0
        parent = deref(eit).second
    if n == 0:
        return 0
    if mode == DEFER or (mode == HASHED and parent != parent_io[0]):
        parent_io[0] = parent
        return 1
    ps = self._context_and_pod(model, lora, pod, now, c, ps, pid, &c, &pid)
    try:
        # NOW: _place hashes each block as it places the one before (HASHED: the hashes are given)
        _place(self, c, ps, pid, hashes, <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>ev.hashes), n,
               <const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>ev.tokens) if mode == NOW else NULL, parent)
    except BaseException:
        self._repair(c, pid)
        raise
    self.n[N_BLOCKS_STORED] += n
    if c.pods.count(pid):  # still there after a trim: remember where this pod's events go
        if self.hot_model is not model:
            self.hot_model = model
        if self.hot_lora is not lora:
            self.hot_lora = lora
        if self.hot_pod is not pod:
            self.hot_pod = pod
        self.hot_ctx, self.hot_ps, self.hot_pid = c, ps, pid
    return 0

cdef int _apply_removed(SyncPrefixHashTable self, tuple fields, double now) except -1:
    engine_arr, model, lora, pod_obj = fields
    cdef str pod = pod_obj
    cdef size_t n = <size_t>cnp.PyArray_DIM(<cnp.ndarray>engine_arr, 0)
    cdef const uint64_t* engines = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>engine_arr)
    cdef Ctx* c
    cdef uint32_t pid
    cdef vector[pair[uint32_t, PodStatePtr]] targets
    cdef PodMap.iterator found
    self.n[N_REMOVED_EVENTS] += 1
    c = self._find_ctx(model, lora)
    if c == NULL:
        return 0
    if len(pod):
        pid = self._pod_id(pod)
        if pid != NO_POD:
            found = c.pods.find(pid)
            if found != c.pods.end():
                deref(found).second.last_seen = now
                targets.push_back(pair[uint32_t, PodStatePtr](deref(found).first, deref(found).second))
    else:  # SPEC 2: an empty source_pod removes the blocks for every pod that reported them
        targets.reserve(c.pods.size())
        found = c.pods.begin()
        while found != c.pods.end():
            targets.push_back(pair[uint32_t, PodStatePtr](deref(found).first, deref(found).second))
            inc(found)
    self.n[N_BLOCKS_REMOVED] += _remove_blocks(self, c, &targets, engines, n)
    self._drop_if_empty(c)
    return 0

cdef uint64_t _remove_blocks(SyncPrefixHashTable self, Ctx* c, vector[pair[uint32_t, PodStatePtr]]* targets,
                             const uint64_t* engines, size_t n) except? 0xFFFFFFFFFFFFFFFF:
    """Each target pod's entries for the blocks, REMOVE_CHUNK blocks at a time: the chunk's engine hashes
    found and erased, then the entries they named dropped (in the blocks' order). In a map that may be
    out of the caches the chunk's engine buckets are touched before their finds and erases, and then
    the buckets of the prefixes found, so that the misses of a chunk overlap (as a store's do: _place)."""
    cdef uint64_t prefixes[REMOVE_CHUNK]
    cdef uint64_t removed = 0
    cdef size_t i, j, k, t, found
    cdef uint32_t pid
    cdef PodState* ps
    cdef bint cold
    cdef EngineMap.iterator eit
    for t in range(targets.size()):
        pid = deref(targets)[t].first
        ps = deref(targets)[t].second
        cold = n > 1 and ps.engine.size() >= TOUCH_BUCKETS_FROM
        i = 0
        while i < n:
            k = n - i if n - i < REMOVE_CHUNK else REMOVE_CHUNK
            if rarely(cold):
                touch_for_updates(ps.engine, engines + i, k)
            found = 0
            for j in range(k):
                eit = ps.engine.find(engines[i + j])
                if eit != ps.engine.end():
                    prefixes[found] = deref(eit).second
                    found += 1
                    ps.engine.erase(eit)
            if rarely(cold and c.prefixes.size() >= TOUCH_BUCKETS_FROM):
                touch_for_updates(c.prefixes, prefixes, found)
            for j in range(found):
                removed += _drop_entry(self, c, prefixes[j], pid, ps)
            i += k
        if ps.held == 0:
            c.pods.erase(pid)
            self._delete_pod_state(ps, pid)
    return removed


cdef int _apply_cleared(SyncPrefixHashTable self, tuple fields) except -1:
    pod, model, lora = fields
    cdef uint32_t pid
    cdef Ctx* c
    cdef vector[CtxPtr] hit
    self.n[N_CLEARED_EVENTS] += 1
    pid = self._pod_id(pod)
    if pid == NO_POD:
        return 0
    c = self.oldest
    while c != NULL:
        if c.pods.count(pid) and (model is None or (<tuple>c.key)[0] == model) \
                and (lora is None or (<tuple>c.key)[1] == lora):
            hit.push_back(c)
        c = c.newer
    for c in hit:
        _drop_pod(self, c, pid)
        self._drop_if_empty(c)
    return 0


cdef int _process_events(SyncPrefixHashTable self, events) except -1:
    """process_events: read and check every event first (a bad one is an error naming its position, and
    nothing is applied), then apply them in order in one section."""
    batch = batch_list(events)
    cdef list checked = []
    cdef _Stored ev
    cdef Py_ssize_t i
    cdef size_t longest = 0
    for i in range(len(batch)):
        event = batch[i]
        t = type(event)
        if t is BlockStoredType or (t is not BlockRemovedType and t is not AllBlocksClearedType
                                    and isinstance(event, BlockStoredType)):
            ev = _Stored.__new__(_Stored)
            try:
                ev.read(event, self.block_bytes, self.block_size)
            except (TypeError, ValueError) as exc:  # the shared validator's error, positioned
                raise type(exc)(f"events[{i}]: {exc}") from None  # (as batch_event_fields words it)
            if ev.n > longest:
                longest = ev.n
            checked.append(ev)
        elif t is BlockRemovedType or isinstance(event, BlockRemovedType):
            try:
                checked.append(_removed(event))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"events[{i}]: {exc}") from None
        else:
            checked.append(batch_event_fields(i, event, self.block_size)[1])  # cleared, or the error
    cdef double now = self._now()
    cdef vector[uint64_t] hashes
    hashes.resize(longest)
    cdef uint64_t parent = 0
    self._begin()
    try:
        for item in checked:
            if type(item) is _Stored:
                self.n[N_STORED_EVENTS] += 1
                _apply_stored(self, <_Stored>item, now, hashes.data(), NOW, &parent)
            elif len(<tuple>item) == 4:
                _apply_removed(self, <tuple>item, now)
            else:
                _apply_cleared(self, <tuple>item)
    finally:
        self._end()
    return 0
