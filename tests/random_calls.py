"""Seeded random calls for the state-comparing tests (test_differential_state.py, test_reference_model.py).

``Calls(profile, seed, steps)`` is a generator of operations on a table, a port of the drivers of the core
semantics review (diff.py, diff2.py, diff3.py): every public call, with small pools of names, engine
hashes in every accepted form, token ids 0..2 (so that contents collide and chains share prefixes),
parents taken from earlier events (chains, orphans, aliases and engine hashes reused with new
content, D3), bad inputs, clock moves and save/load. Each sequence also holds, at random positions,
the rare things that the hypothesis tests never reach (tests/test_differential.py):

- an event and a query of 16 KiB of token bytes or more: the compiled core hashes and walks those
  without the GIL (SPEC 7, docs/architecture.md "Long walks");
- a tick counter moved forwards past 2**31 (``_debug_set_next_tick``) followed by a call that places
  or matches there: the compiled core renumbers its 32-bit ticks then; the fallback counts on. Only
  forwards: a counter moved backwards gives duplicate ticks, and so different trims, which no real call
  can do (the review's one false alarm);
- a save/load, often with smaller bounds, after which the sequence goes on;
- (profile "bulk") a context whose prefix map and one pod's engine map hold 256 entries or more when
  a multi-block store, a walk and a multi-block removal come: from TOUCH_BUCKETS_FROM = 256 entries
  the compiled core inserts, erases and walks another way (_entries.pxd, _map_internals.h).

Profiles: "limits" has small bounds (mostly 1..13 prefixes, 1..3 contexts), so that trims (D4) and context
evictions (D5) happen all the time; "bulk" has bounds of 300..5000 and many stores of 50-400 blocks
and removals of 17-140, so that large maps, trims of large contexts and cold paths are reached.

The generator keeps its own memory (recent events, token lists, its bounds) and never reads a table:
the same profile and seed give the same calls, whichever backend runs them. The one exception is
``tick_target``, which is given the counter to move forwards from.
"""

from __future__ import annotations

import io
import random
from typing import Any, List, Optional, Tuple

import numpy as np

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored

MODELS = ["m", "nn", "é"]
LORAS = [-1, 1, 123456789012345]
PODS = ["pod-a", "pod-b", "pod-c"]
LONG = 16384  # token bytes from which the compiled core hashes and walks without the GIL
COLD = 256    # TOUCH_BUCKETS_FROM (_entries.pxd)
ITERATOR = "iterator"  # a ready_pods given as a fresh iterator over these names to each table


def stored(engines, tokens, model, lora, pod, parent, ids):
    """(a BlockStored, the same fields as given): the model reads the latter, never what the event
    class made of them, so that the test does not take the library's conversions on trust."""
    return BlockStored(engines, tokens, model, lora, pod, parent), (engines, ids, model, lora, pod, parent)


def removed(engines, model, lora, pod):
    return BlockRemoved(engines, model, lora, pod), (engines, model, lora, pod)


def fresh(value):
    """An equal str or int that is another object: it defeats the compiled core's identity caches
    (the hot pod, the remembered ready list), which must answer as if they did not exist."""
    if isinstance(value, str):
        return "".join(list(value)) if len(value) > 1 else value
    return int(str(value))


# the bad calls: each is a TypeError or a ValueError on both backends, and changes nothing (SPEC 8)
BAD_CALLS = [
    lambda t: t.match_prefix("m", -1, np.zeros((2, 2), dtype=np.int64)),
    lambda t: t.match_blocks("m", -1, np.zeros(4, dtype=np.float32)),
    lambda t: t.match("m", True, [1, 2]),
    lambda t: t.add_prefix("m", -1, "", [1]),
    lambda t: t.add_prefix("m", -1, "pod-a", [1.5]),
    lambda t: t.match_prefix("m", -1, [1, 2, 3, 4], "pod-a"),
    lambda t: t.match_prefix("m", -1, [0, 0, 0, 0], ["pod-a", 3]),
    lambda t: t.remove_prefix("m", -1, ""),
    lambda t: t.add_prefix("m", -1, "pod-a", [2**64]),
    lambda t: t.match_blocks("m", -1, [True, False]),
    lambda t: t.add_prefix("m", -1, "pod-a", np.array([1.0])),
]


class Calls:
    def __init__(self, profile: str, seed: int, steps: int) -> None:
        self.r = r = random.Random(f"{profile}/{seed}")
        self.profile = profile
        self.bs = r.choice([1, 2, 2, 3])
        if profile == "limits":
            self.max_contexts = r.choice([1, 2, 3, 100])
            self.max_prefixes = r.choice([1, 2, 3, 4, 5, 8, 13, 1000])
            self.bulk_rate = 0.02
        else:
            self.max_contexts = r.choice([3, 100])
            self.max_prefixes = r.choice([300, 1000, 5000])
            self.bulk_rate = 0.12
        self.hash_seed = r.choice([0, 42, 2**64 - 1, r.getrandbits(64)])
        self.config = dict(seed=self.hash_seed, block_size=self.bs, max_contexts=self.max_contexts,
                           max_prefixes_per_context=self.max_prefixes, eviction_duration_minutes=1,
                           background_eviction=False)
        self.ready_obj: List[str] = ["pod-a"]  # one list passed again and again, changed in place
        self.recent: List[tuple] = []          # (model, lora, pod, engine hashes, ids) of recent stores
        self.known: List[List[int]] = []       # token id lists used before: queries that match
        self.long_stored: Optional[tuple] = None
        # the rare operations, each at a random step (the cold sequence early, so that the rest of the
        # sequence runs beside its large context)
        self.forced = {}
        for kind in ["longstore", "longmatch", "tick", "tick", "reload", "reload"]:
            step = r.randrange(1, steps - 1)
            while step in self.forced or step + 1 in self.forced:
                step = r.randrange(1, steps - 1)
            self.forced[step] = kind
            if kind == "longstore":   # and at once a long query of it (a deep walk), another later
                self.forced[step + 1] = "longmatch"
        if profile == "bulk":
            self.forced[0] = "cold"

    # -- values ------------------------------------------------------------------------------------

    def tok(self) -> int:
        return self.r.randint(0, 2)

    def block(self) -> List[int]:
        return [self.tok() for _ in range(self.bs)]

    def engine(self):
        r = self.r
        v = r.choice([0, 1, 2, 3, 4, 5, 6, 7, -1, 2**64 - 1, 2**63])
        form = r.random()
        if form < 0.1:
            return (v % 2**64).to_bytes(8, "big")
        if form < 0.15:
            return b"\xff\xee" + (v % 2**64).to_bytes(8, "big")  # 10 bytes: the last 8 count
        if form < 0.2:
            return np.uint64(v % 2**64)
        return v

    def name(self, pool):
        value = self.r.choice(pool)
        return fresh(value) if self.r.random() < 0.2 else value

    def tokens_for_event(self, blocks, valid=False):
        """The same blocks in one of the accepted token forms, or (rarely, unless ``valid``) blocks of
        the wrong width."""
        r = self.r
        ids = [t for b in blocks for t in b]
        n = len(blocks)
        f = r.random()
        if f < 0.4:
            return ids
        if f < 0.55:
            return np.array(ids, dtype=">u4").view(np.uint8).reshape(n, 4 * self.bs)
        if f < 0.7:
            return [np.array(b, dtype=">u4").tobytes() for b in blocks]
        if f < 0.8:
            return np.array(ids, dtype=np.int64)
        if f < 0.85 and n and not valid:
            return np.zeros((n, 4 * self.bs + 4), dtype=np.uint8)  # a ValueError, nothing applied
        return [list(b) for b in blocks]

    def remember(self, model, lora, pod, engines, ids) -> None:
        self.recent.append((model, lora, pod, engines, ids))
        del self.recent[:-20]
        self.known.append(ids)
        del self.known[:-30]

    # -- events ------------------------------------------------------------------------------------

    # each returns (event, its fields as given: for the model)

    def store(self):
        r = self.r
        if self.known and r.random() < 0.5:   # a known chain, cut, maybe from a later block, extended
            base = r.choice(self.known)
            k = r.randint(0, len(base) // self.bs)
            blocks = [base[i * self.bs:(i + 1) * self.bs] for i in range(k)]
            blocks = blocks[r.randint(0, len(blocks)):] if r.random() < 0.3 else blocks
            blocks = (blocks + [self.block() for _ in range(r.randint(0, 2))])[:6]
        else:
            blocks = [self.block() for _ in range(r.randint(0, 5))]
        engines = [self.engine() for _ in range(len(blocks))]
        parent = None
        model, lora, pod = self.name(MODELS), self.name(LORAS), self.name(PODS)
        if self.recent and r.random() < 0.5:  # chained to an earlier event (of this pod, or another's)
            model, lora, pod, engs, _ = r.choice(self.recent)
            if engs:
                parent = r.choice(engs)
            if r.random() < 0.3:
                pod = self.name(PODS)
        elif r.random() < 0.4:
            parent = self.engine() if r.random() < 0.8 else 99  # 99: never reported, an orphan
        ids = [t for b in blocks for t in b]
        self.remember(model, lora, pod, engines, ids)
        return stored(engines, self.tokens_for_event(blocks), model, lora, pod, parent, ids)

    def bulk_store(self, n=None, key=None, pod=None, parent=None, engines=None, valid=False):
        r = self.r
        n = r.randint(50, 400) if n is None else n
        model, lora = key if key is not None else (self.name(MODELS), self.name(LORAS))
        pod = self.name(PODS) if pod is None else pod
        if key is None and self.recent and r.random() < 0.5:
            model, lora, pod, engs, _ = r.choice(self.recent)
            if engs:
                parent = r.choice(engs)
        ids = [self.tok() for _ in range(n * self.bs)]
        if self.known and r.random() < 0.5:  # a known chain, extended: shared prefixes at scale
            ids = (max(self.known, key=len) + ids)[:n * self.bs]
        if engines is None:   # from a range of 601 values: bulk events reuse each other's engine hashes
            engines = [r.randint(5000, 5600) if r.random() < 0.9 else self.engine() for _ in range(n)]
        self.remember(model, lora, pod, engines, ids)
        blocks = [ids[i * self.bs:(i + 1) * self.bs] for i in range(n)]
        tokens = self.tokens_for_event(blocks, valid) if r.random() < 0.5 else ids
        return stored(engines, tokens, model, lora, pod, parent, ids)

    def bulk_remove(self):
        r = self.r
        big = [x for x in self.recent if len(x[3]) >= 50]
        if not big:
            return self.remove()
        model, lora, pod, engs, _ = r.choice(big)
        engines = r.sample(engs, r.randint(17, min(len(engs), 120))) + [r.randint(5000, 5600)
                                                                         for _ in range(r.randint(0, 20))]
        return removed(engines, model, lora, "" if r.random() < 0.3 else pod)

    def remove(self):
        r = self.r
        engines = [self.engine() for _ in range(r.randint(0, 4))]
        pod = "" if r.random() < 0.25 else self.name(PODS)  # "": every pod (SPEC 2)
        model, lora = self.name(MODELS), self.name(LORAS)
        if self.recent and r.random() < 0.6:
            model, lora, p2, engs, _ = r.choice(self.recent)
            if engs:
                engines = r.sample(engs, r.randint(1, len(engs))) + engines[:1]
            if pod:
                pod = p2 if r.random() < 0.7 else pod
        return removed(engines, model, lora, pod)

    def clear(self):
        r = self.r
        pod, model = self.name(PODS), None if r.random() < 0.4 else self.name(MODELS)
        lora = None if r.random() < 0.4 else self.name(LORAS)
        return AllBlocksCleared(pod, model, lora), (pod, model, lora)

    # -- queries -----------------------------------------------------------------------------------

    def query_ids(self) -> List[int]:
        r = self.r
        if self.known and r.random() < 0.7:
            ids = list(r.choice(self.known))
            if r.random() < 0.3:
                ids = ids[:r.randint(0, len(ids))]
            if r.random() < 0.3:
                ids += [self.tok() for _ in range(r.randint(0, 2 * self.bs))]
            return ids
        return [self.tok() for _ in range(r.randint(0, 4 * self.bs))]

    def ready(self):
        r = self.r
        g = r.random()
        if g < 0.4:
            return None
        if g < 0.55:
            return self.ready_obj
        if g < 0.7:
            return [self.name(PODS) for _ in range(r.randint(0, 3))] + (["zz"] if r.random() < 0.2 else [])
        if g < 0.8:
            return tuple(self.name(PODS) for _ in range(r.randint(0, 2)))
        if g < 0.9:
            return (ITERATOR, [self.name(PODS) for _ in range(r.randint(0, 3))])
        return frozenset(self.name(PODS) for _ in range(r.randint(0, 3)))

    def match(self, ids=None, key=None, ready=False):
        r = self.r
        ids = self.query_ids() if ids is None else ids
        f = r.random()
        if f < 0.3:
            tokens = ids
        elif f < 0.45:
            tokens = np.array(ids, dtype=np.int32)
        elif f < 0.6:
            tokens = np.array(ids, dtype=">u4").tobytes()
        elif f < 0.7:
            tokens = np.array(ids, dtype=">u4").view(np.uint8)
        elif f < 0.75:
            tokens = np.array(ids, dtype=">u4").tobytes() + b"\x01"  # a partial token: ignored
        elif f < 0.8:
            tokens = np.array(ids, dtype=np.int64)[::-1][::-1]       # not contiguous
        else:
            tokens = np.array(ids, dtype=np.uint16)
        model, lora = (self.name(MODELS), self.name(LORAS)) if key is None else key
        which = r.choice(["match_prefix", "match_blocks", "match"])
        return ("match", (which, model, lora, tokens, self.ready() if ready is False else ready, ids))

    # -- the next operation ------------------------------------------------------------------------

    def next(self, step: int) -> Tuple[str, Any]:
        """The operation of this step: (kind, argument)."""
        forced = self.forced.get(step)
        if forced == "longstore":
            # >= 16 KiB of token bytes, with a parent (maybe unknown: a long orphan event) or none
            r = self.r
            n = -(-LONG // (4 * self.bs)) + r.randint(0, 3)  # (rounded up: 16 KiB at least)
            ids = [self.tok() for _ in range(n * self.bs)]
            key = (self.name(MODELS), self.name(LORAS))
            self.long_stored = (key, ids)
            self.known.append(ids)
            parent = r.choice([None, None, None, self.engine()])
            return ("store", stored([1000 + i for i in range(n)], ids, key[0], key[1], self.name(PODS), parent,
                                    ids))
        if forced == "longmatch":
            return self.long_match()
        if forced is not None:
            return (forced, "forced")   # cold, tick, reload: the test module builds them (see below)
        r = self.r
        if r.random() < self.bulk_rate:
            return ("store", self.bulk_store()) if r.random() < 0.6 else ("remove", self.bulk_remove())
        x = r.random()
        if x < 0.30:
            return ("store", self.store())
        if x < 0.40:
            return ("remove", self.remove())
        if x < 0.44:
            return ("clear", self.clear())
        if x < 0.66:
            return self.match()
        if x < 0.71:
            ids = self.query_ids()
            raw = [r.randint(0, 9) for _ in range(r.randint(0, 3))] if r.random() < 0.2 else None
            return ("add_prefix", (self.name(MODELS), self.name(LORAS), self.name(PODS), ids, raw))
        if x < 0.73:
            return ("remove_prefix", (self.name(MODELS), self.name(LORAS), self.name(PODS)))
        if x < 0.79:
            events = []
            for _ in range(r.randint(0, 5)):
                k = r.random()
                events.append(self.store() if k < 0.6 else self.remove() if k < 0.85 else self.clear())
            if r.random() < 0.05:   # a bad item: an error naming its position, and nothing applied
                events.insert(r.randint(0, len(events)), (r.choice([3, None, "x"]), None))
            return ("batch", (events, r.random() < 0.3))   # (events, given as a generator)
        if x < 0.86:
            return ("advance", r.choice([0.5, 1.0, 10.0, 30.0, 59.0, 60.0, 61.0]))  # duration: 60 s
        if x < 0.91:
            return ("evict", None)
        if x < 0.93:
            self.ready_obj[:] = [self.name(PODS) for _ in range(r.randint(0, 3))]
            return ("nothing", None)
        if x < 0.95:
            return ("reload", None)
        return ("bad", r.randrange(len(BAD_CALLS)))

    def long_match(self):
        """A query of >= 16 KiB of token bytes: the long event's tokens when there was one (a deep walk,
        maybe cut short by a changed token), else the longest known list repeated."""
        r = self.r
        if self.long_stored is not None and r.random() < 0.8:
            key, ids = self.long_stored
            ids = list(ids)
            if r.random() < 0.5:
                ids[r.randrange(len(ids))] += 1
            return self.match(ids, key, r.choice([None, None, ["pod-a", "pod-b"], ["pod-c"]]))
        ids = max(self.known, key=len) if self.known else [0]
        ids = ids * (LONG // (4 * len(ids)) + 1) if len(ids) * 4 < LONG else ids
        return self.match(ids, None, r.choice([None, ["pod-a", "pod-b"], ["pod-c"]]))

    def cold_sequence(self):
        """Five operations in a row on one new context ("cold", a model no other call names, so that
        nothing else lands there first): 260-290 blocks for one pod, then a chained store of 2-9 blocks
        with some engine hashes reused, a match of the whole chain, and a removal of 17-120 of the first
        store's engine hashes (for the pod or for ""), then a store into it again. With bounds of 300 or
        more the maps hold >= 256 entries at the second store, the match and the removal: the cold
        paths."""
        r = self.r
        key, pod = ("cold", self.name(LORAS)), self.name(PODS)
        n = r.randint(260, 290)
        engines = [9000 + i for i in range(n)]
        first = self.bulk_store(n, key, pod, None, engines, valid=True)
        more = r.randint(2, 9)
        reused = [r.choice(engines) if r.random() < 0.3 else 20000 + i for i in range(more)]
        second = self.bulk_store(more, key, pod, engines[-1], reused, valid=True)
        whole = first[1][1] + second[1][1]
        gone = r.sample(engines, r.randint(17, 120))
        third = self.bulk_store(r.randint(2, 30), key, pod, r.choice(engines), valid=True)
        return key, pod, [("store", first), ("store", second), self.match(whole, key, None),
                          ("remove", removed(gone, key[0], key[1], r.choice([pod, ""]))), ("store", third)]

    def tick_target(self, counter: int, n: int) -> int:
        """A value to move a context's tick counter to: never below ``counter`` (the counter of a table
        that never renumbers, so no smaller than any table's), and such that a store of ``n`` blocks
        placed next takes ticks from 2**31 on, past the compiled core's renumbering point."""
        k = self.r.randint(0, n - 1)
        return max(counter, self.r.choice([2**31 - k, 2**31 + k, 2**32 - k, counter + 2**31 - k]))

    def tick_follow(self, key, pod):
        """After a counter moved: a match of a chain stored there lately (it may walk and place ticks,
        and so be the call that crosses), then a store of 1-60 new blocks (which places, so crosses)."""
        r = self.r
        here = [x[4] for x in self.recent if (x[0], x[1]) == key] or self.known or [[0]]
        query = self.match(max(here, key=len), key, None)
        n = r.randint(1, 60)
        ids = [self.tok() for _ in range(n * self.bs)]
        engines = list(range(30000, 30000 + n))
        self.remember(key[0], key[1], pod, engines, ids)
        return n, [query, ("store", stored(engines, ids, key[0], key[1], pod, None, ids))]

    def reload_bounds(self, shrink: bool) -> Tuple[bool, Optional[int], Optional[int]]:
        """(cross-backend, max_contexts, max_prefixes_per_context) for a load: None keeps the saved
        bound; a given one is smaller (a trim and context evictions as a store would make). With
        ``shrink`` the prefix bound is made smaller whenever it can be."""
        r = self.r
        mc = mp = None
        if self.max_contexts > 1 and r.random() < 0.4:
            mc = self.max_contexts = r.randint(1, self.max_contexts - 1)
        if self.max_prefixes > 1 and (shrink or r.random() < 0.6):
            mp = self.max_prefixes = r.choice([self.max_prefixes - 1, max(1, self.max_prefixes // 2),
                                               r.randint(1, self.max_prefixes - 1)])
        return r.random() < 0.7, mc, mp

    def must_reach(self) -> set:
        """What a run of this sequence must report having reached: else it would prove little."""
        expected = {"long store", "long match", "tick renumbering", "reload"}
        if self.profile == "bulk":
            expected.add("cold maps")
        if self.config["max_prefixes_per_context"] > 1:
            expected.add("smaller bounds")
        return expected


# -- applying an operation to a table --------------------------------------------------------------------

def saved(table) -> bytes:
    """The table's save() bytes (to a stream)."""
    buf = io.BytesIO()
    table.save(buf)
    return buf.getvalue()


def short(op) -> str:
    """An operation for a failure message (a long event's repr would fill the screen)."""
    text = repr(op)
    return text if len(text) < 600 else text[:600] + f"... ({len(text)} characters)"


def ready_value(ready):
    """The ready_pods to pass: a fresh iterator for an ITERATOR spec, else the value itself."""
    if isinstance(ready, tuple) and len(ready) == 2 and ready[0] == ITERATOR:
        return iter(ready[1])
    return ready


def ready_names(ready):
    if isinstance(ready, tuple) and len(ready) == 2 and ready[0] == ITERATOR:
        return list(ready[1])
    return None if ready is None else list(ready)


def call(table, op):
    """Apply one operation to a table; -> a comparable result (arrays as lists, with their dtype)."""
    kind, arg = op
    if kind == "store":
        return table.process_block_stored(arg[0])
    if kind == "remove":
        return table.process_block_removed(arg[0])
    if kind == "clear":
        return table.process_all_blocks_cleared(arg[0])
    if kind == "batch":
        events, as_generator = arg
        items = [event for event, _ in events]
        return table.process_events((e for e in items) if as_generator else items)
    if kind == "match":
        which, model, lora, tokens, ready, _ = arg
        got = getattr(table, which)(model, lora, tokens, ready_value(ready))
        if which == "match_blocks":
            return got
        return got[0], got[1].tolist(), str(got[1].dtype)
    if kind == "add_prefix":
        model, lora, pod, ids, raw = arg
        return table.add_prefix(model, lora, pod, raw if raw is not None else table.get_prefix_hashes(ids))
    if kind == "remove_prefix":
        return table.remove_prefix(*arg)
    if kind == "evict":
        return table.evict_now()
    if kind == "bad":
        return BAD_CALLS[arg](table)
    raise AssertionError(f"not a call: {kind}")


def refused(op, block_size: int) -> bool:
    """Whether the call is meant to be refused: a bad call, a store whose blocks have the wrong width,
    a batch that holds one of those or a non-event. Every other call here is valid and must be taken."""
    kind, arg = op

    def wrong_width(event) -> bool:
        return isinstance(event, BlockStored) and len(event.block_hashes) > 0 and \
            event.tokens.shape[1] != 4 * block_size

    if kind == "store":
        return wrong_width(arg[0])
    if kind == "batch":
        return any(wrong_width(e) or not isinstance(e, (BlockStored, BlockRemoved, AllBlocksCleared))
                   for e, _ in arg[0])
    return kind == "bad"


def outcome(table, op):
    """("ok", result) or (exception type, message): SPEC 8 allows only TypeError and ValueError."""
    try:
        return ("ok", call(table, op))
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__, str(exc))
