"""``python -m prefixindex subscribe``: run a vLLM subscriber from the shell and print index statistics
(docs/vllm.md, V10).

The argument parser needs neither pyzmq nor msgspec, so that ``--help`` works on a machine without the
``vllm`` extra; the subscriber is imported once the arguments are read.

``--snapshot PATH [--snapshot-every SECONDS]`` loads the index and each pod's position from PATH at start
and saves them periodically and on exit (docs/snapshot.md, "The subscribe command");
``--metrics-port PORT`` serves prefixindex.metrics for the table and the subscriber (docs/metrics.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

from .._subscriber_snapshot import PeriodicSaver, open_table
from .._subscriber_snapshot import add_arguments as add_snapshot_arguments
from .._subscriber_snapshot import check_arguments as check_snapshot_arguments
from ._checks import MAX_SECONDS, check_seconds

__all__ = ["build_parser", "main"]

INSTALL_HINT = ("the subscriber needs pyzmq and msgspec: run  python -m pip install -e '.[vllm]'  in a checkout "
                "of the prefixindex repository")


def _parse_lora(text: str) -> Tuple[str, int]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        lora_id = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora-map must be NAME=ID with an integer ID, got {text!r}") from None
    if not -2**63 <= lora_id < 2**63:  # the index's lora_id range (a usage error here, not a traceback later)
        raise argparse.ArgumentTypeError(f"--lora-map {name}: the ID must fit in a signed 64-bit integer, "
                                         f"got {lora_id}")
    return name, lora_id


def build_parser() -> argparse.ArgumentParser:
    from ..__main__ import command_prog

    parser = argparse.ArgumentParser(
        prog=command_prog("subscribe"),
        description="Subscribe to vLLM pods' KV-event publishers and print the index statistics.",
        epilog="Requirements: the subscriber needs pyzmq and msgspec. From a checkout of the prefixindex\n"
               "repository:  python -m pip install -e '.[vllm]'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pod", action="append", required=True, metavar="SPEC",
                        help="NAME=ENDPOINT[,replay=ENDPOINT][,topic=T][,model=M][,rank=R], e.g. "
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
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between stats lines (default 5, at most 2**31)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (at most 2**31)")
    parser.add_argument("--per-pod", action="store_true", help="also print one line per pod")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    add_snapshot_arguments(parser)
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics of the index and the subscriber on "
                             "http://127.0.0.1:PORT/metrics (0: a free port; the URL is printed to stderr; "
                             "needs the 'metrics' extra, prometheus_client)")
    parser.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                        help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 for every interface)")
    return parser


_SUMMARY_KEYS = ("batches", "events", "blocks_stored", "blocks_removed", "gaps", "lost_batches", "replays",
                 "restarts", "resumes", "resume_refills", "malformed")
_INDEX_KEYS = ("contexts", "prefixes", "entries", "pods", "orphan_blocks")


def _stats_line(elapsed: float, sub: Any, table: Any, per_pod: bool, as_json: bool) -> str:
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


def _install_stop_handlers(stop: threading.Event, stopped_by: List[str]) -> List[Tuple[int, Any]]:
    """SIGTERM (kubectl delete, docker stop) and SIGINT (Ctrl-C) set ``stop``, and record which
    signal came first. They stay installed until the cleanup is done, so that a second signal (an
    impatient Ctrl-C, a second SIGTERM) cannot cut the final save, stats line and close short; it is
    ignored. Returns what to restore. A SIGINT that is ignored (a job started with nohup, or in the
    background of a script) stays ignored."""
    def handler(signum: int, frame: Any) -> None:
        # Only set flags here: a print from a handler can land inside the main thread's own print
        # and raise "reentrant call".
        if not stopped_by:
            stopped_by.append(signal.Signals(signum).name)
        stop.set()

    previous: List[Tuple[int, Any]] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            previous.append((signum, signal.signal(signum, handler)))
        except ValueError:  # not the main thread: signals are not ours to handle
            break
    return previous


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m prefixindex subscribe ...``: run a subscriber and print stats every --interval."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_seconds(parser, "--interval", args.interval, zero_ok=False)
    if args.duration is not None:
        check_seconds(parser, "--duration", args.duration, zero_ok=True)
    check_snapshot_arguments(parser, args, MAX_SECONDS)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be in [0, 65535]")
    metrics: Any = None
    if args.metrics_port is not None:
        try:
            from .. import metrics
        except ImportError as exc:
            parser.error(f"--metrics-port needs prometheus_client: run  python -m pip install -e '.[metrics]'  "
                         f"in a checkout of the prefixindex repository ({exc})")
    try:
        import zmq

        from ..vllm import Pod, VLLMSubscriber
    except ImportError as exc:
        parser.error(f"{INSTALL_HINT} ({exc})")
    pods = []
    for text in args.pod:
        try:
            pods.append(Pod.parse(text))
        except (TypeError, ValueError) as exc:
            parser.error(f"argument --pod: {exc}")
    if args.model is None and any(pod.model is None for pod in pods):
        parser.error("--model is required unless every --pod gives model=")
    names = [pod.name for pod in pods]
    if len(set(names)) != len(names):
        parser.error("each --pod needs its own NAME")
    mediums: Optional[Tuple[str, ...]] = ("GPU",)
    if args.medium:
        mediums = None if any(m.lower() == "any" for m in args.medium) else tuple(args.medium)

    import prefixindex

    overrides = {k: v for k, v in (("block_size", args.block_size), ("seed", args.seed)) if v is not None}
    try:  # a snapshot that cannot be read (or disagrees with --block-size/--seed) stops here, untouched
        table, resume, opened = open_table(prefixindex.SyncPrefixHashTable, args.snapshot, overrides)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"error: cannot read the snapshot {args.snapshot}: {exc}", file=sys.stderr)
        return 1
    if opened:
        print(opened, file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    stop = threading.Event()
    sub = VLLMSubscriber(table, pods, model=args.model, lora_map=dict(args.lora_map), mediums=mediums,
                         replay_on_connect=args.replay_on_connect, resume=resume)
    server: Any = None
    if metrics is not None:
        try:
            server = metrics.serve(args.metrics_port, addr=args.metrics_addr, table=table, subscriber=sub)
        except (OSError, ValueError, TypeError) as exc:
            print(f"error: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {exc}",
                  file=sys.stderr)
            table.close()
            return 1
        print(f"metrics on {server.url}", file=sys.stderr, flush=True)
    try:
        sub.start()
    except (ValueError, zmq.ZMQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if server is not None:
            server.close()
        table.close()
        return 1
    if not args.json:
        print(f"prefixindex {prefixindex.__version__} ({prefixindex.BACKEND} backend), block_size "
              f"{sub.block_size}: subscribed to " + ", ".join(f"{p.name}={p.endpoint}" for p in pods), flush=True)
    started = time.monotonic()
    deadline = None if args.duration is None else started + args.duration
    saver = None if args.snapshot is None else PeriodicSaver(sub, args.snapshot, args.snapshot_every, started)
    stopped_by: List[str] = []
    previous_handlers = _install_stop_handlers(stop, stopped_by)
    next_line = started + args.interval
    saved = True
    try:
        try:
            while not stop.is_set():
                now = time.monotonic()
                wait = min(next_line, deadline if deadline is not None else next_line,
                           saver.next_at if saver is not None and saver.next_at is not None else next_line) - now
                # (a platform whose TIMEOUT_MAX is below MAX_SECONDS wakes early and waits again)
                if wait > 0 and stop.wait(min(wait, threading.TIMEOUT_MAX)):
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if saver is not None and saver.due(now):
                    saver.save(now)
                if now >= next_line:
                    next_line = now + args.interval
                    print(_stats_line(now - started, sub, table, args.per_pod, args.json), flush=True)
        except KeyboardInterrupt:  # SIGINT while our handler was not installed (not the main thread)
            pass
        finally:
            if stopped_by:  # said before the cleanup, which can take a while (the metrics server: ~0.5 s)
                print(f"stopping on {stopped_by[0]}: a second signal is ignored until the cleanup is done",
                      file=sys.stderr, flush=True)
            sub.stop()
            if saver is not None:  # after stop(): the positions and the table are exact
                saved = saver.save()
                if saved:
                    print(f"saved the snapshot to {args.snapshot} ({saver.saves} save(s), {saver.failures} failed)",
                          file=sys.stderr, flush=True)
            print(_stats_line(time.monotonic() - started, sub, table, args.per_pod, args.json), flush=True)
            if server is not None:
                server.close()
            table.close()
    finally:  # only now: until here a second SIGTERM or Ctrl-C would have cut the cleanup short
        for signum, previous in previous_handlers:
            if previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, previous)
    return 0 if saved else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
