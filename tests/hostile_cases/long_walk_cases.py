"""Long walks outside the GIL (docs/architecture.md, "Long walks"; issue 8, Deliver 5, 6 and 8).

A query hashed without the GIL whose walk will be long also walks without it, inside the table's walk
gate; a call that changes the index waits until no walk is in the gate. These scenarios attack that
design: changes made between the walk and its closing section (the walk's entries may be gone), writers
beside long walkers (every answer must be one the index really held), and fork() while a walk is in
the gate (the child must not wait for a walker that does not exist there).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

import numpy as np

from common import (AllBlocksCleared, BlockRemoved, BlockStored, FakeClock, consistent, fail_now, in_fork_child,
                    make_table)

LIVENESS = 60.0
BLOCKS = 2048  # 32,768 tokens at block_size 16: long enough to walk outside the GIL


def _prompt(blocks: int, offset: int = 0) -> np.ndarray:
    return np.arange(offset, offset + blocks * 16, dtype=np.uint32)


def _long_table(backend: Any, clock: Any = None) -> Any:
    t = make_table(backend, block_size=16, max_prefixes_per_context=10**6, clock=clock or FakeClock())
    t.process_block_stored(BlockStored(list(range(1, BLOCKS + 1)), _prompt(BLOCKS), "m", -1, "a"))
    t.process_block_stored(BlockStored(list(range(1, BLOCKS + 1)), _prompt(BLOCKS), "m", -1, "b"))
    return t


def _compiled_core(backend: Any) -> Any:
    return backend if hasattr(backend, "_debug_set_after_walk") else None


# --- the index changes between a walk and its closing section (compiled: the hook runs there) ------

def _changes() -> Dict[str, Callable[[Any, Any], Any]]:
    prompt = _prompt(BLOCKS)
    return {
        "nothing": lambda t, clock: None,
        "pod cleared": lambda t, clock: t.process_all_blocks_cleared(AllBlocksCleared(source_pod="b")),
        "blocks removed midway": lambda t, clock: t.process_block_removed(BlockRemoved(list(range(700, BLOCKS + 1)), "m",
                                                                                -1, "a")),
        "context dropped": lambda t, clock: (t.remove_prefix("m", -1, "a"), t.remove_prefix("m", -1, "b")),
        "pod added": lambda t, clock: t.process_block_stored(BlockStored(list(range(1, BLOCKS + 1)), prompt, "m", -1, "c")),
        "both pods gone, another stored": lambda t, clock: (
            t.remove_prefix("m", -1, "a"), t.remove_prefix("m", -1, "b"),
            t.process_block_stored(BlockStored([9, 10], prompt[:32], "m", -1, "d"))),
        "evicted by the clock": lambda t, clock: (setattr(clock, "now", clock.now + 10**9), t.evict_now()),
    }


def changed_between_walk_and_result(backend: Any) -> None:
    """Whatever changes between the walk and its result, the result is what the index holds after the
    change (the closing section walks again), and the index stays consistent; never a crash."""
    core = _compiled_core(backend)
    if core is None:
        print("the pure-Python backend walks with its lock held: nothing can change mid-walk")
        return
    prompt = _prompt(BLOCKS)
    for name, change in _changes().items():
        for method in ("match_blocks", "match_prefix", "match"):
            clock = FakeClock()
            t = _long_table(backend, clock)
            calls: List[int] = []

            def hook(t: Any = t, change: Any = change, clock: Any = clock) -> None:
                calls.append(1)
                change(t, clock)

            core._debug_set_after_walk(hook)
            try:
                got = getattr(t, method)("m", -1, prompt, ["a", "b", "c", "d"])
            finally:
                core._debug_set_after_walk(None)
            assert calls == [1], f"{name}: the walk did not go outside the GIL ({len(calls)} hook calls)"
            expected = getattr(t, method)("m", -1, prompt, ["a", "b", "c", "d"])
            if method == "match_blocks":
                assert got == expected, (name, method, got, expected)
            else:
                assert got[0] == expected[0], (name, method, got[0], expected[0])
                assert np.array_equal(got[1], expected[1]), (name, method)
            consistent(t)
            t.close()
    print("changes between walk and result:", len(_changes()))


# --- writers beside long walkers: every answer is a state the index held -------------------------

def writers_beside_long_walks(backend: Any) -> None:
    """Two threads match 32,768-token prompts while a third keeps changing pod b (removing its tail,
    clearing it, storing it again, adding and dropping pod c). Pod a never changes: it must always match
    all its blocks; b must match a run it really held; the writer must finish (never starved)."""
    t = _long_table(backend)
    prompt = _prompt(BLOCKS)
    stop = threading.Event()
    bad: List[str] = []
    counts = [0, 0]
    valid_b = {0, 699, BLOCKS}

    def reader(i: int) -> None:
        while not stop.is_set():
            got = t.match_blocks("m", -1, prompt, ["a", "b"]) if i else t.match("m", -1, prompt, ["a", "b"])[0]
            if got.get("a") != BLOCKS or got.get("b", 0) not in valid_b:
                bad.append(repr(got))
                stop.set()
            counts[i] += 1

    done = [0]

    def writer() -> None:
        for k in range(150):
            step = k % 3
            if step == 0:
                t.process_block_removed(BlockRemoved(list(range(700, BLOCKS + 1)), "m", -1, "b"))
            elif step == 1:
                t.remove_prefix("m", -1, "b")
            else:
                t.process_block_stored(BlockStored(list(range(1, BLOCKS + 1)), prompt, "m", -1, "b"))
            if k % 10 == 0:
                t.add_prefix("m", -1, "c", t.get_prefix_hashes(prompt[:1600]))
                t.remove_prefix("m", -1, "c")
            done[0] = k + 1

    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for r in readers:
        r.start()
    while min(counts) == 0 and not bad:
        time.sleep(0.001)
    w = threading.Thread(target=writer, daemon=True)
    started = time.monotonic()
    w.start()
    w.join(LIVENESS)
    if w.is_alive():
        fail_now(f"WRITER STARVED: {done[0]} of 150 changes after {LIVENESS:.0f} s beside 2 long walkers")
    took = time.monotonic() - started
    stop.set()
    for r in readers:
        r.join(LIVENESS)
        if r.is_alive():
            fail_now("a long walker did not finish")
    assert not bad, f"a match saw a state the index never held: {bad[0]}"
    consistent(t)
    print(f"150 changes in {took:.2f} s beside {sum(counts)} long matches")


# --- fork() while a walk is in the gate ---------------------------------------------------------------

def _child_works(t: Any) -> int:
    t.process_block_stored(BlockStored([77, 78], _prompt(2, 999), "fork", -1, "after-fork"))
    got = t.match_blocks("fork", -1, _prompt(2, 999))
    assert got == {"after-fork": 2}, got
    assert t.match_blocks("m", -1, _prompt(BLOCKS), ["a"]) == {"a": BLOCKS}
    return 0


def _fork_and_check(t: Any, what: str, refusal_allowed: bool) -> None:
    """The child's table works; on the pure-Python backend it may instead refuse with its documented
    RuntimeError about fork (its lock was held by a thread the child does not have)."""
    def child() -> int:
        try:
            return _child_works(t)
        except RuntimeError as exc:
            if refusal_allowed and "fork" in str(exc):
                return 0
            raise

    code = in_fork_child(child, what)
    assert code == 0, f"fork child ({what}) failed; its traceback is above"


def _fake_walker(t: Any, seconds: float) -> threading.Thread:
    """Compiled: a thread that is a walk outside the GIL for `seconds`, started once it is in the gate."""
    th = threading.Thread(target=t._debug_walk_in_gate, args=(seconds,), daemon=True)
    th.start()
    deadline = time.monotonic() + LIVENESS
    while t._debug_walkers() == 0:
        if time.monotonic() > deadline:
            fail_now("the fake walker never entered the gate")
        time.sleep(0.001)
    return th


def fork_while_a_walk_is_outside(backend: Any) -> None:
    """A child forked while a walk is in the gate (a fake walk of 3 s on the compiled backend, so it
    surely is; real long walks in a loop in another thread on both) stores and matches; so does the
    parent afterwards."""
    t = _long_table(backend)
    if _compiled_core(backend) is not None:
        th = _fake_walker(t, 3.0)
        _fork_and_check(t, "a walk in the gate", False)
        th.join(LIVENESS)
        assert t._debug_walkers() == 0
    stop = threading.Event()
    prompt = _prompt(BLOCKS)

    def walker() -> None:
        while not stop.is_set():
            t.match_blocks("m", -1, prompt, ["a"])

    th = threading.Thread(target=walker, daemon=True)
    th.start()
    for attempt in range(8):
        time.sleep(0.003 * attempt)
        _fork_and_check(t, f"walker running, attempt {attempt}", _compiled_core(backend) is None)
    stop.set()
    th.join(LIVENESS)
    t.process_block_stored(BlockStored([5], _prompt(1, 5000), "parent", -1, "p"))
    assert t.match_blocks("parent", -1, _prompt(1, 5000)) == {"p": 1}
    consistent(t)


def writer_waits_for_the_gate(backend: Any) -> None:
    """Compiled: while a walk is in the gate, a change waits for it (never runs beside it); matches and
    reads do not wait."""
    if _compiled_core(backend) is None:
        print("the pure-Python backend has no walk gate")
        return
    t = _long_table(backend)
    prompt = _prompt(BLOCKS)
    th = _fake_walker(t, 2.0)
    assert t.match_blocks("m", -1, prompt, ["a"]) == {"a": BLOCKS}  # a read beside a walk: no wait
    assert t.stats()["entries"] == 2 * BLOCKS
    assert t._debug_walkers() == 1, "the fake walk left the gate before the reads were done"
    t.remove_prefix("m", -1, "b")  # waits until the walk has left the gate (it needs no GIL to)
    assert t._debug_walkers() == 0, "a change ran while a walk was outside the GIL"
    th.join(LIVENESS)
    assert t.match_blocks("m", -1, prompt) == {"a": BLOCKS}
    consistent(t)
