"""What the pure-Python locks do in a child of fork(), where only the forking thread lives: a lock that
another thread held stays held for ever there. The fallback table's lock, the Router's and the vLLM
subscriber's register here; the handler calls each one's ``_after_fork()``, which resets it, or gives it
a ``ForkedMutex`` when another thread was changing what it guards (docs/architecture.md, docs/routing.md).

Threads do not survive a fork either: a table's eviction thread registers with ``restart_after_fork``,
and its ``_restart_after_fork()`` runs once every lock is reset (a thread started before its table's
lock was reset could block for ever on the parent's lock).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["ForkedMutex", "reset_after_fork", "restart_after_fork"]


class ForkedMutex:
    """The mutex of something another thread was changing when the process forked: every acquire is
    a RuntimeError with ``message``."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def acquire(self) -> None:
        raise RuntimeError(self.message)

    def release(self) -> None:  # pragma: no cover - acquire never succeeds
        pass

    def _is_owned(self) -> bool:
        return False


_REGISTERED: "weakref.WeakSet[Any]" = weakref.WeakSet()
_RESTARTED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def reset_after_fork(lock: Any) -> None:
    """Have ``lock._after_fork()`` called in every child of fork() while the lock lives."""
    _REGISTERED.add(lock)


def restart_after_fork(worker: Any) -> None:
    """Have ``worker._restart_after_fork()`` called in every child of fork() while it lives, after
    every registered lock was reset."""
    _RESTARTED.add(worker)


if hasattr(os, "register_at_fork"):

    def _reset_in_child() -> None:
        for lock in list(_REGISTERED):
            lock._after_fork()
        for worker in list(_RESTARTED):
            worker._restart_after_fork()

    os.register_at_fork(after_in_child=_reset_in_child)
