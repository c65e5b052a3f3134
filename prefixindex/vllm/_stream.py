"""One pod's stream of batches: the sequence and replay state machine, and applying batches to the index.

No sockets here: a ``ReplayTransport`` (the loop) opens and closes the replay socket when asked. Only the
loop thread calls into a ``PodStream`` while the subscriber runs. docs/vllm.md, V5, says what happens:

- ``applied``: the last seq applied to the index (None before the first batch, -1 when the stream is
  expected from seq 0); ``live_last``: the last seq received live (a seq not above it is a restart).
- ``position()``: the (seq, ts) of the last batch that is in the index, published only once it is
  there, for a save on another thread (docs/snapshot.md, "Subscriber positions").
- A gap starts a replay from ``applied + 1``; live batches are held meanwhile (within the shared byte
  budget) and applied, in order and each once, when the replay ends or is given up.
- A replay is given up after ``replay_timeout`` seconds without progress, progress being a batch
  applied in order; messages that are duplicates or garbage do not count.
- ``accept_in_order`` is the one place where batches that never arrived are counted as lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Protocol, Tuple

from .._events import AllBlocksCleared, BlockRemoved, BlockStored
from ._convert import PodConverter
from ._pod import Pod
from ._wire import END_OF_REPLAY, WireError, decode_event, read_batch, read_batch_fast, read_seq

__all__ = ["COUNTERS", "HeldBudget", "PodStream", "ReplayTransport", "log"]

log = logging.getLogger("prefixindex.vllm")

#: Per-pod counters (docs/vllm.md, V9). The first 17 are the keys of the first release, in their order.
COUNTERS = (
    "batches", "events", "blocks_stored", "blocks_removed", "clears", "filtered", "unknown_events",
    "unmapped_lora", "other_topic", "gaps", "lost_batches", "replays", "replayed_batches",
    "replay_failures", "duplicates", "restarts", "malformed",
    "placeholders", "other_rank", "socket_errors", "held_dropped", "resumes", "resume_refills", "resubscribes",
)

_LOG_FIRST = 10       # malformed input: log the first few per pod ...
_LOG_EVERY = 1000     # ... and then every n-th, so that a flood of garbage does not flood the log
_HELD_OVERHEAD = 64   # bytes counted per held batch on top of its payload (the tuple and list slot)
# A live payload is a view of ZeroMQ's frame (not copied, issue 10 Deliver 4). Held, a view keeps the
# frame and its Python objects, about 600 bytes: small payloads are copied when held (holding is rare:
# only during a replay), large ones stay views and count that much more.
_COPY_HELD_BELOW = 1 << 16
_VIEW_OVERHEAD = 640
_MAX_NOTED = 100      # distinct unknown tags / unmapped adapters / ranks logged per pod


class ReplayTransport(Protocol):
    def request_replay(self, stream: "PodStream", start: int) -> None: ...
    def cancel_replay(self, stream: "PodStream") -> None: ...


class HeldBudget:
    """Bytes of live batches held during replays, over every pod of a subscriber (issue 10, Deliver 4)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _Replay:
    __slots__ = ("start", "deadline", "verify")

    def __init__(self, start: int, deadline: float, verify: Optional[Tuple[int, Optional[float]]]) -> None:
        self.start = start
        self.deadline = deadline
        # resuming from a saved position: (seq, ts) still to be checked against the publisher's buffer
        self.verify = verify


class PodStream:
    """What the subscriber keeps for one pod: its sequence state, its converter and its counters."""

    def __init__(self, spec: Pod, converter: PodConverter, table: Any, budget: HeldBudget, *,
                 replay_timeout: float, replay_on_connect: bool, model: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.topic = spec.topic.encode()
        self.converter = converter
        self.table = table
        self.budget = budget
        self.replay_timeout = replay_timeout
        self.replay_on_connect = replay_on_connect
        self.transport: Optional[ReplayTransport] = None
        self.stats: Dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        self.stats.update(last_seq=None, replaying=False, subscribed=False, held_bytes=0,
                          endpoint=spec.endpoint, replay_endpoint=spec.replay_endpoint, topic=spec.topic,
                          model=model, data_parallel_rank=spec.data_parallel_rank)
        self.applied: Optional[int] = None
        self.live_last: Optional[int] = None
        # (seq, ts) of the last batch in the index, ts identifying the publisher; None before the first.
        # It changes only after the table call returned, and as one tuple: a save on another thread
        # (positions, then the table copy) never names a batch the table does not hold yet, nor pairs
        # one batch's seq with another's ts. One attribute store or load needs no lock for that.
        self._position: Optional[Tuple[int, Optional[float]]] = None
        self.replay: Optional[_Replay] = None
        self.held: Deque[Tuple[int, Any]] = deque()  # (seq, payload: bytes or a memoryview)
        self.held_bytes = 0
        self.resume: Optional[Tuple[int, Optional[float]]] = None  # a saved position to start from
        self._noted: set[Any] = set()
        self._lost_logged = 0

    # -- positions (issue 12, Deliver 3) -------------------------------------------------------------

    def position(self) -> Optional[Dict[str, Any]]:
        position = self._position  # read once: the pair of one batch
        if position is None:
            return None
        return {"seq": position[0], "publisher": {"endpoint": self.spec.endpoint, "ts": position[1]}}

    def set_resume(self, seq: int, ts: Optional[float]) -> None:
        self.resume = (seq, ts)

    def begin(self) -> None:
        """The loop has the pod's sockets: start from a saved position if there is one."""
        if self.resume is None:
            return
        seq, ts = self.resume
        self.resume = None
        self.applied = seq
        self.live_last = seq  # a live seq not above it is a restarted publisher
        self._position = (seq, ts)  # the loaded table holds the batches up to it
        if self.spec.replay_endpoint:
            self._start_replay(seq if ts is not None else seq + 1, verify=(seq, ts))

    # -- live messages -------------------------------------------------------------------------------

    def on_live(self, frames: List[Any]) -> None:
        """A live message of any shape (the loop hands the 3-frame ones to ``on_live_batch``)."""
        if len(frames) != 3:
            return self.malformed(f"expected 3 frames (topic, seq, payload), got {len(frames)}")
        return self.on_live_batch(*frames)

    def on_live_batch(self, topic: bytes, seq_frame: bytes, payload: Any) -> None:
        """A live message of the right shape: topic, seq and payload (bytes or a buffer)."""
        if topic != self.topic:
            self.stats["other_topic"] += 1  # the SUB filter is a prefix match; vLLM's topic is exact
            return None
        try:
            seq = read_seq(seq_frame)
        except WireError as exc:
            return self.malformed(str(exc))
        if seq < 0:
            return self.malformed(f"negative seq {seq}")
        if self.live_last is not None and seq <= self.live_last:
            self.restart(seq)
        elif self.live_last is None and self.applied is not None and 0 <= seq <= self.applied \
                and self._newer_than_applied(seq, payload):
            self.restart(seq)
        self.live_last = seq
        if self.replay is not None:
            return self._hold(seq, payload)
        applied = self.applied
        if applied is not None and seq == applied + 1:  # in order: the usual case
            self.apply(seq, payload)
            return None
        if applied is None:  # the first batch from this publisher: the starting point (V5)
            if seq > 0 and self.replay_on_connect and self.spec.replay_endpoint:
                self.applied = -1
                self._start_replay(0)
                return self._hold(seq, payload)
            self.apply(seq, payload)
            return None
        if seq <= applied:
            self.stats["duplicates"] += 1  # already applied from a replay
            return None
        if seq > applied + 1:
            self.stats["gaps"] += 1
            if self.spec.replay_endpoint:
                log.info("pod %r: gap after seq %d (got %d): replaying", self.name, applied, seq)
                self._start_replay(applied + 1)
                return self._hold(seq, payload)
        self.accept_in_order(seq, payload, replayed=False)
        return None

    def _newer_than_applied(self, seq: int, payload: Any) -> bool:
        """No live seq seen since a refill's replay (``live_last`` None), and a live seq at or below the
        applied one: a batch the replay already applied, arriving late on the SUB socket, or the first
        batch of a publisher that restarted since (V5). Their ts tell them apart: a late copy was
        published no later than the applied batch (the same ts at the same seq), a restarted
        publisher's batch after it."""
        position = self._position
        if position is None or position[0] != self.applied or position[1] is None:
            return False  # no ts of the applied batch to compare with: taken as a late copy, as before
        applied_ts = position[1]
        try:
            ts = read_batch(payload)[0]
        except WireError:
            return False
        if ts is None or not (math.isfinite(ts) and math.isfinite(applied_ts)):
            return False  # (a NaN is unequal to itself: no restart can be read from one)
        return ts > applied_ts if seq < self.applied else ts != applied_ts

    def _hold(self, seq: int, payload: Any) -> None:
        n = len(payload)
        copy = n <= _COPY_HELD_BELOW and type(payload) is not bytes
        size = n + _HELD_OVERHEAD + (0 if copy or type(payload) is bytes else _VIEW_OVERHEAD)
        budget = self.budget
        if budget.used + size > budget.limit:
            # over the byte budget: not held. It is a hole when the held batches are applied, or a
            # gap that a later replay may still fill; lost_batches counts it if nothing does.
            self.stats["held_dropped"] += 1
            return
        budget.used += size
        self.held_bytes += size
        self.stats["held_bytes"] = self.held_bytes
        self.held.append((seq, bytes(payload) if copy else payload))

    def _drop_held(self) -> List[Tuple[int, bytes]]:
        held = list(self.held)
        self.held.clear()
        self.budget.used -= self.held_bytes
        self.held_bytes = 0
        self.stats["held_bytes"] = 0
        return held

    def restart(self, seq: int) -> None:
        """The seq went backwards: a new publisher, a new cache. Drop what the old one reported."""
        self.stats["restarts"] += 1
        log.warning("pod %r: seq went back from %s to %d: the publisher restarted; clearing the pod",
                    self.name, self.applied if self.live_last is None else self.live_last, seq)
        self.end_replay(None)
        self._drop_held()
        self._clear_index()
        self.live_last = None

    def _clear_index(self) -> None:
        """Drop the pod from the index; the stream is then expected from seq 0 (a new publisher's)."""
        self.table.process_all_blocks_cleared(AllBlocksCleared(self.name))
        self.converter.reset()
        self.applied = -1
        # Only after the clear: a save that read the old position just before may copy a table without
        # the pod, and a resume from it then finds the publisher changed and refills; a save that
        # reads None here never leaves the old publisher's entries in a table without a position.
        self._position = None

    # -- replay --------------------------------------------------------------------------------------

    def _start_replay(self, start: int, verify: Optional[Tuple[int, Optional[float]]] = None) -> None:
        self.replay = _Replay(start, time.monotonic() + self.replay_timeout, verify)
        self.stats["replaying"] = True
        if self.transport is not None:
            self.transport.request_replay(self, start)

    def on_replay(self, frames: List[Any]) -> None:
        """One message of the replay socket: ``[b"", seq8, payload]`` or ``[b"", topic, seq8, payload]``."""
        replay = self.replay
        if replay is None:
            return None
        n = len(frames)
        if n not in (3, 4) or frames[0] != b"":
            return self.malformed(f"bad replay message ({n} frames)")
        topic = frames[1] if n == 4 else None
        try:
            seq = read_seq(frames[n - 2])
        except WireError as exc:
            return self.malformed(f"replay message: {exc}")
        if seq == END_OF_REPLAY:
            if topic not in (None, b"", self.topic) or frames[n - 1] != b"":
                return self.malformed("bad end-of-replay marker")
            if replay.verify is not None:
                self._verify_end(replay)
                if self.replay is not replay:
                    return None
            return self.end_replay(True)
        if seq < 0:
            return self.malformed(f"negative seq {seq} in a replay")
        if topic is not None and topic != self.topic:
            self.stats["other_topic"] += 1
            return None
        payload = frames[n - 1]
        if replay.verify is not None and not self._verify(replay, seq, payload):
            return None
        if self.accept_in_order(seq, payload, replayed=True):
            replay.deadline = time.monotonic() + self.replay_timeout  # progress
        return None

    def _verify(self, replay: _Replay, seq: int, payload: bytes) -> bool:
        """Resuming: does the publisher's buffer continue the saved position? False: message consumed."""
        saved, ts = replay.verify  # type: ignore[misc]
        if seq < saved:
            self.stats["duplicates"] += 1  # a server that sent more than asked
            return False
        if seq == saved:
            replay.verify = None
            try:
                same = read_batch(payload)[0] == ts
            except WireError:
                same = False
            if not same:
                self._refill(f"the batch at seq {seq} is not the one applied before: the publisher restarted")
            else:
                self._resumed()
            return False
        replay.verify = None
        if seq == saved + 1:
            self._resumed()
            return True
        self._refill(f"its replay buffer starts at seq {seq}, after the saved seq {saved}")
        return False

    def _verify_end(self, replay: _Replay) -> None:
        saved, ts = replay.verify  # type: ignore[misc]
        replay.verify = None
        if ts is not None:  # asked from the saved seq, which any publisher that went on would still hold
            self._refill(f"the publisher holds no batch at seq {saved}: it restarted")
        else:
            self._resumed()

    def _resumed(self) -> None:
        self.stats["resumes"] += 1
        log.info("pod %r: resumed after seq %s", self.name, self.applied)

    def _refill(self, why: str) -> None:
        """A saved position that the publisher cannot continue: clear the pod and replay from 0."""
        self.stats["resume_refills"] += 1
        log.warning("pod %r: cannot resume from seq %s (%s); clearing the pod and refilling", self.name,
                    self.applied, why)
        self._clear_index()
        self.live_last = None
        if self.transport is not None:
            self.transport.cancel_replay(self)
        self.replay = None
        self._start_replay(0)

    def end_replay(self, ok: Optional[bool]) -> None:
        """Finish a replay (True), give it up (False) or drop it (None); then apply the held batches."""
        replay = self.replay
        if replay is None:
            return
        self.replay = None
        if self.transport is not None:
            self.transport.cancel_replay(self)
        if ok is None:
            self.stats["replaying"] = False
            return
        # the outcome is counted before "replaying" goes False: a reader of the stats (another thread)
        # that sees the replay over sees it counted too (a test saw replays=0 in between)
        if ok:
            self.stats["replays"] += 1
        else:
            self.stats["replay_failures"] += 1
            log.warning("pod %r: the replay from seq %d via %s made no progress for %.1fs; giving it up",
                        self.name, replay.start, self.spec.replay_endpoint, self.replay_timeout)
            if replay.verify is not None:  # the saved position could not be checked: do not trust it
                self.stats["resume_refills"] += 1
                self._clear_index()
        self.stats["replaying"] = False
        for seq, payload in self._drop_held():
            self.accept_in_order(seq, payload, replayed=False)

    def check_deadline(self, now: float) -> Optional[float]:
        """Give the replay up when its deadline passed; the next deadline, if any."""
        replay = self.replay
        if replay is None:
            return None
        if now > replay.deadline:
            self.end_replay(False)
            return None
        return replay.deadline

    def close(self) -> None:
        """The loop closes this pod's sockets: forget the replay and what it held (a gap next time)."""
        self.end_replay(None)
        self._drop_held()
        self.stats["subscribed"] = False

    # -- applying ------------------------------------------------------------------------------------

    def accept_in_order(self, seq: int, payload: bytes, replayed: bool) -> bool:
        """Apply a batch unless already applied; count the batches before it that never came. True if applied."""
        applied = -1 if self.applied is None else self.applied
        if seq <= applied:
            self.stats["duplicates"] += 1
            return False
        if seq > applied + 1:
            missed = seq - applied - 1
            self.stats["lost_batches"] += missed
            self._lost_logged += 1
            if self._lost_logged <= _LOG_FIRST or self._lost_logged % _LOG_EVERY == 0:
                log.warning("pod %r: %d batches after seq %d were not received and could not be replayed "
                            "(%d lost so far)", self.name, missed, applied, self.stats["lost_batches"])
        self.apply(seq, payload, replayed)
        return True

    def apply(self, seq: int, payload: Any, replayed: bool = False) -> None:
        self.applied = seq
        try:
            ts = self._apply_batch(seq, payload, replayed)
        finally:
            # published once the batch is in the index: a reader that waits for last_seq sees its events
            self.stats["last_seq"] = seq
        # Only now, and only when the batch is in the index or known to be skipped (malformed, another
        # rank): a batch whose table call raised leaves the position where it was, so a resume from it
        # replays that batch.
        self._position = (seq, ts)

    def _apply_batch(self, seq: int, payload: Any, replayed: bool) -> Optional[float]:
        """The batch into the index; returns its ts for the position (None when unknown: a batch that
        cannot be read, or a ts that is not finite, which no saved position can hold and no comparison
        with a replayed batch would match; docs/vllm.md, V12)."""
        stats = self.stats
        raws: Optional[List[Any]] = None
        fast = None
        plain = self.converter.read_plain(payload)  # the common batch, read in one pass (V13)
        if plain is not None:
            ts, events, rank = plain
        else:
            fast = read_batch_fast(payload)
            if fast is None:
                try:
                    ts, raws, rank = read_batch(payload)
                except WireError as exc:
                    self.malformed(f"batch seq {seq}: {exc}")
                    return None
            else:
                ts, raws, rank = fast
        if ts is not None and not math.isfinite(ts):
            ts = None
        own_rank = self.spec.data_parallel_rank
        if own_rank is not None and rank is not None and rank != own_rank:
            stats["other_rank"] += 1
            self._note(("rank", rank), "pod %r (data-parallel rank %d): skipping batches of rank %r",
                       self.name, own_rank, rank)
            return ts
        if raws is not None:
            events = self._convert(seq, raws, decoded=fast is not None)
        if events:
            self._apply_events(seq, events)
        stats["batches"] += 1  # (after the events, for the same reason as last_seq)
        if replayed:
            stats["replayed_batches"] += 1
        return ts

    def _convert(self, seq: int, raws: List[Any], decoded: bool) -> List[Any]:
        """The index events of a batch's wire events (``decoded``: wire structs already, else msgpack);
        a malformed event is counted and left out, a skipped one counted."""
        converter = self.converter
        convert = converter.convert
        plain = converter.plain_stored if decoded else None
        events: List[Any] = []
        for raw in raws:
            if plain is not None:
                event = plain(raw)
                if event is not None:
                    events.append(event)
                    continue
            try:
                kind, item = convert(raw if decoded else decode_event(raw))
            except (WireError, TypeError, ValueError) as exc:
                self.malformed(f"batch seq {seq}: {exc}")
                continue
            if kind == "stored" or kind == "cleared":
                events.append(item)
            elif kind == "removed":
                events.extend(item)
            else:
                self._skipped(kind, item)
        return events

    def _apply_events(self, seq: int, events: List[Any]) -> None:
        """The batch in one ``process_events`` call (all or nothing); when the table rejects one event,
        the batch is applied event by event so that only the bad one is lost (counted malformed)."""
        try:
            self.table.process_events(events)
        except (TypeError, ValueError) as exc:
            log.debug("pod %r: batch seq %d rejected as a whole (%s): applying it event by event",
                      self.name, seq, exc)
            applied = []
            for event in events:
                try:
                    self.table.process_events((event,))
                except (TypeError, ValueError) as one:
                    self.malformed(f"batch seq {seq}: {one}")
                    continue
                applied.append(event)
            events = applied
        self._count(events)

    def _count(self, events: List[Any]) -> None:
        """The applied events in the stats: summed over the batch, then added once."""
        stats = self.stats
        stats["events"] += len(events)
        stored = removed = clears = 0
        for event in events:
            t = type(event)
            if t is BlockStored:
                stored += len(event.block_hashes)
            elif t is BlockRemoved:
                removed += len(event.block_hashes)
            else:
                clears += 1
        stats["blocks_stored"] += stored
        stats["blocks_removed"] += removed
        stats["clears"] += clears

    def _skipped(self, kind: str, item: Any) -> None:
        stats = self.stats
        if kind == "filtered":
            stats["filtered"] += 1
        elif kind == "placeholder":
            stats["placeholders"] += 1
        elif kind == "unknown":
            stats["unknown_events"] += 1
            self._note(("tag", item), "pod %r: skipping events of unknown type %r", self.name, item)
        elif kind == "unmapped_lora":
            stats["unmapped_lora"] += 1
            self._note(("lora", item), "pod %r: adapter %r has no lora_id (add it to lora_map); its events "
                       "are skipped", self.name, item)

    def _note(self, key: Any, message: str, *args: Any) -> None:
        if key not in self._noted and len(self._noted) < _MAX_NOTED:
            self._noted.add(key)
            log.warning(message, *args)

    def malformed(self, reason: str) -> None:
        self.stats["malformed"] += 1
        n = self.stats["malformed"]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning("pod %r: malformed input skipped (%d so far): %s", self.name, n, reason)
