"""prefixindex.routing: PodLoad, Router and Choice, rule by rule, on both backends (the make_table
fixture: block_size 4, a fake clock that the router shares)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from prefixindex import BlockStored
from prefixindex.routing import DEFAULTS, Choice, PodLoad, Router

from helpers import BS, toks

MODEL = "m"


def store(table, pod, ks, model=MODEL, lora=-1, salt=0):
    """The pod reports blocks ks (a prefix from block 0): engine hashes are made up per pod."""
    engine = [hash((pod, salt, i)) % 2**63 for i in range(len(ks))]
    table.process_block_stored(BlockStored(engine, toks(*ks), model, lora, pod, None))


# -- PodLoad ----------------------------------------------------------------------------------------

def test_podload_defaults_and_values():
    assert PodLoad() == PodLoad(0, 0, None)
    load = PodLoad(running=3, waiting=np.int64(2), kv_usage=0.5)
    assert (load.running, load.waiting, load.kv_usage) == (3, 2, 0.5)
    assert type(load.waiting) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        load.running = 1  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, error, words", [
    ({"running": -1}, ValueError, "running"),
    ({"waiting": -5}, ValueError, "waiting"),
    ({"running": 1.5}, TypeError, "running"),
    ({"running": True}, TypeError, "running"),
    ({"waiting": "2"}, TypeError, "waiting"),
    ({"kv_usage": math.nan}, ValueError, "kv_usage"),
    ({"kv_usage": 1.01}, ValueError, "kv_usage"),
    ({"kv_usage": -0.1}, ValueError, "kv_usage"),
    ({"kv_usage": "0.5"}, TypeError, "kv_usage"),
])
def test_podload_rejects_bad_values(kwargs, error, words):
    with pytest.raises(error, match=words):
        PodLoad(**kwargs)


# -- settings ---------------------------------------------------------------------------------------

def test_settings_defaults_and_overrides(router_for, clock):
    router = router_for(request_tokens=10, guard_requests=2)
    settings = router.settings
    assert set(settings) == set(DEFAULTS)
    assert settings["request_tokens"] == 10.0 and settings["guard_requests"] == 2
    assert settings["predicted_ttl_seconds"] == DEFAULTS["predicted_ttl_seconds"] > 0
    assert settings["clock"] is clock
    with pytest.raises(TypeError):
        settings["guard_requests"] = 3  # type: ignore[index]


def test_unknown_setting_is_a_type_error(make_table):
    with pytest.raises(TypeError, match="predicted_ttl"):
        Router(make_table(), predicted_ttl=3)


@pytest.mark.parametrize("name, value, error", [
    ("predicted_ttl_seconds", 0, ValueError),
    ("predicted_ttl_seconds", -1.0, ValueError),
    ("predicted_ttl_seconds", math.inf, ValueError),
    ("max_predicted_entries", -1, ValueError),
    ("max_predicted_entries", 2.5, TypeError),
    ("guard_requests", 0, ValueError),
    ("prefill_weight", math.nan, ValueError),
    ("pending_weight", -0.5, ValueError),
    ("request_tokens", "1", TypeError),
    ("kv_usage_tokens", -1, ValueError),
    ("clock", 3, TypeError),
    ("guard_idle_pods", 0, ValueError),
    ("guard_idle_pods", 1.0, TypeError),
    ("learn_concurrency", 1, TypeError),
    ("queue_tokens", -1.0, ValueError),
    ("queue_tokens", "1", TypeError),
])
def test_bad_setting_names_itself(make_table, name, value, error):
    with pytest.raises(error, match=name):
        Router(make_table(), **{name: value})


def test_table_must_be_a_table():
    with pytest.raises(TypeError, match="SyncPrefixHashTable"):
        Router(object())


# -- the choice -------------------------------------------------------------------------------------

def test_choice_reports_every_candidate(make_table, router_for):
    table = make_table()
    store(table, "a", [0, 1, 2])
    store(table, "b", [0])
    store(table, "elsewhere", [0, 1, 2, 3])
    router = router_for(table)
    prompt = toks(0, 1, 2, 3)
    choice = router.choose(MODEL, -1, prompt, ["b", "a", "new"])
    assert isinstance(choice, Choice)
    assert choice.pod == "a"
    assert choice.n_blocks == 4
    assert dict(choice.matched) == {"a": 3, "b": 1, "new": 0}
    assert dict(choice.matched) == {**dict.fromkeys(["a", "b", "new"], 0),
                                    **table.match_blocks(MODEL, -1, prompt, ["a", "b", "new"])}
    assert set(choice.predicted) == set(choice.cost) == {"a", "b", "new"}
    assert all(choice.predicted[p] >= choice.matched[p] for p in choice.matched)
    _, hashes = table.match_prefix(MODEL, -1, prompt)
    assert choice.prefix_hashes.dtype == np.uint64 and np.array_equal(choice.prefix_hashes, hashes)
    assert isinstance(choice.reason, str) and choice.reason


def test_choice_is_immutable(router_for):
    choice = router_for().choose(MODEL, -1, toks(0, 1), ["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.pod = "b"  # type: ignore[misc]
    for mapping in (choice.matched, choice.predicted, choice.cost):
        with pytest.raises(TypeError):
            mapping["a"] = 5  # type: ignore[index]
    with pytest.raises(ValueError):
        choice.prefix_hashes[0] = 1


def test_cost_is_the_documented_formula(make_table, router_for):
    table = make_table()
    store(table, "a", [0, 1])
    # learn_concurrency off: the load term stays request_tokens * requests ** load_exponent (the
    # learned-concurrency shape has its own test below)
    router = router_for(table, prefill_weight=2.0, pending_weight=0.5, request_tokens=7.0, kv_usage_tokens=100.0,
                        load_exponent=1.0, max_predicted_entries=0, learn_concurrency=False)
    n = 4
    first = router.choose(MODEL, -1, toks(0, 1, 2, 3), {"a": PodLoad(), "b": PodLoad()})
    assert first.pod == "a"
    assert first.cost["a"] == 2.0 * (n - 2) * BS
    assert first.cost["b"] == 2.0 * n * BS
    # a now has one request in flight with 2 blocks still to prefill; b reports running/waiting/kv
    second = router.choose(MODEL, -1, toks(9, 8, 7, 6), {"a": PodLoad(), "b": PodLoad(2, 1, 0.25)})
    assert second.cost["a"] == 2.0 * n * BS + 0.5 * (2 * BS) + 7.0 * 1
    assert second.cost["b"] == 2.0 * n * BS + 7.0 * 3 + 100.0 * 0.25
    assert second.pod == "a"
    router.prefill_done(first)  # a's pending prefill goes, its request stays (decoding)
    third = router.choose(MODEL, -1, toks(9, 8, 7, 6), ["a", "c"])
    assert third.cost["a"] == 2.0 * n * BS + 0.5 * (n * BS) + 7.0 * 2  # second still prefilling all 4 blocks
    assert third.cost["c"] == 2.0 * n * BS and third.pod == "c"


def test_load_term_is_convex(router_for):
    """request_tokens * requests ** load_exponent: each more request in flight costs more than the last."""
    router = router_for(request_tokens=10.0, load_exponent=2.5, pending_weight=0.0, max_predicted_entries=0)
    for _ in range(3):
        router.choose(MODEL, -1, toks(0), {"a": PodLoad(running=2), "b": PodLoad(running=100)})
    c = router.choose(MODEL, -1, toks(0), {"a": PodLoad(running=2), "b": PodLoad(running=100)})
    assert c.cost["a"] == pytest.approx(BS + 10.0 * 5 ** 2.5)  # 3 of its own + 2 running
    assert c.cost["b"] == pytest.approx(BS + 10.0 * 100 ** 2.5)
    linear = router_for(request_tokens=10.0, load_exponent=1.0, max_predicted_entries=0)
    assert linear.choose(MODEL, -1, toks(0), {"a": PodLoad(running=5)}).cost["a"] == BS + 50.0


def test_load_outweighs_a_short_match(make_table, router_for):
    table = make_table()
    store(table, "a", [0])
    router = router_for(table)
    prompt = toks(0, 1, 2, 3, 4, 5, 6, 7)
    assert router.choose(MODEL, -1, prompt, {"a": PodLoad(), "b": PodLoad()}).pod == "a"
    busy = router.choose(MODEL, -1, toks(0, 11, 12), {"a": PodLoad(running=20), "b": PodLoad()})
    assert busy.pod == "b" and busy.matched["a"] == 1


def test_hot_spot_guard_sends_to_an_idle_pod(make_table, router_for):
    table = make_table()
    store(table, "hot", [0, 1, 2, 3])
    prompt = toks(0, 1, 2, 3)
    # With the prefill of 4 blocks (16 tokens) worth far more than a request, the hot pod wins on cost
    # until the guard steps in at guard_requests requests in flight.
    router = router_for(table, guard_requests=3, request_tokens=1.0, load_exponent=1.0)
    picks = [router.choose(MODEL, -1, prompt, ["hot", "cold1", "cold2"]) for _ in range(5)]
    assert [c.pod for c in picks] == ["hot", "hot", "hot", "cold1", "cold1"]
    assert picks[3].reason == "hot-spot guard"
    assert picks[3].cost["hot"] < picks[3].cost["cold1"]  # the guard, not the cost, moved it
    # cold1 is now assumed to hold the prompt (a prediction), and with one request it is the cheaper
    assert picks[4].reason == "lowest cost (predicted)" and picks[4].cost["cold1"] < picks[4].cost["hot"]
    assert router.stats()["decisions_by_reason"]["hot-spot guard"] == 1
    # the caller's running + waiting count as load for the guard too
    loaded = router_for(table, guard_requests=3, request_tokens=1.0, load_exponent=1.0)
    c = loaded.choose(MODEL, -1, prompt, {"hot": PodLoad(running=2, waiting=1), "cold1": PodLoad()})
    assert c.pod == "cold1" and c.reason == "hot-spot guard"
    # no idle candidate: no guard
    c = loaded.choose(MODEL, -1, prompt, {"hot": PodLoad(running=5), "cold1": PodLoad(running=9)})
    assert c.pod == "hot" and c.reason != "hot-spot guard"
    # without the guard (a threshold never reached) the hot pod keeps everything
    unguarded = router_for(table, guard_requests=10**6, request_tokens=1.0, load_exponent=1.0)
    assert {unguarded.choose(MODEL, -1, prompt, ["hot", "cold1"]).pod for _ in range(6)} == {"hot"}


def test_guard_waits_for_enough_idle_candidates(make_table, router_for):
    """With guard_idle_pods idle candidates asked for, one idle pod among busy ones is not enough; with
    fewer other candidates than that, all of them idle is."""
    table = make_table()
    store(table, "hot", [0, 1, 2, 3])
    prompt = toks(0, 1, 2, 3)
    settings = dict(guard_requests=2, guard_idle_pods=2, request_tokens=1.0, load_exponent=1.0,
                    max_predicted_entries=0)
    router = router_for(table, **settings)
    one_idle = {"hot": PodLoad(running=2), "busy": PodLoad(running=1), "cold": PodLoad()}
    c = router.choose(MODEL, -1, prompt, one_idle)
    assert c.pod == "hot" and c.reason == "lowest cost"
    two_idle = {"hot": PodLoad(running=2), "cold1": PodLoad(), "cold2": PodLoad()}
    c = router.choose(MODEL, -1, prompt, two_idle)
    assert c.pod == "cold1" and c.reason == "hot-spot guard"
    # one other candidate only: it being idle is enough
    c = router_for(table, **settings).choose(MODEL, -1, prompt, {"hot": PodLoad(running=2), "cold": PodLoad()})
    assert c.pod == "cold" and c.reason == "hot-spot guard"
    # guard_idle_pods=1: the single idle pod of the first case is enough
    c = router_for(table, **{**settings, "guard_idle_pods": 1}).choose(MODEL, -1, prompt, one_idle)
    assert c.pod == "cold" and c.reason == "hot-spot guard"


def decode_on(router, pod, k):
    """k requests chosen for pod (the only candidate) and through prefill_done: k decoding there."""
    choices = [router.choose(MODEL, -1, toks(100 + i), [pod]) for i in range(k)]
    for c in choices:
        router.prefill_done(c)
    return choices


def test_load_below_and_beyond_the_learned_concurrency(make_table, router_for):
    """Once the router has seen k requests decoding at once on a pod, a pod with fewer than k in flight
    pays request_tokens per request (it has a free place in its batch), and from k on queue_tokens per
    request that would wait as well; before anything is learned, the convex term applies."""
    table = make_table()
    store(table, "a", [0, 1])
    settings = dict(request_tokens=10.0, load_exponent=2.5, queue_tokens=1000.0, max_predicted_entries=0,
                    guard_requests=10**6)
    router = router_for(table, **settings)
    seen = decode_on(router, "x", 3)  # learned: 3 at once
    prompt = toks(0, 1, 2, 3)

    def cost_of_a(running, r=router):
        c = r.choose(MODEL, -1, prompt, {"a": PodLoad(running=running), "b": PodLoad()})
        r.finished(c)
        assert c.cost["b"] == 4 * BS
        return c.cost["a"]

    assert cost_of_a(2) == 2 * BS + 10.0 * 2  # below the learned concurrency: linear
    assert cost_of_a(3) == 2 * BS + 10.0 * 3 + 1000.0 * 1  # at it: the request would queue
    assert cost_of_a(5) == 2 * BS + 10.0 * 5 + 1000.0 * 3
    for choice in seen:
        router.finished(choice)
    assert cost_of_a(2) == 2 * BS + 10.0 * 2  # what was learned stays learned after those requests end
    # without prefill_done nothing is learned, and with the setting off nothing either
    fresh, off = router_for(table, **settings), router_for(table, learn_concurrency=False, **settings)
    decode_on(off, "x", 3)
    for r in (fresh, off):
        assert cost_of_a(2, r) == pytest.approx(2 * BS + 10.0 * 2 ** 2.5)


def test_learned_concurrency_keeps_a_session_where_it_is_cached(make_table, router_for):
    """The rule the demo's hit rate rests on: a pod holding most of the prompt with room in its batch
    keeps it, where the convex load term alone sends it to an emptier pod."""
    table = make_table(block_size=16)
    prompt = list(range(1_024))
    engine = [hash(("holder", i)) % 2**63 for i in range(60)]
    table.process_block_stored(BlockStored(engine, prompt[:60 * 16], MODEL, -1, "holder", None))
    pods = {"holder": PodLoad(running=4), "other": PodLoad(running=1)}
    learned = router_for(table, guard_requests=10**6)
    decode_on(learned, "x", 5)
    kept = learned.choose(MODEL, -1, prompt, pods)
    assert kept.pod == "holder"
    unlearned = router_for(table, guard_requests=10**6, learn_concurrency=False)
    assert unlearned.choose(MODEL, -1, prompt, pods).pod == "other"
    # and one at the learned concurrency (it would queue) goes elsewhere; `kept` ends first, or holder
    # would be prefilling this very prompt's tail, which the next one would share (the burst rule)
    learned.finished(kept)
    full = {"holder": PodLoad(running=5), "other": PodLoad(running=1)}
    assert learned.choose(MODEL, -1, prompt, full).pod == "other"


def test_ties_go_to_least_in_flight_then_candidate_order(router_for):
    router = router_for(max_predicted_entries=0, request_tokens=0.0, pending_weight=0.0)
    assert router.choose(MODEL, -1, toks(0), ["x", "y", "z"]).pod == "x"
    # equal cost (request_tokens 0), x has one request in flight: y
    assert router.choose(MODEL, -1, toks(1), ["x", "y", "z"]).pod == "y"
    assert router.choose(MODEL, -1, toks(2), ["z", "y", "x"]).pod == "z"
    fresh = router_for(max_predicted_entries=0)
    assert fresh.choose(MODEL, -1, toks(0), ["q", "p"]).pod == "q"
    assert fresh.choose(MODEL, -1, toks(0), ["p", "r"]).pod == "p"


def test_same_calls_same_choices(make_table, clock, backend):
    def scenario():
        table = make_table()
        router = Router(table, clock=clock)
        rng = np.random.default_rng(5)
        picks = []
        open_choices = []
        for i in range(200):
            ks = [int(k) for k in rng.integers(0, 6, size=int(rng.integers(1, 6)))]
            ks[0] = int(rng.integers(0, 3))
            pods = [f"p{j}" for j in rng.permutation(5)[:int(rng.integers(1, 6))]]
            c = router.choose(MODEL, -1, toks(*ks), pods)
            picks.append((c.pod, c.reason, dict(c.cost)))
            open_choices.append(c)
            if i % 3 == 0:
                store(table, c.pod, ks[:1])
            if len(open_choices) > 6:
                done = open_choices.pop(int(rng.integers(len(open_choices))))
                router.finished(done)
            clock.advance(0.5)
        return picks, router.stats()

    first, again = scenario(), scenario()
    assert first == again
    assert len({pod for pod, _, _ in first[0]}) > 1


def test_both_backends_choose_alike(clock):
    from helpers import BACKENDS
    runs = []
    for name in sorted(BACKENDS):
        table = BACKENDS[name].SyncPrefixHashTable(seed=0, block_size=BS, clock=clock, background_eviction=False)
        router = Router(table, clock=clock)
        store(table, "a", [0, 1, 2])
        store(table, "b", [0, 5])
        got = []
        for ks in ([0, 1, 2, 3], [0, 5, 6], [0, 1, 2, 3], [7, 8], [7, 8], [0, 1], [7, 8, 9]):
            c = router.choose(MODEL, -1, toks(*ks), ["a", "b", "c", "d"])
            got.append((c.pod, dict(c.matched), dict(c.predicted), dict(c.cost), c.reason))
        runs.append((got, router.stats()))
        table.close()
    assert all(r == runs[0] for r in runs)


# -- bad input --------------------------------------------------------------------------------------

def _nothing_recorded(router):
    stats = router.stats()
    assert stats["decisions"] == 0 and stats["in_flight"] == {} and stats["predicted_entries"] == 0
    assert stats["predictions"] == {}


@pytest.mark.parametrize("pods, error, words", [
    ([], ValueError, "empty"),
    ({}, ValueError, "empty"),
    ("abc", TypeError, "pods"),
    (b"abc", TypeError, "pods"),
    (5, TypeError, "pods"),
    (["a", 3], TypeError, "str"),
    ({"a": 3}, TypeError, "PodLoad"),
    ({"a": PodLoad(), 4: PodLoad()}, TypeError, "str"),
    (["a", "b", "a"], ValueError, "'a'"),
])
def test_bad_candidates(router_for, pods, error, words):
    router = router_for()
    with pytest.raises(error, match=words):
        router.choose(MODEL, -1, toks(0, 1), pods)
    _nothing_recorded(router)


@pytest.mark.parametrize("model, lora, tokens, error", [
    (3, -1, toks(0), TypeError),
    (MODEL, "x", toks(0), TypeError),
    (MODEL, -1, "not tokens", TypeError),
    (MODEL, -1, [1, -2, 3], ValueError),
    (MODEL, -1, np.zeros((2, 2), dtype=np.uint32), (TypeError, ValueError)),
])
def test_bad_query_changes_nothing(router_for, model, lora, tokens, error):
    router = router_for()
    with pytest.raises(error):
        router.choose(model, lora, tokens, ["a"])
    _nothing_recorded(router)


def test_candidates_from_a_generator_and_unknown_pods(router_for):
    router = router_for()
    c = router.choose(MODEL, -1, toks(0), (p for p in ["never-seen", "other"]))
    assert c.pod == "never-seen" and dict(c.matched) == {"never-seen": 0, "other": 0}


# -- in-flight accounting ---------------------------------------------------------------------------

def test_in_flight_lifecycle(router_for):
    router = router_for()
    c1 = router.choose(MODEL, -1, toks(0, 1), ["a"])
    c2 = router.choose(MODEL, -1, toks(5, 6), ["a"])
    assert router.stats()["in_flight"] == {"a": {"prefilling": 2, "decoding": 0}}
    router.prefill_done(c1)
    assert router.stats()["in_flight"] == {"a": {"prefilling": 1, "decoding": 1}}
    router.finished(c2)  # aborted before its prefill: allowed
    assert router.stats()["in_flight"] == {"a": {"prefilling": 0, "decoding": 1}}
    router.finished(c1)
    assert router.stats()["in_flight"] == {}
    assert router.stats()["decisions"] == 2


def test_in_flight_misuse_is_a_value_error(router_for):
    router, other = router_for(), router_for()
    c = router.choose(MODEL, -1, toks(0), ["a"])
    with pytest.raises(ValueError, match="another router"):
        other.prefill_done(c)
    with pytest.raises(ValueError, match="another router"):
        other.finished(c)
    router.prefill_done(c)
    with pytest.raises(ValueError, match="prefill_done"):
        router.prefill_done(c)
    router.finished(c)
    with pytest.raises(ValueError, match="finished"):
        router.finished(c)
    with pytest.raises(ValueError, match="finished"):
        router.prefill_done(c)
    with pytest.raises(TypeError, match="Choice"):
        router.finished("a")  # type: ignore[arg-type]
    assert router.stats()["in_flight"] == {}


def test_in_flight_work_steers_choices(router_for):
    router = router_for(max_predicted_entries=0)
    held = [router.choose(MODEL, -1, toks(k, k + 1), ["a", "b"]) for k in range(0, 8, 2)]
    assert [c.pod for c in held] == ["a", "b", "a", "b"]
    for c in held:
        if c.pod == "a":
            router.finished(c)
    assert router.choose(MODEL, -1, toks(20), ["b", "a"]).pod == "a"


# -- stats ------------------------------------------------------------------------------------------

def test_stats_keys(router_for):
    router = router_for()
    c = router.choose(MODEL, -1, toks(0, 1), ["a", "b"])
    stats = router.stats()
    assert set(stats) == {"decisions", "decisions_by_reason", "in_flight", "predictions", "predicted_entries"}
    assert stats["decisions"] == 1 and stats["decisions_by_reason"] == {c.reason: 1}
    assert stats["in_flight"] == {c.pod: {"prefilling": 1, "decoding": 0}}
    assert stats["predictions"] == {c.pod: {"made": 1, "confirmed": 0, "expired": 0}}
    assert stats["predicted_entries"] == 2
    stats["in_flight"].clear()  # a copy: the router's own state is not handed out
    assert router.stats()["in_flight"]


def test_candidate_lists_are_checked_every_time(router_for):
    """Remembered candidate lists (a speed-up) change nothing: the same list again gives the same
    mappings, and a list that differs in any way is checked afresh."""
    router = router_for(max_predicted_entries=0)
    pods = ["a", "b", "c"]
    first = router.choose(MODEL, -1, toks(0), pods)
    second = router.choose(MODEL, -1, toks(0), list(pods))
    assert list(first.matched) == list(second.matched) == pods
    assert dict(first.cost) != dict(second.cost)  # a's request counts in the second choice
    assert first.cost["a"] == BS and len(first.cost) == 3 and "z" not in first.cost
    with pytest.raises(KeyError):
        first.matched["z"]
    with pytest.raises(ValueError, match="'a'"):
        router.choose(MODEL, -1, toks(0), ["a", "b", "a"])
    with pytest.raises(TypeError, match="str"):
        router.choose(MODEL, -1, toks(0), ["a", ["b"]])
    with pytest.raises(TypeError, match="str"):
        router.choose(MODEL, -1, toks(0), ("a", 3))
    assert router.stats()["decisions"] == 2
