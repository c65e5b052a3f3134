"""prefixindex.metrics: scraped from a real prometheus_client HTTP endpoint on 127.0.0.1.

Every test starts the server with ``metrics.serve(0, ...)`` (a free port), makes real events happen
(table calls, ZeroMQ batches from a publisher on 127.0.0.1, router decisions), fetches /metrics over
HTTP and parses the text format: names, types, label sets and values are checked against what
happened and against the sources' own ``stats()``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterator, Tuple

import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="the 'metrics' extra is not installed")
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prefixindex import AllBlocksCleared, metrics

from helpers import STAT_KEYS, removed, stored, toks

ROOT = Path(__file__).resolve().parent.parent
Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


class Scrape:
    """One GET of /metrics, parsed: ``types`` (family -> type), ``samples`` ((name, labels) -> value)."""

    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            self.text = response.read().decode()
        self.types: Dict[str, str] = {}
        self.samples: Samples = {}
        self.labels: Dict[str, set] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value
                self.labels.setdefault(s.name, set()).add(frozenset(s.labels))

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> Dict[FrozenSet[Tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self, prefix: str = "prefixindex_") -> set:
        return {n for n, _ in self.samples if n.startswith(prefix)}


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """serve(**sources) -> a MetricsServer on 127.0.0.1, port 0, with a registry of its own."""
    servers = []

    def start(**sources: Any) -> Any:
        sources.setdefault("registry", CollectorRegistry())
        server = metrics.serve(0, **sources)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# --- the table -------------------------------------------------------------------------------------

TABLE_GAUGES = {"prefixindex_table_" + k: k for k in ("contexts", "prefixes", "entries", "pods")}
TABLE_COUNTERS = {"prefixindex_table_" + k + "_total": k for k in (
    "blocks_stored", "blocks_removed", "orphan_blocks", "matches",
    "evicted_contexts", "evicted_pods", "evicted_prefixes")}
EVENT_KINDS = {"block_stored": "events_block_stored", "block_removed": "events_block_removed",
               "all_blocks_cleared": "events_all_blocks_cleared"}


def check_table_scrape(scrape: Scrape, stats: Dict[str, int]) -> None:
    for name, key in TABLE_GAUGES.items():
        assert scrape.types[name] == "gauge", name
        assert scrape.labels[name] == {frozenset()}, name
        assert scrape.value(name) == stats[key], name
    for name, key in TABLE_COUNTERS.items():
        assert scrape.types[name[:-len("_total")]] == "counter", name
        assert f"# TYPE {name} counter" in scrape.text
        assert scrape.value(name) == stats[key], name
    events = scrape.series("prefixindex_table_events_total")
    assert events == {frozenset({("kind", kind)}): stats[key] for kind, key in EVENT_KINDS.items()}


def test_every_table_statistic_is_exported(make_table):
    """Each key of the table's stats() (docs/decisions.md D9), as this backend returns it, has its metric."""
    exported = set(TABLE_GAUGES.values()) | set(TABLE_COUNTERS.values()) | set(EVENT_KINDS.values())
    assert exported == set(STAT_KEYS) == set(make_table().stats())


def test_table_metrics_after_real_events(make_table, clock, serve):
    table = make_table(max_prefixes_per_context=8)
    server = serve(table=table)
    assert server.address == "127.0.0.1" and server.port > 0
    before = Scrape(server.url)
    check_table_scrape(before, table.stats())
    assert before.value("prefixindex_table_entries") == 0

    table.process_block_stored(stored([1, 2], [0, 1], "pod-a"))
    table.process_block_stored(stored([11], [0], "pod-b"))
    table.process_block_stored(stored([9], [5], "pod-b", parent=12345))  # unknown parent: an orphan
    table.process_block_removed(removed([2], "pod-a"))
    table.match_prefix("m", -1, toks(0, 1), ready_pods=None)
    table.match_blocks("m", -1, toks(0))
    table.process_block_stored(stored([21], [3], "pod-c", model="other"))
    table.process_all_blocks_cleared(AllBlocksCleared("pod-c"))
    for k in range(12):  # over the per-context bound: prefixes are evicted
        table.process_block_stored(stored([100 + k], [50 + k], "pod-d"))
    clock.advance(3600)
    table.evict_now()  # every context idle: contexts go

    after = Scrape(server.url)
    stats = table.stats()
    check_table_scrape(after, stats)
    assert after.value("prefixindex_table_events_total", kind="block_stored") == 16
    assert after.value("prefixindex_table_events_total", kind="block_removed") == 1
    assert after.value("prefixindex_table_events_total", kind="all_blocks_cleared") == 1
    assert after.value("prefixindex_table_orphan_blocks_total") == 1
    assert after.value("prefixindex_table_blocks_removed_total") == 1
    assert after.value("prefixindex_table_matches_total") == 2
    assert after.value("prefixindex_table_evicted_prefixes_total") > 0
    assert after.value("prefixindex_table_evicted_contexts_total") >= 1
    assert after.value("prefixindex_table_contexts") == 0
    assert after.value("prefixindex_table_scrape_errors_total") == 0


def test_values_are_read_at_scrape_time(make_table, serve):
    table = make_table()
    server = serve(table=table)
    assert Scrape(server.url).value("prefixindex_table_entries") == 0
    table.process_block_stored(stored([1, 2, 3], [0, 1, 2], "pod-a"))
    table.process_block_stored(stored([7], [0], "pod-b"))
    scrape = Scrape(server.url)
    assert scrape.value("prefixindex_table_entries") == 4
    assert scrape.value("prefixindex_table_pods") == 2
    assert scrape.value("prefixindex_table_blocks_stored_total") == 4


# --- the vLLM subscriber ---------------------------------------------------------------------------

# the first 17 are the keys of the first release; the later ones were missing from /metrics once
SUBSCRIBER_COUNTERS = ("batches", "events", "blocks_stored", "blocks_removed", "clears", "filtered",
                       "unknown_events", "unmapped_lora", "other_topic", "gaps", "lost_batches", "replays",
                       "replayed_batches", "replay_failures", "duplicates", "restarts", "malformed",
                       "placeholders", "other_rank", "socket_errors", "held_dropped", "resumes", "resume_refills",
                       "resubscribes")
# per-pod gauges: stats key -> metric name
SUBSCRIBER_GAUGES = {"replaying": "prefixindex_subscriber_replaying",
                     "last_seq": "prefixindex_subscriber_last_sequence",
                     "subscribed": "prefixindex_subscriber_subscribed",
                     "held_bytes": "prefixindex_subscriber_held_bytes"}


def test_every_subscriber_statistic_is_exported(make_table):
    """Every key of the subscriber's stats() has a metric, or is left out on purpose with a reason
    (metrics._SUBSCRIBER_LEFT_OUT): a key added to stats() later fails here until it is one or the other."""
    pytest.importorskip("zmq", reason="the 'vllm' extra (pyzmq) is not installed")
    from prefixindex.vllm import GAUGE_KEYS, STAT_KEYS as SUB_STAT_KEYS, Pod, VLLMSubscriber

    counters = {key for key, _ in metrics._SUBSCRIBER_COUNTERS}
    gauges = {key: "prefixindex_subscriber_" + name for key, name, _ in metrics._SUBSCRIBER_GAUGES}
    left_out = metrics._SUBSCRIBER_LEFT_OUT
    assert counters == set(SUB_STAT_KEYS) == set(SUBSCRIBER_COUNTERS)  # this test's lists follow the source
    assert set(GAUGE_KEYS) <= set(gauges) and gauges == SUBSCRIBER_GAUGES
    assert all(isinstance(why, str) and why for why in left_out.values())
    assert not (counters | set(gauges)) & set(left_out)  # a key is exported or left out, not both

    sub = VLLMSubscriber(make_table(), [Pod("p", "tcp://127.0.0.1:9", data_parallel_rank=0)], model="m")
    stats = sub.stats()
    assert set(stats) - {"running", "pods"} <= set(left_out)  # the two exported as _running and _pods
    pod_stats = stats["pods"]["p"]
    unaccounted = set(pod_stats) - counters - set(gauges) - set(left_out)
    assert not unaccounted, f"stats() keys with no metric and no reason in metrics._SUBSCRIBER_LEFT_OUT: {unaccounted}"
    numeric = {k for k, v in pod_stats.items() if isinstance(v, (int, float))}
    assert {"data_parallel_rank", "held_bytes", "subscribed", "socket_errors"} <= numeric


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_subscriber_metrics_after_real_batches(make_table, serve):
    zmq = pytest.importorskip("zmq", reason="the 'vllm' extra (pyzmq) is not installed")
    msgspec = pytest.importorskip("msgspec", reason="the 'vllm' extra (msgspec) is not installed")
    from prefixindex.vllm import Pod, VLLMSubscriber

    encode = msgspec.msgpack.Encoder().encode
    table = make_table()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    seq = [0]

    def publish(events: list) -> None:  # vLLM's frames: topic, seq (8 bytes big-endian), msgpack batch
        pub.send_multipart([b"kv", seq[0].to_bytes(8, "big"), encode([time.time(), events, 0])])
        seq[0] += 1

    sub = VLLMSubscriber(table, [Pod("vllm-0", f"tcp://127.0.0.1:{port}", topic="kv")], model="m",
                         poll_interval=0.01)
    try:
        sub.start()
        server = serve(table=table, subscriber=sub)
        pod_stats = lambda: sub.stats()["pods"]["vllm-0"]  # noqa: E731
        deadline = time.monotonic() + 10
        while pod_stats()["batches"] == 0:  # ZeroMQ's slow joiner: probe until one batch arrived
            assert time.monotonic() < deadline, "the subscriber never received a batch"
            publish([])
            time.sleep(0.02)
        probes = pod_stats()["batches"]
        publish([{"type": "BlockStored", "block_hashes": [1, 2], "parent_block_hash": None,
                  "token_ids": toks(0, 1), "block_size": 4, "lora_id": None, "medium": "GPU", "lora_name": None},
                 {"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"},
                 {"type": "SomethingNew"}])
        publish([{"type": "AllBlocksCleared"}])
        _wait_for(lambda: pod_stats()["batches"] >= probes + 2, "the two batches")

        scrape = Scrape(server.url)
        stats = pod_stats()
        pod = frozenset({("pod", "vllm-0")})
        for key in SUBSCRIBER_COUNTERS:
            name = f"prefixindex_subscriber_{key}_total"
            assert scrape.types[f"prefixindex_subscriber_{key}"] == "counter", key
            assert scrape.series(name) == {pod: stats[key]}, key
        for key, name in SUBSCRIBER_GAUGES.items():
            assert scrape.types[name] == "gauge", key
            assert scrape.series(name) == {pod: stats[key]}, key
        assert scrape.value("prefixindex_subscriber_subscribed", pod="vllm-0") == 1  # it received batches
        assert scrape.value("prefixindex_subscriber_held_bytes", pod="vllm-0") == 0  # no replay runs
        assert scrape.value("prefixindex_subscriber_socket_errors_total", pod="vllm-0") == 0
        assert scrape.value("prefixindex_subscriber_events_total", pod="vllm-0") == 3
        assert scrape.value("prefixindex_subscriber_blocks_stored_total", pod="vllm-0") == 2
        assert scrape.value("prefixindex_subscriber_blocks_removed_total", pod="vllm-0") == 1
        assert scrape.value("prefixindex_subscriber_clears_total", pod="vllm-0") == 1
        assert scrape.value("prefixindex_subscriber_unknown_events_total", pod="vllm-0") == 1
        assert scrape.value("prefixindex_subscriber_batches_total", pod="vllm-0") == probes + 2
        assert scrape.value("prefixindex_subscriber_last_sequence", pod="vllm-0") == stats["last_seq"] == seq[0] - 1
        assert scrape.types["prefixindex_subscriber_last_sequence"] == "gauge"
        assert scrape.value("prefixindex_subscriber_replaying", pod="vllm-0") == 0
        assert scrape.value("prefixindex_subscriber_running") == 1
        assert scrape.value("prefixindex_subscriber_pods") == 1
        # the table's view of the same events, from the same endpoint
        assert scrape.value("prefixindex_table_events_total", kind="block_stored") == 1
        assert scrape.value("prefixindex_table_events_total", kind="all_blocks_cleared") == 1
        assert scrape.value("prefixindex_table_entries") == 0
        # exactly these names: the configuration strings (endpoint, topic, model) are not metrics
        assert scrape.names("prefixindex_subscriber") == (
            {f"prefixindex_subscriber_{k}_total" for k in SUBSCRIBER_COUNTERS} | set(SUBSCRIBER_GAUGES.values())
            | {"prefixindex_subscriber_" + n for n in ("running", "pods", "scrape_errors_total")})
    finally:
        sub.stop()
        pub.close(0)
        context.term()
    stopped = Scrape(server.url)
    assert stopped.value("prefixindex_subscriber_running") == 0
    assert stopped.value("prefixindex_subscriber_batches_total", pod="vllm-0") == probes + 2


# --- the router ------------------------------------------------------------------------------------

class StandInRouter:
    """The shape of ``prefixindex.routing.Router.stats()``, driven by hand."""

    def __init__(self) -> None:
        self.decisions_by_reason: Dict[str, int] = {}
        self.in_flight: Dict[str, Dict[str, int]] = {}
        self.predictions: Dict[str, Dict[str, int]] = {}
        self.predicted_entries = 0

    def choose(self, pod: str, reason: str, predicted_blocks: int = 0) -> None:
        self.decisions_by_reason[reason] = self.decisions_by_reason.get(reason, 0) + 1
        self.in_flight.setdefault(pod, {"prefilling": 0, "decoding": 0})["prefilling"] += 1
        counts = self.predictions.setdefault(pod, {"made": 0, "confirmed": 0, "expired": 0})
        if predicted_blocks:
            counts["made"] += 1
            self.predicted_entries += predicted_blocks

    def prefill_done(self, pod: str) -> None:
        self.in_flight[pod]["prefilling"] -= 1
        self.in_flight[pod]["decoding"] += 1

    def finished(self, pod: str) -> None:
        self.in_flight[pod]["decoding"] -= 1
        if not any(self.in_flight[pod].values()):
            del self.in_flight[pod]  # pods with nothing in flight are left out

    def stats(self) -> Dict[str, Any]:
        return {"decisions": sum(self.decisions_by_reason.values()),
                "decisions_by_reason": dict(self.decisions_by_reason),
                "in_flight": {p: dict(v) for p, v in self.in_flight.items()},
                "predictions": {p: dict(v) for p, v in self.predictions.items()},
                "predicted_entries": self.predicted_entries,
                "a_key_added_later": {"x": 1}}  # unknown keys are ignored


def check_router_scrape(scrape: Scrape, stats: Dict[str, Any]) -> None:
    assert scrape.types["prefixindex_router_decisions"] == "counter"
    assert scrape.value("prefixindex_router_decisions_total") == stats["decisions"]
    assert scrape.types["prefixindex_router_decisions_by_reason"] == "counter"
    assert scrape.series("prefixindex_router_decisions_by_reason_total") == {
        frozenset({("reason", r)}): n for r, n in stats["decisions_by_reason"].items()}
    assert scrape.types["prefixindex_router_in_flight_requests"] == "gauge"
    assert scrape.series("prefixindex_router_in_flight_requests") == {
        frozenset({("pod", p), ("phase", phase)}): n
        for p, phases in stats["in_flight"].items() for phase, n in phases.items()}
    for outcome in ("made", "confirmed", "expired"):
        assert scrape.types[f"prefixindex_router_predictions_{outcome}"] == "counter"
        assert scrape.series(f"prefixindex_router_predictions_{outcome}_total") == {
            frozenset({("pod", p)}): counts[outcome] for p, counts in stats["predictions"].items()}
    assert scrape.types["prefixindex_router_predicted_entries"] == "gauge"
    assert scrape.value("prefixindex_router_predicted_entries") == stats["predicted_entries"]


def test_router_metrics_stand_in(serve):
    router = StandInRouter()
    server = serve(router=router)
    empty = Scrape(server.url)
    assert empty.value("prefixindex_router_decisions_total") == 0
    assert empty.series("prefixindex_router_in_flight_requests") == {}

    router.choose("pod-a", "prefix", predicted_blocks=3)
    router.choose("pod-a", "prefix")
    router.choose("pod-b", "least-loaded")
    router.prefill_done("pod-a")
    router.prefill_done("pod-b")
    router.finished("pod-b")
    scrape = Scrape(server.url)
    check_router_scrape(scrape, router.stats())
    assert scrape.value("prefixindex_router_decisions_total") == 3
    assert scrape.value("prefixindex_router_decisions_by_reason_total", reason="prefix") == 2
    assert scrape.value("prefixindex_router_in_flight_requests", pod="pod-a", phase="decoding") == 1
    assert scrape.value("prefixindex_router_in_flight_requests", pod="pod-a", phase="prefilling") == 1
    assert not any(("pod", "pod-b") in labels for labels in scrape.series("prefixindex_router_in_flight_requests"))
    assert scrape.value("prefixindex_router_predictions_made_total", pod="pod-a") == 1
    assert scrape.value("prefixindex_router_predicted_entries") == 3
    assert not any("later" in n for n in scrape.names())
    assert scrape.value("prefixindex_router_scrape_errors_total") == 0


def test_router_metrics_real_router(make_table, serve):
    routing = pytest.importorskip("prefixindex.routing", reason="prefixindex.routing is not in this tree yet")
    table = make_table()
    table.process_block_stored(stored([1, 2], [0, 1], "pod-a"))
    router = routing.Router(table)
    server = serve(table=table, router=router)
    choices = [router.choose("m", -1, toks(0, 1, 2), ["pod-a", "pod-b"]) for _ in range(3)]
    router.prefill_done(choices[0])
    router.finished(choices[1])
    scrape = Scrape(server.url)
    stats = router.stats()
    check_router_scrape(scrape, stats)
    assert scrape.value("prefixindex_router_decisions_total") == 3
    assert sum(scrape.series("prefixindex_router_decisions_by_reason_total").values()) == 3
    assert sum(scrape.series("prefixindex_router_in_flight_requests").values()) == 2


# --- failures, registration, the server ------------------------------------------------------------

class Broken:
    def stats(self) -> Dict[str, Any]:
        raise RuntimeError("boom")


def test_a_failing_source_does_not_blank_the_others(make_table, serve, caplog):
    table = make_table()
    table.process_block_stored(stored([1], [0], "pod-a"))
    server = serve(table=table, router=Broken())
    first = Scrape(server.url)
    assert first.value("prefixindex_table_entries") == 1
    assert first.names("prefixindex_router") == {"prefixindex_router_scrape_errors_total"}
    assert first.value("prefixindex_router_scrape_errors_total") == 1
    assert first.value("prefixindex_table_scrape_errors_total") == 0
    assert Scrape(server.url).value("prefixindex_router_scrape_errors_total") == 2
    assert "reading router.stats() failed" in caplog.text


def test_register_checks_its_arguments(make_table):
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="at least one of table=, subscriber=, router="):
        metrics.register(registry=registry)
    with pytest.raises(TypeError, match="subscriber must have a stats"):
        metrics.register(subscriber=object(), registry=registry)
    table = make_table()
    collector = metrics.register(table=table, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):  # prometheus_client's own check of names
        metrics.register(table=make_table(), registry=registry)
    metrics.register(router=StandInRouter(), registry=registry)  # another kind of source is fine
    registry.unregister(collector)
    metrics.register(table=table, registry=registry)


@pytest.mark.parametrize("port, error", [(True, TypeError), ("9400", TypeError), (-1, ValueError),
                                         (65536, ValueError)])
def test_serve_checks_the_port(make_table, port, error):
    registry = CollectorRegistry()
    with pytest.raises(error, match="port"):
        metrics.serve(port, table=make_table(), registry=registry)
    assert list(registry.collect()) == []  # nothing was registered


def test_close_frees_the_port_and_unregisters(make_table):
    registry = CollectorRegistry()
    table = make_table()
    server = metrics.serve(0, table=table, registry=registry)
    url = server.url
    assert Scrape(url).value("prefixindex_table_entries") == 0
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    with metrics.serve(0, table=table, registry=registry) as again:  # the names are free again
        assert Scrape(again.url).value("prefixindex_table_pods") == 0


def test_close_after_the_collector_was_unregistered(make_table):
    """registry.unregister(collector) is the documented way to remove a collector: close() after it
    still stops the server and frees the port, and stays idempotent."""
    registry = CollectorRegistry()
    server = metrics.serve(0, table=make_table(), registry=registry)
    url = server.url
    registry.unregister(server.collector)
    server.close()  # was a KeyError from prometheus_client
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    assert list(registry.collect()) == []
    metrics.register(table=make_table(), registry=registry)  # the names are free


def test_default_registry(make_table):
    """Without registry=, the collector goes into prometheus_client's global REGISTRY (with the
    process metrics prometheus_client registers there), and close() takes it out again."""
    table = make_table()
    table.process_block_stored(stored([1], [0], "pod-a"))
    with metrics.serve(0, table=table) as server:
        scrape = Scrape(server.url)
        assert scrape.value("prefixindex_table_entries") == 1
        assert "python_info" in scrape.types
    assert server.collector not in prometheus_client.REGISTRY._collector_to_names


def test_import_error_names_the_extra():
    code = "import sys; sys.modules['prometheus_client'] = None\nimport prefixindex.metrics"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: prefixindex.metrics needs prometheus_client"), last
    assert "pip install -e '.[metrics]'" in last and "'prefixindex[metrics]'" in last
