"""``VLLMSubscriber``: the public face of the package (docs/vllm.md). It owns the pods' ``PodStream``
objects and starts and stops the ``Loop`` thread; the loop gets what it needs as arguments."""

from __future__ import annotations

import math
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional

import zmq

from .._events import AllBlocksCleared
from .._fork import reset_after_fork
from ._convert import PodConverter
from ._loop import SOCKETS_PER_POD, Command, Loop, LoopSettings
from ._pod import Pod, check_lora_map
from ._stream import COUNTERS, HeldBudget, PodStream
from ._wire import FULL_ATTENTION_KINDS

__all__ = ["GAUGE_KEYS", "MAX_PODS_LIMIT", "STAT_KEYS", "VLLMSubscriber"]

#: Per-pod counters in ``VLLMSubscriber.stats()["pods"][name]`` (running totals; docs/vllm.md, V9).
STAT_KEYS = COUNTERS
#: Per-pod values that go up and down (summed in ``totals`` too).
GAUGE_KEYS = ("held_bytes",)

_SOCKET_SLACK = 16
#: The most pods one subscriber (one ZeroMQ context) can take.
MAX_PODS_LIMIT = 32_000


def _table_block_size(table: Any) -> int:
    size = getattr(table, "block_size", None)
    if size is None:
        size = table.config.block_size
    return int(size)


def _positive(value: Any, what: str, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not value > 0 or (not integer and not math.isfinite(value)):
        raise ValueError(f"{what} must be a positive {'int' if integer else 'number'}, got {value!r}")


class VLLMSubscriber:
    """Keeps ``table`` current from the KV-cache events of a set of vLLM pods, in a background thread.

    Arguments (keyword-only after ``pods``; docs/vllm.md says more about each):

    - ``table``: a ``SyncPrefixHashTable`` of either backend; its ``block_size`` must be vLLM's.
    - ``pods``: ``Pod`` objects (more can be added, and removed, while running).
    - ``model``: the model name for pods that do not give their own.
    - ``lora_map``: adapter name (the event's ``lora_name``) -> lora_id.
    - ``mediums``: the cache tiers to index (default ``("GPU",)``; ``None`` indexes every tier).
    - ``spec_kinds``: the ``kv_cache_spec_kind`` values to index (default: full-attention kinds).
    - ``replay_on_connect``: when the first batch seen from a pod has seq > 0, fetch the earlier ones.
    - ``replay_timeout``: seconds without progress after which a replay is given up (default 2).
    - ``rcvhwm``: the SUB sockets' receive high-water mark in messages (default 100,000, vLLM's).
    - ``max_message_bytes``: ZeroMQ's MAXMSGSIZE on every socket (default 256 MiB); a larger frame
      makes ZeroMQ drop that connection (it reconnects; what was missed is a gap). It bounds each
      frame, not a message of many frames (docs/vllm.md, V2).
    - ``resubscribe_idle``: a pod whose SUB socket gave nothing for this many seconds gets a fresh one
      (default 60; None: never). libzmq does not reconnect after a protocol error such as an oversized
      message; this heals that, and costs an idle pod one reconnect per period.
    - ``max_held_bytes``: the budget, over all pods, for live batches held while a gap is replayed
      (default 512 MiB); what does not fit is dropped (``held_dropped``) and lost unless replayed later.
    - ``max_pods``: pods one subscriber takes (default 10,000); one more is a ValueError. Sizes the
      ZeroMQ context's socket limit; see docs/vllm.md (V2) for the file descriptors the OS must allow.
    - ``resume``: positions from ``positions()`` to start from (the first ``start()``).
    - ``command_timeout``: how long ``add_pod``/``remove_pod`` wait for the loop thread to take them
      (default 10 s; it is busy only inside a table call), and ``start()`` for a stopping thread.
    - ``poll_interval``: kept for compatibility; the loop no longer polls on a tick.
    - ``context``: a ``zmq.Context`` to use (default: one of its own, terminated by ``stop()``); its
      MAX_SOCKETS is the caller's to size.
    """

    def __init__(self, table: Any, pods: Iterable[Pod] = (), *, model: Optional[str] = None,
                 lora_map: Optional[Mapping[str, int]] = None,
                 mediums: Optional[Iterable[Optional[str]]] = ("GPU",),
                 spec_kinds: Optional[Iterable[str]] = FULL_ATTENTION_KINDS,
                 replay_on_connect: bool = False, replay_timeout: float = 2.0, rcvhwm: int = 100_000,
                 max_message_bytes: int = 256 << 20, max_held_bytes: int = 512 << 20, max_pods: int = 10_000,
                 resume: Optional[Mapping[str, Any]] = None, command_timeout: float = 10.0,
                 resubscribe_idle: Optional[float] = 60.0,
                 poll_interval: float = 0.05, context: Optional["zmq.Context[Any]"] = None) -> None:
        for method in ("process_events", "process_all_blocks_cleared"):
            if not callable(getattr(table, method, None)):
                raise TypeError(f"table must be a SyncPrefixHashTable (it has no {method}()), "
                                f"not {type(table).__name__}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a str, not {type(model).__name__}")
        _positive(replay_timeout, "replay_timeout")
        _positive(poll_interval, "poll_interval")
        _positive(command_timeout, "command_timeout")
        if resubscribe_idle is not None:
            _positive(resubscribe_idle, "resubscribe_idle")
        _positive(max_message_bytes, "max_message_bytes", integer=True)
        _positive(max_held_bytes, "max_held_bytes", integer=True)
        _positive(max_pods, "max_pods", integer=True)
        if max_pods > MAX_PODS_LIMIT:
            raise ValueError(f"max_pods must be at most {MAX_PODS_LIMIT} (libzmq's socket limit is 65,535 "
                             f"and a pod may use {SOCKETS_PER_POD} sockets at once), got {max_pods}")
        if not (isinstance(rcvhwm, int) and not isinstance(rcvhwm, bool) and rcvhwm >= 0):
            raise ValueError(f"rcvhwm must be a non-negative int, got {rcvhwm!r}")
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context, not {type(context).__name__}")
        self.table = table
        self.block_size = _table_block_size(table)
        self.model = model
        self.lora_map = check_lora_map(lora_map or {}, "lora_map")
        if isinstance(mediums, str):
            mediums = (mediums,)
        if isinstance(spec_kinds, str):
            spec_kinds = (spec_kinds,)
        self.mediums = None if mediums is None else tuple(mediums)
        self.spec_kinds = None if spec_kinds is None else frozenset(spec_kinds)
        for medium in self.mediums or ():
            if medium is not None and not isinstance(medium, str):
                raise TypeError(f"mediums must hold str (or None), got {type(medium).__name__}")
        for kind in self.spec_kinds or ():
            if not isinstance(kind, str):
                raise TypeError(f"spec_kinds must hold str, got {type(kind).__name__}")
        self.replay_on_connect = bool(replay_on_connect)
        self.replay_timeout = float(replay_timeout)
        self.rcvhwm = rcvhwm
        self.max_message_bytes = max_message_bytes
        self.max_pods = max_pods
        self.poll_interval = float(poll_interval)
        self.command_timeout = float(command_timeout)
        self._settings = LoopSettings(rcvhwm, max_message_bytes, context,
                                      SOCKETS_PER_POD * max_pods + _SOCKET_SLACK,
                                      None if resubscribe_idle is None else float(resubscribe_idle))
        self._budget = HeldBudget(max_held_bytes)
        self._max_lora_blocks = int(getattr(getattr(table, "config", None), "max_prefixes_per_context", 10_000))
        self._lock = threading.Lock()     # guards _streams (stats() reads it from any thread)
        self._control = threading.Lock()  # one add/remove/start/stop at a time
        self._forked = False  # a child of fork() whose parent was running this subscriber
        reset_after_fork(self)
        # pod name -> its stream; kept across stop()/start(), so that batches missed while stopped are a
        # gap (replayed) rather than unnoticed. Only the loop thread touches a stream while it runs.
        self._streams: Dict[str, PodStream] = {}
        self._loop: Optional[Loop] = None
        self._thread: Optional[threading.Thread] = None
        self._resume = self._check_positions(resume) if resume is not None else None
        for pod in pods:
            self.add_pod(pod)

    # -- pods ----------------------------------------------------------------------------------------

    def add_pod(self, pod: Any, endpoint: Optional[str] = None, **fields: Any) -> Pod:
        """Subscribe to one more pod: ``add_pod(Pod(...))`` or ``add_pod(name, endpoint, **Pod fields)``.

        Atomic: on return the pod is subscribed; on an error (a name already subscribed, ``max_pods``
        reached, an endpoint ZeroMQ refuses, a TimeoutError) nothing changed.
        """
        if isinstance(pod, Pod) and (endpoint is not None or fields):
            raise TypeError("add_pod takes a Pod, or a name, an endpoint and Pod fields, not both")
        spec = pod if isinstance(pod, Pod) else Pod(pod, endpoint, **fields)  # type: ignore[arg-type]
        if spec.model is None and self.model is None:
            raise ValueError(f"pod {spec.name!r} has no model: give Pod(model=...) or VLLMSubscriber(model=...)")
        with self._control:
            with self._lock:
                if spec.name in self._streams:
                    raise ValueError(f"pod {spec.name!r} is already subscribed")
                if len(self._streams) >= self.max_pods:
                    raise ValueError(f"this subscriber already has max_pods={self.max_pods} pods; give "
                                     "VLLMSubscriber(max_pods=...) more (docs/vllm.md, V2: file descriptors)")
            stream = self._new_stream(spec)
            loop = self._live_loop()
            if loop is not None:
                loop.post(Command(Loop.add, stream)).wait(self.command_timeout)
            with self._lock:
                self._streams[spec.name] = stream
        return spec

    def remove_pod(self, name: str, *, clear: bool = True) -> None:
        """Unsubscribe from a pod; with ``clear`` (the default) drop everything it holds in the index.

        Its sockets are closed before the clear, so no batch already received can re-add entries.
        Atomic like ``add_pod``: on an error the pod is still subscribed.
        """
        with self._control:
            with self._lock:
                stream = self._streams.get(name)
            if stream is None:
                raise KeyError(f"pod {name!r} is not subscribed")
            loop = self._live_loop()
            if loop is not None:
                loop.post(Command(Loop.remove, stream)).wait(self.command_timeout)
            with self._lock:
                del self._streams[name]
        if clear:
            self.table.process_all_blocks_cleared(AllBlocksCleared(name))

    @property
    def pods(self) -> List[str]:
        with self._lock:
            return list(self._streams)

    def _new_stream(self, spec: Pod) -> PodStream:
        lora_map = dict(self.lora_map)
        lora_map.update(spec.lora_map or {})
        model = spec.model or self.model
        assert model is not None
        converter = PodConverter(spec.name, model, self.block_size, lora_map, mediums=self.mediums,
                                 spec_kinds=self.spec_kinds, max_lora_blocks=self._max_lora_blocks)
        return PodStream(spec, converter, self.table, self._budget, replay_timeout=self.replay_timeout,
                         replay_on_connect=self.replay_on_connect, model=model)

    def _after_fork(self) -> None:
        """In a child of fork(), where only the forking thread lives: a lock another thread held (a
        stats() of a metrics scrape, say) would stay held for ever, so both are new. The loop thread is
        not here, and its sockets and ZeroMQ context are the parent's, which ZeroMQ does not let a child
        use: the subscriber is stopped, and start() is a RuntimeError (docs/vllm.md, V2, "fork()")."""
        self._lock = threading.Lock()
        self._control = threading.Lock()
        if self._loop is not None:
            self._loop = self._thread = None
            self._forked = True

    def _live_loop(self) -> Optional[Loop]:
        loop = self._loop
        return loop if loop is not None and loop.alive else None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self, resume: Optional[Mapping[str, Any]] = None) -> "VLLMSubscriber":
        """Connect to every pod and start the background thread. Raises if a pod cannot be connected.

        ``resume``: positions (``positions()`` of an earlier run) to start the named pods from.
        """
        positions = self._check_positions(resume) if resume is not None else None
        with self._control:
            if self._forked:
                raise RuntimeError("this subscriber was running when the process forked: its sockets are the "
                                   "parent's; make a new VLLMSubscriber in this process")
            thread = self._thread
            if thread is not None and thread.is_alive():
                if self._loop is not None and self._loop.stopping.is_set():
                    thread.join(self.command_timeout)  # a stop() that timed out: wait for that loop first
                    if thread.is_alive():
                        raise RuntimeError("the previous subscriber thread has not stopped yet; start() "
                                           "would run two loops over the same pods")
                else:
                    raise RuntimeError("the subscriber is already running")
            positions = positions if positions is not None else self._resume
            self._resume = None
            with self._lock:
                streams = list(self._streams.values())
            for stream in streams:
                position = (positions or {}).get(stream.name)
                if position is not None:
                    stream.set_resume(position["seq"], position.get("publisher", {}).get("ts"))
            loop = Loop(self._settings, streams)
            thread = threading.Thread(target=loop.run, name="prefixindex-vllm", daemon=True)
            self._loop, self._thread = loop, thread
            thread.start()
            loop.ready.wait()
            if loop.start_error is not None:
                thread.join()
                self._loop = self._thread = None
                raise loop.start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close every socket (idempotent). The index keeps what it holds.

        A thread that does not end within ``timeout`` (it is inside a long table call) is a
        TimeoutError; it still ends on its own, and ``start()`` waits for it.
        """
        with self._control:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            loop.request_stop()
            if thread is not threading.current_thread():
                thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the subscriber thread did not stop within {timeout}s")
            self._loop = self._thread = None

    close = stop

    @property
    def running(self) -> bool:
        thread, loop = self._thread, self._loop
        return thread is not None and thread.is_alive() and loop is not None and not loop.stopping.is_set()

    def __enter__(self) -> "VLLMSubscriber":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- statistics and positions --------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """``{"running": bool, "pods": {name: {counter: n, ...}}, "totals": {counter: n}}``."""
        with self._lock:
            pods = {name: dict(stream.stats) for name, stream in self._streams.items()}
        totals = {key: sum(p[key] for p in pods.values()) for key in STAT_KEYS + GAUGE_KEYS}
        return {"running": self.running, "pods": pods, "totals": totals}

    def positions(self) -> Dict[str, Dict[str, Any]]:
        """Per pod, where its stream stands: ``{"seq": last applied, "publisher": {"endpoint", "ts"}}``.

        ``ts`` is the timestamp of the batch at ``seq``, which tells that publisher from a restarted one
        (None when unknown: no ts, an unreadable batch, or a ts that is not finite). A position moves
        only once its batch is in the table (docs/snapshot.md, "Subscriber positions"): positions read
        from any thread before a copy of the table name nothing the copy lacks.
        Pods that have applied nothing yet are left out. Give the result to ``start(resume=...)`` (or
        ``VLLMSubscriber(resume=...)``) of a later run, with the index from the same moment.
        """
        with self._lock:
            streams = list(self._streams.values())
        out = {}
        for stream in streams:
            position = stream.position()
            if position is not None:
                out[stream.name] = position
        return out

    def save(self, file: Any) -> Dict[str, Dict[str, Any]]:
        """Save the table with each pod's position, for a warm restart (docs/snapshot.md, "Subscriber
        positions"), and return the positions saved.

        ``file``: a path (written atomically: a temporary file, fsync, rename, so the old file stays
        whole if the save fails) or a binary stream. The positions are read before the table is copied,
        so a save while running is consistent (the few batches applied in between are applied again
        after a restart, which changes nothing); a save after ``stop()`` is exact. Load it with
        ``VLLMSubscriber.from_snapshot(file, pods, ...)``.
        """
        from .._subscriber_snapshot import save_subscriber

        return save_subscriber(self, file)

    @classmethod
    def from_snapshot(cls, file: Any, pods: Iterable[Pod] = (), *, table_class: Any = None,
                      overrides: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> "VLLMSubscriber":
        """A subscriber over the table saved by ``save(file)``, that resumes each pod from its saved
        position at ``start()`` (V12). ``file``: a path or a binary stream. ``table_class``: the table
        class to load into (default ``prefixindex.SyncPrefixHashTable``); ``overrides``: as for its
        ``load`` (block_size, seed must agree with the saved table's). ``kwargs``: as for
        ``VLLMSubscriber(...)`` except ``resume``. A plain table snapshot gives no positions. The table
        is ``subscriber.table``."""
        from .._subscriber_snapshot import load_subscriber_snapshot

        if "resume" in kwargs:
            raise TypeError("from_snapshot() takes the positions from the snapshot: do not pass resume=")
        if table_class is None:
            from .. import SyncPrefixHashTable as table_class
        table, positions = load_subscriber_snapshot(table_class, file, overrides)
        try:
            return cls(table, pods, resume=positions, **kwargs)
        except BaseException:
            table.close()
            raise

    @staticmethod
    def _check_positions(positions: Any) -> Dict[str, Dict[str, Any]]:
        if not isinstance(positions, Mapping):
            raise TypeError(f"resume must be a mapping of pod name -> position, not {type(positions).__name__}")
        out: Dict[str, Dict[str, Any]] = {}
        for name, position in positions.items():
            seq = position.get("seq") if isinstance(position, Mapping) else None
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ValueError(f"resume[{name!r}] must be a mapping with an int 'seq' >= 0, got {position!r}")
            publisher = position.get("publisher") or {}
            ts = publisher.get("ts") if isinstance(publisher, Mapping) else None
            if ts is not None and (not isinstance(ts, (int, float)) or isinstance(ts, bool)
                                   or (isinstance(ts, float) and not math.isfinite(ts))):
                # (a NaN or an infinity can be no batch's recorded ts, and a save could not write it back)
                raise ValueError(f"resume[{name!r}]['publisher']['ts'] must be a finite number or None, got {ts!r}")
            out[str(name)] = {"seq": seq, "publisher": {"ts": ts}}
        return out

