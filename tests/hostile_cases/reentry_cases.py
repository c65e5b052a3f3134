"""Python code that runs during a call and calls back into the same table (issue 8: "Python code under
the mutex"; SPEC 7): a name's ``__hash__``/``__eq__``, a ``ready_pods`` generator, a ``clock=``, a garbage
collector finalizer.

Each call either completes or raises a RuntimeError saying the table was re-entered (``attempt``); the
process never aborts or hangs, and afterwards the table is consistent and answers a store and a match as
a fresh table does. Callbacks re-enter once at a time (``_Reenter``), so that the scenario itself is finite.
"""

from __future__ import annotations

import gc
import itertools
import threading
from typing import Any, Callable, Dict, List

from common import (AllBlocksCleared, BlockRemoved, BlockStored, REENTRY, attempt, chain, check_usable, consistent,
                    make_table, stored, toks)

M = "model"


class _Reenter:
    """Runs the inner call of a callback, once at a time, and counts that it ran."""

    def __init__(self) -> None:
        self.armed = False
        self.busy = False
        self.fired = 0
        self.inner: Callable[[], Any] = lambda: None

    def __call__(self) -> None:
        if not self.armed or self.busy:
            return
        self.busy = True
        try:
            self.fired += 1
            self.inner()  # a RuntimeError "re-entered" goes up through the outer call, which accepts it
        finally:
            self.busy = False


def _inner_calls(t: Any) -> Dict[str, Callable[[], Any]]:
    fresh = itertools.count(1000)
    return {
        "stats": lambda: t.stats(),
        "snapshot": lambda: t.snapshot(),
        "match": lambda: t.match_blocks(M, -1, toks(0, 1, 2)),
        "store": lambda: t.process_block_stored(stored([next(fresh)], [next(fresh) % 50], "inner",
                                                       model=f"inner-{next(fresh) % 3}")),
        "add_prefix": lambda: t.add_prefix(M, -1, "inner", chain(0, 1)),
        "evict": lambda: t.evict_now(),
        "remove": lambda: t.process_block_removed(BlockRemoved([1], M, -1, "p")),
    }


def _workload(t: Any, model: Callable[[], Any], pod: Callable[[], Any], ready: Callable[[], Any],
              rounds: int = 15) -> None:
    for r in range(rounds):
        attempt(t.process_block_stored, BlockStored([1, 2, 3], toks(0, 1, 2), model(), -1, pod()))
        attempt(t.match_blocks, model(), -1, toks(0, 1, 2), ready())
        attempt(t.match_prefix, model(), -1, toks(0, 1), ready())
        attempt(t.match, model(), -1, toks(0, 1, 2, 3), ready())
        attempt(t.add_prefix, model(), -1, pod(), chain(0, 1))
        attempt(t.process_block_removed, BlockRemoved([3], model(), -1, pod()))
        attempt(t.process_events, [BlockStored([3], toks(2), model(), -1, pod(), 2),
                                   BlockRemoved([9], model(), -1, pod())])
        attempt(t.remove_prefix, model(), -1, "nobody")
        attempt(t.evict_now)
        attempt(t.stats)
        attempt(t.snapshot)


def _finish(t: Any, backend: Any, hook: _Reenter, must_fire: bool) -> None:
    hook.armed = False
    if must_fire:
        assert hook.fired > 0, "the callback never ran: the scenario tested nothing"
    consistent(t)
    check_usable(t, backend)


# --- a name's __hash__ / __eq__ ---------------------------------------------------------------------

def _name_class(hook: _Reenter) -> type:
    class CallbackStr(str):
        def __hash__(self) -> int:
            hook()
            return str.__hash__(self)

        def __eq__(self, other: object) -> bool:
            hook()
            return str.__eq__(self, other)

    return CallbackStr


def _names(role: str, inner: str) -> Callable[[Any], None]:
    def run(backend: Any) -> None:
        t = make_table(backend, max_contexts=3)
        hook = _Reenter()
        hook.inner = _inner_calls(t)[inner]
        cls = _name_class(hook)
        model = (lambda: cls(M)) if role == "model" else (lambda: M)
        pod = (lambda: cls("p")) if role == "pod" else (lambda: "p")
        ready = (lambda: [cls("p"), cls("inner")]) if role == "ready" else (lambda: None)
        hook.armed = True
        _workload(t, model, pod, ready)
        _finish(t, backend, hook, must_fire=False)  # names taken as plain str never call back: fine
    return run


# --- a ready_pods generator ---------------------------------------------------------------------------

def _ready_generator(inner: str) -> Callable[[Any], None]:
    def run(backend: Any) -> None:
        t = make_table(backend, max_contexts=3)
        hook = _Reenter()
        hook.inner = _inner_calls(t)[inner]

        def ready() -> Any:
            def gen() -> Any:
                yield "p"
                hook()
                yield "inner"
            return gen()

        hook.armed = True
        _workload(t, lambda: M, lambda: "p", ready)
        _finish(t, backend, hook, must_fire=True)
    return run


# --- the clock ----------------------------------------------------------------------------------------

def _clock(inner: str) -> Callable[[Any], None]:
    def run(backend: Any) -> None:
        hook = _Reenter()

        def clock() -> float:
            hook()
            return 1000.0

        # max_contexts=2: a store from the clock can evict the very context the outer call works on
        t = make_table(backend, clock=clock, max_contexts=2)
        hook.inner = _inner_calls(t)[inner]
        hook.armed = True
        _workload(t, lambda: M, lambda: "p", lambda: None)
        _finish(t, backend, hook, must_fire=True)
    return run


def clock_raises(backend: Any) -> None:
    """A clock that raises: the call raises that error (or completes), and the table is not left locked."""
    state = {"raise": False}

    def clock() -> float:
        if state["raise"]:
            raise ZeroDivisionError("clock failed")
        return 1000.0

    t = make_table(backend, clock=clock)
    for _ in range(5):
        state["raise"] = True
        for call in (lambda: t.process_block_stored(stored([1, 2], [0, 1], "p")),
                     lambda: t.match_blocks("m", -1, toks(0, 1)), lambda: t.add_prefix("m", -1, "q", chain(0)),
                     lambda: t.process_block_removed(BlockRemoved([1], "m", -1, "p")), lambda: t.evict_now()):
            try:
                call()  # type: ignore[no-untyped-call]  # (a tuple of lambdas)
            except ZeroDivisionError:
                pass
        state["raise"] = False
        consistent(t)  # a lock left held would hang here (the watchdog reports it)
    check_usable(t, backend)


def clock_returns_junk(backend: Any) -> None:
    """A clock that returns None, a str or NaN: a TypeError/ValueError (or completion), never a hang."""
    values = iter([None, "soon", float("nan"), object()] * 10)
    live = {"on": True}
    t = make_table(backend, clock=lambda: next(values) if live["on"] else 1000.0)
    for _ in range(8):
        for call in (lambda: t.process_block_stored(stored([1, 2], [0, 1], "p")),
                     lambda: t.match_blocks("m", -1, toks(0, 1)), lambda: t.evict_now()):
            try:
                call()  # type: ignore[no-untyped-call]  # (a tuple of lambdas)
            except (TypeError, ValueError):
                pass
    live["on"] = False
    check_usable(t, backend)


def _call_recording(call: Callable[[], Any], bad: List[str]) -> None:
    """A finalizer's inner call: a RuntimeError saying the table was re-entered is accepted, anything
    else is recorded in `bad` (an exception cannot leave a finalizer), for the scenario to report."""
    try:
        call()
    except RuntimeError as exc:
        if not REENTRY.search(str(exc)):
            bad.append(repr(exc))
    except Exception as exc:  # noqa: BLE001 - everything else is a failure, reported by the caller
        bad.append(repr(exc))


def _judge_finalizers(t: Any, backend: Any, fired: int, bad: List[str]) -> None:
    assert fired > 0, "no finalizer ran: the scenario tested nothing"
    assert not bad, f"finalizers that called back into the table failed: {bad[:5]}"
    consistent(t)
    check_usable(t, backend)


# --- garbage-collector finalizers ---------------------------------------------------------------------

def _gc(inner: str, eviction_thread: bool = False) -> Callable[[Any], None]:
    def run(backend: Any) -> None:
        kw = {"background_eviction": True, "eviction_interval_seconds": 0.002} if eviction_thread else {}
        t = make_table(backend, max_contexts=3, **kw)
        calls = _inner_calls(t)
        fired: List[int] = [0]
        bad: List[str] = []
        busy = threading.local()

        class Cycle:
            def __init__(self) -> None:
                self.me = self

            def __del__(self) -> None:
                if getattr(busy, "on", False):
                    return
                busy.on = True
                try:
                    fired[0] += 1
                    _call_recording(calls[inner], bad)
                finally:
                    busy.on = False

        old = gc.get_threshold()
        gc.set_threshold(1)
        try:
            for i in range(600):
                for _ in range(3):
                    Cycle()
                k = i % 40
                attempt(t.process_block_stored, BlockStored([k, k + 1], toks(k, k + 1), f"m{i % 4}", -1, "p"))
                attempt(t.match_blocks, f"m{i % 4}", -1, toks(k, k + 1))
                attempt(t.match_prefix, f"m{(i + 1) % 4}", -1, toks(k, k + 1, k + 2), ["p"])
                if i % 50 == 0:
                    attempt(t.stats)
                    attempt(t.snapshot)
        finally:
            gc.set_threshold(*old)
            gc.collect()
        t.close()
        _judge_finalizers(t, backend, fired[0], bad)
    return run


# --- the ready list a table remembers, freed by a later query --------------------------------------------

def _dropped_ready_list(inner: str) -> Callable[[Any], None]:
    """The compiled table remembers the last ready list it was given (by identity, with the ids found
    for it); the query that replaces it drops the table's reference. The caller has since put an object
    into that list whose finalizer calls back into the table: it ran inside the section of the query
    that dropped it and, clearing the context being walked, freed what the walk read (SIGSEGV); or its
    inner call started a section of its own there, which left the garbage collector disabled for good."""
    def run(backend: Any) -> None:
        t = make_table(backend, max_contexts=3)
        calls = _inner_calls(t)
        calls["clear"] = lambda: t.process_all_blocks_cleared(AllBlocksCleared("p"))
        fired: List[int] = [0]
        bad: List[str] = []

        class Finalizer:
            def __del__(self) -> None:
                fired[0] += 1
                _call_recording(calls[inner], bad)

        assert gc.isenabled()
        for i in range(30):
            attempt(t.process_block_stored, BlockStored([1, 2, 3], toks(0, 1, 2), M, -1, "p"))
            ready = ["p"]
            attempt(t.match_blocks, M, -1, toks(0, 1, 2), ready)  # the table may remember `ready` now
            ready.append(Finalizer())
            del ready  # the table's reference may be the last one
            query = toks(0, 1, 2) if i % 2 else toks(*range(1200))  # short, and long (outside the GIL)
            attempt(t.match_blocks, M, -1, query, ["p"])
            assert gc.isenabled(), f"the garbage collector was left disabled (round {i})"
        gc.collect()
        _judge_finalizers(t, backend, fired[0], bad)
    return run


def clock_puts_a_callback_in_the_ready_list(backend: Any) -> None:
    """A clock= that appends, to the ready list of the call that reads it, an object whose __hash__
    calls back into the table: the clock is read before ready_pods, so the object is refused as a pod
    name (a TypeError) on both backends, and its __hash__ never runs inside a section."""
    ready: List[Any] = ["p"]
    armed = {"on": False}
    hashed: List[int] = [0]

    class Evil:
        def __hash__(self) -> int:
            hashed[0] += 1
            attempt(t.process_all_blocks_cleared, AllBlocksCleared("p"))
            return 1

    def clock() -> float:
        if armed["on"]:
            armed["on"] = False
            ready.append(Evil())
        return 1000.0

    t = make_table(backend, clock=clock)
    for i in range(10):
        attempt(t.process_block_stored, BlockStored([1, 2, 3], toks(0, 1, 2), M, -1, "p"))
        del ready[1:]
        armed["on"] = True
        try:
            t.match_blocks(M, -1, toks(0, 1, 2) if i % 2 else toks(*range(1200)), ready)
        except TypeError as exc:
            assert "ready_pods must hold pod names (str), got Evil" in str(exc), exc
        else:
            raise AssertionError("a ready list holding a non-str object was accepted")
    assert hashed[0] == 0, "the object's __hash__ ran"
    consistent(t)
    check_usable(t, backend)


# --- the background eviction thread meeting a re-entering clock --------------------------------------

def eviction_thread_with_reentering_clock(backend: Any) -> None:
    hook = _Reenter()
    lock = threading.Lock()

    def clock() -> float:
        # One re-entry at a time across both threads (_Reenter's flag is not thread-safe). Never wait
        # for this lock: the other thread may hold it while it waits for the table, held by this one.
        if lock.acquire(blocking=False):
            try:
                hook()
            finally:
                lock.release()
        return 1000.0

    t = make_table(backend, clock=clock, background_eviction=True, eviction_interval_seconds=0.002)
    hook.inner = _inner_calls(t)["match"]
    hook.armed = True
    _workload(t, lambda: M, lambda: "p", lambda: None, rounds=40)
    assert t.eviction_thread_alive
    t.close()
    _finish(t, backend, hook, must_fire=True)


INNER = ("stats", "snapshot", "match", "store", "add_prefix", "evict", "remove")
SCENARIOS: List[str] = []
for _inner in INNER:
    for _role in ("model", "pod", "ready"):
        globals()[f"name_{_role}_hash_calls_{_inner}"] = _names(_role, _inner)
        SCENARIOS.append(f"name_{_role}_hash_calls_{_inner}")
    globals()[f"ready_generator_calls_{_inner}"] = _ready_generator(_inner)
    globals()[f"clock_calls_{_inner}"] = _clock(_inner)
    SCENARIOS += [f"ready_generator_calls_{_inner}", f"clock_calls_{_inner}"]
for _inner in ("stats", "store", "match"):
    globals()[f"gc_finalizer_calls_{_inner}"] = _gc(_inner)
    globals()[f"gc_finalizer_calls_{_inner}_with_eviction_thread"] = _gc(_inner, True)
    SCENARIOS += [f"gc_finalizer_calls_{_inner}", f"gc_finalizer_calls_{_inner}_with_eviction_thread"]
SCENARIOS += ["clock_raises", "clock_returns_junk", "eviction_thread_with_reentering_clock",
              "clock_puts_a_callback_in_the_ready_list"]
for _inner in ("stats", "match", "store", "clear", "evict"):
    globals()[f"dropped_ready_list_finalizer_calls_{_inner}"] = _dropped_ready_list(_inner)
    SCENARIOS.append(f"dropped_ready_list_finalizer_calls_{_inner}")
