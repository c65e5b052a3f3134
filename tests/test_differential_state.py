"""SPEC 9 and docs/spec.md "Snapshots": the two backends hold the same state, byte for byte, after every call.

tests/test_differential.py compares each call's outcome, snapshot() and stats(). Those do not show the
order of the ticks (what the next trim drops, D4), the engine-hash maps with their stale aliases (D3),
the context order (D5) or the idle times (D6): two backends could agree on them for a while and then
drift apart. Here, after every step, the outcome (value, or exception type and message), snapshot(),
stats() and the save() bytes must be identical; the bytes hold all of the above (docs/snapshot.md).

The calls are tests/random_calls.py's seeded sequences (ported from the core semantics review's
drivers), one test per profile and seed, so that a failure names its seed. Each sequence also holds
what the hypothesis tests never reach: an event and a query of 16 KiB or more (the compiled core's
paths without the GIL, SPEC 7), a tick counter moved forwards past 2**31 and then used (the compiled
core's 32-bit renumbering), saves loaded by the other backend mid-sequence, often with smaller bounds,
after which the sequence goes on, and (profile "bulk") maps of 256 entries or more under multi-block
stores, walks and removals (the compiled core's "cold" paths, _entries.pxd TOUCH_BUCKETS_FROM).
"""

from __future__ import annotations

import io

import pytest

from prefixindex import _core_py

from helpers import COMPILED, FakeClock
from random_calls import outcome, refused, saved
from sequence_driver import Driver

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: only one backend in this run")

STEPS = 300
# (profile, seeds): "limits" for trims and context evictions at every turn, "bulk" for large maps
CASES = [("limits", seed) for seed in range(30)] + [("bulk", seed) for seed in range(20)]
SIDES = ("cython", "python")


class Differential(Driver):
    """One sequence, run on both backends side by side on one fake clock."""

    def __init__(self, profile: str, seed: int) -> None:
        super().__init__(profile, seed, STEPS, FakeClock())
        self.tables = {"cython": COMPILED.SyncPrefixHashTable(clock=self.clock, **self.calls.config),
                       "python": _core_py.SyncPrefixHashTable(clock=self.clock, **self.calls.config)}

    def close(self) -> None:
        for table in self.tables.values():
            table.close()

    def compare(self, op) -> None:
        """The whole state: snapshot(), stats() and the save() bytes, each compared on its own so that
        a failure says which."""
        cy, py = (self.tables[name] for name in SIDES)
        assert cy.snapshot() == py.snapshot(), f"snapshot() differs after {self.where(op)}"
        assert cy.stats() == py.stats(), f"stats() differs after {self.where(op)}"
        assert saved(cy) == saved(py), \
            f"save() bytes differ after {self.where(op)} (tick order, engine maps, idle times?)"

    def apply(self, op):
        """One call on both backends: the outcomes must be identical, then the whole state."""
        results = [outcome(self.tables[name], op) for name in SIDES]
        assert results[0] == results[1], \
            f"outcomes differ at {self.where(op)}:\n cython {results[0]}\n python {results[1]}"
        assert (results[0][0] != "ok") == refused(op, self.calls.bs), f"{self.where(op)}: {results[0]}"
        self.compare(op)
        return results[0]

    # -- the operations the generator leaves to the test -----------------------------------------------

    def reload(self, shrink: bool) -> None:
        """save(), then each backend loads the other's bytes (mostly) with the bounds given, and the
        sequence goes on with the loaded tables. Without overrides save(load(x)) must be x."""
        cross, mc, mp = self.calls.reload_bounds(shrink)
        data = {name: saved(t) for name, t in self.tables.items()}
        overrides = {k: v for k, v in (("max_contexts", mc), ("max_prefixes_per_context", mp)) if v is not None}
        new = {}
        for name, backend in (("cython", COMPILED), ("python", _core_py)):
            source = data[("python" if name == "cython" else "cython") if cross else name]
            new[name] = backend.SyncPrefixHashTable.load(io.BytesIO(source), clock=self.clock,
                                                         background_eviction=False, **overrides)
            if not overrides:
                assert saved(new[name]) == source, f"{name}: save(load(x)) != x at step {self.step_no}"
        self.close()
        self.tables = new
        self.seen.add("reload")
        if "max_prefixes_per_context" in overrides:
            self.seen.add("smaller bounds")
        self.compare(("reload", cross, overrides))

    # -- the hooks of the shared tick and cold sequences (random_calls.Driver) ----------------------

    def context_pods(self) -> dict:
        return {key: {p for pods in blocks.values() for p in pods}
                for key, blocks in self.tables["python"].snapshot().items()}

    def tick_counter(self, key) -> int:
        return self.tables["python"]._contexts[key].next_tick  # (the fallback never renumbers)

    def set_next_tick(self, key, target: int) -> None:
        for name in SIDES:
            self.tables[name]._debug_set_next_tick(key[0], key[1], target)

    def map_sizes(self, key, pod):
        state = self.tables["python"]._export_state()
        ctx = next(c for c in state["contexts"] if (c["model"], c["lora"]) == key)
        return len(ctx["prefixes"]), len(ctx["engine"][ctx["pods"].index(pod)][0])


@pytest.mark.parametrize("profile,seed", CASES, ids=[f"{p}-seed{s}" for p, s in CASES])
def test_backends_hold_the_same_state_after_every_call(profile, seed):
    run = Differential(profile, seed)
    try:
        run.run()
    finally:
        run.close()
    # what each sequence is there to reach, reached (the generator forces each once or more)
    assert run.calls.must_reach() <= run.seen, run.seen
    stats = run.tables["python"].stats()
    if run.calls.config["max_prefixes_per_context"] <= 13:
        assert stats["evicted_prefixes"] > 0, "no trim happened: the sequence would prove little"
