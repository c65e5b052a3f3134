"""Each backend against an independent model (tests/reference_model.py), with limits and time.

tests/test_model.py holds SPEC 1-4 against a model with generous limits and a clock that never moves:
no trim (SPEC 5, D4), no context eviction (D5), no staleness (SPEC 6, D6). Those were held only by the
backends agreeing with each other (tests/test_differential.py) and by hand-written cases, so a rule
both backends got wrong in the same way would pass. Here the model, written from SPEC and the D rules
alone, predicts every match (blocks, percents, prefix hashes) and evict_now() result, and after every
step the table's snapshot(), stats() and, from _export_state(), the recency order of the contexts, each
context's prefix order (oldest tick first: what the next trim drops), each pod's engine map with its
stale aliases (D3), and each context's and pod's idle time.

The calls are tests/random_calls.py's seeded sequences, the ones test_differential_state.py runs on
both backends side by side, with small or large bounds, clock moves around the 60-second duration,
events and queries of 16 KiB or more, tick counters moved forwards past 2**31 (the compiled core
renumbers there; the order must not change), saves loaded again mid-sequence with smaller bounds, and
maps of 256 entries or more. It runs on every backend of this run, one test per backend, profile and
seed, so that a failure names all three.
"""

from __future__ import annotations

import io

import pytest

from prefixindex import BlockRemoved, BlockStored

from helpers import id_bytes
from reference_model import Model
from random_calls import COLD, LONG, Calls, outcome, ready_names, refused, saved, short, stored

STEPS = 250
CASES = [("limits", seed) for seed in range(20)] + [("bulk", seed) for seed in range(12)]
STALE = 60.0   # eviction_duration_minutes=1 (random_calls.Calls.config)


class ModelRun:
    """One sequence on one backend's table and on the model, on one fake clock."""

    def __init__(self, backend, clock, profile: str, seed: int) -> None:
        self.backend, self.clock = backend, clock
        self.calls = c = Calls(profile, seed, STEPS)
        self.table = backend.SyncPrefixHashTable(clock=clock, **c.config)
        self.model = Model(c.hash_seed, c.bs, c.max_contexts, c.max_prefixes, STALE)
        self.step_no = 0
        self.seen = set()

    def where(self, op) -> str:
        return f"step {self.step_no}: {short(op)}"

    # -- the comparison after every step ------------------------------------------------------------

    def compare(self, op) -> None:
        t, m, now = self.table, self.model, self.clock.now
        assert t.snapshot() == m.snapshot(), f"snapshot() is not the model's after {self.where(op)}"
        stats, expected = t.stats(), m.stats()
        assert stats == expected, (f"stats() is not the model's after {self.where(op)}: "
                                   f"{ {k: (v, stats[k]) for k, v in expected.items() if stats[k] != v} }")
        state = t._export_state()
        order = [(c["model"], c["lora"]) for c in state["contexts"]]
        assert order == list(m.ctxs), f"context recency (D5) is not the model's after {self.where(op)}"
        for c, key in zip(state["contexts"], order):
            ctx = m.ctxs[key]
            assert c["prefixes"].tolist() == m.prefix_order(key), \
                f"prefix tick order (D4) of {key} is not the model's after {self.where(op)}"
            assert c["pods"] == sorted(ctx.pods), f"pod states (D2) of {key} after {self.where(op)}"
            for pod, (keys, values), idle in zip(c["pods"], c["engine"], c["pod_idle"].tolist()):
                assert dict(zip(keys.tolist(), values.tolist())) == ctx.pods[pod]["engine"], \
                    f"engine map (D3) of {pod} in {key} is not the model's after {self.where(op)}"
                assert idle == pytest.approx(now - ctx.pods[pod]["seen"], abs=1e-9), \
                    f"idle time (D6) of {pod} in {key} after {self.where(op)}"
            assert c["idle"] == pytest.approx(now - ctx.last_access, abs=1e-9), \
                f"idle time (D6) of {key} after {self.where(op)}"

    # -- one call on the table and the model --------------------------------------------------------

    def model_event(self, kind, raw) -> None:
        m, now = self.model, self.clock.now
        if kind == "store":
            engines, ids, model, lora, pod, parent = raw
            m.store(list(engines), id_bytes(ids), model, lora, pod, parent, now)
        elif kind == "remove":
            engines, model, lora, pod = raw
            m.remove(list(engines), model, lora, pod, now)
        else:
            m.clear(*raw)

    def expect(self, op):
        """Apply an accepted call to the model; -> what the table must have answered (or None)."""
        kind, arg = op
        m, now = self.model, self.clock.now
        if kind in ("store", "remove", "clear"):
            self.model_event(kind, arg[1])
        elif kind == "batch":
            for event, raw in arg[0]:
                self.model_event("store" if isinstance(event, BlockStored) else
                                 "remove" if isinstance(event, BlockRemoved) else "clear", raw)
        elif kind == "match":
            which, model, lora, _, ready, ids = arg
            blocks, hashes = m.match(model, lora, id_bytes(ids), ready_names(ready), now)
            if which == "match_blocks":
                return blocks
            if which == "match_prefix":   # SPEC 4: percent = matched * 100 // n_blocks
                return {pod: b * 100 // len(hashes) for pod, b in blocks.items()}, hashes, "uint64"
            return blocks, hashes, "uint64"
        elif kind == "add_prefix":
            model, lora, pod, ids, raw = arg
            m.add_prefix(model, lora, pod, raw if raw is not None else m.chain(id_bytes(ids)), now)
        elif kind == "remove_prefix":
            m.remove_prefix(*arg)
        elif kind == "evict":
            return m.evict_now(now)
        return None

    def apply(self, op):
        result = outcome(self.table, op)
        assert (result[0] != "ok") == refused(op, self.calls.bs), f"{self.where(op)}: {result}"
        if result[0] == "ok":   # a refused call changes nothing (SPEC 8): the model stays as it is
            expected = self.expect(op)
            assert result[1] == expected, f"{self.where(op)}:\n model {expected}\n table {result[1]}"
        self.compare(op)
        return result

    # -- the operations the generator leaves to the test -----------------------------------------------

    def reload(self, shrink: bool) -> None:
        """save(), load() on the same backend (test_differential_state.py loads across backends), with
        smaller bounds mostly: the model renumbers its ticks in order and trims as a store would."""
        _, mc, mp = self.calls.reload_bounds(shrink)
        overrides = {k: v for k, v in (("max_contexts", mc), ("max_prefixes_per_context", mp)) if v is not None}
        data = saved(self.table)
        new = self.backend.SyncPrefixHashTable.load(io.BytesIO(data), clock=self.clock, background_eviction=False,
                                                    **overrides)
        if not overrides:
            assert saved(new) == data, f"save(load(x)) != x at step {self.step_no}"
        self.table.close()
        self.table = new
        self.model.reload(mc, mp)
        self.seen.add("reload")
        if mp is not None:
            self.seen.add("smaller bounds")
        self.compare(("reload", overrides))

    def tick(self) -> None:
        """Move a context's tick counter forwards, from the model's counter (the one a table that never
        renumbers has), then match and store there: the store takes ticks from 2**31 on."""
        m = self.model
        if not m.ctxs:
            self.apply(("store", stored([1], [0] * self.calls.bs, "m", -1, "pod-a", None, [0] * self.calls.bs)))
        key = self.calls.r.choice(sorted(m.ctxs))
        pod = self.calls.r.choice(sorted(m.ctxs[key].pods))
        n, follow = self.calls.tick_follow(key, pod)
        target = self.calls.tick_target(m.ctxs[key].tick, n)
        self.table._debug_set_next_tick(key[0], key[1], target)
        m.set_next_tick(key, target)
        self.compare(("tick", key, target))
        for op in follow:
            result = self.apply(op)
        assert result == ("ok", None), result
        assert m.ctxs[key].tick >= 2**31, "the store after the jump did not cross 2**31"
        self.seen.add("tick renumbering")

    def cold(self) -> None:
        key, pod, ops = self.calls.cold_sequence()
        for i, op in enumerate(ops):
            if i in (1, 2, 3):   # the multi-block store, the walk, the multi-block removal
                ctx = self.model.ctxs[key]
                assert len(ctx.prefixes) >= COLD and len(ctx.pods[pod]["engine"]) >= COLD, i
            assert self.apply(op)[0] == "ok", self.where(op)
        self.seen.add("cold maps")

    def run(self) -> None:
        for self.step_no in range(STEPS):
            op = self.calls.next(self.step_no)
            kind = op[0]
            if kind == "advance":
                self.clock.advance(op[1])
                self.compare(op)
            elif kind == "nothing":
                self.compare(op)
            elif kind == "reload":
                self.reload(op[1] == "forced")
            elif kind == "tick":
                self.tick()
            elif kind == "cold":
                self.cold()
            else:
                result = self.apply(op)
                ids = op[1][1][1] if kind == "store" else op[1][5] if kind == "match" else ()
                if result[0] == "ok" and 4 * len(ids) >= LONG:
                    self.seen.add("long " + kind)


@pytest.mark.parametrize("profile,seed", CASES, ids=[f"{p}-seed{s}" for p, s in CASES])
def test_backend_against_the_reference_model(backend, clock, profile, seed):
    run = ModelRun(backend, clock, profile, seed)
    try:
        run.run()
    finally:
        run.table.close()
    assert run.calls.must_reach() <= run.seen, run.seen
    if run.calls.config["max_prefixes_per_context"] <= 13:
        assert run.table.stats()["evicted_prefixes"] > 0, "no trim happened: the sequence would prove little"
