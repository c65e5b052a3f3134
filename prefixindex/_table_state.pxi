# The snapshot state of the compiled table (docs/snapshot.md), included by _core.pyx after _table.pxi:
# module functions on the table's C fields, so that the table's own file stays about its operations.


cdef dict _export_state(SyncPrefixHashTable self, double now):
    """SyncPrefixHashTable._export_state: the table's state at `now`.

    Each context is copied in a critical section of its own, and other threads get the GIL between two
    (a million entries take ~0.15 s to copy): matches and events go on during a save, and every
    context is saved as one consistent moment (never half an event). The contexts come in the
    recency order of the save's start; one evicted meanwhile is left out, one made meanwhile is not
    in it yet (docs/snapshot.md, "Saving while the table is in use")."""
    cdef Ctx* c
    cdef vector[uint32_t] index_of  # pod id -> its index in a context's sorted pod names (NO_POD after)
    contexts = []
    cdef GilOffers offers = _gil_offers()
    for model, lora in self._context_keys():
        self._begin_read()
        try:
            c = self._find_ctx(model, lora)
            if c != NULL:
                if index_of.size() < <size_t>len(self._pod_names):
                    index_of.resize(len(self._pod_names), NO_POD)
                contexts.append(_export_context(self, c, now, &index_of))
        finally:
            self._end()
        _offer_gil(&offers)  # between contexts
    self._begin_read()
    try:
        counters = {COUNTER_KEYS[i]: self.n[i] for i in range(N_COUNTERS)}
    finally:
        self._end()
    return {"config": self.config, "counters": counters, "contexts": contexts}


cdef dict _export_context(SyncPrefixHashTable self, Ctx* c, double now, vector[uint32_t]* index_of):
    """One context's part of the state, in the caller's section."""
    cdef PrefixMap.iterator it
    cdef PodMap.iterator pit
    cdef EngineMap.iterator eit
    # (tick, (prefix hash, entry)), sorted: the recency order, with each entry at hand (never probed)
    cdef vector[pair[uint32_t, pair[uint64_t, EntryPtr]]] order
    cdef vector[pair[uint64_t, uint64_t]] engine
    cdef vector[uint32_t] members
    cdef size_t i, j, k, total
    cdef Entry* e
    cdef vector[uint32_t]* v
    cdef cnp.npy_intp dim
    cdef uint64_t[::1] prefix_out, keys_out, values_out
    cdef uint32_t[::1] count_out, pods_out
    cdef double[::1] idle_out
    order.clear()
    order.reserve(c.prefixes.size())
    it = c.prefixes.begin()
    while it != c.prefixes.end():  # ticks are unique in a context: the sort is by tick alone
        order.push_back(pair[uint32_t, pair[uint64_t, EntryPtr]](
            deref(it).second.tick, pair[uint64_t, EntryPtr](deref(it).first, &deref(it).second)))
        inc(it)
    sort(order.begin(), order.end())
    ids = []
    pit = c.pods.begin()
    while pit != c.pods.end():
        ids.append(deref(pit).first)
        inc(pit)
    ids.sort(key=lambda pid: self._pod_names[pid])
    names = [self._pod_names[pid] for pid in ids]
    for i in range(len(ids)):
        deref(index_of)[<uint32_t>ids[i]] = <uint32_t>i
    dim = order.size()
    prefixes = np.empty(dim, dtype=np.uint64)
    counts = np.empty(dim, dtype=np.uint32)
    prefix_out, count_out = prefixes, counts
    total = 0
    for i in range(order.size()):
        e = order[i].second.second
        prefix_out[i] = order[i].second.first
        count_out[i] = <uint32_t>pod_list(c, e.pods).size() if is_multi(e.pods) else 1
        total += count_out[i]
    entry_pods = np.empty(total, dtype=np.uint32)
    pods_out = entry_pods
    k = 0
    for i in range(order.size()):
        e = order[i].second.second
        members.clear()
        if is_multi(e.pods):
            v = pod_list(c, e.pods)
            for j in range(v.size()):
                members.push_back(deref(index_of)[deref(v)[j]])
        else:
            members.push_back(deref(index_of)[e.pods])
        sort(members.begin(), members.end())
        for j in range(members.size()):
            pods_out[k] = members[j]
            k += 1
    pod_idle = np.empty(len(ids), dtype=np.float64)
    idle_out = pod_idle
    engines = []
    for i in range(len(ids)):
        pit = c.pods.find(<uint32_t>ids[i])
        idle_out[i] = now - deref(pit).second.last_seen
        engine.clear()
        eit = deref(pit).second.engine.begin()
        while eit != deref(pit).second.engine.end():
            engine.push_back(pair[uint64_t, uint64_t](deref(eit).first, deref(eit).second))
            inc(eit)
        sort(engine.begin(), engine.end())
        dim = engine.size()
        keys = np.empty(dim, dtype=np.uint64)
        values = np.empty(dim, dtype=np.uint64)
        keys_out, values_out = keys, values
        for j in range(engine.size()):
            keys_out[j] = engine[j].first
            values_out[j] = engine[j].second
        engines.append((keys, values))
    for i in range(len(ids)):
        deref(index_of)[<uint32_t>ids[i]] = NO_POD
    model, lora = <object>c.key
    return {"model": model, "lora": lora, "idle": now - c.last_access, "prefixes": prefixes,
            "pods": names, "pod_idle": pod_idle, "entry_pod_counts": counts,
            "entry_pods": entry_pods, "engine": engines}


cdef int _load_state(SyncPrefixHashTable self, dict state, double now) except -1:
    """SyncPrefixHashTable._from_state's work: fill a new, empty table, in one critical section.

    Every name is checked and every number read before the section: the checks are Python code, which
    may hand the GIL to another thread (the new table's own eviction thread among them), and such a
    thread must never find the section open (SPEC 7; the eviction passes failed while a large load ran)."""
    cdef Ctx* c
    cdef PodState* ps
    cdef const uint64_t[::1] prefixes, keys, values
    cdef const uint32_t[::1] counts, entry_pods
    cdef const double[::1] pod_idle
    cdef vector[uint32_t] pids, members
    cdef size_t i, j, k, n, n_pods
    cdef Entry fresh
    cdef pair[PrefixMap.iterator, bint] inserted
    cdef vector[uint32_t] mine
    cdef uint64_t counted[N_COUNTERS]
    cdef double idle
    counters = state["counters"]
    for i in range(N_COUNTERS):
        counted[i] = counters[COUNTER_KEYS[i]]
    cdef list checked = []  # per context: (model, lora, pod names, idle seconds, the context's dict)
    for ctx in state["contexts"]:
        checked.append((check_str(ctx["model"], "model"), check_lora_id(ctx["lora"]),
                        [check_pod(name, "pod") for name in ctx["pods"]], float(ctx["idle"]), ctx))
    self._begin()
    try:
        for i in range(N_COUNTERS):
            self.n[i] = counted[i]
        for model, lora, names, idle, ctx in checked:
            prefixes, counts, entry_pods = ctx["prefixes"], ctx["entry_pod_counts"], ctx["entry_pods"]
            pod_idle = ctx["pod_idle"]
            n, n_pods = prefixes.shape[0], len(names)
            # the facts the loops below rely on (the format checks more; this keeps memory safe)
            if counts.shape[0] != n or pod_idle.shape[0] != n_pods or len(ctx["engine"]) != n_pods:
                raise ValueError("snapshot state: a context's arrays disagree in length")
            if self._find_ctx(model, lora) != NULL:
                raise ValueError(f"snapshot state: context {(model, lora)!r} appears twice")
            c = self._new_ctx(model, lora, now - idle)
            pids.clear()
            for i in range(n_pods):
                pids.push_back(self._intern(names[i]))
                ps = self._new_pod_state(c, pids[i], now - pod_idle[i])
                keys, values = ctx["engine"][i]
                if keys.shape[0] != values.shape[0]:
                    raise ValueError("snapshot state: an engine map's keys and values disagree in length")
                ps.engine.reserve(keys.shape[0])
                for j in range(<size_t>keys.shape[0]):
                    ps.engine.try_emplace(keys[j], values[j])
            k = 0
            c.prefixes.reserve(n)
            for i in range(n):
                if counts[i] == 0 or counts[i] > n_pods or k + counts[i] > <size_t>entry_pods.shape[0]:
                    raise ValueError("snapshot state: an entry's pods are out of range")
                members.clear()
                for j in range(counts[i]):
                    if entry_pods[k] >= n_pods:
                        raise ValueError("snapshot state: an entry names a pod the context does not have")
                    members.push_back(pids[entry_pods[k]])
                    deref(c.pods.find(pids[entry_pods[k]])).second.held += 1
                    k += 1
                sort(members.begin(), members.end())
                fresh.tick = <uint32_t>i
                if members.size() == 1:
                    fresh.pods = members[0]
                else:
                    mine.assign(members.begin(), members.end())
                    c.multi_free.reserve(c.multi.size() + 1)
                    c.multi.push_back(mine)
                    fresh.pods = kMulti | <uint32_t>(c.multi.size() - 1)
                inserted = c.prefixes.try_emplace(prefixes[i], fresh)
                if not inserted.second:
                    raise ValueError("snapshot state: a prefix appears twice in a context")
            if k != <size_t>entry_pods.shape[0]:
                raise ValueError("snapshot state: entry_pods has more pods than the entries name")
            c.next_tick = n
            if c.prefixes.size() > self.max_prefixes:
                _trim(self, c)
            self._drop_if_empty(c)
    finally:
        self._end()
    return 0
