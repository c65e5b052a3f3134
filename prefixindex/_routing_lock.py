"""The Router's lock: reentrant, with an "inside a section" flag, and reset in a child of fork()
(docs/routing.md, "Threads"; D15).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List

from ._fork import ForkedMutex, reset_after_fork

__all__ = ["_REENTERED", "_RouterLock"]

_FORKED = ("the process forked while another thread was inside this Router, which may be half-changed in the "
           "child: build a new Router in the child")
_REENTERED = ("the Router was re-entered from Python code that ran during one of its own calls on the same "
              "thread (a finalizer or a signal handler): call choose() from outside it")


class _RouterLock:
    """The router's lock, which its own thread can meet again: a finalizer or a signal handler runs
    between any two bytecodes, also inside one of the router's sections, and may call the router.

    The mutex is reentrant so that such a call never waits for its own thread; ``inside`` says whether
    the thread that holds it is in the middle of a section. It is set after the mutex is taken and
    cleared before it is released, so a call that lands in either gap finds the state whole and may go
    on. A call that finds ``inside`` set is told so by ``enter()``; what it may do then is the
    router's to decide (docs/routing.md, "Threads")."""

    __slots__ = ("_mutex", "inside", "deferred", "__weakref__")

    def __init__(self) -> None:
        self._mutex: Any = threading.RLock()
        self.inside = False
        self.deferred: List[Callable[[], None]] = []  # work of re-entered calls, done before leaving
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """In a child of fork(), where only the forking thread lives: a mutex another thread held stays
        held for ever. A router that no other thread was changing gets a new one; one that another
        thread was inside a section of may be half-changed, and refuses every call (docs/routing.md)."""
        if self._mutex._is_owned():  # the forking thread's own section goes on in the child
            return
        if self.inside:
            self._mutex = ForkedMutex(_FORKED)
            return
        self._mutex = threading.RLock()
        self.deferred.clear()

    def enter(self) -> bool:
        """Take the lock and start a section; False (holding nothing more) when this thread is inside one."""
        self._mutex.acquire()
        if self.inside:
            self._mutex.release()
            return False
        self.inside = True
        return True

    def leave(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()
        self.inside = False
        self._mutex.release()

    def __enter__(self) -> None:  # a section that a re-entered call may not open
        if not self.enter():
            raise RuntimeError(_REENTERED)

    def __exit__(self, *exc: Any) -> None:
        self.leave()
