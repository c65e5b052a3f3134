"""prefixindex.routing's predictions, on both backends (the make_table fixture): bursts, expiry,
confirmation and the bound (split from test_routing.py, which passed 600 lines), then what a review of
the routing module found wrong: a prediction confirmed when a later exact run goes past it (multi-turn
chat), a burst kept together whatever concurrency was learned, the prompt hashes predictions hold
bounded by max_predicted_entries, and the reason a predicted win gets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefixindex import BlockRemoved, BlockStored

from helpers import toks

MODEL = "m"
ROOT = Path(__file__).resolve().parent.parent


def store(table, pod, ks):
    """The pod reports blocks ks (a prefix from block 0); returns the engine hashes it used (made up per
    pod and block: a block number stands for the same tokens, at the same place, in every test here)."""
    engine = [hash((pod, k)) % 2**63 for k in ks]
    table.process_block_stored(BlockStored(engine, toks(*ks), MODEL, -1, pod, None))
    return engine


def check_books(router):
    """The predictions' records agree with the predicted index: each owns the entries it counts, the live
    ones (start < stop) are exactly the router's per-(model, pod) collection, a dead one holds no hashes,
    and the hashes held are counted and within 2 * max_predicted_entries. Returns the hashes held."""
    owned = {}
    for key, preds in router._predicted.items():
        for owners in preds.values():
            for pod, rec in owners.items():
                assert (rec.key, rec.pod) == (key, pod)
                owned[id(rec)] = owned.get(id(rec), 0) + 1
    records = router._expiry
    assert sum(owned.values()) == router._entries
    assert all(rec.owned == owned.get(id(rec), 0) for rec in records)
    live = {id(rec) for rec in records if rec.start < rec.stop}
    assert all(rec.owned > 0 for rec in records if id(rec) in live)
    assert all(rec.hashes == [] for rec in records if id(rec) not in live)
    collected = [(key, pod, rec) for key, by_pod in router._live.items() for pod, recs in by_pod.items()
                 for rec in recs]
    assert all(recs for by_pod in router._live.values() for recs in by_pod.values())  # no empty leftovers
    assert all((rec.key, rec.pod) == (key, pod) for key, pod, rec in collected)
    assert sorted(id(rec) for _, _, rec in collected) == sorted(live)
    held = sum(len(rec.hashes) for rec in records)
    assert held == router._held <= 2 * router._max_entries
    return held


# -- the rules -------------------------------------------------------------------------------------

def burst(router, n=4, tokens=1024, pods=8, model=MODEL):
    prompt = list(range(7, 7 + tokens))
    return [router.choose(model, -1, prompt, [f"pod{i}" for i in range(pods)]) for _ in range(n)]


@pytest.mark.parametrize("block_size", [4, 16])
def test_burst_of_identical_prompts_lands_on_one_pod(make_table, router_for, block_size):
    router = router_for(make_table(block_size=block_size))
    picks = burst(router)
    assert len({c.pod for c in picks}) == 1
    assert picks[1].predicted[picks[0].pod] == picks[1].n_blocks == 1024 // block_size
    assert picks[1].matched[picks[0].pod] == 0
    assert router.stats()["predictions"] == {picks[0].pod: {"made": 1, "confirmed": 0, "expired": 0}}


def test_the_guard_leaves_a_burst_together(make_table, router_for):
    """Requests sharing a prefix that the pod is prefilling now are not moved by the guard."""
    # learn_concurrency off: after prefill_done the pod's 4 decoding requests would otherwise be a
    # learned concurrency, and the queue term, not the guard, would move the next request
    router = router_for(make_table(block_size=16), guard_requests=1, request_tokens=1.0, learn_concurrency=False)
    picks = burst(router, n=4)
    assert len({c.pod for c in picks}) == 1
    assert router.stats()["decisions_by_reason"] == {"lowest cost": 1, "lowest cost (predicted)": 3}
    for c in picks:
        router.prefill_done(c)  # prefill over: the next one is an ordinary choice again, and guarded
    again = burst(router, n=1)[0]
    assert again.pod != picks[0].pod and again.reason == "hot-spot guard"


def test_without_predictions_a_burst_scatters(make_table, router_for):
    router = router_for(make_table(block_size=16), max_predicted_entries=0)
    assert len({c.pod for c in burst(router)}) == 4
    assert router.stats()["predicted_entries"] == 0


def test_predictions_never_reach_the_table(make_table, router_for):
    table = make_table()
    router = router_for(table)
    prompt = toks(0, 1, 2, 3)
    c = router.choose(MODEL, -1, prompt, ["a", "b"])
    router.finished(c)
    assert router.stats()["predicted_entries"] == 4
    assert table.match_blocks(MODEL, -1, prompt) == {}
    assert table.match_prefix(MODEL, -1, prompt)[0] == {}
    assert table.stats()["entries"] == 0
    # but the router counts them: the same prompt again goes where it went
    again = router.choose(MODEL, -1, prompt, ["b", "a"])
    assert again.pod == c.pod and again.predicted[c.pod] == 4 and again.matched[c.pod] == 0


def test_predictions_expire_after_their_ttl(make_table, router_for, clock):
    router = router_for(predicted_ttl_seconds=2.0)
    prompt = toks(0, 1, 2)
    first = router.choose(MODEL, -1, prompt, ["a", "b"])
    router.finished(first)
    clock.advance(1.9)
    assert router.choose(MODEL, -1, prompt, ["b", "a"]).predicted[first.pod] == 3
    clock.advance(0.2)
    assert router.stats()["predicted_entries"] == 0
    late = router.choose(MODEL, -1, prompt, ["b", "a"])
    assert late.predicted == late.matched
    assert router.stats()["predictions"][first.pod] == {"made": 1, "confirmed": 0, "expired": 1}


def test_predictions_confirmed_by_the_index(make_table, router_for, clock):
    table = make_table()
    router = router_for(table)
    prompt = toks(0, 1, 2, 3)
    c = router.choose(MODEL, -1, prompt, ["a", "b"])
    router.finished(c)
    store(table, c.pod, [0, 1, 2, 3])  # the engine's events arrive
    seen = router.choose(MODEL, -1, prompt, ["a", "b"])
    assert seen.matched[c.pod] == 4
    stats = router.stats()
    assert stats["predictions"][c.pod] == {"made": 1, "confirmed": 1, "expired": 0}
    assert stats["predicted_entries"] == 0  # the exact index says it all now: the memory comes back
    clock.advance(100)
    assert router.stats()["predictions"][c.pod]["expired"] == 0


def test_partly_confirmed_prediction_keeps_its_tail(make_table, router_for):
    table = make_table()
    router = router_for(table)
    prompt = toks(0, 1, 2, 3, 4, 5)
    c = router.choose(MODEL, -1, prompt, ["a", "b"])
    router.finished(c)
    store(table, c.pod, [0, 1])  # the first chunk of the prefill has been reported
    seen = router.choose(MODEL, -1, prompt, ["a", "b"])
    assert seen.matched[c.pod] == 2 and seen.predicted[c.pod] == 6
    assert router.stats()["predicted_entries"] == 4
    assert router.stats()["predictions"][c.pod]["confirmed"] == 1


def test_only_blocks_beyond_the_match_are_predicted(make_table, router_for):
    table = make_table()
    store(table, "a", [0, 1])
    router = router_for(table)
    c = router.choose(MODEL, -1, toks(0, 1, 2, 3), ["a", "b"])
    assert c.pod == "a"
    router.finished(c)
    assert router.stats()["predicted_entries"] == 2
    full = router.choose(MODEL, -1, toks(0, 1), ["a", "b"])  # nothing beyond the match: no prediction
    assert full.pod == "a" and router.stats()["predictions"]["a"]["made"] == 1


def test_predicted_index_is_bounded(router_for, clock):
    router = router_for(max_predicted_entries=10)
    for k in range(30):
        router.choose(MODEL, -1, toks(3 * k, 3 * k + 1, 3 * k + 2), [f"p{k % 4}"])
        assert router.stats()["predicted_entries"] <= 10
    stats = router.stats()
    assert stats["predicted_entries"] == 9  # three live predictions of 3 blocks
    assert sum(p["made"] for p in stats["predictions"].values()) == 30
    assert sum(p["expired"] for p in stats["predictions"].values()) == 27  # dropped for room count as expired
    long = router_for(max_predicted_entries=5)
    long.choose(MODEL, -1, toks(*range(20)), ["a"])
    assert long.stats()["predicted_entries"] == 5


def test_predictions_of_other_pods_are_ignored(make_table, router_for):
    router = router_for()
    prompt = toks(0, 1, 2, 3)
    first = router.choose(MODEL, -1, prompt, ["a"])
    assert first.pod == "a"
    c = router.choose(MODEL, -1, prompt, ["b", "c"])
    assert c.pod in ("b", "c") and set(c.predicted) == {"b", "c"}
    assert c.predicted == c.matched


def test_predictions_are_per_model_and_adapter(router_for):
    router = router_for()
    prompt = toks(0, 1, 2, 3)
    assert router.choose(MODEL, -1, prompt, ["a", "b"]).pod == "a"
    other = router.choose(MODEL, 7, prompt, ["b", "a"])
    assert other.predicted == other.matched and other.pod == "b"
    model2 = router.choose("other-model", -1, prompt, ["b", "a"])
    assert model2.predicted == model2.matched


def test_chained_predictions_are_all_confirmed(make_table, router_for):
    """A conversation's second turn extends the first turn's prediction; one report confirms both."""
    table = make_table()
    router = router_for(table)
    first = router.choose(MODEL, -1, toks(0, 1), ["a", "b"])
    router.finished(first)
    second = router.choose(MODEL, -1, toks(0, 1, 2, 3), ["b", "a"])
    assert second.pod == first.pod and second.predicted[first.pod] == 2
    router.finished(second)
    assert router.stats()["predictions"][first.pod]["made"] == 2
    store(table, first.pod, [0, 1, 2, 3])
    router.finished(router.choose(MODEL, -1, toks(0, 1, 2, 3), ["a", "b"]))
    stats = router.stats()
    assert stats["predictions"][first.pod] == {"made": 2, "confirmed": 2, "expired": 0}
    assert stats["predicted_entries"] == 0


# -- confirmed past their last block ----------------------------------------------------------------

def test_a_turn_that_runs_past_the_prediction_confirms_it(make_table, router_for, clock):
    """Turn 1 is predicted on its pod; the pod reports turn 1 and its answer; turn 2, which extends
    turn 1, finds all of turn 1's blocks in the index there: turn 1's prediction is confirmed."""
    table = make_table()
    router = router_for(table)
    turn1 = router.choose(MODEL, -1, toks(0, 1, 2), ["a", "b"])
    router.finished(turn1)
    pod = turn1.pod
    store(table, pod, [0, 1, 2, 3, 4])
    clock.advance(1.0)
    turn2 = router.choose(MODEL, -1, toks(0, 1, 2, 3, 4, 5), ["a", "b"])
    router.finished(turn2)
    assert turn2.pod == pod and turn2.matched[pod] == 5
    stats = router.stats()
    assert stats["predictions"][pod] == {"made": 2, "confirmed": 1, "expired": 0}
    assert stats["predicted_entries"] == 1  # turn 1's three went (the index says it all); turn 2's block 5
    check_books(router)
    clock.advance(10.0)
    assert router.stats()["predictions"][pod] == {"made": 2, "confirmed": 1, "expired": 1}
    assert check_books(router) == 0


def test_chained_turns_are_all_confirmed_by_a_run_past_both(make_table, router_for):
    """Turn 2 is chosen before turn 1's events arrive (it extends turn 1's prediction); a report that
    covers both turns and more confirms both predictions."""
    table = make_table()
    router = router_for(table)
    turn1 = router.choose(MODEL, -1, toks(0, 1, 2), ["a", "b"])
    router.finished(turn1)
    turn2 = router.choose(MODEL, -1, toks(0, 1, 2, 3, 4, 5), ["b", "a"])
    router.finished(turn2)
    pod = turn1.pod
    assert turn2.pod == pod and turn2.predicted[pod] == 3 and turn2.matched[pod] == 0
    store(table, pod, list(range(8)))
    turn3 = router.choose(MODEL, -1, toks(*range(9)), ["a", "b"])
    assert turn3.matched[pod] == 8
    stats = router.stats()
    assert stats["predictions"][pod] == {"made": 3, "confirmed": 2, "expired": 0}
    assert stats["predicted_entries"] == 1  # turn 3's block 8 only
    check_books(router)


def test_a_run_of_another_prompt_or_another_pod_confirms_nothing(make_table, router_for):
    table = make_table()
    router = router_for(table)
    first = router.choose(MODEL, -1, toks(0, 1, 2), ["a", "b"])
    router.finished(first)
    pod, other = first.pod, ("b" if first.pod == "a" else "a")
    store(table, pod, [5, 6, 7, 8])  # the pod holds another prompt, past the prediction's length
    store(table, other, [0, 1, 2, 3, 4])  # and the other pod holds this one
    for ks in ([5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5]):
        router.finished(router.choose(MODEL, -1, toks(*ks), [pod, other]))
    assert router.stats()["predictions"][pod]["confirmed"] == 0
    assert router.choose(MODEL, -1, toks(0, 1, 2), [pod]).predicted[pod] == 3  # still predicted there
    check_books(router)


# -- bursts after a concurrency is learned ----------------------------------------------------------

@pytest.mark.parametrize("learned", [1, 2, 3, 4])
def test_a_burst_stays_on_one_pod_whatever_concurrency_was_learned(make_table, router_for, clock, learned):
    """Earlier traffic taught the router a concurrency; all of it has ended and expired. Four identical
    1,024-token prompts back to back still go to one pod: the pod prefilling that prompt is not charged
    queue_tokens for it (docs/routing.md, "The cost")."""
    router = router_for(make_table(block_size=16))
    warm = [router.choose(MODEL, -1, list(range(10**6 + 64 * i, 10**6 + 64 * (i + 1))), ["p0"])
            for i in range(learned)]
    for c in warm:
        router.prefill_done(c)  # `learned` requests decoding at once on p0
    for c in warm:
        router.finished(c)
    assert router._concurrency == learned
    clock.advance(60.0)
    stats = router.stats()
    assert stats["in_flight"] == {} and stats["predicted_entries"] == 0
    pods = ["p0", "p1", "p2", "p3"]
    picks = [router.choose(MODEL, -1, list(range(1024)), pods) for _ in range(4)]
    pod = picks[0].pod
    assert [c.pod for c in picks] == [pod] * 4
    assert [c.reason for c in picks[1:]] == ["lowest cost (predicted)"] * 3
    assert [c.cost[pod] for c in picks[1:]] == [64.0 * k for k in (1, 2, 3)]  # request_tokens each, no queue
    # another prompt is no burst: the queue term applies to it on the same pod (4 in flight there)
    other = router.choose(MODEL, -1, list(range(5000, 6024)), [pod])
    assert other.cost[pod] == 1024 + 64.0 * 4 + 1500.0 * (4 + 1 - learned)


# -- memory -----------------------------------------------------------------------------------------

def test_predictions_taken_over_under_cache_churn_let_their_hashes_go(make_table, router_for):
    """The pod stores and drops block 0 again and again: each new prediction over the whole prompt takes
    the older one's entries over, and the older one lets its hashes go at once, not at its TTL."""
    table = make_table()
    bound = 400
    router = router_for(table, max_predicted_entries=bound)
    prompt = toks(*range(100))
    for _ in range(100):
        engine = store(table, "a", [0])
        router.finished(router.choose(MODEL, -1, prompt, ["a"]))  # confirms block 0 of the live one
        table.process_block_removed(BlockRemoved(engine, MODEL, -1, "a"))
        router.finished(router.choose(MODEL, -1, prompt, ["a"]))  # run 0 again: a new prediction
        assert check_books(router) <= 2 * 100
    assert router.stats()["predicted_entries"] == 100


def test_the_hashes_predictions_hold_stay_within_twice_the_bound(make_table, router_for):
    """Predictions confirmed but for their last block each own one entry and hold their prompt's hashes:
    the entry count stays small, so the hashes held are what retires the oldest (here all confirmed)."""
    table = make_table()
    bound = 100
    router = router_for(table, max_predicted_entries=bound)
    for i in range(30):
        ks = list(range(50 * i, 50 * i + 50))
        router.finished(router.choose(MODEL, -1, toks(*ks), ["a"]))
        store(table, "a", ks[:49])
        again = router.choose(MODEL, -1, toks(*ks), ["a"])
        router.finished(again)
        assert again.predicted["a"] == 50 and again.matched["a"] == 49
        assert check_books(router) <= 2 * bound
    stats = router.stats()
    assert stats["predictions"]["a"] == {"made": 30, "confirmed": 30, "expired": 0}
    assert stats["predicted_entries"] == 4  # the last 4 predictions' last block each: 4 * 50 hashes held


# -- the reason -------------------------------------------------------------------------------------

def test_the_predicted_reason_is_a_win_while_prefilling_this_prefix(router_for):
    """docs/routing.md: "lowest cost (predicted)" is a win by a pod prefilling this very prefix (its
    predicted run longer than its matched run, prefill pending); a win through predicted blocks alone,
    the request that made them over, is "lowest cost"."""
    router = router_for()
    prompt = toks(*range(64))  # its prefill (256 tokens) outweighs a request in flight (64)
    first = router.choose(MODEL, -1, prompt, ["a", "b", "c"])
    second = router.choose(MODEL, -1, prompt, ["a", "b", "c"])
    assert second.pod == first.pod and second.reason == "lowest cost (predicted)"
    for c in (first, second):
        router.finished(c)
    third = router.choose(MODEL, -1, prompt, ["a", "b", "c"])
    assert third.pod == first.pod and third.matched[first.pod] == 0 and third.predicted[first.pod] == 64
    assert third.reason == "lowest cost"
    text = (ROOT / "docs" / "routing.md").read_text()
    said = text.split('`"lowest cost (predicted)"` (', 1)[1].split(")", 1)[0]
    assert "prefilling this very prefix" in said and "prefill pending" in said, said
