"""A vLLM subscriber's snapshot: the table's snapshot plus each pod's position, for a warm restart.

The positions (``VLLMSubscriber.positions()``: per pod, the last applied batch sequence number and what
is known of the publisher) ride in the XTRA section of the table snapshot (docs/snapshot.md,
"Subscriber positions"), so one file, written atomically, always holds a table and positions that
belong together. A subscriber started from it (``VLLMSubscriber(table, pods, resume=positions)``) asks
each pod's replay endpoint for the batches after its position.

Positions are read before the table is copied: the table then holds at least every batch the positions
name, and possibly a few later ones, which the restarted subscriber applies again. Re-applying a
pod's batches in order on top of a state that already holds them leaves the same entries (stores are
idempotent, removals and clears take out what the later batches would), so a restarted router ends
with the same ``snapshot()`` as one that never stopped. A save after ``stop()`` is exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

from . import _snapshot
from ._snapshot import File, SnapshotError

__all__ = ["POSITIONS_KIND", "PeriodicSaver", "add_arguments", "check_arguments", "decode_positions",
           "encode_positions", "load_subscriber_snapshot", "open_table", "save_subscriber"]

POSITIONS_KIND = "prefixindex.vllm-positions"
POSITIONS_VERSION = 1

T = TypeVar("T")
log = logging.getLogger("prefixindex")


def _check_position(name: Any, position: Any) -> Dict[str, Any]:
    """One pod's position in its canonical form; a ValueError/TypeError says what is wrong."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"positions: pod names must be non-empty str, got {name!r}")
    if not isinstance(position, Mapping):
        raise TypeError(f"positions[{name!r}] must be a mapping, not {type(position).__name__}")
    seq = position.get("seq")
    if type(seq) is not int or not 0 <= seq < 2**64:
        raise ValueError(f"positions[{name!r}]['seq'] must be an int in [0, 2**64), got {seq!r}")
    publisher = position.get("publisher") or {}
    if not isinstance(publisher, Mapping):
        raise TypeError(f"positions[{name!r}]['publisher'] must be a mapping, not {type(publisher).__name__}")
    ts, endpoint = publisher.get("ts"), publisher.get("endpoint")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
        raise ValueError(f"positions[{name!r}]['publisher']['ts'] must be a finite number or None, got {ts!r}")
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(f"positions[{name!r}]['publisher']['endpoint'] must be a str or None, got {endpoint!r}")
    return {"seq": seq, "publisher": {"endpoint": endpoint, "ts": ts}}


def encode_positions(positions: Mapping[str, Any]) -> bytes:
    """The XTRA payload for ``positions``: UTF-8 JSON, keys sorted (so the bytes are deterministic)."""
    if not isinstance(positions, Mapping):
        raise TypeError(f"positions must be a mapping of pod name -> position, not {type(positions).__name__}")
    pods = {name: _check_position(name, p) for name, p in positions.items()}
    doc = {"kind": POSITIONS_KIND, "version": POSITIONS_VERSION, "pods": pods}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "surrogatepass")


def decode_positions(data: bytes) -> Dict[str, Dict[str, Any]]:
    """Positions from an XTRA payload (``{}`` for an empty one: a plain table snapshot)."""
    if not data:
        return {}
    try:
        doc = json.loads(bytes(data).decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise SnapshotError("corrupted", "corrupted prefixindex snapshot: the extra section is not the "
                                         "subscriber's positions (not UTF-8 JSON)") from None
    if not isinstance(doc, dict) or doc.get("kind") != POSITIONS_KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise SnapshotError("foreign", "the snapshot's extra section holds something other than the "
                                       f"subscriber's positions (kind {kind!r})")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise SnapshotError("corrupted", f"corrupted prefixindex snapshot: the subscriber positions have "
                                         f"version {version!r}, not a version number")
    if version > POSITIONS_VERSION:
        raise SnapshotError("newer", f"the subscriber positions in this snapshot have version {version!r}; this "
                                     f"prefixindex reads version {POSITIONS_VERSION}")
    pods = doc.get("pods")
    try:
        if not isinstance(pods, dict):
            raise TypeError("'pods' must be an object")
        return {name: _check_position(name, p) for name, p in pods.items()}
    except (TypeError, ValueError) as exc:
        raise SnapshotError("corrupted", f"corrupted prefixindex snapshot: subscriber positions: {exc}") from None


def save_subscriber(subscriber: Any, file: File) -> Dict[str, Dict[str, Any]]:
    """Save ``subscriber.table`` with ``subscriber.positions()`` to a path (atomically) or a stream, and
    return the positions saved. The positions are read first (see the module's docstring)."""
    positions = subscriber.positions()
    _snapshot.save_table(subscriber.table, file, extra=encode_positions(positions))
    return {name: _check_position(name, p) for name, p in positions.items()}


def load_subscriber_snapshot(cls: Type[T], file: File, overrides: Optional[Mapping[str, Any]] = None
                             ) -> Tuple[T, Dict[str, Dict[str, Any]]]:
    """``(table, positions)`` from a subscriber snapshot (or from a plain table snapshot: no positions).
    ``overrides`` as for ``cls.load``. Give ``positions`` to ``VLLMSubscriber(..., resume=positions)``."""
    table, positions = _snapshot.load_table_and_extra(cls, file, overrides or {}, decode_positions)
    return table, positions


# -- the subscribe command's --snapshot PATH [--snapshot-every SECONDS] ----------------------------------


def add_arguments(parser: Any) -> None:
    """The two options, for an argparse parser (``python -m prefixindex subscribe``)."""
    parser.add_argument("--snapshot", metavar="PATH", default=None,
                        help="load the index and each pod's position from PATH at start (when it exists), "
                             "and save them there on exit (docs/snapshot.md)")
    parser.add_argument("--snapshot-every", type=float, default=None, metavar="SECONDS",
                        help="also save the snapshot every SECONDS while running (needs --snapshot)")


def check_arguments(parser: Any, args: Any, max_seconds: float = math.inf) -> None:
    """Usage errors of the two options, as the parser's (exit status 2); ``max_seconds`` is the
    command's limit on a period (the subscribe command's MAX_SECONDS)."""
    if args.snapshot_every is not None:
        if args.snapshot is None:
            parser.error("--snapshot-every needs --snapshot PATH")
        every = args.snapshot_every
        if not (math.isfinite(every) and 0 < every <= max_seconds):
            limit = f", at most {max_seconds:,.0f}" if math.isfinite(max_seconds) else ""
            parser.error(f"--snapshot-every must be a positive number of seconds{limit}, got {every!r}")


def open_table(cls: Type[T], path: Optional[str], overrides: Mapping[str, Any]
               ) -> Tuple[T, Optional[Dict[str, Dict[str, Any]]], str]:
    """``(table, resume positions or None, what happened)``: the table and positions saved at ``path``
    when it exists, else a new table. ``overrides`` (block_size, seed) must agree with a saved table's:
    a ValueError says so. A snapshot that cannot be read is an error, never silently replaced."""
    if path is not None and os.path.exists(path):
        table, positions = load_subscriber_snapshot(cls, path, overrides)
        return table, positions, f"loaded {path}: {len(positions)} pod position(s) to resume from"
    table = cls(**overrides)
    return table, None, ("no snapshot at " + path + " yet: starting empty") if path is not None else ""


class PeriodicSaver:
    """Saves ``subscriber`` to ``path`` every ``every`` seconds (``due(now)``/``save()``) and at the end.
    A failed periodic save is logged and retried at the next period: the old file stays whole."""

    def __init__(self, subscriber: Any, path: str, every: Optional[float], now: float) -> None:
        self.subscriber, self.path, self.every = subscriber, path, every
        self.next_at = None if every is None else now + every
        self.saves = self.failures = 0

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def save(self, now: Optional[float] = None) -> bool:
        """One save now; True when it worked. Schedules the next periodic one from ``now``."""
        if self.every is not None and now is not None:
            self.next_at = now + self.every
        try:
            save_subscriber(self.subscriber, self.path)
        except (OSError, ValueError) as exc:
            self.failures += 1
            log.warning("prefixindex: saving the snapshot to %s failed: %s", self.path, exc)
            return False
        self.saves += 1
        return True
