"""A stateful test against a tiny, obviously-correct model of SPEC 1-4 and D2, D3, D7, D8, D9.

The model is dicts of sets, with hashes computed by xxhash directly (helpers.ref_chain). Limits are
generous and time never moves, so no trim and no staleness take part: those are in
test_limits_eviction.py. After every step the match results, the snapshot and all counters must agree.
"""

from __future__ import annotations

import numpy as np
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored
from helpers import STAT_KEYS, U64, id_bytes, ref_chain

BS = 2                                                  # tokens per block in this test
CONTEXTS = st.sampled_from([("m", -1), ("m", 1), ("n", -1)])
PODS = st.sampled_from(["A", "B", "C"])
ENGINE = st.sampled_from([0, 1, 2, 3, 4, 5, -1, U64 - 1])     # few, so that they repeat and get reused
PARENT = st.one_of(st.none(), ENGINE, st.just(99))            # 99 is never a block hash: always unknown
BLOCK = st.tuples(st.integers(0, 2), st.integers(0, 2))      # 9 distinct blocks: contents collide often
FORMS = st.sampled_from(["ids", "bytes2d", "blocks", "flatbytes", "array"])
COUNTERS = STAT_KEYS[4:]


def make_machine(backend):
    class IndexModel(RuleBasedStateMachine):
        @initialize(seed=st.one_of(st.just(0), st.integers(0, U64 - 1)),
                    chains=st.lists(st.tuples(CONTEXTS, PODS, st.lists(st.tuples(ENGINE, BLOCK), min_size=1,
                                                                       max_size=4)), max_size=4))
        def setup(self, seed, chains):
            self.seed = seed
            self.t = backend.SyncPrefixHashTable(
                seed=seed, block_size=BS, background_eviction=False, clock=lambda: 0.0,
                max_contexts=1000, max_prefixes_per_context=10**6)
            self.pref = {}      # context -> prefix hash -> set of pods
            self.eng = {}       # context -> pod -> engine hash -> prefix hash
            self.cnt = dict.fromkeys(COUNTERS, 0)
            self.paths = {}     # prefix hash -> the blocks from the root (to build matching queries)
            for key, pod, items in chains:   # a few chains to start from, so that steps have work
                self._store(key, pod, items, None, "ids")

        def teardown(self):
            if hasattr(self, "t"):
                self.t.close()

        # -- the model -------------------------------------------------------------------------------

        def chain(self, blocks, parent=None):
            ids = [tok for b in blocks for tok in b]
            return ref_chain(id_bytes(ids), 4 * BS, self.seed, parent)

        def holds(self, key, pod, p):
            return pod in self.pref.get(key, {}).get(p, ())

        def drop(self, key, pod, p):
            pods = self.pref[key][p]
            pods.discard(pod)
            if not pods:
                del self.pref[key][p]

        def tidy(self):
            """D2: a context lives while it holds an entry, a pod state while the pod holds one."""
            for key in list(self.pref):
                held = {pod for pods in self.pref[key].values() for pod in pods}
                for pod in list(self.eng.get(key, {})):
                    if pod not in held:
                        del self.eng[key][pod]
                if not self.pref[key]:
                    del self.pref[key]
            for key in list(self.eng):
                if key not in self.pref or not self.eng[key]:
                    del self.eng[key]

        # -- rules -----------------------------------------------------------------------------------

        @rule(key=CONTEXTS, pod=PODS, items=st.lists(st.tuples(ENGINE, BLOCK), max_size=4), form=FORMS,
              data=st.data())
        def store(self, key, pod, items, form, data):
            mine = sorted(self.eng.get(key, {}).get(pod, {}))
            how = data.draw(st.sampled_from(["root", "root", "known", "any"] if mine else ["root", "root", "any"]))
            if how == "root":
                parent = None
            elif how == "known":   # an engine hash this pod reported here (held, or a stale alias)
                parent = data.draw(st.sampled_from(mine))
            else:                  # any value, 99 never a block hash
                parent = data.draw(PARENT.filter(lambda v: v is not None))
            self._store(key, pod, items, parent, form)

        def _store(self, key, pod, items, parent, form):
            engine_hashes = [e for e, _ in items]
            blocks = [b for _, b in items]
            ids = [tok for b in blocks for tok in b]
            if form == "ids":
                tokens = ids
            elif form == "array":
                tokens = np.array(ids, dtype=np.int64)
            elif form == "bytes2d":
                tokens = np.frombuffer(id_bytes(ids), dtype=np.uint8).reshape(len(blocks), 4 * BS)
            elif form == "blocks":
                tokens = [list(b) for b in blocks]
            else:
                tokens = id_bytes(ids)
            self.t.process_block_stored(BlockStored(engine_hashes, tokens, key[0], key[1], pod, parent))

            self.cnt["events_block_stored"] += 1
            n = len(items)
            start, path = None, ()
            if parent is not None:
                known = self.eng.get(key, {}).get(pod, {}).get(parent % U64)
                if known is None or not self.holds(key, pod, known):
                    self.cnt["orphan_blocks"] += n
                    event("store: orphan")
                    return
                event("store: chained to a known parent")
                start, path = known, self.paths[known]
            if n == 0:
                return
            hashes = self.chain(blocks, start)
            emap = self.eng.setdefault(key, {}).setdefault(pod, {})
            ctx = self.pref.setdefault(key, {})
            for i, (e, p) in enumerate(zip(engine_hashes, hashes)):
                e %= U64
                old = emap.get(e)
                if old is not None and old != p and self.holds(key, pod, old):
                    self.drop(key, pod, old)          # an engine hash reused for new content (D3)
                    event("store: engine hash reused")
                emap[e] = p
                ctx.setdefault(p, set()).add(pod)
                self.paths[p] = path + tuple(blocks[:i + 1])
            self.cnt["blocks_stored"] += n
            self.tidy()

        @rule(pod=st.one_of(PODS, st.just("")), data=st.data())
        def remove(self, pod, data):
            key = self.some_context(data)
            reported = sorted({e for emap in self.eng.get(key, {}).values() for e in emap})
            pick = st.one_of(st.sampled_from(reported), ENGINE) if reported else ENGINE
            engine_hashes = data.draw(st.lists(pick, max_size=3))
            self.t.process_block_removed(BlockRemoved(engine_hashes, key[0], key[1], pod))
            self.cnt["events_block_removed"] += 1
            if key not in self.pref:
                return
            targets = [pod] if pod else list(self.eng.get(key, {}))
            for target in targets:
                emap = self.eng.get(key, {}).get(target)
                if emap is None:
                    continue
                for e in engine_hashes:
                    p = emap.pop(e % U64, None)
                    if p is not None and self.holds(key, target, p):
                        self.drop(key, target, p)
                        self.cnt["blocks_removed"] += 1
                        event("remove: entry removed")
            self.tidy()

        def _drop_pod(self, key, pod):
            for p in list(self.pref.get(key, {})):
                if pod in self.pref[key][p]:
                    self.drop(key, pod, p)
            self.eng.get(key, {}).pop(pod, None)

        @rule(pod=PODS, model=st.sampled_from([None, "m", "n", "x"]), lora=st.sampled_from([None, -1, 1, 5]))
        def clear(self, pod, model, lora):
            self.t.process_all_blocks_cleared(AllBlocksCleared(pod, model, lora))
            self.cnt["events_all_blocks_cleared"] += 1
            for key in list(self.pref):
                if (model is None or key[0] == model) and (lora is None or key[1] == lora):
                    self._drop_pod(key, pod)
            self.tidy()

        @rule(key=CONTEXTS, pod=PODS, data=st.data())
        def add_prefix(self, key, pod, data):
            known = sorted(self.paths)
            pick = st.sampled_from(known) if known else st.integers(0, U64 - 1)
            hashes = data.draw(st.lists(st.one_of(pick, st.integers(-(2**63), U64 - 1)), max_size=4))
            self.t.add_prefix(key[0], key[1], pod, hashes)
            for h in hashes:
                self.pref.setdefault(key, {}).setdefault(h % U64, set()).add(pod)
            self.tidy()

        @rule(key=CONTEXTS, pod=PODS)
        def remove_prefix(self, key, pod):
            self.t.remove_prefix(key[0], key[1], pod)
            self._drop_pod(key, pod)
            self.tidy()

        def some_context(self, data):
            """Mostly a context that holds something, so that the step has something to act on."""
            if self.pref and data.draw(st.integers(0, 3)):
                return data.draw(st.sampled_from(sorted(self.pref)))
            return data.draw(CONTEXTS)

        @rule(data=st.data(), extra=st.lists(BLOCK, max_size=2), partial=st.integers(0, BS - 1),
              ready=st.one_of(st.none(), st.lists(st.sampled_from(["A", "B", "C", "ghost"]), max_size=3)),
              blocks_api=st.booleans())
        def match(self, data, extra, partial, ready, blocks_api):
            key = self.some_context(data)
            base = ()
            here = sorted(p for p in self.pref.get(key, {}) if p in self.paths)
            if here and data.draw(st.integers(0, 3)):       # mostly a prefix that this context holds
                base = self.paths[data.draw(st.sampled_from(here))]
            elif self.paths and data.draw(st.booleans()):
                base = self.paths[data.draw(st.sampled_from(sorted(self.paths)))]
            blocks = list(base) + extra
            query = [tok for b in blocks for tok in b] + [7] * partial
            hashes = self.chain(blocks)
            ctx = self.pref.get(key, {})
            candidates = {pod for pods in ctx.values() for pod in pods} if ready is None else set(ready)
            expected = {}
            for pod in candidates:
                m = 0
                while m < len(hashes) and pod in ctx.get(hashes[m], ()):
                    m += 1
                if m:
                    expected[pod] = m
            self.cnt["matches"] += 1
            event(f"match: {'some' if expected else 'no'} pods, longest {max(expected.values(), default=0)}")
            if blocks_api:
                assert self.t.match_blocks(key[0], key[1], query, ready_pods=ready) == expected
            else:
                result, got_hashes = self.t.match_prefix(key[0], key[1], query, ready_pods=ready)
                assert got_hashes.tolist() == hashes
                assert result == {pod: m * 100 // len(hashes) for pod, m in expected.items()}

        # -- after every step ------------------------------------------------------------------------

        @invariant()
        def agrees(self):
            if not hasattr(self, "t"):
                return
            expected = {key: {p: frozenset(pods) for p, pods in v.items()} for key, v in self.pref.items()}
            assert self.t.snapshot() == expected
            stats = self.t.stats()
            assert {k: stats[k] for k in COUNTERS} == self.cnt
            assert stats["contexts"] == len(self.pref)
            assert stats["prefixes"] == sum(len(v) for v in self.pref.values())
            assert stats["entries"] == sum(len(pods) for v in self.pref.values() for pods in v.values())
            assert stats["pods"] == len({pod for v in self.pref.values() for pods in v.values() for pod in pods})

    return IndexModel


def test_index_against_model(backend):
    run_state_machine_as_test(
        make_machine(backend),
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None))
