"""The background staleness pass (SPEC 6), shared by both backends.

The thread holds only a weak reference to its table, so a table that is dropped without ``close()``
is still garbage collected, and the thread then ends at its next wake-up. In a child of fork(), where
no thread of the parent's runs, a table that was not closed gets an eviction thread of its own again
(``_fork.restart_after_fork``): a pre-forking server's workers keep evicting stale contexts and pods.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from ._fork import restart_after_fork

log = logging.getLogger("prefixindex")


class EvictionThread:
    def __init__(self, table: Any, interval_seconds: float) -> None:
        self._table_ref = weakref.ref(table)
        self._interval = interval_seconds
        self._start()
        restart_after_fork(self)

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._table_ref, self._interval, self._stop),
                                        name="prefixindex-eviction", daemon=True)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        """In a child of fork(): the parent's thread is not here; a table not closed gets a new one."""
        if not self._stop.is_set() and self._table_ref() is not None:
            self._start()  # (a new Event too: the old one's lock may have been held by the parent's thread)

    @staticmethod
    def _run(table_ref: "weakref.ref[Any]", interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            table = table_ref()
            if table is None:
                return
            try:
                table.evict_now()
            except BaseException:  # never let one bad pass end staleness eviction for good: a clock=
                # that raises SystemExit is as much one bad pass as one that raises ValueError
                log.exception("prefixindex: eviction pass failed")
            del table

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
