"""The run loop that the two state-comparing drivers share (test_differential_state.py: both backends side
by side; test_reference_model.py: one backend against the model), over random_calls.Calls."""

from __future__ import annotations

from typing import Any, Tuple

from random_calls import COLD, LONG, Calls, short, stored


class Driver:
    """What the two drivers (test_differential_state: both backends side by side; test_reference_model:
    one backend against the model) share: the run loop over ``calls``, and the tick and cold
    sequences. Each driver gives apply, compare and reload, and the hooks below for its own state."""

    def __init__(self, profile: str, seed: int, steps: int, clock: Any) -> None:
        self.calls = Calls(profile, seed, steps)
        self.clock = clock
        self.steps, self.step_no = steps, 0
        self.seen: set = set()  # what this sequence reached (asserted at the end: else it proves nothing)

    def apply(self, op):
        raise NotImplementedError

    def compare(self, op) -> None:
        raise NotImplementedError

    def reload(self, shrink: bool) -> None:
        raise NotImplementedError

    def where(self, op) -> str:
        return f"step {self.step_no}: {short(op)}"

    # -- hooks: the state the tick and cold sequences read --------------------------------------------

    def context_pods(self) -> dict:
        """(model, lora) -> the pods holding a block there."""
        raise NotImplementedError

    def tick_counter(self, key) -> int:
        """The context's tick counter, as a table that never renumbers has it."""
        raise NotImplementedError

    def set_next_tick(self, key, target: int) -> None:
        raise NotImplementedError

    def map_sizes(self, key, pod) -> Tuple[int, int]:
        """(prefixes of the context, engine hashes of the pod there)."""
        raise NotImplementedError

    # -- the sequences ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Move one context's tick counter forwards (to one value everywhere), then match and store
        there: the store, at least, takes ticks from 2**31 on."""
        held = self.context_pods()
        if not held:
            self.apply(("store", stored([1], [0] * self.calls.bs, "m", -1, "pod-a", None, [0] * self.calls.bs)))
            held = self.context_pods()
        key = self.calls.r.choice(sorted(held))
        pod = self.calls.r.choice(sorted(held[key]))
        n, follow = self.calls.tick_follow(key, pod)
        # from the counter of a table that never renumbers (the fallback's, the model's): it is the
        # largest, so a value no smaller than it moves every counter forwards (backwards would give
        # duplicate ticks)
        target = self.calls.tick_target(self.tick_counter(key), n)
        self.set_next_tick(key, target)
        self.compare(("tick", key, target))
        for op in follow:
            result = self.apply(op)
        assert result == ("ok", None), result
        assert self.tick_counter(key) >= 2**31, "the store after the jump did not cross 2**31"
        self.seen.add("tick renumbering")

    def cold(self) -> None:
        """The generator's cold sequence, checking that the maps it is meant to reach do hold COLD
        entries or more when the multi-block calls come."""
        key, pod, ops = self.calls.cold_sequence()
        for i, op in enumerate(ops):
            if i in (1, 2, 3):   # the multi-block store, the walk, the multi-block removal
                prefixes, engine = self.map_sizes(key, pod)
                assert prefixes >= COLD and engine >= COLD, (i, prefixes, engine)
            assert self.apply(op)[0] == "ok", self.where(op)
        self.seen.add("cold maps")

    def run(self) -> None:
        for self.step_no in range(self.steps):
            op = self.calls.next(self.step_no)
            kind = op[0]
            if kind == "advance":
                self.clock.advance(op[1])
                self.compare(op)          # idle times are in the state
            elif kind == "nothing":       # (the shared ready list was changed in place)
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
