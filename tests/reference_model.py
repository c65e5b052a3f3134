"""An independent reference model of the index, limits and time included, for test_reference_model.py.

Written from SPEC (docs/spec.md) and docs/decisions.md only, never from either backend: dicts and sets,
an OrderedDict for the context recency, one integer tick per prefix, hashes by ``xxhash`` directly.
It is slow and obviously correct rather than fast. Compared with tests/test_model.py's model it also
holds the bounds (SPEC 5, D4, D5), time and staleness (SPEC 6, D6), the engine-hash maps with their
stale aliases (D3), and what a load with smaller bounds does (docs/spec.md, "Snapshots").

The model takes values already valid: engine hashes as ints, bytes or numpy integers, tokens as token
bytes (helpers.id_bytes). The driver applies a call to the model only when the table accepted it (a
refused call changes nothing, SPEC 8, which the driver checks by comparing the whole state after it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Set, Tuple

from helpers import STAT_KEYS, U64, ref_chain

COUNTERS = STAT_KEYS[4:]   # the running totals of D9 (the first four are sizes, computed)


def engine_value(v) -> int:
    """An engine hash as the index reads it: bytes by their last 8, big-endian; integers modulo 2**64
    (so -1 is 2**64-1); numpy integers as their value (D1)."""
    if isinstance(v, (bytes, bytearray)):
        return int.from_bytes(bytes(v[-8:]), "big")
    return int(v) % U64


class Context:
    """One (model, lora) context: prefix -> [tick, pods], pod -> its state (engine map, last seen)."""

    def __init__(self, now: float) -> None:
        self.prefixes: Dict[int, list] = {}     # prefix hash -> [tick, set of pods]
        self.pods: Dict[str, dict] = {}         # pod -> {"engine": {engine hash: prefix}, "seen": time}
        self.last_access = now
        self.tick = 0                           # the next tick to give (D4: unique within the context)


class Model:
    def __init__(self, seed: int, block_size: int, max_contexts: int, max_prefixes: int,
                 stale_after: float) -> None:
        self.seed, self.bs = seed, block_size
        self.max_contexts, self.max_prefixes, self.stale = max_contexts, max_prefixes, stale_after
        self.ctxs: "OrderedDict[Tuple[str, int], Context]" = OrderedDict()  # least recently used first
        self.c = dict.fromkeys(COUNTERS, 0)

    # -- the chain (SPEC, "The prefix hash chain") -------------------------------------------------

    def chain(self, data: bytes, parent: Optional[int] = None) -> List[int]:
        """h[-1] = parent (the seed by default); h[i] = XXH64(le_u64(h[i-1]) || block i, seed), with
        xxhash directly (helpers.ref_chain): the index's own hashing is not taken on trust."""
        return ref_chain(data, 4 * self.bs, self.seed, parent)

    # -- entries -------------------------------------------------------------------------------------

    @staticmethod
    def holds(ctx: Context, pod: str, p: int) -> bool:
        e = ctx.prefixes.get(p)
        return e is not None and pod in e[1]

    @staticmethod
    def held_by(ctx: Context, pod: str) -> Set[int]:
        return {p for p, e in ctx.prefixes.items() if pod in e[1]}

    @staticmethod
    def drop_entry(ctx: Context, p: int, pod: str) -> int:
        e = ctx.prefixes.get(p)
        if e is None or pod not in e[1]:
            return 0
        e[1].discard(pod)
        if not e[1]:
            del ctx.prefixes[p]
        return 1

    def tidy(self, key) -> None:
        """D2: a pod state lives while its pod holds an entry there, a context while it holds one."""
        ctx = self.ctxs.get(key)
        if ctx is None:
            return
        for pod in list(ctx.pods):
            if not self.held_by(ctx, pod):
                del ctx.pods[pod]
        if not ctx.prefixes:
            del self.ctxs[key]

    def use_context(self, key, now: float) -> Context:
        """D5: a use makes the context the most recent; making one at the bound drops the oldest first."""
        ctx = self.ctxs.get(key)
        if ctx is None:
            if len(self.ctxs) >= self.max_contexts:
                self.ctxs.popitem(last=False)
                self.c["evicted_contexts"] += 1
            ctx = self.ctxs[key] = Context(now)
        else:
            self.ctxs.move_to_end(key)
            ctx.last_access = now
        return ctx

    def place(self, ctx: Context, pod: str, hashes: List[int], engines: Optional[List[int]]) -> None:
        """Place a chain for a pod: fresh ticks running backwards along it, block 0 the newest (D4);
        an engine hash the pod holds for other content drops that entry first (D3); then the bound."""
        ps = ctx.pods.setdefault(pod, {"engine": {}, "seen": None})
        n = len(hashes)
        base = ctx.tick
        ctx.tick += n
        for i, p in enumerate(hashes):
            if engines is not None:
                e = engines[i]
                old = ps["engine"].get(e)
                if old is not None and old != p and self.holds(ctx, pod, old):
                    self.drop_entry(ctx, old, pod)
                ps["engine"][e] = p
            entry = ctx.prefixes.setdefault(p, [0, set()])
            entry[1].add(pod)
            entry[0] = base + n - 1 - i
        if len(ctx.prefixes) > self.max_prefixes:
            self.trim(ctx)

    def trim(self, ctx: Context) -> None:
        """D4: oldest ticks first, down to max - max//4; then D2 for pod states and D3's "Memory": each
        pod state forgets the engine hashes of prefixes it no longer holds."""
        target = self.max_prefixes - self.max_prefixes // 4
        order = sorted(ctx.prefixes, key=lambda p: ctx.prefixes[p][0])
        k = len(ctx.prefixes) - target
        for p in order[:k]:
            del ctx.prefixes[p]
        self.c["evicted_prefixes"] += k
        for pod in list(ctx.pods):
            held = self.held_by(ctx, pod)
            if not held:
                del ctx.pods[pod]
            else:
                ps = ctx.pods[pod]
                ps["engine"] = {e: p for e, p in ps["engine"].items() if p in held}

    def drop_pod(self, key, pod: str) -> None:
        ctx = self.ctxs[key]
        for p in list(ctx.prefixes):
            self.drop_entry(ctx, p, pod)
        ctx.pods.pop(pod, None)
        self.tidy(key)

    # -- the API -------------------------------------------------------------------------------------

    def store(self, engines, data: bytes, model: str, lora: int, pod: str, parent, now: float) -> None:
        """SPEC 1, D3: a parent is known only while the same pod holds its prefix in this context;
        otherwise every block is an orphan. A store refreshes the pod's state even when it places
        nothing (D6), and an empty one creates no context (D2)."""
        engines = [engine_value(e) for e in engines]
        n = len(engines)
        key = (model, lora)
        self.c["events_block_stored"] += 1
        ctx = self.ctxs.get(key)
        ps = ctx.pods.get(pod) if ctx else None
        if ps is not None:
            ps["seen"] = now
        start = None
        if parent is not None:
            p = ps["engine"].get(engine_value(parent)) if ps else None
            if p is None or not self.holds(ctx, pod, p):
                self.c["orphan_blocks"] += n
                return
            start = p
        if n == 0:
            return
        hashes = self.chain(data, start)
        assert len(hashes) == n, "the driver gave the model tokens of another length"
        ctx = self.use_context(key, now)
        self.place(ctx, pod, hashes, engines)
        if pod in ctx.pods:  # (a trim may have taken everything the pod held)
            ctx.pods[pod]["seen"] = now
        self.c["blocks_stored"] += n

    def remove(self, engines, model: str, lora: int, pod: str, now: float) -> None:
        """SPEC 2, D3: per pod, or for every pod with "" (which refreshes nobody, D6)."""
        engines = [engine_value(e) for e in engines]
        key = (model, lora)
        self.c["events_block_removed"] += 1
        ctx = self.ctxs.get(key)
        if ctx is None:
            return
        if pod:
            targets = [pod] if pod in ctx.pods else []
            if targets:
                ctx.pods[pod]["seen"] = now
        else:
            targets = list(ctx.pods)
        for q in targets:
            eng = ctx.pods[q]["engine"]
            for e in engines:
                p = eng.pop(e, None)
                if p is not None:
                    self.c["blocks_removed"] += self.drop_entry(ctx, p, q)
        self.tidy(key)

    def clear(self, pod: str, model: Optional[str], lora: Optional[int]) -> None:
        """SPEC 3, D8: model and lora are filters, None matching anything."""
        self.c["events_all_blocks_cleared"] += 1
        for key in list(self.ctxs):
            if (model is None or key[0] == model) and (lora is None or key[1] == lora):
                self.drop_pod(key, pod)

    def add_prefix(self, model: str, lora: int, pod: str, hashes, now: float) -> None:
        """D3: places entries without engine hashes; refreshes the pod (D6)."""
        hashes = [int(h) % U64 for h in hashes]
        if not hashes:
            return
        ctx = self.use_context((model, lora), now)
        self.place(ctx, pod, hashes, None)
        if pod in ctx.pods:
            ctx.pods[pod]["seen"] = now

    def remove_prefix(self, model: str, lora: int, pod: str) -> None:
        """D8: the pod leaves every prefix of that one context; not an event."""
        if (model, lora) in self.ctxs:
            self.drop_pod((model, lora), pod)

    def match(self, model: str, lora: int, data: bytes, ready, now: float):
        """SPEC 4, D7: -> ({pod: blocks}, prefix hashes). A match on an existing context uses it (D5,
        D6), even one shorter than a block, and gives blocks 0..depth-1 fresh ticks (D4)."""
        self.c["matches"] += 1
        hashes = self.chain(data)
        key = (model, lora)
        ctx = self.ctxs.get(key)
        if ctx is None:
            return {}, hashes
        self.ctxs.move_to_end(key)
        ctx.last_access = now
        result = {}
        pods = set(ctx.pods) if ready is None else set(ctx.pods) & set(ready)
        for q in pods:
            m = 0
            while m < len(hashes) and self.holds(ctx, q, hashes[m]):
                m += 1
            if m:
                result[q] = m
        depth = max(result.values(), default=0)
        base = ctx.tick
        ctx.tick += depth
        for i in range(depth):
            ctx.prefixes[hashes[i]][0] = base + depth - 1 - i
        return result, hashes

    def evict_now(self, now: float) -> dict:
        """SPEC 6, D6: contexts idle for more than the duration, then pods; a context that its pods'
        eviction empties goes too, but counts as evicted pods only."""
        nc = npods = 0
        for key in list(self.ctxs):
            ctx = self.ctxs[key]
            if now - ctx.last_access > self.stale:
                del self.ctxs[key]
                nc += 1
                continue
            for pod in [q for q, ps in ctx.pods.items() if now - ps["seen"] > self.stale]:
                self.drop_pod(key, pod)
                npods += 1
                if key not in self.ctxs:
                    break
        self.c["evicted_contexts"] += nc
        self.c["evicted_pods"] += npods
        return {"contexts": nc, "pods": npods}

    def set_next_tick(self, key, value: int) -> None:
        """What _debug_set_next_tick does, for a value no smaller than the counter (order is kept)."""
        assert value >= self.ctxs[key].tick, "moving a tick counter backwards gives duplicate ticks"
        self.ctxs[key].tick = value

    def reload(self, max_contexts: Optional[int], max_prefixes: Optional[int]) -> None:
        """load(): ticks renumbered 0..n-1 in their order, idle times kept, and a smaller bound trims as
        a store would (docs/spec.md, "Snapshots"): the oldest contexts go, then each context is trimmed."""
        for ctx in self.ctxs.values():
            for i, p in enumerate(sorted(ctx.prefixes, key=lambda q: ctx.prefixes[q][0])):
                ctx.prefixes[p][0] = i
            ctx.tick = len(ctx.prefixes)
        if max_contexts is not None:
            self.max_contexts = max_contexts
        if max_prefixes is not None:
            self.max_prefixes = max_prefixes
        while len(self.ctxs) > self.max_contexts:
            self.ctxs.popitem(last=False)
            self.c["evicted_contexts"] += 1
        for ctx in self.ctxs.values():
            if len(ctx.prefixes) > self.max_prefixes:
                self.trim(ctx)

    # -- what the table shows -----------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {k: {p: frozenset(e[1]) for p, e in c.prefixes.items()} for k, c in self.ctxs.items()}

    def stats(self) -> dict:
        pods: Set[str] = set()
        prefixes = entries = 0
        for c in self.ctxs.values():
            prefixes += len(c.prefixes)
            for e in c.prefixes.values():
                entries += len(e[1])
                pods |= e[1]
        out = {"contexts": len(self.ctxs), "prefixes": prefixes, "entries": entries, "pods": len(pods)}
        out.update(self.c)
        return out

    def prefix_order(self, key) -> List[int]:
        """The context's prefixes, oldest tick first (the order _export_state gives)."""
        c = self.ctxs[key]
        return sorted(c.prefixes, key=lambda p: c.prefixes[p][0])
