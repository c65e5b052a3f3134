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
from random_calls import outcome, ready_names, refused, saved
from sequence_driver import Driver

STEPS = 250
CASES = [("limits", seed) for seed in range(20)] + [("bulk", seed) for seed in range(12)]
STALE = 60.0   # eviction_duration_minutes=1 (random_calls.Calls.config)


class ModelRun(Driver):
    """One sequence on one backend's table and on the model, on one fake clock."""

    def __init__(self, backend, clock, profile: str, seed: int) -> None:
        super().__init__(profile, seed, STEPS, clock)
        self.backend, c = backend, self.calls
        self.table = backend.SyncPrefixHashTable(clock=clock, **c.config)
        self.model = Model(c.hash_seed, c.bs, c.max_contexts, c.max_prefixes, STALE)

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

    # -- the hooks of the shared tick and cold sequences (random_calls.Driver) ----------------------

    def context_pods(self) -> dict:
        return {key: set(ctx.pods) for key, ctx in self.model.ctxs.items()}

    def tick_counter(self, key) -> int:
        return self.model.ctxs[key].tick

    def set_next_tick(self, key, target: int) -> None:
        self.table._debug_set_next_tick(key[0], key[1], target)
        self.model.set_next_tick(key, target)

    def map_sizes(self, key, pod):
        ctx = self.model.ctxs[key]
        return len(ctx.prefixes), len(ctx.pods[pod]["engine"])


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
