"""The caller's code meeting the Router inside its own calls: a clock, a name's __hash__, a PodLoad's
property, a garbage-collector finalizer and a signal handler, each calling the same Router back.

Each of these hung a process once (a hostile-input search after issue 8): the Router called the clock and
hashed the caller's names while it held a plain lock, and a finalizer or a signal handler that ran in
one of its sections waited for that lock on its own thread. Now the caller's code runs before the lock
is taken, names are plain str under it, and a call that lands inside a section of its own thread
completes (stats; prefill_done and finished, done when the section ends) or raises a RuntimeError that
says why (choose). Every scenario ends with the router's books balanced: nothing in flight, and the
predicted index's count equal to what it holds.
"""

from __future__ import annotations

import gc
import random
import signal
from typing import Any, Callable, Dict, List

from common import REENTRY, FakeClock, fork_while_running, in_fork_child, make_table, toks

from prefixindex.routing import Choice, PodLoad, Router

PODS = [f"pod-{i}" for i in range(6)]


def _balanced(router: Router) -> None:
    stats = router.stats()
    assert stats["in_flight"] == {}, stats["in_flight"]
    held = sum(len(owners) for preds in router._predicted.values() for owners in preds.values())
    assert held == stats["predicted_entries"] == router._entries, (held, stats["predicted_entries"])
    assert not router._lock.inside and not router._lock.deferred


def _work(router: Router, rounds: int, pods: Any = None) -> None:
    """Choices and their ends, on a few prompts, as a router makes them."""
    for i in range(rounds):
        choice = router.choose("m", -1, toks(i % 5, i % 3, 7), PODS if pods is None else pods)
        if i % 2:
            router.prefill_done(choice)
        router.finished(choice)


def clock_calls_stats(backend: Any) -> None:
    box: Dict[str, Any] = {}
    clock = FakeClock()

    def reading() -> float:
        if "router" in box and not box.get("reading"):  # stats() reads the clock too: once deep
            box["reading"] = True
            box["seen"] = box["router"].stats()["decisions"]
            box["reading"] = False
        clock.now += 0.01
        return clock.now

    router = box["router"] = Router(make_table(backend), clock=reading)
    _work(router, 50)
    assert box["seen"] >= 49, box
    _balanced(router)


def pod_name_hash_calls_the_router(backend: Any) -> None:
    box: Dict[str, Any] = {}
    calls: List[int] = []

    class PodName(str):
        def __hash__(self) -> int:
            if "router" in box:
                calls.append(box["router"].stats()["decisions"])
            return str.__hash__(self)

        def __eq__(self, other: object) -> bool:
            return str.__eq__(self, other)

    router = box["router"] = Router(make_table(backend))
    _work(router, 30, [PodName(p) for p in PODS])
    # The names are made plain before anything hashes them (the candidate cache looks up lists of
    # exact str only), so the names' own code, which would re-enter the router, never runs at all.
    assert calls == [], "a pod name's own __hash__ ran"
    choice = router.choose("m", -1, toks(1), [PodName(p) for p in PODS])
    assert type(choice.pod) is str and all(type(p) is str for p in choice.cost), choice
    router.finished(choice)
    assert all(type(p) is str for p in router.stats()["predictions"])
    _balanced(router)


def model_name_hash_calls_the_router(backend: Any) -> None:
    box: Dict[str, Any] = {}

    class Model(str):
        def __hash__(self) -> int:
            if "router" in box:
                box["router"].stats()
            return str.__hash__(self)

    router = box["router"] = Router(make_table(backend))
    for i in range(30):
        router.finished(router.choose(Model("m"), -1, toks(i % 4, 9), PODS))
    assert all(type(key[0]) is str for key in router._predicted), list(router._predicted)
    _balanced(router)


def podload_property_calls_the_router(backend: Any) -> None:
    box: Dict[str, Any] = {}

    class LiveLoad(PodLoad):
        @property  # type: ignore[override]
        def kv_usage(self) -> float:
            box["router"].stats()
            return 0.5

        @kv_usage.setter
        def kv_usage(self, value: Any) -> None:
            pass

    router = box["router"] = Router(make_table(backend), kv_usage_tokens=10.0)
    for i in range(30):
        router.finished(router.choose("m", -1, toks(i % 4), {p: LiveLoad() for p in PODS}))
    _balanced(router)


class _Reenters:
    """A finalizer that calls `action` on the router; kept alive by a cycle so the collector runs it."""

    busy = False

    def __init__(self, action: Any) -> None:
        self.action = action
        self.me = self

    def __del__(self) -> None:
        if _Reenters.busy:  # the action's own allocations collect too: one level deep is enough
            return
        _Reenters.busy = True
        try:
            self.action()
        finally:
            _Reenters.busy = False


def _with_finalizers(router: Router, action: Any, rounds: int = 2000) -> None:
    """Rounds of choose and finished with garbage waiting, collected at thresholds that vary, so that
    collections land at every point of the router's calls, inside its sections too."""
    rng = random.Random(0)
    old = gc.get_threshold()
    try:
        for i in range(rounds):
            gc.set_threshold(rng.randint(1, 60))
            for _ in range(3):
                _Reenters(action)
            choice = router.choose("m", -1, toks(i % 5, i % 3, 7), PODS)
            router.finished(choice)
        gc.collect()
    finally:
        gc.set_threshold(*old)


def _reads_stats(backend: Any, interrupt: Callable[[Router, Callable[[], None]], None], who: str) -> None:
    """stats() called from Python code that interrupts the router's calls completes, inside too."""
    router = Router(make_table(backend))
    inside: List[bool] = []

    def read() -> None:
        inside.append(router._lock.inside)
        router.stats()

    interrupt(router, read)
    assert any(inside), f"no {who} ran inside a section ({len(inside)} ran)"
    _balanced(router)


def _finishes_requests(backend: Any, interrupt: Callable[[Router, Callable[[], None]], None], who: str,
                       requests: int) -> None:
    """Requests whose end is reported from Python code that interrupts the router: none is lost."""
    router = Router(make_table(backend))
    pending: List[Choice] = [router.choose("m", -1, toks(k), PODS) for k in range(requests)]
    inside: List[bool] = []

    def finish_one() -> None:
        if pending:
            inside.append(router._lock.inside)
            router.finished(pending.pop())

    interrupt(router, finish_one)
    assert any(inside), f"no {who} ran inside a section ({len(inside)} ran)"
    while pending:
        router.finished(pending.pop())
    _balanced(router)


def gc_finalizer_calls_stats(backend: Any) -> None:
    _reads_stats(backend, _with_finalizers, "finalizer")


def gc_finalizer_finishes_a_request(backend: Any) -> None:
    """A request object whose finalizer tells the router it finished: the end is never lost."""
    _finishes_requests(backend, _with_finalizers, "finalizer", 200)


def gc_finalizer_calls_choose(backend: Any) -> None:
    router = Router(make_table(backend))
    outcomes: Dict[str, int] = {"completed": 0, "refused": 0}

    def choose_and_finish() -> None:
        try:
            choice = router.choose("m", -1, toks(3), PODS)
        except RuntimeError as exc:
            assert REENTRY.search(str(exc)), exc
            outcomes["refused"] += 1
            return
        outcomes["completed"] += 1
        router.finished(choice)

    _with_finalizers(router, choose_and_finish)
    assert outcomes["completed"] > 100 and outcomes["refused"] > 0, outcomes
    _balanced(router)


def _with_signals(router: Router, handler: Callable[[], None], rounds: int = 3000) -> None:
    fired = [0]

    def on_alarm(signum: int, frame: Any) -> None:
        fired[0] += 1
        handler()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        _work(router, rounds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired[0] > 10, fired


def signal_handler_calls_stats(backend: Any) -> None:
    _reads_stats(backend, _with_signals, "handler")


def signal_handler_finishes_a_request(backend: Any) -> None:
    _finishes_requests(backend, _with_signals, "handler", 500)


def _route_once(router: Router) -> None:
    """What a fork child asks of the router: a choice and its end, counted."""
    before = router.stats()["decisions"]
    router.finished(router.choose("m", -1, toks(1, 2), PODS))
    assert router.stats()["decisions"] == before + 1


def fork_while_another_thread_routes(backend: Any) -> None:
    """fork() while another thread is inside the router's calls: in the child the router works, or
    raises a RuntimeError saying it cannot be used after fork; it never hangs on a lock the other
    thread held (the child has no such thread)."""
    router = Router(make_table(backend))
    outcomes = fork_while_running(lambda: _work(router, 20), lambda: _route_once(router), "forked", 30, 5,
                                  (0.0005, 0.005))
    print("fork children:", outcomes)
    _balanced(router)

    def quiet() -> int:  # nobody inside at this fork: the router works
        _route_once(router)
        return 0

    assert in_fork_child(quiet, "child of a quiet router") == 0


SCENARIOS = ["clock_calls_stats", "pod_name_hash_calls_the_router", "model_name_hash_calls_the_router",
             "podload_property_calls_the_router", "gc_finalizer_calls_stats", "gc_finalizer_finishes_a_request",
             "gc_finalizer_calls_choose", "signal_handler_calls_stats", "signal_handler_finishes_a_request",
             "fork_while_another_thread_routes"]
