"""Eviction over 1,000,000 entries: the staleness pass (``evict_now``, SPEC 6) and the per-context
bound's trim (SPEC 5, D4).

Staleness: 10 contexts x 10 pods, each pod holding ``entries / 100`` blocks of its own (chains of 100)
in each context, so ``entries`` (pod, block) entries in all. The table runs on a fake clock with a
one-minute staleness limit, and ``stale`` says what the pass finds:
- ``none``: nothing idle, the routine pass every interval (the table is kept between samples);
- ``pods``: every pod idle while its contexts are in use (crashed pods): every entry is dropped pod by pod;
- ``contexts``: every context idle: whole contexts are dropped.
The last two empty the table, so ``setup`` rebuilds it before every sample: about 4 s for 1,000,000
entries on the pure-Python backend (hence few samples), well under a second on the compiled one.
"""

from __future__ import annotations

from ._common import (BACKENDS, HEAVY_REPEAT, LORA, FakeClock, api, backend, chain_events, make_table, memo, model,
                      pod, rng, token_bytes)

T0 = 1000.0
LIMIT_MINUTES = 1.0


class _StaleState:
    CONTEXTS = 10
    PODS = 10

    def __init__(self, module, entries: int) -> None:
        self.module = module
        self.entries = entries
        per = entries // (self.CONTEXTS * self.PODS)
        gen = rng(entries)
        self.events = [event for c in range(self.CONTEXTS) for p in range(self.PODS)
                       for event in chain_events(gen, per, min(per, 100), model(c), pod(p))]
        self.table = None
        self.clock = None

    def fresh(self) -> None:
        """A new table on a new clock at T0, holding every entry."""
        if self.table is not None:
            self.table.close()
            self.table = None
        self.clock = FakeClock(T0)
        self.table = make_table(self.module, max_prefixes_per_context=self.entries // self.CONTEXTS + 1,
                                max_contexts=self.CONTEXTS, clock=self.clock,
                                eviction_duration_minutes=LIMIT_MINUTES)
        for event in self.events:
            self.table.process_block_stored(event)

    def close(self) -> None:
        if self.table is not None:
            self.table.close()


class StalenessPass:
    params = (BACKENDS, [100_000, 1_000_000], ["none", "pods", "contexts"])
    param_names = ["backend", "entries", "stale"]
    repeat = HEAVY_REPEAT
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup(self, backend_name: str, entries: int, stale: str) -> None:
        module = backend(backend_name)
        state = self.state = memo(("stale", backend_name, entries, stale), lambda: _StaleState(module, entries))
        if state.table is None or state.table.stats()["entries"] != entries:
            state.fresh()
        if stale == "none":
            state.clock.now = T0 + 1.0
        else:
            state.clock.now = T0 + LIMIT_MINUTES * 60 * 2
            if stale == "pods":
                for c in range(state.CONTEXTS):  # a query uses the context (D6) without refreshing any pod
                    state.table.match_blocks(model(c), LORA, b"")
        self.table = state.table

    def time_evict_now(self, backend_name: str, entries: int, stale: str) -> None:
        self.table.evict_now()


class _TrimState:
    def __init__(self, module, entries: int) -> None:
        P = api()
        self.module = module
        self.entries = entries
        gen = rng(entries + 1)
        self.events = chain_events(gen, entries, 100, model(0), pod(0))
        # one new block beyond the bound: its store triggers the trim to 3/4 of the bound
        self.trigger = P.BlockStored(gen.integers(0, 2**64, size=1, dtype="uint64"), token_bytes(gen, 1, 64),
                                     model(0), LORA, source_pod=pod(1))
        self.table = None

    def fresh(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table = None
        self.table = make_table(self.module, max_prefixes_per_context=self.entries, max_contexts=10)
        for event in self.events:
            self.table.process_block_stored(event)

    def close(self) -> None:
        if self.table is not None:
            self.table.close()


class PrefixBoundTrim:
    """One context at its bound of ``entries`` prefixes; a 1-block BlockStored for another pod goes
    over it, and the table trims the context to three quarters of the bound (D4)."""

    params = (BACKENDS, [100_000, 1_000_000])
    param_names = ["backend", "entries"]
    repeat = HEAVY_REPEAT
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup(self, backend_name: str, entries: int) -> None:
        module = backend(backend_name)
        state = self.state = memo(("trim", backend_name, entries), lambda: _TrimState(module, entries))
        if state.table is None or state.table.stats()["prefixes"] != entries:
            state.fresh()
        self.table = state.table
        self.event = state.trigger

    def time_store_over_bound(self, backend_name: str, entries: int) -> None:
        self.table.process_block_stored(self.event)
