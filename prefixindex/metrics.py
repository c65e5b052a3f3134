"""Prometheus metrics for a table, a vLLM subscriber and a router (docs/metrics.md).

A custom prometheus_client collector: nothing is counted twice and nothing runs between scrapes. At
each scrape it calls the sources' own ``stats()`` (which are thread-safe, SPEC 7) and turns the
running totals into counters (``_total``) and the sizes into gauges, all named ``prefixindex_*``.

    from prefixindex import metrics
    server = metrics.serve(9400, table=table, subscriber=subscriber)   # http://127.0.0.1:9400/metrics
    ...
    server.close()

Needs the optional extra ``metrics`` (prometheus_client): ``pip install -e '.[metrics]'`` in a checkout.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "prefixindex.metrics needs prometheus_client: install the optional extra 'metrics', from a "
        "checkout with python -m pip install -e '.[metrics]' (once prefixindex is on PyPI: "
        "python -m pip install 'prefixindex[metrics]')") from _exc

__all__ = ["PrefixIndexCollector", "MetricsServer", "register", "serve"]

log = logging.getLogger("prefixindex.metrics")

Family = Union[CounterMetricFamily, GaugeMetricFamily]

# --- what each source's stats() keys become -------------------------------------------------------
# (stats key, metric name without the prefix, counter?, help). A counter's name gets "_total" from
# prometheus_client. Keys not listed here are ignored, so that a source may grow new keys without
# breaking a scrape (docs/metrics.md, "Unknown keys").

_TABLE_PLAIN: Tuple[Tuple[str, str, bool, str], ...] = (
    ("contexts", "table_contexts", False, "(model, LoRA) contexts the index holds now"),
    ("prefixes", "table_prefixes", False, "distinct prefix hashes the index holds now, summed over contexts"),
    ("entries", "table_entries", False, "(prefix, pod) entries the index holds now"),
    ("pods", "table_pods", False, "distinct pods holding at least one entry now"),
    ("blocks_stored", "table_blocks_stored", True, "blocks placed by BlockStored events (re-stores included)"),
    ("blocks_removed", "table_blocks_removed", True, "entries removed by BlockRemoved events"),
    ("orphan_blocks", "table_orphan_blocks", True, "blocks not placed because their parent was unknown"),
    ("matches", "table_matches", True, "match calls (match_prefix, match_blocks, match)"),
    ("evicted_contexts", "table_evicted_contexts", True, "contexts dropped by the context bound or staleness"),
    ("evicted_pods", "table_evicted_pods", True, "(context, pod) pairs dropped by staleness"),
    ("evicted_prefixes", "table_evicted_prefixes", True, "prefixes dropped by the per-context bound"),
)
# Accepted events by kind: one counter with a `kind` label (summing over kinds is meaningful).
_TABLE_EVENTS: Tuple[Tuple[str, str], ...] = (
    ("events_block_stored", "block_stored"),
    ("events_block_removed", "block_removed"),
    ("events_all_blocks_cleared", "all_blocks_cleared"),
)

# The subscriber's per-pod counters (docs/vllm.md, "Statistics"), each a counter labelled `pod`.
_SUBSCRIBER_COUNTERS: Tuple[Tuple[str, str], ...] = (
    ("batches", "batches applied (live or replayed)"),
    ("events", "events applied to the index"),
    ("blocks_stored", "blocks in the BlockStored events applied (orphans included)"),
    ("blocks_removed", "blocks in the BlockRemoved events applied"),
    ("clears", "AllBlocksCleared events applied"),
    ("filtered", "events of a tier or KV-cache group that is not indexed"),
    ("unknown_events", "events of unknown types"),
    ("unmapped_lora", "events of adapters without a lora_id"),
    ("other_topic", "messages of another topic"),
    ("gaps", "sequence-number jumps seen"),
    ("lost_batches", "batches never applied"),
    ("replays", "replays completed"),
    ("replayed_batches", "batches applied from replays"),
    ("replay_failures", "replays given up"),
    ("duplicates", "batches received twice and applied once"),
    ("restarts", "publisher restarts detected"),
    ("malformed", "bad messages, payloads and events skipped"),
    ("placeholders", "placeholder stores skipped (no tokens: nothing to index)"),
    ("other_rank", "batches of another data-parallel rank skipped"),
    ("socket_errors", "sockets that could not be opened (retried with backoff)"),
    ("held_dropped", "live batches not held during a replay for want of bytes (max_held_bytes)"),
    ("resumes", "saved positions the subscription continued from"),
    ("resume_refills", "saved positions the publisher could not continue (the pod cleared and refilled)"),
    ("resubscribes", "fresh SUB sockets opened for a pod that was silent for resubscribe_idle"),
)
# The subscriber's per-pod values that go up and down: (stats key, metric name, help), gauges labelled `pod`.
_SUBSCRIBER_GAUGES: Tuple[Tuple[str, str, str], ...] = (
    ("replaying", "replaying", "1 while a replay runs for the pod, else 0"),
    ("last_seq", "last_sequence", "the last batch sequence number applied (absent before the first)"),
    ("subscribed", "subscribed", "1 while the pod's SUB socket is open, else 0"),
    ("held_bytes", "held_bytes", "bytes of the pod's live batches held back now, while a replay runs"),
)
# The subscriber's stats() keys (top level: "totals"; the rest are a pod's) that are deliberately not
# metrics, and why. The metrics tests check that every other key has a metric, so that a key added to
# stats() later is exported or listed here with its reason, never silently forgotten.
_SUBSCRIBER_LEFT_OUT: Dict[str, str] = {
    "totals": "sums over the pods: a query sums the per-pod series instead (sum(...))",
    "endpoint": "configuration, not a measurement (a string)",
    "replay_endpoint": "configuration, not a measurement (a string, or None)",
    "topic": "configuration, not a measurement (a string)",
    "model": "configuration, not a measurement (a string)",
    "data_parallel_rank": "configuration (the engine's rank, a fixed number or None), not a measurement",
}

# The router's per-pod prediction counters: made / confirmed / expired are separate metrics because a
# sum over them would mean nothing.
_PREDICTION_OUTCOMES: Tuple[Tuple[str, str], ...] = (
    ("made", "predictions made: choices that assumed blocks beyond the pod's exact match"),
    ("confirmed", "predictions the exact index confirmed before their TTL"),
    ("expired", "predictions that expired unconfirmed (a pod whose predictions keep expiring is "
                "probably not publishing events)"),
)
_IN_FLIGHT_PHASES = ("prefilling", "decoding")


def _number(value: Any) -> Optional[float]:
    """A stats value as a sample value, or None for what is not a number (bools are 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _label(value: Any) -> str:
    """A label value that the exposition can encode: a pod name is any str (SPEC, Public API), lone
    surrogates included, which UTF-8 cannot write; those are written as backslash escapes instead."""
    text = value if type(value) is str else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _family(name: str, counter: bool, doc: str, labels: Iterable[str] = ()) -> Family:
    full = "prefixindex_" + name
    if counter:
        return CounterMetricFamily(full, doc, labels=list(labels))
    return GaugeMetricFamily(full, doc, labels=list(labels))


def _table_families(stats: Optional[Mapping[str, Any]]) -> List[Family]:
    families: List[Family] = []
    for key, name, counter, doc in _TABLE_PLAIN:
        fam = _family(name, counter, doc)
        value = _number(stats.get(key)) if stats is not None else None
        if value is not None:
            fam.add_metric([], value)
        families.append(fam)
    events = _family("table_events", True, "events accepted by the table, by kind", ["kind"])
    for key, kind in _TABLE_EVENTS:
        value = _number(stats.get(key)) if stats is not None else None
        if value is not None:
            events.add_metric([kind], value)
    families.append(events)
    return families


def _subscriber_families(stats: Optional[Mapping[str, Any]]) -> List[Family]:
    pods = _mapping(stats.get("pods")) if stats is not None else {}
    running = _family("subscriber_running", False, "1 while the subscriber's thread runs, else 0")
    n_pods = _family("subscriber_pods", False, "pods the subscriber is subscribed to")
    if stats is not None:
        value = _number(stats.get("running"))
        if value is not None:
            running.add_metric([], value)
        n_pods.add_metric([], float(len(pods)))
    families: List[Family] = [running, n_pods]
    for key, doc in _SUBSCRIBER_COUNTERS:
        fam = _family("subscriber_" + key, True, doc + ", per pod", ["pod"])
        for pod, pod_stats in pods.items():
            value = _number(_mapping(pod_stats).get(key))
            if value is not None:
                fam.add_metric([_label(pod)], value)
        families.append(fam)
    for key, name, doc in _SUBSCRIBER_GAUGES:
        fam = _family("subscriber_" + name, False, doc, ["pod"])
        for pod, pod_stats in pods.items():
            value = _number(_mapping(pod_stats).get(key))
            if value is not None:
                fam.add_metric([_label(pod)], value)
        families.append(fam)
    return families


def _router_families(stats: Optional[Mapping[str, Any]]) -> List[Family]:
    decisions = _family("router_decisions", True, "pods chosen by the router")
    by_reason = _family("router_decisions_by_reason", True, "pods chosen by the router, by the reason given",
                        ["reason"])
    in_flight = _family("router_in_flight_requests", False,
                        "requests this router sent to the pod and not yet finished, by phase", ["pod", "phase"])
    entries = _family("router_predicted_entries", False, "entries in the router's predicted index now")
    outcomes = {outcome: _family("router_predictions_" + outcome, True, doc + ", per pod", ["pod"])
                for outcome, doc in _PREDICTION_OUTCOMES}
    if stats is not None:
        for fam, key in ((decisions, "decisions"), (entries, "predicted_entries")):
            value = _number(stats.get(key))
            if value is not None:
                fam.add_metric([], value)
        for reason, count in _mapping(stats.get("decisions_by_reason")).items():
            value = _number(count)
            if value is not None:
                by_reason.add_metric([str(reason)], value)
        for pod, phases in _mapping(stats.get("in_flight")).items():
            for phase in _IN_FLIGHT_PHASES:
                value = _number(_mapping(phases).get(phase))
                if value is not None:
                    in_flight.add_metric([_label(pod), phase], value)
        for pod, counts in _mapping(stats.get("predictions")).items():
            for outcome, fam in outcomes.items():
                value = _number(_mapping(counts).get(outcome))
                if value is not None:
                    fam.add_metric([_label(pod)], value)
    return [decisions, by_reason, in_flight, entries, *outcomes.values()]


_BUILDERS: Dict[str, Callable[[Optional[Mapping[str, Any]]], List[Family]]] = {
    "table": _table_families,
    "subscriber": _subscriber_families,
    "router": _router_families,
}


def _check_source(name: str, source: Any) -> None:
    if source is not None and not callable(getattr(source, "stats", None)):
        raise TypeError(f"{name} must have a stats() method (got {type(source).__name__})")


class PrefixIndexCollector(Collector):
    """Reads the sources' ``stats()`` at every scrape. A source whose ``stats()`` raises is logged and
    counted in ``prefixindex_<source>_scrape_errors_total``; the other sources still report."""

    def __init__(self, *, table: Any = None, subscriber: Any = None, router: Any = None) -> None:
        for name, source in (("table", table), ("subscriber", subscriber), ("router", router)):
            _check_source(name, source)
        self.sources: Dict[str, Any] = {name: source for name, source in
                                        (("table", table), ("subscriber", subscriber), ("router", router))
                                        if source is not None}
        if not self.sources:
            raise ValueError("give at least one of table=, subscriber=, router=")
        self._errors: Dict[str, int] = dict.fromkeys(self.sources, 0)
        self._errors_lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        """The metric names, without calling any ``stats()`` (the registry checks names with this)."""
        for name in self.sources:
            yield from _BUILDERS[name](None)
            yield self._error_family(name)

    def collect(self) -> Iterator[Metric]:
        for name, source in self.sources.items():
            try:
                stats = source.stats()
                if not isinstance(stats, Mapping):
                    raise TypeError(f"{name}.stats() returned {type(stats).__name__}, not a mapping")
                families = _BUILDERS[name](stats)
            except Exception:  # one broken source must not blank the scrape for the others
                log.exception("prefixindex.metrics: reading %s.stats() failed", name)
                with self._errors_lock:
                    self._errors[name] += 1
                families = []
            yield from families
            yield self._error_family(name)

    def _error_family(self, source: str) -> Family:
        # One name per source kind (no label), so that collectors of different sources can share a registry.
        fam = _family(source + "_scrape_errors", True, f"scrapes at which {source}.stats() failed")
        with self._errors_lock:
            fam.add_metric([], float(self._errors[source]))
        return fam


def register(*, table: Any = None, subscriber: Any = None, router: Any = None,
             registry: Optional[CollectorRegistry] = None) -> PrefixIndexCollector:
    """Register a collector for the given sources in ``registry`` (default: prometheus_client's
    global ``REGISTRY``) and return it (``registry.unregister(collector)`` removes it).

    One registry takes one collector of each source kind: a second one is a ValueError from
    prometheus_client (duplicated metric names); use a ``CollectorRegistry`` per table otherwise."""
    collector = PrefixIndexCollector(table=table, subscriber=subscriber, router=router)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


class MetricsServer:
    """The HTTP server ``serve()`` started: ``port`` (the bound one, also for port 0), ``address``,
    ``url``, ``collector`` (None if none was registered), ``close()`` (idempotent; also unregisters)."""

    def __init__(self, server: Any, thread: threading.Thread, registry: CollectorRegistry,
                 collector: Optional[PrefixIndexCollector]) -> None:
        self._server = server
        self._thread = thread
        self.registry = registry
        self.collector = collector
        self.address: str = server.server_address[0]
        self.port: int = server.server_address[1]
        self._closed = False
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, free the port and unregister the collector (if the caller has not already)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10.0)
        if self.collector is not None:
            try:
                self.registry.unregister(self.collector)
            except KeyError:  # the caller unregistered it already (the documented way): nothing left to do
                pass

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(port: int, *, addr: str = "127.0.0.1", table: Any = None, subscriber: Any = None,
          router: Any = None, registry: Optional[CollectorRegistry] = None) -> MetricsServer:
    """Serve ``registry`` (default: the global ``REGISTRY``) over HTTP on ``addr:port`` from a daemon
    thread, with prometheus_client's server, after registering a collector for the given sources
    (none given: serve the registry as it is). ``port=0`` picks a free port (``server.port``).
    The default address is the loopback: pass ``addr="0.0.0.0"`` to let Prometheus reach it."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    if not isinstance(addr, str) or not addr:
        raise TypeError("addr must be a non-empty str")
    target = REGISTRY if registry is None else registry
    collector = None
    if any(source is not None for source in (table, subscriber, router)):
        collector = register(table=table, subscriber=subscriber, router=router, registry=target)
    try:
        started = start_http_server(port, addr=addr, registry=target)
        if not isinstance(started, tuple):  # prometheus_client < 0.17 returned nothing
            raise RuntimeError("prefixindex.metrics.serve needs prometheus_client >= 0.17")
        server, thread = started
    except BaseException:
        if collector is not None:
            target.unregister(collector)
        raise
    return MetricsServer(server, thread, target, collector)
