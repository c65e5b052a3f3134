"""The pure-Python backend's table lock, and what happens to it across fork() (docs/architecture.md).

``_core_py`` takes one ``_TableLock`` per table; each registers with ``_fork`` so that it is reset in
a child of fork().
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ._config import REENTERED_MESSAGE, UNBUILT_MESSAGE
from ._fork import ForkedMutex, reset_after_fork

__all__ = ["_TableLock", "_Unbuilt"]

_FORKED = ("the process forked while another thread was inside this table, which may be half-changed in the "
           "child: build a new table in the child")


class _TableLock:
    """The table's lock: one holder at a time; the holder's thread re-entering is a RuntimeError.

    Python code can run inside a critical section of this backend (a garbage-collector finalizer runs
    wherever an allocation triggers a collection); if it calls back into the same table, a plain lock
    would deadlock and a reentrant one would let it see a half-made change (SPEC 7)."""

    __slots__ = ("_lock", "_owner", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Optional[int] = None
        reset_after_fork(self)

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(REENTERED_MESSAGE)
        self._lock.acquire()
        self._owner = me

    def __exit__(self, *exc: Any) -> None:
        self._owner = None
        self._lock.release()

    def _after_fork(self) -> None:
        # In a child of fork() only the forking thread lives: a lock another thread held stays held.
        if self._owner is not None and self._owner != threading.get_ident():
            self._lock = ForkedMutex(_FORKED)  # type: ignore[assignment]
        else:
            self._lock = threading.Lock()
        self._owner = None


class _Unbuilt:
    """The class-level lock of a table whose __init__ never ran."""

    def __enter__(self) -> None:
        raise RuntimeError(UNBUILT_MESSAGE)

    def __exit__(self, *exc: Any) -> None:  # pragma: no cover - __enter__ always raises
        pass
