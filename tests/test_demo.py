"""The demo (python -m prefixindex demo): its figures, its queue model, its determinism, and above all
that the index, fed only by the simulated pods' KV events, agrees with what those pods really hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefixindex._tools import demo as _demo

ROOT = Path(__file__).resolve().parent.parent


def run_json(capsys, *args: str) -> dict:
    assert _demo.main(["--requests", "300", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def short_run():
    """A finished 300-request run, kept open for tests that look inside the index and the pods."""
    result = _demo.run(_demo.DemoConfig(requests=300, seed=11))
    yield result
    result.close()


POLICIES = ("random", "least-load", "prefix-only", "router")


def test_json_figures_are_sane(capsys):
    out = run_json(capsys, "--seed", "3")
    policies = out["policies"]
    assert tuple(policies) == POLICIES
    assert out["requests"] == 300
    for routed in policies.values():
        assert 0.0 <= routed["hit_rate"] <= 1.0
        assert routed["hit_rate"] == pytest.approx(routed["blocks_reused"] / routed["prompt_blocks"])
        assert 0 < routed["ttft_mean_s"] <= routed["ttft_p99_s"]
        assert routed["busiest_pod_share"] >= 1.0  # some pod takes at least its fair share
    # every policy saw the same request stream
    assert len({routed["prompt_blocks"] for routed in policies.values()}) == 1
    assert policies["prefix-only"]["hit_rate"] > policies["random"]["hit_rate"]
    assert policies["router"]["hit_rate"] > policies["random"]["hit_rate"]
    assert sum(out["router_decisions"].values()) == 300
    latency = out["match_latency_us"]
    assert latency["calls"] == 300
    assert 0 < latency["median"] <= latency["p99"]
    assert out["wall_time_s"] > 0


def test_queue_model_by_hand():
    """One pod, two slots: the third request waits for the first slot to free; TTFT = wait + prefill."""
    config = _demo.DemoConfig(pods=1, slots_per_pod=2, prefill_tokens_per_s=1000.0, decode_seconds=2.0)
    cluster = _demo.Cluster(config, salt_stream=0)
    pod = cluster.pods[0].name
    assert cluster.dispatch(pod, 0.0, 500) == (0.5, 0.5, 2.5)
    assert cluster.dispatch(pod, 0.1, 0) == (0.0, 0.1, 2.1)
    ttft, prefill_end, end = cluster.dispatch(pod, 1.0, 1000)  # waits for the slot that frees at 2.1
    assert (ttft, prefill_end, end) == pytest.approx((2.1, 3.1, 5.1))
    assert cluster.in_flight[pod] == 3
    cluster.advance(2.2, 0, (), None)
    assert cluster.in_flight[pod] == 2  # the request that ended at 2.1 has left


def test_router_policy_accounts_its_requests(short_run):
    router = short_run.policies["router"].router
    stats = router.stats()
    assert stats["decisions"] == 300
    assert sum(c["prefilling"] + c["decoding"] for c in stats["in_flight"].values()) <= 300
    short_run.policies["router"].advance(1e9)  # every modelled request has ended by then
    assert router.stats()["in_flight"] == {}


def test_index_stats_match_the_events_sent(capsys):
    out = run_json(capsys, "--seed", "5")
    sent, stats = out["events_sent"], out["index_stats"]
    assert stats["events_block_stored"] == sent["block_stored"] > 0
    assert stats["events_block_removed"] == sent["block_removed"] > 0  # the caches did churn
    assert stats["events_all_blocks_cleared"] == sent["all_blocks_cleared"] == out["pod_restarts"] >= 1
    # Events arrive in order and the index has room for everything, so no block is an orphan and
    # every block a pod evicts is one the index had placed.
    assert stats["orphan_blocks"] == 0 and stats["evicted_prefixes"] == 0
    assert stats["blocks_stored"] == sent["blocks_in_block_stored"]
    assert stats["blocks_removed"] == sent["blocks_in_block_removed"] > 0
    assert sent["blocks_in_block_stored"] > sent["block_stored"]  # some events carry several blocks
    assert stats["matches"] == out["requests"]  # the prefix-only index: one match per request
    assert stats["contexts"] == len(out["models"]) == 2
    assert 0 < stats["pods"] <= out["pods"]
    # with a faithful index, its match for the chosen pod was the pod's real cache every time
    assert out["index_agreed"] == out["requests"]


def test_same_seed_same_figures_other_seed_other_workload(capsys):
    def figures(out):
        return (out["policies"], out["router_decisions"], out["events_sent"], out["index_stats"])

    first, again = run_json(capsys, "--seed", "9"), run_json(capsys, "--seed", "9")
    assert figures(first) == figures(again)
    other = run_json(capsys, "--seed", "10")
    assert other["policies"]["router"]["prompt_blocks"] != first["policies"]["router"]["prompt_blocks"]


def test_options_shape_the_cluster(capsys):
    out = run_json(capsys, "--pods", "4", "--block-size", "32")
    assert out["pods"] == 4 and out["block_size"] == 32
    assert out["index_stats"]["pods"] <= 4
    assert out["policies"]["prefix-only"]["prompt_blocks"] > 0
    with pytest.raises(SystemExit):
        _demo.main(["--pods", "0"])
    capsys.readouterr()


@pytest.mark.parametrize("option, value", [("--requests", _demo.MAX_DEMO_REQUESTS + 1), ("--requests", 10**20),
                                           ("--pods", _demo.MAX_DEMO_PODS + 1), ("--pods", 10**8)])
def test_sizes_that_would_not_end_are_usage_errors(capsys, option, value):
    # 10**8 pods took 2.8 GB and had not started routing after a minute; 10**20 requests would never end
    with pytest.raises(SystemExit) as exc:
        _demo.main([option, str(value)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} must be at least 1 and at most " in err and f"got {value}" in err


def test_index_agrees_with_the_pods_ground_truth(short_run):
    """End to end: for every session's transcript (cut anywhere, and sometimes extended with new
    tokens) and for a fresh prompt, match_blocks gives each pod exactly the leading blocks it holds."""
    index, cluster, workload = short_run.index, short_run.clusters["prefix-only"], short_run.workload
    assert short_run.events_sent["block_removed"] > 0 and workload.restarts  # eviction and a restart happened
    rng = np.random.default_rng(123)
    prompts = []
    for session in workload.sessions:
        cut = int(rng.integers(1, len(session.token_ids) + 1))
        ids = session.token_ids[:cut]
        if rng.random() < 0.3:  # the same history, then a turn nobody has sent yet
            ids = np.concatenate([ids, rng.integers(0, _demo.VOCAB_SIZE, size=50, dtype=np.uint32)])
        prompts.append((session.model, ids))
    prompts.append((workload.models[0], rng.integers(0, _demo.VOCAB_SIZE, size=200, dtype=np.uint32)))

    held_somewhere = 0
    for model, ids in prompts:
        raw = ids.astype(">u4").tobytes()
        for queried_model in workload.models:
            matched = index.match_blocks(queried_model, -1, ids)
            for pod in cluster.pods:
                truth = pod.cached_prefix_blocks(raw) if pod.model == queried_model else 0
                assert matched.get(pod.name, 0) == truth, (pod.name, queried_model, len(ids))
                held_somewhere += truth > 0
            assert set(matched) <= {pod.name for pod in cluster.pods if pod.model == queried_model}
    assert held_somewhere >= 10  # the check compared real matches, not only empty ones


def test_index_holds_exactly_the_pods_blocks(short_run):
    """Each cached block of each pod is one entry in the index, and nothing else is."""
    cached = sum(len(pod.cache) for pod in short_run.clusters["prefix-only"].pods)
    assert cached > 0
    assert short_run.index.stats()["entries"] == cached


def test_command_line_demo():
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "demo", "--requests", "200"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hit rate" in proc.stdout
    assert "latency" in proc.stdout and " us" in proc.stdout
    for name in POLICIES:
        assert f"\n{name} " in proc.stdout
    assert "TTFT mean" in proc.stdout and "busiest/fair" in proc.stdout


@pytest.mark.parametrize("pods", [8, 64])
def test_router_against_the_other_policies(pods):
    """The issue's targets, on the figures docs/routing.md reports (the default demo, seed 0): at least
    95 % of prefix-only's hit rate, the busiest pod within 1.25x its fair share, and the lowest mean
    and p99 modelled TTFT of the four policies. Other seeds and loads are a sweep in docs/routing.md,
    where not every target holds."""
    result = _demo.run(_demo.DemoConfig(pods=pods))
    try:
        p = result.summary()["policies"]
    finally:
        result.close()
    router = p["router"]
    others = [p[name] for name in POLICIES if name != "router"]
    assert router["busiest_pod_share"] <= 1.25
    assert all(router["ttft_mean_s"] < o["ttft_mean_s"] for o in others)
    assert all(router["ttft_p99_s"] < o["ttft_p99_s"] for o in others)
    assert router["hit_rate"] >= 0.95 * p["prefix-only"]["hit_rate"]
    assert p["prefix-only"]["busiest_pod_share"] > 1.4  # what the router is there to avoid
