"""Feed a prefix index from vLLM pods' KV-cache event publishers (ZeroMQ).

    from prefixindex import SyncPrefixHashTable
    from prefixindex.vllm import Pod, VLLMSubscriber

    table = SyncPrefixHashTable(block_size=16)
    with VLLMSubscriber(table, [Pod("llama-0", "tcp://10.0.0.1:5557", replay_endpoint="tcp://10.0.0.1:5558")],
                        model="meta-llama/Llama-3.1-8B-Instruct") as sub:
        ...  # the router calls table.match_prefix(...) while the subscriber keeps the index current
        print(sub.stats()["pods"]["llama-0"])

One background thread owns every ZeroMQ socket: a SUB socket per pod, and a DEALER socket while a pod's
missed batches are being replayed. ``add_pod`` and ``remove_pod`` work while it runs (they are handed to
that thread). Sequence numbers are tracked per pod: a gap is filled from the pod's replay endpoint, a
sequence number that goes backwards (the publisher restarted) clears the pod first, and bad input is
counted, logged with the pod name and skipped. docs/vllm.md describes all of it; the wire format is in
``prefixindex._vllm_wire``.

``python -m prefixindex subscribe --pod NAME=tcp://HOST:5557[,replay=tcp://HOST:5558] --model M``
runs a subscriber and prints the index statistics (``main`` below).

Needs the optional dependencies ``pip install 'prefixindex[vllm]'`` (pyzmq and msgspec).
"""

from __future__ import annotations

try:
    import msgspec  # noqa: F401  (needed by _vllm_wire; imported here for one clear error)
    import zmq
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("prefixindex.vllm needs pyzmq and msgspec: install the optional extra with "
                      "pip install 'prefixindex[vllm]'") from _exc

import argparse
import dataclasses
import json
import logging
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ._events import AllBlocksCleared
from ._vllm_wire import (FULL_ATTENTION_KINDS, PodConverter, WireError, decode_batch, decode_event)

__all__ = ["FULL_ATTENTION_KINDS", "Pod", "STAT_KEYS", "VLLMSubscriber", "main"]

log = logging.getLogger("prefixindex.vllm")

#: Per-pod counters in ``VLLMSubscriber.stats()["pods"][name]`` (docs/vllm.md, "Statistics").
STAT_KEYS = (
    "batches", "events", "blocks_stored", "blocks_removed", "clears", "filtered", "unknown_events",
    "unmapped_lora", "other_topic", "gaps", "lost_batches", "replays", "replayed_batches",
    "replay_failures", "duplicates", "restarts", "malformed",
)

_END_OF_REPLAY = -1
_LOG_FIRST = 10       # malformed input: log the first few per pod ...
_LOG_EVERY = 1000     # ... and then every n-th, so that a flood of garbage does not flood the log
_MAX_PENDING = 100_000  # live batches held back during one replay; more gives the replay up


@dataclasses.dataclass(frozen=True)
class Pod:
    """One vLLM publisher.

    - ``name``: the pod name the index stores (what the router passes in ``ready_pods``).
    - ``endpoint``: where vLLM's PUB socket is, as the subscriber connects to it (``tcp://HOST:5557``).
    - ``replay_endpoint``: vLLM's replay ROUTER socket (``tcp://HOST:5558``), or None: gaps then stay gaps.
    - ``topic``: the topic vLLM publishes under (its ``topic`` setting; empty by default).
    - ``model``: the model name of the index contexts; None takes the subscriber's ``model``.
    - ``lora_map``: adapter name -> lora_id for this pod, on top of the subscriber's ``lora_map``.
    """

    name: str
    endpoint: str
    replay_endpoint: Optional[str] = None
    topic: str = ""
    model: Optional[str] = None
    lora_map: Optional[Mapping[str, int]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Pod.name must be a str, not {type(self.name).__name__}")
        for field in ("endpoint", "replay_endpoint"):
            value = getattr(self, field)
            if value is None and field == "replay_endpoint":
                continue
            if not isinstance(value, str):
                raise TypeError(f"Pod.{field} must be a str, not {type(value).__name__}")
            if "://" not in value:
                raise ValueError(f"Pod.{field} must be a ZeroMQ endpoint such as tcp://HOST:5557, got {value!r}")
        if not isinstance(self.topic, str):
            raise TypeError(f"Pod.topic must be a str, not {type(self.topic).__name__}")
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"Pod.model must be a str or None, not {type(self.model).__name__}")
        if self.lora_map is not None:
            _check_lora_map(self.lora_map, "Pod.lora_map")

    @classmethod
    def parse(cls, text: str) -> "Pod":
        """``NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M]``, as the CLI's ``--pod`` takes it."""
        head, *options = text.split(",")
        name, sep, endpoint = head.partition("=")
        if not sep or not name or not endpoint:
            raise ValueError(f"--pod must be NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M], got {text!r}")
        fields: Dict[str, Any] = {}
        keys = {"replay": "replay_endpoint", "topic": "topic", "model": "model"}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in keys:
                raise ValueError(f"unknown --pod option {option!r} in {text!r} (known: replay=, topic=, model=)")
            fields[keys[key]] = value
        return cls(name, endpoint, **fields)


def _check_lora_map(lora_map: Any, what: str) -> Dict[str, int]:
    if not isinstance(lora_map, Mapping):
        raise TypeError(f"{what} must be a mapping of adapter name -> lora_id, not {type(lora_map).__name__}")
    out = {}
    for name, lora_id in lora_map.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be adapter names (str), got {type(name).__name__}")
        if not isinstance(lora_id, int) or isinstance(lora_id, bool):
            raise TypeError(f"{what}[{name!r}] must be an int lora_id, not {type(lora_id).__name__}")
        out[name] = lora_id
    return out


def _table_block_size(table: Any) -> int:
    size = getattr(table, "block_size", None)
    if size is None:
        size = table.config.block_size
    return int(size)


class _Future:
    """The answer of the loop thread to a command from another thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: Optional[BaseException] = None

    def set(self, error: Optional[BaseException] = None) -> None:
        self._error = error
        self._done.set()

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError("the subscriber thread did not answer in time")
        if self._error is not None:
            raise self._error


class _Replay:
    __slots__ = ("sock", "start", "deadline")

    def __init__(self, sock: Any, start: int, deadline: float) -> None:
        self.sock = sock
        self.start = start
        self.deadline = deadline


class _PodRuntime:
    """What the loop thread keeps for one pod (only the loop thread touches it)."""

    __slots__ = ("spec", "name", "topic", "converter", "stats", "sub", "live_last", "applied", "replay",
                 "pending", "seen_tags", "seen_loras")

    def __init__(self, spec: Pod, converter: PodConverter, stats: Dict[str, Any]) -> None:
        self.spec = spec
        self.name = spec.name
        self.topic = spec.topic.encode()
        self.converter = converter
        self.stats = stats
        self.sub: Any = None
        self.live_last: Optional[int] = None  # last seq received on the SUB socket
        self.applied: Optional[int] = None    # last seq applied to the index (live or replayed)
        self.replay: Optional[_Replay] = None
        self.pending: List[Tuple[int, bytes]] = []  # live batches that arrived during a replay
        self.seen_tags: set = set()
        self.seen_loras: set = set()


class VLLMSubscriber:
    """Keeps ``table`` current from the KV-cache events of a set of vLLM pods, in a background thread.

    Arguments (keyword-only after ``pods``):

    - ``table``: a ``SyncPrefixHashTable`` of either backend; its ``block_size`` must be vLLM's.
    - ``pods``: ``Pod`` objects (more can be added, and removed, while running).
    - ``model``: the model name for pods that do not give their own.
    - ``lora_map``: adapter name (the event's ``lora_name``) -> lora_id. Events with a name that is not
      mapped use their ``lora_id``; without either they are skipped (``unmapped_lora``).
    - ``mediums``: the cache tiers to index (default ``("GPU",)``; ``None`` indexes every tier).
    - ``spec_kinds``: the ``kv_cache_spec_kind`` values to index (default: full-attention kinds;
      ``None``: every kind).
    - ``replay_on_connect``: when the first batch seen from a pod has seq > 0, fetch the earlier ones
      from its replay endpoint (warms the index after a router restart; the publisher keeps 10,000).
    - ``replay_timeout``: seconds of silence after which a replay is given up (default 2).
    - ``rcvhwm``: the SUB sockets' receive high-water mark (default 100,000, as vLLM's publisher).
    - ``poll_interval``: how long the thread waits for input before looking at its commands and stop
      flag (default 0.05 s; ``stop()`` takes at most about this long).
    - ``context``: a ``zmq.Context`` to use (default: one of its own, terminated by ``stop()``).
    """

    def __init__(self, table: Any, pods: Iterable[Pod] = (), *, model: Optional[str] = None,
                 lora_map: Optional[Mapping[str, int]] = None,
                 mediums: Optional[Iterable[Optional[str]]] = ("GPU",),
                 spec_kinds: Optional[Iterable[str]] = FULL_ATTENTION_KINDS,
                 replay_on_connect: bool = False, replay_timeout: float = 2.0, rcvhwm: int = 100_000,
                 poll_interval: float = 0.05, context: Optional["zmq.Context"] = None) -> None:
        for method in ("process_block_stored", "process_block_removed", "process_all_blocks_cleared"):
            if not callable(getattr(table, method, None)):
                raise TypeError(f"table must be a SyncPrefixHashTable (it has no {method}()), "
                                f"not {type(table).__name__}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a str, not {type(model).__name__}")
        if not (isinstance(replay_timeout, (int, float)) and replay_timeout > 0):
            raise ValueError(f"replay_timeout must be a positive number of seconds, got {replay_timeout!r}")
        if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        if not (isinstance(rcvhwm, int) and rcvhwm >= 0):
            raise ValueError(f"rcvhwm must be a non-negative int, got {rcvhwm!r}")
        self.table = table
        self.block_size = _table_block_size(table)
        self.model = model
        self.lora_map = _check_lora_map(lora_map or {}, "lora_map")
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
        self.poll_interval = float(poll_interval)
        self._given_context = context

        self._lock = threading.Lock()
        # pod name -> its state; kept across stop()/start(), so that batches missed while stopped are
        # a gap (replayed) rather than unnoticed. Only the loop thread touches them while it runs.
        self._runtimes: Dict[str, _PodRuntime] = {}
        self._commands: "queue.SimpleQueue[Tuple[Callable[..., None], tuple, _Future]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[_Loop] = None
        self._stop = threading.Event()
        for pod in pods:
            self.add_pod(pod)

    # -- pods ----------------------------------------------------------------------------------------

    def add_pod(self, pod: Any, endpoint: Optional[str] = None, **fields: Any) -> Pod:
        """Subscribe to one more pod: ``add_pod(Pod(...))`` or ``add_pod(name, endpoint, **Pod fields)``.

        While running, this returns once the pod's socket is connected (ZeroMQ connects in the background:
        a publisher that is not up yet is retried). A name already subscribed is a ValueError.
        """
        spec = pod if isinstance(pod, Pod) else Pod(pod, endpoint, **fields)  # type: ignore[arg-type]
        if isinstance(pod, Pod) and (endpoint is not None or fields):
            raise TypeError("add_pod takes a Pod, or a name, an endpoint and Pod fields, not both")
        if spec.model is None and self.model is None:
            raise ValueError(f"pod {spec.name!r} has no model: give Pod(model=...) or VLLMSubscriber(model=...)")
        rt = _PodRuntime(spec, self._converter(spec), self._new_stats(spec))
        with self._lock:
            if spec.name in self._runtimes:
                raise ValueError(f"pod {spec.name!r} is already subscribed")
            self._runtimes[spec.name] = rt
            running = self._loop is not None
        if running:
            try:
                self._call(_Loop.add, rt)
            except BaseException:
                with self._lock:
                    if self._runtimes.get(spec.name) is rt:
                        del self._runtimes[spec.name]
                raise
        return spec

    def remove_pod(self, name: str, *, clear: bool = True) -> None:
        """Unsubscribe from a pod; with ``clear`` (the default) drop everything it holds in the index.

        Its sockets are closed before the clear, so no batch already received can re-add entries.
        """
        with self._lock:
            if name not in self._runtimes:
                raise KeyError(f"pod {name!r} is not subscribed")
            running = self._loop is not None
        if running:
            self._call(_Loop.remove, name)
        with self._lock:
            self._runtimes.pop(name, None)
        if clear:
            self.table.process_all_blocks_cleared(AllBlocksCleared(name))

    @property
    def pods(self) -> List[str]:
        with self._lock:
            return list(self._runtimes)

    def _new_stats(self, spec: Pod) -> Dict[str, Any]:
        stats: Dict[str, Any] = dict.fromkeys(STAT_KEYS, 0)
        stats.update(last_seq=None, replaying=False, endpoint=spec.endpoint,
                     replay_endpoint=spec.replay_endpoint, topic=spec.topic, model=spec.model or self.model)
        return stats

    def _converter(self, spec: Pod) -> PodConverter:
        lora_map = dict(self.lora_map)
        lora_map.update(spec.lora_map or {})
        return PodConverter(spec.name, spec.model or self.model, self.block_size, lora_map,  # type: ignore[arg-type]
                            mediums=self.mediums, spec_kinds=self.spec_kinds)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        future = _Future()
        self._commands.put((fn, args, future))
        future.wait(timeout=max(10.0, 20 * self.poll_interval))

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "VLLMSubscriber":
        """Connect to every pod and start the background thread. Raises if a pod cannot be connected."""
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("the subscriber is already running")
            self._stop.clear()
            loop = _Loop(self, list(self._runtimes.values()))
            self._loop = loop
        thread = threading.Thread(target=loop.run, name="prefixindex-vllm", daemon=True)
        self._thread = thread
        thread.start()
        loop.ready.wait()
        if loop.start_error is not None:
            thread.join()
            with self._lock:
                self._loop = None
                self._thread = None
            raise loop.start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close every socket (idempotent). The index keeps what it holds."""
        with self._lock:
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._loop = None
            self._thread = None
        # commands that raced with stop() would otherwise wait for their timeout
        while True:
            try:
                _, _, future = self._commands.get_nowait()
            except queue.Empty:
                break
            future.set(RuntimeError("the subscriber stopped"))

    close = stop

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def __enter__(self) -> "VLLMSubscriber":
        if self._loop is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- statistics ----------------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """``{"running": bool, "pods": {name: {counter: n, ...}}, "totals": {counter: n}}``."""
        with self._lock:
            pods = {name: dict(rt.stats) for name, rt in self._runtimes.items()}
        totals = {key: sum(p[key] for p in pods.values()) for key in STAT_KEYS}
        return {"running": self.running, "pods": pods, "totals": totals}


class _Loop:
    """The background thread: every socket is created, used and closed here."""

    def __init__(self, owner: VLLMSubscriber, runtimes: List[_PodRuntime]) -> None:
        self.owner = owner
        self.table = owner.table
        self.initial = runtimes
        self.ready = threading.Event()
        self.start_error: Optional[BaseException] = None
        self.context: Any = None
        self.poller = zmq.Poller()
        self.pods: Dict[str, _PodRuntime] = {}
        self.sockets: Dict[Any, Tuple[_PodRuntime, bool]] = {}  # socket -> (pod, is_replay)
        self.replay_timeout = owner.replay_timeout

    # -- thread body ---------------------------------------------------------------------------------

    def run(self) -> None:
        owner = self.owner
        try:
            self.context = owner._given_context or zmq.Context()
            for rt in self.initial:
                self.add(rt)
        except BaseException as exc:  # start() raises it, after everything opened here is closed
            self.start_error = exc
            self._close_all()
            self.ready.set()
            return
        self.ready.set()
        poll_ms = max(1, int(owner.poll_interval * 1000))
        try:
            while not owner._stop.is_set():
                try:
                    self._commands()
                    for sock, _ in self.poller.poll(poll_ms):
                        self._drain(sock)
                    self._replay_timeouts()
                except zmq.ContextTerminated:
                    log.error("prefixindex.vllm: the ZeroMQ context was terminated; the subscriber stops")
                    return
                except Exception:  # a bug must not end the subscription: log it and go on
                    log.exception("prefixindex.vllm: unexpected error in the subscriber loop")
                    time.sleep(owner.poll_interval)
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for rt in list(self.pods.values()):
            self._close_pod(rt)
        if self.context is not None and self.owner._given_context is None:
            self.context.term()

    def _commands(self) -> None:
        commands = self.owner._commands
        while True:
            try:
                fn, args, future = commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn(self, *args)
            except BaseException as exc:
                future.set(exc)
            else:
                future.set()

    # -- pods ----------------------------------------------------------------------------------------

    def add(self, rt: _PodRuntime) -> None:
        spec = rt.spec
        sock = self.context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.owner.rcvhwm)
            sock.setsockopt(zmq.SUBSCRIBE, rt.topic)
            sock.connect(spec.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ValueError(f"pod {spec.name!r}: cannot connect to {spec.endpoint!r}: {exc}") from None
        rt.sub = sock
        self.pods[spec.name] = rt
        self.sockets[sock] = (rt, False)
        self.poller.register(sock, zmq.POLLIN)
        log.info("prefixindex.vllm: pod %r subscribed to %s (topic %r)", spec.name, spec.endpoint, spec.topic)

    def remove(self, name: str) -> None:
        rt = self.pods.pop(name, None)
        if rt is not None:
            self._close_pod(rt)
            log.info("prefixindex.vllm: pod %r unsubscribed", name)

    def _close_pod(self, rt: _PodRuntime) -> None:
        self._end_replay(rt, ok=None)
        rt.pending = []  # not applied: rt.applied stays before them, so they are a gap after a restart
        if rt.sub is not None:
            self._close_socket(rt.sub)
            rt.sub = None

    def _close_socket(self, sock: Any) -> None:
        self.sockets.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except KeyError:
            pass
        sock.close(0)

    # -- input ---------------------------------------------------------------------------------------

    def _drain(self, sock: Any, limit: int = 256) -> None:
        owner = self.sockets.get(sock)
        if owner is None:
            return
        rt, is_replay = owner
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if is_replay:
                    self._on_replay(rt, frames)
                    if rt.replay is None or rt.replay.sock is not sock:
                        return  # the replay ended: its socket is closed
                else:
                    self._on_live(rt, frames)
            except Exception as exc:  # whatever the input, the subscriber goes on
                self._malformed(rt, f"unexpected error while handling a message: {exc!r}")
                log.debug("prefixindex.vllm: pod %r: traceback", rt.name, exc_info=True)

    def _on_live(self, rt: _PodRuntime, frames: List[bytes]) -> None:
        if len(frames) != 3:
            return self._malformed(rt, f"expected 3 frames (topic, seq, payload), got {len(frames)}")
        topic, seq_frame, payload = frames
        if topic != rt.topic:
            rt.stats["other_topic"] += 1  # the SUB filter is a prefix match; vLLM's topic is exact
            return None
        if len(seq_frame) != 8:
            return self._malformed(rt, f"the seq frame has {len(seq_frame)} bytes, not 8")
        seq = int.from_bytes(seq_frame, "big", signed=True)
        if seq < 0:
            return self._malformed(rt, f"negative seq {seq}")
        if rt.live_last is not None and seq <= rt.live_last:
            self._restart(rt, seq)
        rt.live_last = seq
        if rt.replay is not None:
            rt.pending.append((seq, payload))
            if len(rt.pending) > _MAX_PENDING:
                log.warning("prefixindex.vllm: pod %r: %d batches arrived during a replay; giving it up",
                            rt.name, len(rt.pending))
                self._end_replay(rt, ok=False)
            return None
        if rt.applied is None:  # the first batch from this publisher
            if seq > 0 and self.owner.replay_on_connect and rt.spec.replay_endpoint:
                rt.applied = -1
                self._start_replay(rt, 0)
                rt.pending.append((seq, payload))
                return None
            return self._apply(rt, seq, payload)
        if seq <= rt.applied:
            rt.stats["duplicates"] += 1  # already applied from a replay
            return None
        if seq > rt.applied + 1:
            rt.stats["gaps"] += 1
            if rt.spec.replay_endpoint:
                log.info("prefixindex.vllm: pod %r: gap after seq %d (got %d): replaying", rt.name,
                         rt.applied, seq)
                self._start_replay(rt, rt.applied + 1)
                rt.pending.append((seq, payload))
                return None
            missed = seq - rt.applied - 1
            rt.stats["lost_batches"] += missed
            log.warning("prefixindex.vllm: pod %r: %d batches lost after seq %d (no replay endpoint)",
                        rt.name, missed, rt.applied)
        return self._apply(rt, seq, payload)

    def _restart(self, rt: _PodRuntime, seq: int) -> None:
        """The seq went backwards: a new publisher, a new cache. Drop what the old one reported."""
        rt.stats["restarts"] += 1
        log.warning("prefixindex.vllm: pod %r: seq went back from %d to %d: the publisher restarted; "
                    "clearing the pod", rt.name, rt.live_last, seq)
        self._end_replay(rt, ok=None)
        rt.pending = []
        self.table.process_all_blocks_cleared(AllBlocksCleared(rt.name))
        rt.converter.reset()
        rt.applied = -1  # the new publisher counts from 0
        rt.live_last = None

    # -- replay --------------------------------------------------------------------------------------

    def _start_replay(self, rt: _PodRuntime, start: int) -> None:
        sock = self.context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(rt.spec.replay_endpoint)
            sock.send_multipart([b"", start.to_bytes(8, "big")], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            sock.close(0)
            rt.stats["replay_failures"] += 1
            log.warning("prefixindex.vllm: pod %r: cannot ask %s for a replay: %s", rt.name,
                        rt.spec.replay_endpoint, exc)
            return
        rt.replay = _Replay(sock, start, time.monotonic() + self.replay_timeout)
        rt.stats["replaying"] = True
        self.sockets[sock] = (rt, True)
        self.poller.register(sock, zmq.POLLIN)

    def _on_replay(self, rt: _PodRuntime, frames: List[bytes]) -> None:
        replay = rt.replay
        if replay is None:
            return None
        replay.deadline = time.monotonic() + self.replay_timeout
        if len(frames) != 3 or frames[0] != b"" or len(frames[1]) != 8:
            return self._malformed(rt, f"bad replay message ({len(frames)} frames)")
        seq = int.from_bytes(frames[1], "big", signed=True)
        if seq == _END_OF_REPLAY:
            return self._end_replay(rt, ok=True)
        if seq < 0:
            return self._malformed(rt, f"negative seq {seq} in a replay")
        self._apply_in_order(rt, seq, frames[2], replayed=True)
        return None

    def _end_replay(self, rt: _PodRuntime, ok: Optional[bool]) -> None:
        """Finish a replay (ok), give it up (False) or drop it (None); then apply the batches held back."""
        replay = rt.replay
        if replay is None:
            return
        rt.replay = None
        rt.stats["replaying"] = False
        self._close_socket(replay.sock)
        if ok is None:
            return
        if ok:
            rt.stats["replays"] += 1
        else:
            rt.stats["replay_failures"] += 1
            log.warning("prefixindex.vllm: pod %r: the replay from seq %d via %s got no answer within %.1fs",
                        rt.name, replay.start, rt.spec.replay_endpoint, self.replay_timeout)
        pending, rt.pending = rt.pending, []
        for seq, payload in pending:
            self._apply_in_order(rt, seq, payload, replayed=False)

    def _replay_timeouts(self) -> None:
        now = time.monotonic()
        for rt in list(self.pods.values()):
            if rt.replay is not None and now > rt.replay.deadline:
                self._end_replay(rt, ok=False)

    # -- applying ------------------------------------------------------------------------------------

    def _apply_in_order(self, rt: _PodRuntime, seq: int, payload: bytes, replayed: bool) -> None:
        applied = -1 if rt.applied is None else rt.applied
        if seq <= applied:
            rt.stats["duplicates"] += 1
            return
        if seq > applied + 1:
            missed = seq - applied - 1
            rt.stats["lost_batches"] += missed
            log.warning("prefixindex.vllm: pod %r: %d batches after seq %d could not be replayed", rt.name,
                        missed, applied)
        self._apply(rt, seq, payload, replayed)

    def _apply(self, rt: _PodRuntime, seq: int, payload: bytes, replayed: bool = False) -> None:
        stats = rt.stats
        rt.applied = seq
        stats["last_seq"] = seq
        try:
            events = decode_batch(payload)
        except WireError as exc:
            return self._malformed(rt, f"batch seq {seq}: {exc}")
        stats["batches"] += 1
        if replayed:
            stats["replayed_batches"] += 1
        table = self.table
        convert = rt.converter.convert
        for raw in events:
            try:
                kind, item = convert(decode_event(raw))
                if kind == "stored":
                    table.process_block_stored(item)
                    stats["blocks_stored"] += len(item.block_hashes)
                elif kind == "removed":
                    for event in item:
                        table.process_block_removed(event)
                    if item:
                        stats["blocks_removed"] += len(item[0].block_hashes)
                elif kind == "cleared":
                    table.process_all_blocks_cleared(item)
                    stats["clears"] += 1
                else:
                    self._skipped(rt, kind, item)
                    continue
                stats["events"] += 1
            except (WireError, TypeError, ValueError) as exc:
                self._malformed(rt, f"batch seq {seq}: {exc}")
        return None

    def _skipped(self, rt: _PodRuntime, kind: str, item: Any) -> None:
        stats = rt.stats
        if kind == "filtered":
            stats["filtered"] += 1
        elif kind == "unknown":
            stats["unknown_events"] += 1
            if item not in rt.seen_tags and len(rt.seen_tags) < 100:
                rt.seen_tags.add(item)
                log.warning("prefixindex.vllm: pod %r: skipping events of unknown type %r", rt.name, item)
        elif kind == "unmapped_lora":
            stats["unmapped_lora"] += 1
            if item not in rt.seen_loras and len(rt.seen_loras) < 1000:
                rt.seen_loras.add(item)
                log.warning("prefixindex.vllm: pod %r: adapter %r has no lora_id (add it to lora_map); "
                            "its events are skipped", rt.name, item)

    def _malformed(self, rt: _PodRuntime, reason: str) -> None:
        rt.stats["malformed"] += 1
        n = rt.stats["malformed"]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning("prefixindex.vllm: pod %r: malformed input skipped (%d so far): %s", rt.name, n, reason)


# ---------------------------------------------------------------------------------------------------
# python -m prefixindex subscribe


def _parse_lora(text: str) -> Tuple[str, int]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora-map must be NAME=ID with an integer ID, got {text!r}") from None


def _parse_pod(text: str) -> Pod:
    try:
        return Pod.parse(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prefixindex subscribe",
        description="Subscribe to vLLM pods' KV-event publishers and print the index statistics.")
    parser.add_argument("--pod", action="append", required=True, type=_parse_pod, metavar="SPEC",
                        help="NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M], e.g. "
                             "llama-0=tcp://10.0.0.1:5557,replay=tcp://10.0.0.1:5558 (repeat per pod)")
    parser.add_argument("--model", help="model name of the pods that do not give model=")
    parser.add_argument("--lora-map", action="append", type=_parse_lora, default=[], metavar="NAME=ID",
                        help="map an adapter name (the events' lora_name) to a lora_id (repeatable)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="tokens per block, vLLM's --block-size (default: AIBRIX_PREFIX_CACHE_BLOCK_SIZE or 16)")
    parser.add_argument("--seed", type=int, default=None, help="prefix hash seed (default: AIBRIX_SYNC_HASH_SEED or random)")
    parser.add_argument("--medium", action="append", default=None,
                        help="cache tier to index (repeatable; default GPU; 'any' for every tier)")
    parser.add_argument("--replay-on-connect", action="store_true",
                        help="fetch each pod's buffered batches when the subscription starts")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between stats lines (default 5)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--per-pod", action="store_true", help="also print one line per pod")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parser


_SUMMARY_KEYS = ("batches", "events", "blocks_stored", "blocks_removed", "gaps", "lost_batches", "replays",
                 "restarts", "malformed")
_INDEX_KEYS = ("contexts", "prefixes", "entries", "pods", "orphan_blocks")


def _stats_line(elapsed: float, sub: VLLMSubscriber, table: Any, per_pod: bool, as_json: bool) -> str:
    stats = sub.stats()
    index = table.stats()
    if as_json:
        return json.dumps({"elapsed": round(elapsed, 3), "totals": stats["totals"], "pods": stats["pods"],
                           "index": index}, sort_keys=True)
    totals = stats["totals"]
    line = (f"[{elapsed:8.1f}s] pods={len(stats['pods'])} "
            + " ".join(f"{k}={totals[k]}" for k in _SUMMARY_KEYS)
            + " | index " + " ".join(f"{k}={index.get(k)}" for k in _INDEX_KEYS))
    if per_pod:
        for name, pod in sorted(stats["pods"].items()):
            line += (f"\n    {name}: last_seq={pod['last_seq']} "
                     + " ".join(f"{k}={pod[k]}" for k in _SUMMARY_KEYS)
                     + f" filtered={pod['filtered']} replaying={pod['replaying']}")
    return line


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m prefixindex subscribe ...``: run a subscriber and print stats every --interval."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.duration is not None and args.duration < 0:
        parser.error("--duration must not be negative")
    if args.model is None and any(pod.model is None for pod in args.pod):
        parser.error("--model is required unless every --pod gives model=")
    names = [pod.name for pod in args.pod]
    if len(set(names)) != len(names):
        parser.error("each --pod needs its own NAME")
    mediums: Optional[Tuple[str, ...]] = ("GPU",)
    if args.medium:
        mediums = None if any(m.lower() == "any" for m in args.medium) else tuple(args.medium)

    import prefixindex

    overrides = {k: v for k, v in (("block_size", args.block_size), ("seed", args.seed)) if v is not None}
    try:
        table = prefixindex.SyncPrefixHashTable(**overrides)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    sub = VLLMSubscriber(table, args.pod, model=args.model, lora_map=dict(args.lora_map), mediums=mediums,
                         replay_on_connect=args.replay_on_connect)
    try:
        sub.start()
    except (ValueError, zmq.ZMQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        table.close()
        return 1
    if not args.json:
        print(f"prefixindex {prefixindex.__version__} ({prefixindex.BACKEND} backend), block_size "
              f"{table.block_size if hasattr(table, 'block_size') else table.config.block_size}: subscribed to "
              + ", ".join(f"{p.name}={p.endpoint}" for p in args.pod), flush=True)
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    previous_handler: Any = None
    try:  # SIGTERM (kubectl delete, docker stop) ends the run like Ctrl-C: stop, print, exit 0
        previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    except ValueError:  # not the main thread
        pass
    try:
        while not stop.is_set():
            now = time.monotonic()
            wait = args.interval if deadline is None else min(args.interval, deadline - now)
            if wait > 0 and stop.wait(wait):
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            print(_stats_line(now - started, sub, table, args.per_pod, args.json), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        sub.stop()
        print(_stats_line(time.monotonic() - started, sub, table, args.per_pod, args.json), flush=True)
        table.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
