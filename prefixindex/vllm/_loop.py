"""The subscriber's thread: every ZeroMQ socket is created, used and closed here (docs/vllm.md, V2).

- One SUB socket per pod and, while a gap is replayed, one DEALER socket to its replay endpoint.
- Other threads hand work over as ``Command`` objects and wake the thread through an OS socket pair
  that is polled with the ZeroMQ sockets: no poll tick, so a command costs the loop microseconds, and
  an idle loop sleeps until a message, a command or the next deadline (a replay's, a retry's).
- A command is atomic for its caller: it is done, or it is not done and the caller gets an error.
  A caller that gives up waiting cancels a command that has not started; one that has started is
  waited for (it only opens or closes sockets, which does not block).
- A socket that cannot be opened (the socket limit, the process's file descriptors) is counted in the
  pod's ``socket_errors``, logged and retried with backoff; the other pods are not held up, and a pod
  whose replay socket cannot be opened gives the replay up after ``replay_timeout`` as usual.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import zmq

from ._stream import PodStream, log

__all__ = ["Command", "Loop", "LoopSettings", "SOCKETS_PER_POD"]

#: The sockets a pod may use at once (its SUB socket and a replay DEALER): the context's socket limit
#: is this times ``max_pods``, plus a few.
SOCKETS_PER_POD = 2
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_DRAIN_LIMIT = 256           # messages taken from one socket before the next one gets a turn
_RETRY_FIRST = 0.01          # seconds before the first retry of a socket that could not be opened ...
_RETRY_MAX = 1.0             # ... doubling up to this
_IDLE_WAIT_MS = 1000         # an idle loop still looks at its stop flag this often (a lost wake-up)
_RECONNECT_IVL_MAX_MS = 2000  # ZeroMQ's reconnect backoff for publishers that are down
_NOBLOCK = zmq.NOBLOCK
_SMALL_FRAME = 256           # topic and seq frames up to this size are handed on as bytes


class LoopSettings:
    __slots__ = ("rcvhwm", "max_message_bytes", "context", "max_sockets", "resubscribe_idle")

    def __init__(self, rcvhwm: int, max_message_bytes: int, context: Optional[zmq.Context[Any]],
                 max_sockets: int, resubscribe_idle: Optional[float]) -> None:
        self.rcvhwm = rcvhwm
        self.max_message_bytes = max_message_bytes
        self.context = context
        self.max_sockets = max_sockets
        self.resubscribe_idle = resubscribe_idle


class Command:
    """Work for the loop thread, handed over by another thread."""

    PENDING, RUNNING, DONE, CANCELLED = range(4)

    def __init__(self, fn: Callable[..., None], *args: Any) -> None:
        self.fn = fn
        self.args = args
        self.state = Command.PENDING
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def take(self) -> bool:
        """The loop starts it, unless the caller cancelled it."""
        with self._lock:
            if self.state != Command.PENDING:
                return False
            self.state = Command.RUNNING
            return True

    def finish(self, error: Optional[BaseException] = None) -> None:
        with self._lock:
            self.error = error
            self.state = Command.DONE
        self._done.set()

    def fail_pending(self, error: BaseException) -> None:
        with self._lock:
            if self.state != Command.PENDING:
                return
            self.error = error
            self.state = Command.DONE
        self._done.set()

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            with self._lock:
                if self.state == Command.PENDING:
                    self.state = Command.CANCELLED
                    raise TimeoutError(f"the subscriber thread did not take the command within {timeout}s; "
                                       "nothing was done")
            self._done.wait()  # started: it only opens or closes sockets, and it is atomic
        if self.error is not None:
            raise self.error


class _PodSockets:
    __slots__ = ("sub", "replay", "replay_start", "sub_retry", "replay_retry", "backoff", "last_rx")

    def __init__(self) -> None:
        self.last_rx = time.monotonic()  # the last time the SUB socket gave a message (or was opened)
        self.sub: Any = None
        self.replay: Any = None
        self.replay_start = 0
        self.sub_retry: Optional[float] = None     # when to try opening the SUB socket again
        self.replay_retry: Optional[float] = None  # when to try opening the replay socket again
        self.backoff = _RETRY_FIRST


class Loop:
    """The thread body and its sockets. ``streams`` are the pods to subscribe to when it starts."""

    def __init__(self, settings: LoopSettings, streams: List[PodStream]) -> None:
        self.settings = settings
        self.initial = streams
        self.ready = threading.Event()
        self.start_error: Optional[BaseException] = None
        self.stopping = threading.Event()
        self.context: Any = None
        self.own_context = settings.context is None
        self._commands: Deque[Command] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Readiness comes from the OS (epoll on Linux) over each ZeroMQ socket's notification fd, so a
        # wake-up costs the sockets that are ready, not every socket: zmq_poll would walk all 10,000.
        self._selector = selectors.DefaultSelector()
        self._fd_of: Dict[Any, int] = {}             # zmq socket -> its ZMQ_FD
        self._hot: Set[Any] = set()                  # sockets that may hold input their fd did not signal
        self._owner: Dict[Any, Tuple[PodStream, bool]] = {}  # socket -> (pod, is_replay)
        self.pods: Dict[str, PodStream] = {}
        self._socks: Dict[str, _PodSockets] = {}
        self._timed: Set[PodStream] = set()          # pods with a replay deadline or a retry pending
        idle = settings.resubscribe_idle
        self._idle_scan_every = None if idle is None else max(0.05, idle / 4)
        self._next_idle_scan = time.monotonic() + (self._idle_scan_every or 0)
        self.alive = True

    # -- other threads -------------------------------------------------------------------------------

    def post(self, command: Command) -> Command:
        if not self.alive:
            command.fail_pending(RuntimeError("the subscriber is not running"))
            return command
        self._commands.append(command)
        self.wake()
        if not self.alive:  # the thread ended meanwhile: it will not take it
            command.fail_pending(RuntimeError("the subscriber is not running"))
        return command

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a full socket pair already wakes the loop

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake()

    # -- thread body ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            if self.own_context:
                self.context = zmq.Context()
                limit = self.context.get(zmq.SOCKET_LIMIT)
                self.context.set(zmq.MAX_SOCKETS, min(self.settings.max_sockets, limit))
            else:
                self.context = self.settings.context
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            for stream in self.initial:
                self.add(stream)
        except BaseException as exc:  # start() raises it, after everything opened here is closed
            self.start_error = exc
            self._close_all()
            self.ready.set()
            return
        self.ready.set()
        try:
            while not self.stopping.is_set():
                try:
                    self._once()
                except zmq.ContextTerminated:
                    log.error("the ZeroMQ context was terminated; the subscriber stops")
                    return
                except Exception:  # a bug must not end the subscription: log it and go on
                    log.exception("unexpected error in the subscriber loop")
                    time.sleep(0.05)
        finally:
            self._close_all()

    def _once(self) -> None:
        timeout = self._housekeeping()
        if self._hot:
            timeout = 0
        ready = self._hot
        self._hot = set()
        for key, _ in self._selector.select(timeout / 1000):
            if key.data is None:
                self._run_commands()
            else:
                ready.add(key.data)
        for sock in ready:
            if sock in self._owner:  # not closed by an earlier one of this round
                self._drain(sock)

    def _housekeeping(self) -> int:
        """Deadlines and retries that are due; the poll timeout (ms) until the next one."""
        now = time.monotonic()
        nearest = now + _IDLE_WAIT_MS / 1000
        if self._idle_scan_every is not None:
            if now >= self._next_idle_scan:
                self._resubscribe_silent(now)
                self._next_idle_scan = now + self._idle_scan_every
            nearest = min(nearest, self._next_idle_scan)
        if not self._timed:
            return max(0, int((nearest - now) * 1000) + 1)
        for stream in list(self._timed):
            socks = self._socks.get(stream.name)
            if socks is None:
                self._timed.discard(stream)
                continue
            if socks.sub_retry is not None and now >= socks.sub_retry:
                self._open_sub(stream, socks)
            if socks.replay_retry is not None and now >= socks.replay_retry:
                self._open_replay(stream, socks)
            deadline = stream.check_deadline(now)
            pending = [t for t in (deadline, socks.sub_retry, socks.replay_retry) if t is not None]
            if pending:
                nearest = min(nearest, *pending)
            else:
                self._timed.discard(stream)
        return max(0, int((nearest - now) * 1000) + 1)

    def _resubscribe_silent(self, now: float) -> None:
        """A fresh SUB socket for pods silent for ``resubscribe_idle`` seconds.

        libzmq ends a connection for good (no reconnect) on a protocol error, such as a message over
        MAXMSGSIZE; an idle pod pays one reconnect per period, and batches missed meanwhile are a gap.
        """
        idle = self.settings.resubscribe_idle
        assert idle is not None
        for name, socks in list(self._socks.items()):
            if socks.sub is None or now - socks.last_rx < idle:
                continue
            stream = self.pods[name]
            self._close_socket(socks.sub)
            socks.sub = None
            stream.stats["resubscribes"] += 1
            self._open_sub(stream, socks)
            socks.last_rx = now

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        commands = self._commands
        while commands:
            command = commands.popleft()
            if not command.take():
                continue
            try:
                command.fn(self, *command.args)
            except BaseException as exc:
                command.finish(exc)
            else:
                command.finish()

    def _close_all(self) -> None:
        self.alive = False
        for stream in list(self.pods.values()):
            self._close_pod(stream)
        self.pods.clear()
        while self._commands:
            self._commands.popleft().fail_pending(RuntimeError("the subscriber stopped"))
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        if self.context is not None and self.own_context:
            self.context.term()

    # -- poll set ------------------------------------------------------------------------------------

    def _watch(self, sock: Any) -> None:
        fd = sock.getsockopt(zmq.FD)
        self._fd_of[sock] = fd
        self._selector.register(fd, selectors.EVENT_READ, sock)
        self._hot.add(sock)  # ZMQ_FD signals changes, not state: look once without waiting for it

    def _unwatch(self, sock: Any) -> None:
        fd = self._fd_of.pop(sock, None)
        self._hot.discard(sock)
        if fd is not None:
            self._selector.unregister(fd)  # before the close, which closes the fd

    def _close_socket(self, sock: Any) -> None:
        self._owner.pop(sock, None)
        self._unwatch(sock)
        sock.close(0)

    # -- pods (commands) -----------------------------------------------------------------------------

    def add(self, stream: PodStream) -> None:
        """Subscribe to one pod. An endpoint ZeroMQ refuses is a ValueError and nothing is done."""
        socks = _PodSockets()
        self._socks[stream.name] = socks
        self.pods[stream.name] = stream
        stream.transport = self
        try:
            self._open_sub(stream, socks)
        except ValueError:
            del self._socks[stream.name]
            del self.pods[stream.name]
            stream.transport = None
            raise
        stream.begin()

    def remove(self, stream: PodStream) -> None:
        if self.pods.get(stream.name) is stream:
            del self.pods[stream.name]
            self._close_pod(stream)
            log.info("pod %r unsubscribed", stream.name)

    def _close_pod(self, stream: PodStream) -> None:
        stream.close()  # drops its replay (through cancel_replay) and its held batches
        socks = self._socks.pop(stream.name, None)
        if socks is not None and socks.sub is not None:
            self._close_socket(socks.sub)
        self._timed.discard(stream)
        stream.transport = None

    # -- sockets -------------------------------------------------------------------------------------

    def _new_socket(self, kind: int, stream: PodStream, socks: _PodSockets, what: str) -> Any:
        """A socket with the options every pod socket gets, or None after counting a resource failure."""
        try:
            sock = self.context.socket(kind)
        except zmq.ZMQError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            self._socket_failed(stream, socks, what, exc)
            return None
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)  # tcp://[fd00::1]:5557 needs it; IPv4 endpoints work as well
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        return sock

    def _socket_failed(self, stream: PodStream, socks: _PodSockets, what: str, exc: BaseException) -> None:
        stream.stats["socket_errors"] += 1
        n = stream.stats["socket_errors"]
        if n <= 10 or n % 1000 == 0:
            log.warning("pod %r: cannot open its %s socket (%s; %d so far): retrying in %.2fs (raise the "
                        "process's open-file limit or the subscriber's max_pods)", stream.name, what, exc, n,
                        socks.backoff)
        retry = time.monotonic() + socks.backoff
        socks.backoff = min(_RETRY_MAX, socks.backoff * 2)
        if what == "SUB":
            socks.sub_retry = retry
        else:
            socks.replay_retry = retry
        self._timed.add(stream)

    def _open_sub(self, stream: PodStream, socks: _PodSockets) -> None:
        spec = stream.spec
        socks.sub_retry = None
        sock = self._new_socket(zmq.SUB, stream, socks, "SUB")
        if sock is None:
            return
        try:
            sock.setsockopt(zmq.RCVHWM, self.settings.rcvhwm)
            sock.setsockopt(zmq.SUBSCRIBE, stream.topic)
            sock.connect(spec.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno in _RESOURCE_ERRNOS:
                return self._socket_failed(stream, socks, "SUB", exc)
            raise ValueError(f"pod {spec.name!r}: cannot connect to {spec.endpoint!r}: {exc}") from None
        socks.sub = sock
        socks.backoff = _RETRY_FIRST
        self._owner[sock] = (stream, False)
        self._watch(sock)
        stream.stats["subscribed"] = True
        log.info("pod %r subscribed to %s (topic %r)", spec.name, spec.endpoint, spec.topic)
        return None

    def request_replay(self, stream: PodStream, start: int) -> None:
        socks = self._socks.get(stream.name)
        if socks is None:
            return
        self.cancel_replay(stream)
        socks.replay_start = start
        self._open_replay(stream, socks)
        self._timed.add(stream)  # the replay's deadline

    def _open_replay(self, stream: PodStream, socks: _PodSockets) -> None:
        socks.replay_retry = None
        if stream.replay is None:
            return
        sock = self._new_socket(zmq.DEALER, stream, socks, "replay")
        if sock is None:
            return
        try:
            sock.connect(stream.spec.replay_endpoint)
            sock.send_multipart([b"", socks.replay_start.to_bytes(8, "big")], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno in _RESOURCE_ERRNOS or exc.errno == zmq.EAGAIN:
                return self._socket_failed(stream, socks, "replay", exc)
            stream.stats["socket_errors"] += 1
            log.warning("pod %r: cannot ask %s for a replay: %s", stream.name, stream.spec.replay_endpoint, exc)
            return stream.end_replay(False)
        socks.replay = sock
        socks.backoff = _RETRY_FIRST
        self._owner[sock] = (stream, True)
        self._watch(sock)
        return None

    def cancel_replay(self, stream: PodStream) -> None:
        socks = self._socks.get(stream.name)
        if socks is None:
            return
        socks.replay_retry = None
        if socks.replay is not None:
            sock, socks.replay = socks.replay, None
            self._close_socket(sock)

    # -- input ---------------------------------------------------------------------------------------

    def _drain(self, sock: Any) -> None:
        owner = self._owner.get(sock)
        if owner is None:
            return
        stream, is_replay = owner
        if is_replay:
            return self._drain_replay(sock, stream)
        socks = self._socks.get(stream.name)
        if socks is not None:
            socks.last_rx = time.monotonic()
        # Frame by frame rather than recv_multipart(copy=False), and never a copy of a large frame:
        # each frame comes as a zmq.Frame, whose `more` ZeroMQ fills in C (asking the socket for
        # RCVMORE from Python costs more than the Frame); the topic and seq go on as bytes when small,
        # everything else as a view of ZeroMQ's buffer. So a flood of big frames, wherever they sit in
        # the message, costs the loop little, it keeps up, and they do not pile up in ZeroMQ's queue
        # (issue 10, Deliver 4). A message's frames arrive together: only its first recv can find none.
        recv = sock.recv
        on_batch = stream.on_live_batch
        for i in range(_DRAIN_LIMIT):
            try:
                topic = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                if sock.get(zmq.EVENTS) & zmq.POLLIN:  # (libzmq's advice before waiting on ZMQ_FD)
                    self._hot.add(sock)
                return None
            try:
                if not topic.more:
                    stream.on_live([topic])
                    continue
                seq = recv(_NOBLOCK, copy=False)
                if not seq.more:
                    stream.on_live([topic, seq])
                    continue
                last = recv(_NOBLOCK, copy=False)
                if last.more:
                    stream.on_live([topic, seq, last] + _rest(recv))
                    continue
                on_batch(topic.bytes if len(topic) <= _SMALL_FRAME else topic.buffer,
                         seq.bytes if len(seq) <= _SMALL_FRAME else seq.buffer, last.buffer)
            except zmq.ContextTerminated:
                raise
            except Exception as exc:  # whatever the input, the subscriber goes on
                stream.malformed(f"unexpected error while handling a message: {exc!r}")
                log.debug("pod %r: traceback", stream.name, exc_info=True)
        self._hot.add(sock)  # more may wait: the next round, after the other sockets
        return None

    def _drain_replay(self, sock: Any, stream: PodStream) -> None:
        """A replay's messages (3 or 4 frames); not the hot path, so one recv_multipart each."""
        recv = sock.recv_multipart
        for _ in range(_DRAIN_LIMIT):
            try:
                parts = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                if sock.get(zmq.EVENTS) & zmq.POLLIN:
                    self._hot.add(sock)
                return
            # as live: small frames as bytes, the payload and anything large as views (Deliver 4)
            frames: List[Any] = [p.bytes if len(p) <= _SMALL_FRAME else p.buffer for p in parts[:-1]]
            frames.append(parts[-1].buffer)
            try:
                stream.on_replay(frames)
                if sock not in self._owner:
                    return  # the replay ended (or started over): this socket is closed
            except Exception as exc:  # whatever the input, the subscriber goes on
                stream.malformed(f"unexpected error while handling a message: {exc!r}")
                log.debug("pod %r: traceback", stream.name, exc_info=True)
        self._hot.add(sock)


def _rest(recv: Callable[..., Any]) -> List[Any]:
    """The remaining frames of a message that has too many (Frames: not copied, only counted)."""
    frames = []
    while True:
        frame = recv(_NOBLOCK, copy=False)
        frames.append(frame)
        if not frame.more:
            return frames
