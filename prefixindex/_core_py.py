"""The pure-Python backend: the reference implementation of SPEC.md.

It is written to be obviously right rather than fast; the compiled backend (``_core.pyx``) must give
identical results for identical calls, and the differential tests hold it to that. The rules that SPEC
leaves open are decided in docs/decisions.md; the comments below point there as "D<n>".

Structure (docs/architecture.md):
    table._contexts: OrderedDict[(model, lora_id)] -> _Context, least recently used first
    _Context.prefixes: prefix hash -> _Prefix(tick, pods)
    _Context.pods:     pod name -> _PodState(engine: engine hash -> prefix hash, held: prefix hashes, last_seen)
One lock per table guards all of it (_TableLock, in _core_py_lock): a call that re-enters the table from Python code
run inside a critical section (a finalizer, say) is a RuntimeError, never a deadlock (SPEC 7).
Callbacks of the caller's (the clock, a ready_pods iterator) run before the lock is taken.
"""

from __future__ import annotations

import heapq
import struct
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import numpy as np
import xxhash

from ._config import COUNTER_KEYS, REINIT_MESSAGE, Config, resolve_config, table_settings
from ._core_py_lock import _TableLock, _Unbuilt
from ._eviction import EvictionThread
from ._events import (AllBlocksCleared, BlockRemoved, BlockStored, batch_event_fields, batch_list, check_chain_args,
                      check_lora_id, check_pod, check_str, check_u64, cleared_fields, hash_array, query_token_bytes,
                      ready_set, removed_fields, stored_fields)

__all__ = ["BACKEND", "SOURCE_HASH", "SyncPrefixHashTable", "prefix_hash_chain", "read_plain_batch",
           "token_bytes_from_msgpack", "xxh64_digest"]

BACKEND = "python"
SOURCE_HASH = None  # the compiled core's records the sources it was built from

_pack_u64 = struct.Struct("<Q").pack
_xxh64 = xxhash.xxh64_intdigest


def xxh64_digest(data: Any, seed: int = 0) -> int:
    """XXH64 of a bytes-like object (the xxhash package's)."""
    value = check_u64(seed, "seed")  # the seed first, as the compiled core checks it
    return _xxh64(memoryview(data).cast("B"), value)


def prefix_hash_chain(data: Any, block_bytes: int, seed: int, parent: int, n_blocks: int) -> List[int]:
    """h[i] = XXH64(le_u64(h[i-1]) || block i, seed), h[-1] = parent (SPEC, prefix hash chain)."""
    view = memoryview(data).cast("B")
    check_chain_args(len(view), block_bytes, seed, parent, n_blocks)
    out = []
    h = parent
    for i in range(n_blocks):
        h = _xxh64(_pack_u64(h) + view[i * block_bytes:(i + 1) * block_bytes], seed)
        out.append(h)
    return out


def read_plain_batch(payload: Any, model: str, pod: str, block_size: int, mediums: Any,
                     removals: bool) -> None:
    """The compiled backend reads a plain batch of vLLM events in one pass (docs/vllm.md, V13). This
    backend has no such reader: None, always, which sends every batch to the subscriber's general path
    (msgspec's typed decoders, the fastest way to read a batch from Python)."""
    return None


_token_ids_decoder = None


def token_bytes_from_msgpack(raw: Any) -> np.ndarray:
    """A msgpack-encoded array of token ids (as vLLM sends ``token_ids``) as flat token bytes.

    The compiled backend parses the msgpack bytes without making a Python object per token, and defers
    to this function for the error whenever the input is not a well-formed array of token ids.
    """
    import msgspec  # optional dependency: only the vLLM subscriber calls this

    raw = memoryview(raw).cast("B")  # what the compiled backend reads, with the same errors
    global _token_ids_decoder
    if _token_ids_decoder is None:
        _token_ids_decoder = msgspec.msgpack.Decoder(List[int])
    try:  # the common case, vectorised: typed decode, one range check
        ids = np.array(_token_ids_decoder.decode(raw), dtype=np.int64)
        if not ids.size or (ids.min() >= 0 and ids.max() < 1 << 32):
            return ids.astype(">u4").view(np.uint8)
    except (msgspec.DecodeError, OverflowError):
        pass
    # Anything else is an error: find and word it element by element.
    try:
        values = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        raise ValueError("token_ids is not valid msgpack") from None
    if not isinstance(values, list):
        raise TypeError("token_ids must be a msgpack array of ints")
    for i, v in enumerate(values):
        if type(v) is not int:
            raise TypeError(f"token_ids must hold ints, got a non-integer at index {i}")
        if not 0 <= v < 1 << 32:
            raise ValueError(f"token_ids: token ids must be in [0, 2**32), got {v} at index {i}")
    raise AssertionError("unreachable: a valid array of token ids took the slow path")


def _float_clock(clock: Callable[[], Any]) -> Callable[[], float]:
    """A clock= whose readings are taken as float(), as the compiled core takes them: a reading that is
    not a number is its TypeError or ValueError before the call changes anything (SPEC 8)."""
    def read() -> float:
        return float(clock())
    return read


class _Prefix:
    __slots__ = ("tick", "pods")

    def __init__(self) -> None:
        self.tick = 0
        self.pods: Set[str] = set()


class _PodState:
    __slots__ = ("engine", "held", "last_seen")

    def __init__(self, now: float) -> None:
        # engine block hash -> prefix hash. May name prefixes the pod no longer holds (an alias whose
        # entry was removed through another engine hash); such a hash counts as unknown (D3).
        self.engine: Dict[int, int] = {}
        self.held: Set[int] = set()
        self.last_seen = now


class _Context:
    __slots__ = ("prefixes", "pods", "last_access", "next_tick")

    def __init__(self, now: float) -> None:
        self.prefixes: Dict[int, _Prefix] = {}
        self.pods: Dict[str, _PodState] = {}
        self.last_access = now
        self.next_tick = 0


class SyncPrefixHashTable:
    """Context (model, LoRA) -> prefix hash -> pods, fed by KV-cache events and asked for prefix matches."""

    _lock: Any = _Unbuilt()
    _building = False

    def __init__(self, config: Optional[Config] = None, *, clock: Optional[Callable[[], float]] = None,
                 background_eviction: bool = True, **overrides: Any) -> None:
        if self._building or "_contexts" in self.__dict__:
            raise RuntimeError(REINIT_MESSAGE)
        self._building = True  # a re-entrant __init__ (from a callback of the config) sees it
        try:
            config = resolve_config(config, overrides)
            settings = table_settings(config)  # whatever the config's class: it may have skipped validation
        except BaseException:
            self._building = False
            raise
        self.config: Config = config
        self.seed: int = settings.seed
        self.block_size: int = settings.block_size
        self._block_bytes = 4 * settings.block_size
        self._max_contexts = settings.max_contexts
        self._max_prefixes = settings.max_prefixes
        self._stale_after = settings.stale_after
        self._clock = time.monotonic if clock is None or clock is time.monotonic else _float_clock(clock)
        self._contexts: "OrderedDict[Tuple[str, int], _Context]" = OrderedDict()
        self._counters = dict.fromkeys(COUNTER_KEYS, 0)
        self._lock = _TableLock()
        self._eviction: Optional[EvictionThread] = None
        if background_eviction:
            self._eviction = EvictionThread(self, settings.interval)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background eviction thread (idempotent). The table stays usable."""
        if self._eviction is not None:
            self._eviction.stop()
            self._eviction = None

    def __enter__(self) -> "SyncPrefixHashTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def eviction_thread_alive(self) -> bool:
        return self._eviction is not None and self._eviction.alive

    # -- hashing -----------------------------------------------------------------------------------

    def get_prefix_hashes(self, tokens: Any) -> np.ndarray:
        """The query's prefix hashes (SPEC, "The prefix hash chain"), one per whole block."""
        data = query_token_bytes(tokens)
        n = len(data) // self._block_bytes
        return np.array(prefix_hash_chain(data, self._block_bytes, self.seed, self.seed, n), dtype=np.uint64)

    # -- events ------------------------------------------------------------------------------------

    def process_block_stored(self, event: BlockStored) -> None:
        """Index the event's chained blocks for its pod (SPEC 1); an unknown parent is an orphan."""
        if not isinstance(event, BlockStored):
            raise TypeError(f"process_block_stored takes a BlockStored, not {type(event).__name__}")
        fields = stored_fields(event, self.block_size)
        now = self._clock()
        with self._lock:
            self._apply_stored(fields, now)

    def _apply_stored(self, fields: Tuple[Any, ...], now: float) -> None:
        engine_hashes, tokens, model, lora, pod, parent_engine = fields
        key = (model, lora)
        n = len(engine_hashes)
        self._counters["events_block_stored"] += 1
        ctx = self._contexts.get(key)
        ps = ctx.pods.get(pod) if ctx is not None else None
        if ps is not None:
            ps.last_seen = now  # any event from a pod shows it is alive in this context (D6)
        parent = self.seed
        if parent_engine is not None:
            known = ps.engine.get(parent_engine) if ps is not None else None
            if known is None or known not in ps.held:  # type: ignore[union-attr]
                # SPEC 1: an unknown parent cannot be placed; neither can any block chained after it
                self._counters["orphan_blocks"] += n
                return
            parent = known
        if n == 0:
            return
        hashes = prefix_hash_chain(tokens, self._block_bytes, self.seed, parent, n)
        ctx, ps = self._context_and_pod(key, pod, now)
        try:
            self._place(ctx, ps, pod, hashes, engine_hashes.tolist())
        except MemoryError:
            self._repair(key)
            raise
        self._counters["blocks_stored"] += n

    def process_block_removed(self, event: BlockRemoved) -> None:
        """Forget the event's blocks for its pod, or for every pod when source_pod is "" (SPEC 2)."""
        if not isinstance(event, BlockRemoved):
            raise TypeError(f"process_block_removed takes a BlockRemoved, not {type(event).__name__}")
        fields = removed_fields(event)
        now = self._clock()
        with self._lock:
            self._apply_removed(fields, now)

    def _apply_removed(self, fields: Tuple[Any, ...], now: float) -> None:
        engine_arr, model, lora, source_pod = fields
        key = (model, lora)
        engine_hashes = engine_arr.tolist()
        self._counters["events_block_removed"] += 1
        ctx = self._contexts.get(key)
        if ctx is None:
            return
        if source_pod:
            ps = ctx.pods.get(source_pod)
            targets = [] if ps is None else [(source_pod, ps)]
            if ps is not None:
                ps.last_seen = now
        else:  # SPEC 2: an empty source_pod removes the blocks for every pod that reported them
            targets = list(ctx.pods.items())
        removed = 0
        for pod, ps in targets:
            for e in engine_hashes:
                p = ps.engine.pop(e, None)
                if p is not None and p in ps.held:
                    self._drop_entry(ctx, p, pod, ps)
                    removed += 1
            if not ps.held:
                del ctx.pods[pod]
        self._counters["blocks_removed"] += removed
        self._drop_if_empty(key)

    def process_all_blocks_cleared(self, event: AllBlocksCleared) -> None:
        """Forget every entry of the pod, in the contexts the event names (SPEC 3)."""
        if not isinstance(event, AllBlocksCleared):
            raise TypeError(f"process_all_blocks_cleared takes an AllBlocksCleared, not {type(event).__name__}")
        fields = cleared_fields(event)
        with self._lock:
            self._apply_cleared(fields)

    def _apply_cleared(self, fields: Tuple[Any, ...]) -> None:
        pod, model, lora = fields
        self._counters["events_all_blocks_cleared"] += 1
        for key in [k for k in self._contexts if (model is None or k[0] == model) and (lora is None or k[1] == lora)]:
            self._drop_pod(self._contexts[key], pod)
            self._drop_if_empty(key)

    def process_events(self, events: Any) -> None:
        """Apply a sequence of BlockStored / BlockRemoved / AllBlocksCleared in order, as the three
        methods would one by one, under one lock. Every event is checked first: a bad one is an error
        naming its position, and nothing of the batch is applied."""
        checked = [batch_event_fields(i, event, self.block_size) for i, event in enumerate(batch_list(events))]
        now = self._clock()
        with self._lock:
            for kind, fields in checked:
                if kind == 0:
                    self._apply_stored(fields, now)
                elif kind == 1:
                    self._apply_removed(fields, now)
                else:
                    self._apply_cleared(fields)

    # -- direct prefix API (AIBrix's AddPrefix / RemovePrefix) ---------------------------------------

    def add_prefix(self, model_name: str, lora_id: int, pod: str, prefix_hashes: Any) -> None:
        """Record that ``pod`` holds these prefix hashes (as a router does after sending it a request)."""
        key = (check_str(model_name, "model_name"), check_lora_id(lora_id))
        pod = check_pod(pod, "pod")
        hashes = hash_array(prefix_hashes, "prefix_hashes").tolist()
        now = self._clock()
        if not hashes:
            return
        with self._lock:
            ctx, ps = self._context_and_pod(key, pod, now)
            try:
                self._place(ctx, ps, pod, hashes, None)
            except MemoryError:
                self._repair(key)
                raise

    def remove_prefix(self, model_name: str, lora_id: int, pod: str) -> None:
        """Forget every prefix ``pod`` holds in the context (AIBrix's RemovePrefix)."""
        key = (check_str(model_name, "model_name"), check_lora_id(lora_id))
        pod = check_pod(pod, "pod")
        with self._lock:
            if key in self._contexts:
                self._drop_pod(self._contexts[key], pod)
                self._drop_if_empty(key)

    # -- queries -----------------------------------------------------------------------------------

    def match_prefix(self, model_name: str, lora_id: int, tokens: Any,
                     ready_pods: Any = None) -> Tuple[Dict[str, int], np.ndarray]:
        """pod -> percent of the query's blocks it holds from block 0 on, and the query's prefix hashes."""
        key, hashes, ready, now = self._query(model_name, lora_id, tokens, ready_pods)
        matched = self._match(key, hashes, ready, now)
        n = len(hashes)
        return {pod: m * 100 // n for pod, m in matched.items()}, np.array(hashes, dtype=np.uint64)

    def match_blocks(self, model_name: str, lora_id: int, tokens: Any, ready_pods: Any = None) -> Dict[str, int]:
        """pod -> number of the query's blocks it holds from block 0 on."""
        key, hashes, ready, now = self._query(model_name, lora_id, tokens, ready_pods)
        return self._match(key, hashes, ready, now)

    def match(self, model_name: str, lora_id: int, tokens: Any,
              ready_pods: Any = None) -> Tuple[Dict[str, int], np.ndarray]:
        """pod -> number of the query's blocks it holds from block 0 on, and the query's prefix hashes:
        what match_blocks and match_prefix say, from one walk and one recency update."""
        key, hashes, ready, now = self._query(model_name, lora_id, tokens, ready_pods)
        return self._match(key, hashes, ready, now), np.array(hashes, dtype=np.uint64)

    def _query(self, model_name: Any, lora_id: Any, tokens: Any,
               ready_pods: Any) -> Tuple[Tuple[str, int], List[int], Optional[FrozenSet[str]], float]:
        # Everything that may run the caller's code comes before the lock: names, tokens, the clock
        # and then the ready_pods iterator (SPEC 7; the compiled core reads them in this order too, so
        # that a clock that changes the ready list is seen alike).
        key = (check_str(model_name, "model_name"), check_lora_id(lora_id))
        data = query_token_bytes(tokens)
        now = self._clock()
        ready = ready_set(ready_pods)
        n = len(data) // self._block_bytes
        return key, prefix_hash_chain(data, self._block_bytes, self.seed, self.seed, n), ready, now

    def _match(self, key: Tuple[str, int], hashes: List[int], ready: Optional[FrozenSet[str]],
               now: float) -> Dict[str, int]:
        with self._lock:
            self._counters["matches"] += 1
            ctx = self._contexts.get(key)
            if ctx is None:
                return {}
            ctx.last_access = now
            self._contexts.move_to_end(key)
            result: Dict[str, int] = {}
            alive: Set[str] = set()
            depth = 0
            for i, p in enumerate(hashes):
                entry = ctx.prefixes.get(p)
                holders = entry.pods if entry is not None else ()
                if i == 0:
                    alive = set(holders) if ready is None else set(ready.intersection(holders))
                else:
                    for pod in [q for q in alive if q not in holders]:
                        result[pod] = i  # SPEC 4: a pod's match ends at its first missing block
                        alive.discard(pod)
                if not alive:
                    break
                depth = i + 1
            for pod in alive:
                result[pod] = depth
            # The matched blocks were used just now; block 0 gets the newest tick (D4).
            tick = ctx.next_tick
            ctx.next_tick += depth
            for i in range(depth):
                ctx.prefixes[hashes[i]].tick = tick + depth - 1 - i
            return result

    # -- maintenance -------------------------------------------------------------------------------

    def evict_now(self) -> Dict[str, int]:
        """Run the staleness pass of SPEC 6 now; returns what it evicted."""
        now = self._clock()
        with self._lock:
            contexts = pods = 0
            for key in list(self._contexts):
                ctx = self._contexts[key]
                if now - ctx.last_access > self._stale_after:
                    del self._contexts[key]
                    contexts += 1
                    continue
                for pod in [name for name, ps in ctx.pods.items() if now - ps.last_seen > self._stale_after]:
                    self._drop_pod(ctx, pod)
                    pods += 1
                self._drop_if_empty(key)
            self._counters["evicted_contexts"] += contexts
            self._counters["evicted_pods"] += pods
            return {"contexts": contexts, "pods": pods}

    def stats(self) -> Dict[str, int]:
        """Sizes and running totals (STAT_KEYS): contexts, prefixes, entries, pods, events by kind, blocks
        stored/removed, orphan blocks, matches, and evicted contexts, pods and prefixes."""
        with self._lock:
            pods: Set[str] = set()
            prefixes = entries = 0
            for ctx in self._contexts.values():
                prefixes += len(ctx.prefixes)
                pods.update(ctx.pods)
                entries += sum(len(ps.held) for ps in ctx.pods.values())
            out = {"contexts": len(self._contexts), "prefixes": prefixes, "entries": entries, "pods": len(pods)}
            out.update(self._counters)
            return out

    def _debug_set_next_tick(self, model_name: str, lora_id: int, value: int) -> None:
        """Tests only: move a context's tick counter (the compiled core renumbers its 32-bit ticks)."""
        with self._lock:
            self._contexts[(model_name, lora_id)].next_tick = value

    def snapshot(self) -> Dict[Tuple[str, int], Dict[int, FrozenSet[str]]]:
        """Everything the index holds: {(model, lora_id): {prefix hash: frozenset(pods)}}."""
        with self._lock:
            return {key: {p: frozenset(e.pods) for p, e in ctx.prefixes.items()}
                    for key, ctx in self._contexts.items()}

    # -- internals (caller holds the lock) ---------------------------------------------------------

    def _context_and_pod(self, key: Tuple[str, int], pod: str, now: float) -> Tuple[_Context, _PodState]:
        ctx = self._contexts.get(key)
        if ctx is None:
            if len(self._contexts) >= self._max_contexts:
                self._contexts.popitem(last=False)  # SPEC 5: the least recently used context goes at once
                self._counters["evicted_contexts"] += 1
            ctx = self._contexts[key] = _Context(now)
        else:
            self._contexts.move_to_end(key)
            ctx.last_access = now
        ps = ctx.pods.get(pod)
        if ps is None:
            ps = ctx.pods[pod] = _PodState(now)
        ps.last_seen = now
        return ctx, ps

    def _place(self, ctx: _Context, ps: _PodState, pod: str, hashes: List[int],
               engine_hashes: Optional[List[int]]) -> None:
        n = len(hashes)
        tick = ctx.next_tick
        ctx.next_tick += n
        for i, p in enumerate(hashes):
            if engine_hashes is not None:
                e = engine_hashes[i]
                old = ps.engine.get(e)
                if old is not None and old != p and old in ps.held:
                    self._drop_entry(ctx, old, pod, ps)  # a known engine hash with new content: replace (D3)
                ps.engine[e] = p
            entry = ctx.prefixes.get(p)
            if entry is None:
                entry = ctx.prefixes[p] = _Prefix()
            if pod not in entry.pods:
                entry.pods.add(pod)
                ps.held.add(p)
            entry.tick = tick + n - 1 - i  # block 0 newest, so a trim drops the tails of chains first (D4)
        if len(ctx.prefixes) > self._max_prefixes:
            self._trim(ctx)

    def _trim(self, ctx: _Context) -> None:
        # SPEC 5: never above the bound; trim in a batch to 3/4 of it so that trims stay rare (D4).
        target = self._max_prefixes - self._max_prefixes // 4
        victims = heapq.nsmallest(len(ctx.prefixes) - target, ctx.prefixes.items(), key=lambda kv: kv[1].tick)
        for p, entry in victims:
            for pod in entry.pods:
                ctx.pods[pod].held.discard(p)
            del ctx.prefixes[p]
        self._counters["evicted_prefixes"] += len(victims)
        for pod in list(ctx.pods):
            ps = ctx.pods[pod]
            if not ps.held:
                del ctx.pods[pod]
            else:
                ps.engine = {e: p for e, p in ps.engine.items() if p in ps.held}

    def _drop_entry(self, ctx: _Context, p: int, pod: str, ps: _PodState) -> None:
        entry = ctx.prefixes[p]
        entry.pods.discard(pod)
        ps.held.discard(p)
        if not entry.pods:
            del ctx.prefixes[p]

    def _drop_pod(self, ctx: _Context, pod: str) -> None:
        ps = ctx.pods.pop(pod, None)
        if ps is not None:
            for p in ps.held:
                entry = ctx.prefixes[p]
                entry.pods.discard(pod)
                if not entry.pods:
                    del ctx.prefixes[p]

    def _drop_if_empty(self, key: Tuple[str, int]) -> None:
        if not self._contexts[key].prefixes:  # a context lives while it holds something (D2)
            del self._contexts[key]

    def _repair(self, key: Tuple[str, int]) -> None:
        """After a MemoryError part-way through a store: no empty entry, pod state or context is left."""
        ctx = self._contexts.get(key)
        if ctx is None:
            return
        for p in [p for p, e in ctx.prefixes.items() if not e.pods]:
            del ctx.prefixes[p]
        for pod in [pod for pod, ps in ctx.pods.items() if not ps.held]:
            del ctx.pods[pod]
        self._drop_if_empty(key)

    # -- snapshots ---------------------------------------------------------------------------------
    # save/load are thin wrappers: the format lives in _snapshot.py (docs/snapshot.md); the state the two
    # methods below exchange with it, in _core_py_state.py.

    def save(self, file: Any) -> None:
        """Write a snapshot of the index to a path (atomically) or to a binary stream (docs/snapshot.md)."""
        from . import _snapshot
        _snapshot.save_table(self, file)

    @classmethod
    def load(cls, file: Any, **overrides: Any) -> "SyncPrefixHashTable":
        """A new table from a snapshot (a path or a binary stream); ``overrides`` are the constructor's
        keywords. A bad snapshot is a ValueError that says what is wrong, and builds nothing."""
        from . import _snapshot
        return _snapshot.load_table(cls, file, overrides)

    def _export_state(self) -> Dict[str, Any]:
        """The canonical state of docs/snapshot.md ("The state of a table"). The lock is held only while
        copying; ordering and conversion to arrays happen after it is released, so matches and events
        wait no longer than the copy (issue 12, Deliver 2). The work is in _core_py_state.py."""
        from . import _core_py_state
        return _core_py_state.export_state(self)

    @classmethod
    def _from_state(cls, state: Dict[str, Any], *, clock: Optional[Callable[[], float]] = None,
                    background_eviction: bool = True, config: Config) -> "SyncPrefixHashTable":
        """A table holding exactly ``state`` (as checked by _snapshot.py): ticks 0..n-1 in the given
        order, contexts in the given recency order, idle times continued on this table's clock."""
        from . import _core_py_state
        table: SyncPrefixHashTable = _core_py_state.from_state(cls, state, clock, background_eviction, config)
        return table
