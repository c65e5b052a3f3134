"""The background staleness pass (SPEC 6), shared by both backends.

The thread holds only a weak reference to its table, so a table that is dropped without ``close()``
is still garbage collected, and the thread then ends at its next wake-up.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

log = logging.getLogger("prefixindex")


class EvictionThread:
    def __init__(self, table: Any, interval_seconds: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(weakref.ref(table), interval_seconds, self._stop),
                                        name="prefixindex-eviction", daemon=True)
        self._thread.start()

    @staticmethod
    def _run(table_ref: "weakref.ref[Any]", interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            table = table_ref()
            if table is None:
                return
            try:
                table.evict_now()
            except Exception:  # never let one bad pass end staleness eviction for good
                log.exception("prefixindex: eviction pass failed")
            del table

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
