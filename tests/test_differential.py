"""SPEC 9: the compiled and the pure-Python backends give identical results for identical calls.

Hypothesis draws sequences of operations (stores with chaining, orphans, aliases and reused engine
hashes; removals for one pod or all; clears; add/remove_prefix; matches with every kind of ready_pods;
clock moves with eviction passes; small limits so that trims and context evictions happen; bad inputs)
and runs each on both backends side by side. After every step the outcome (return value, or exception
type and message), and the whole state (snapshot and stats), must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored, _core_py

from helpers import COMPILED, FakeClock

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: only one backend in this run")

BLOCK = 2  # tokens per block: small, so that random token lists share prefixes often
models = st.sampled_from(["m", "n", "o", "p", "é"])
loras = st.sampled_from([-1, 1])
pods = st.sampled_from(["a", "b", "c", ""])  # "" in removals: every pod (SPEC 2)
store_pods = st.sampled_from(["a", "b", "c"])  # stores, clears and add_prefix need a pod name
engine_hashes = st.integers(0, 12) | st.sampled_from([2**64 - 1, -1, 2**63])
token_ids = st.integers(0, 2)


@st.composite
def store_op(draw):
    n = draw(st.integers(0, 5))
    ids = draw(st.lists(token_ids, min_size=n * BLOCK, max_size=n * BLOCK))
    form = draw(st.sampled_from(["ids", "bytes2d", "blocks", "wrong_width"]))
    if form == "bytes2d":
        tokens = np.array(ids, dtype=">u4").view(np.uint8).reshape(n, 4 * BLOCK)
    elif form == "blocks":
        tokens = [np.array(ids[i * BLOCK:(i + 1) * BLOCK], dtype=">u4").tobytes() for i in range(n)]
    elif form == "wrong_width" and n:
        tokens = np.zeros((n, 4 * BLOCK + 4), dtype=np.uint8)  # blocks of 3 tokens: rejected by the table
    else:
        tokens = ids
    event = BlockStored(draw(st.lists(engine_hashes, min_size=n, max_size=n)), tokens, draw(models),
                        draw(loras), draw(store_pods), draw(st.none() | engine_hashes))
    return "store", event


@st.composite
def remove_op(draw):
    return "remove", BlockRemoved(draw(st.lists(engine_hashes, max_size=4)), draw(models), draw(loras), draw(pods))


@st.composite
def clear_op(draw):
    return "clear", AllBlocksCleared(draw(store_pods), draw(st.none() | models), draw(st.none() | loras))


@st.composite
def batch_op(draw):
    # process_events: the same as the calls one by one, or (one bad item) an error and nothing applied
    events = [op[1] for op in draw(st.lists(st.one_of(store_op(), store_op(), remove_op(), clear_op()),
                                            max_size=6))]
    if draw(st.booleans()) and draw(st.booleans()):
        events.insert(draw(st.integers(0, len(events))), draw(st.sampled_from([3, "x", None])))
    return "batch", events


ready_pods = st.one_of(
    st.none(),
    st.lists(st.sampled_from(["a", "b", "c", "", "zz"]), max_size=3),
    st.sets(st.sampled_from(["a", "b", "c"])).map(frozenset),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers()),
    st.just("a"),        # a str: TypeError
    st.just(["a", 1]),   # a non-str pod: TypeError
)


@st.composite
def match_op(draw):
    kind = draw(st.sampled_from(["prefix", "blocks", "match"]))
    ids = draw(st.lists(token_ids, max_size=12))
    form = draw(st.sampled_from(["list", "int32", "bytes", "uint8", "float", "2d"]))
    tokens = {
        "list": ids,
        "int32": np.array(ids, dtype=np.int32),
        "bytes": np.array(ids, dtype=">u4").tobytes(),
        "uint8": np.array(ids, dtype=">u4").view(np.uint8),
        "float": np.array(ids, dtype=np.float64),  # TypeError
        "2d": np.array(ids, dtype=np.int64).reshape(1, -1),  # ValueError
    }[form]
    model = draw(models | st.just(3))  # 3: TypeError
    lora = draw(loras | st.just(True))  # True: TypeError
    return kind, (model, lora, tokens, draw(ready_pods))


@st.composite
def add_prefix_op(draw):
    ids = draw(st.lists(token_ids, max_size=8))
    return "add_prefix", (draw(models), draw(loras), draw(pods), ids)  # "": a ValueError


operations = st.lists(st.one_of(
    store_op(), store_op(), store_op(), remove_op(), clear_op(), match_op(), match_op(), add_prefix_op(),
    batch_op(),
    st.tuples(st.just("remove_prefix"), st.tuples(models, loras, pods)),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 30.0, 61.0])),
    st.tuples(st.just("evict"), st.none()),
), max_size=60)


def apply(table, clock, op):
    kind, arg = op
    if kind == "store":
        return table.process_block_stored(arg)
    if kind == "remove":
        return table.process_block_removed(arg)
    if kind == "clear":
        return table.process_all_blocks_cleared(arg)
    if kind == "prefix":
        percent, hashes = table.match_prefix(*arg)
        assert hashes.dtype == np.uint64
        return percent, hashes.tolist()
    if kind == "blocks":
        return table.match_blocks(*arg)
    if kind == "match":
        blocks, hashes = table.match(*arg)
        assert hashes.dtype == np.uint64
        return blocks, hashes.tolist()
    if kind == "batch":
        return table.process_events(arg)
    if kind == "add_prefix":
        model, lora, pod, ids = arg
        return table.add_prefix(model, lora, pod, table.get_prefix_hashes(ids))
    if kind == "remove_prefix":
        return table.remove_prefix(*arg)
    if kind == "advance":
        clock.advance(arg)
        return None
    return table.evict_now()


def outcome(table, clock, op):
    try:
        return ("ok", apply(table, clock, op))
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.sampled_from([(3, 6), (2, 1), (50, 1000)]))
def test_backends_agree_step_by_step(ops, limits):
    max_contexts, max_prefixes = limits
    sides = []
    for mod in (COMPILED, _core_py):
        clock = FakeClock()
        table = mod.SyncPrefixHashTable(seed=42, block_size=BLOCK, max_contexts=max_contexts,
                                        max_prefixes_per_context=max_prefixes, eviction_duration_minutes=1,
                                        clock=clock, background_eviction=False)
        sides.append((table, clock))
    for step, op in enumerate(ops):
        results = [outcome(table, clock, op) for table, clock in sides]
        assert results[0] == results[1], (step, op)
        states = [(table.snapshot(), table.stats()) for table, _ in sides]
        assert states[0] == states[1], (step, op)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(store_op(), remove_op(), clear_op()), max_size=12))
def test_a_batch_is_the_calls_one_by_one(ops):
    # process_events(events) leaves exactly the state the one-by-one calls leave, on both backends; if
    # one event is bad, the batch is an error naming its position and applies nothing
    results = []
    for mod in (COMPILED, _core_py):
        one, batch = (mod.SyncPrefixHashTable(seed=7, block_size=BLOCK, max_prefixes_per_context=6,
                                              clock=FakeClock(), background_eviction=False) for _ in range(2))
        errors = [i for i, op in enumerate(ops) if outcome(one, None, op)[0] != "ok"]
        empty = (batch.snapshot(), batch.stats())
        if errors:
            with pytest.raises(ValueError, match=rf"^events\[{errors[0]}\]: "):
                batch.process_events(event for _, event in ops)  # any iterable, a generator included
            assert (batch.snapshot(), batch.stats()) == empty
        else:
            batch.process_events(event for _, event in ops)
            assert (batch.snapshot(), batch.stats()) == (one.snapshot(), one.stats())
        results.append((batch.snapshot(), batch.stats()))
    assert results[0] == results[1]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 2**64 - 1), st.integers(1, 40))
def test_prefix_hashes_agree(data, seed, block_size):
    fast = COMPILED.SyncPrefixHashTable(seed=seed, block_size=block_size, background_eviction=False)
    slow = _core_py.SyncPrefixHashTable(seed=seed, block_size=block_size, background_eviction=False)
    assert fast.get_prefix_hashes(data).tolist() == slow.get_prefix_hashes(data).tolist()


def _long_tables():
    """Both backends, each holding pods a, b, c with runs of 2,048, 900 and 300 blocks of one
    32,768-token prompt (block_size 16), and d holding a different first block."""
    rng = np.random.default_rng(11)
    prompt = rng.integers(0, 2**31, 32_768, dtype=np.int64)
    tables = []
    for backend in (COMPILED, _core_py):
        t = backend.SyncPrefixHashTable(seed=5, block_size=16, background_eviction=False, clock=FakeClock(),
                                        max_prefixes_per_context=10**5)
        for pod, blocks in (("a", 2048), ("b", 900), ("c", 300)):
            t.process_block_stored(BlockStored(list(range(blocks)), prompt[:blocks * 16], "m", -1, pod))
        t.process_block_stored(BlockStored([7], prompt[16:32], "m", -1, "d"))
        tables.append(t)
    return tables, prompt


@pytest.mark.parametrize("cut", [32_768, 32_768 - 5, 20_000, 4_096])  # 16 KiB of token bytes and more, and less
@pytest.mark.parametrize("ready", [None, ["a", "b", "c", "d"], ["b", "c"], ["c", "zz"], []])
def test_long_queries_agree(cut, ready):
    # a long query hashes and walks outside the GIL on the compiled backend (docs/architecture.md,
    # "Long walks"): the answers, hashes and recency it leaves are those of the fallback
    tables, prompt = _long_tables()
    query = prompt[:cut]
    outcomes = []
    for t in tables:
        got_blocks = t.match_blocks("m", -1, query, ready)
        got_percent, hashes = t.match_prefix("m", -1, query, ready)
        got_match, hashes2 = t.match("m", -1, query, ready)
        missing = t.match_blocks("absent", -1, query, ready)
        outcomes.append((got_blocks, got_percent, got_match, hashes.tolist(), hashes2.tolist(), missing,
                         t.snapshot(), t.stats(), t._export_state()["contexts"][0]["prefixes"].tolist()))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0].get("a", 0) == (min(2048, cut // 16) if ready is None or "a" in ready else 0)


def test_repeated_matches_keep_the_fallbacks_trim_order():
    # The compiled core writes no new ticks when the matched run is already the context's newest, in
    # order (_table_query.pxi, _newest_already): the recency order, and so what a trim drops, must stay
    # the fallback's. Chains that share a prefix are matched again and again, and stores past the bound
    # force trims in between.
    rng = np.random.default_rng(3)
    shared = rng.integers(0, 2**31, 8 * 4, dtype=np.int64).tolist()
    chains = [shared + rng.integers(0, 2**31, k * 4, dtype=np.int64).tolist() for k in (3, 5, 2)]
    extras = [rng.integers(0, 2**31, 6 * 4, dtype=np.int64).tolist() for _ in range(4)]
    order = [0, 0, 1, 1, 1, 0, 2, 2, 0, 1, 2, 2, 2, 1, 0, 0]
    traces = []
    for backend in (COMPILED, _core_py):
        t = backend.SyncPrefixHashTable(seed=2, block_size=4, background_eviction=False, clock=FakeClock(),
                                        max_prefixes_per_context=30)
        for i, c in enumerate(chains):
            t.process_block_stored(BlockStored(list(range(100 * i, 100 * i + len(c) // 4)), c, "m", -1, f"p{i}"))
        trace = []
        for step, c in enumerate(order):
            trace.append(t.match_blocks("m", -1, chains[c]))
            if step % 4 == 3:  # six new prefixes: past the bound, a trim drops the least recently used
                k = step // 4
                t.process_block_stored(BlockStored(list(range(1000 + 10 * k, 1006 + 10 * k)), extras[k], "m", -1,
                                                   "q"))
            trace.append(sorted((h, sorted(p)) for h, p in t.snapshot()[("m", -1)].items()))
        trace.append(t.stats())
        traces.append(trace)
    assert traces[0] == traces[1]
    assert any(e["evicted_prefixes"] for e in traces[0][-1:]), "no trim happened: the test would prove nothing"


@pytest.mark.parametrize("n", [4, 5, 8, 9])
def test_a_run_newest_only_in_part_gets_new_ticks_as_the_fallbacks(n):
    # _newest_already (_table_query.pxi) compares the ticks of four blocks a branch. A matched run
    # whose first k blocks were just stored again, and whose others are older than another chain's,
    # is not the newest: every block of it must get a new tick, at every k, as in the fallback (the
    # export lists a context's prefixes oldest first).
    rng = np.random.default_rng(n)
    tokens = rng.integers(0, 2**31, n * 4, dtype=np.int64).tolist()
    other = rng.integers(0, 2**31, 2 * 4, dtype=np.int64).tolist()
    for k in range(1, n):
        exports = []
        for backend in (COMPILED, _core_py):
            t = backend.SyncPrefixHashTable(seed=2, block_size=4, background_eviction=False, clock=FakeClock())
            t.process_block_stored(BlockStored(list(range(n)), tokens, "m", -1, "p"))
            t.process_block_stored(BlockStored([100, 101], other, "m", -1, "p"))
            t.process_block_stored(BlockStored(list(range(k)), tokens[: 4 * k], "m", -1, "p"))
            assert t.match_blocks("m", -1, tokens) == {"p": n}
            exports.append(t._export_state()["contexts"][0]["prefixes"].tolist())
        assert exports[0] == exports[1], k
        assert len(exports[0]) == n + 2


def test_the_same_ready_list_again_answers_as_the_fallback():
    # The compiled core reuses the ids of the last ready_pods list or tuple while it holds the same
    # names and no pod id was given or taken (_table_query.pxi, _ready_ids). Each step below breaks one
    # of those conditions while passing the same list object; every answer must be the fallback's.
    tables = [backend.SyncPrefixHashTable(seed=1, block_size=4, background_eviction=False, clock=FakeClock())
              for backend in (COMPILED, _core_py)]
    prompt = list(range(16))
    ready = ["a", "b", "c"]
    as_tuple = ("a", "c")

    def store(pod, blocks=4):
        return lambda t: t.process_block_stored(BlockStored(list(range(blocks)), prompt[:4 * blocks], "m", -1, pod))

    # (what changes the shared list, once per step) or (what each table does)
    steps = [
        (None, store("a")),
        (None, None),                                   # the same list, nothing changed: reused
        (None, store("b", 2)),                          # b gets an id after the list was first seen
        (lambda: ready.__setitem__(2, "d"), None),      # the list changed in place (same length)
        (None, store("d", 3)),
        (None, lambda t: t.remove_prefix("m", -1, "b")),  # b's id is released ...
        (None, store("c", 1)),                          # ... and given to c
        (lambda: ready.append("c"), None),              # longer
        (ready.reverse, None),                          # the same names in another order
        (None, None),
        (lambda: ready.__setitem__(3, "x"), None),      # a known pod replaced in place, no id changes
    ]
    answers = [[], []]
    for change_list, change_tables in steps:
        if change_list is not None:
            change_list()
        for k, t in enumerate(tables):
            if change_tables is not None:
                change_tables(t)
            answers[k].append((t.match_blocks("m", -1, prompt, ready), t.match_blocks("m", -1, prompt, as_tuple),
                               t.match_prefix("m", -1, prompt, ready)[0]))
    assert answers[0] == answers[1]
    assert answers[0][-2][0] == {"a": 4, "c": 1, "d": 3}
    assert answers[0][-1][0] == {"c": 1, "d": 3}


def test_matches_in_a_large_context_agree():
    # From 4,096 prefixes on, the compiled walk touches each chunk's buckets before probing them
    # (_native.h, touch_bucket): the answers must stay the fallback's, for hits, partial hits and misses
    rng = np.random.default_rng(5)
    prompts = rng.integers(0, 2**31, (90, 64 * 4), dtype=np.int64)
    tables = [backend.SyncPrefixHashTable(seed=3, block_size=4, background_eviction=False, clock=FakeClock(),
                                          max_prefixes_per_context=10**5) for backend in (COMPILED, _core_py)]
    for t in tables:
        for k, prompt in enumerate(prompts):
            t.process_block_stored(BlockStored(list(range(64 * k, 64 * k + 64)), prompt.tolist(), "m", -1, f"p{k % 3}"))
        assert t.stats()["prefixes"] >= 4096
    queries = [prompts[7], prompts[8][:100], np.concatenate([prompts[9][:40], prompts[10][40:]]), prompts[11] + 1]
    got = [[(t.match_blocks("m", -1, q), t.match_prefix("m", -1, q, ["p0", "p2"])[0]) for q in queries] for t in tables]
    assert got[0] == got[1]
    assert got[0][0][0] == {"p1": 64} and got[0][2][0] == {"p0": 10}


def test_a_clock_reading_is_a_float_on_both_backends():
    # The compiled core took every reading as float() before it changed anything; the fallback stored the
    # reading as it came, applied the store and failed later, in evict_now or save (a hostile-input
    # search). Both now take float(reading): the same answer or error for each call, and a refused call
    # changes nothing (SPEC 8)
    import decimal
    import io

    for reading in ["1000", None, complex(1, 0), 10**400, decimal.Decimal(1000), "soon", 12]:
        sides = []
        for backend in (COMPILED, _core_py):
            t = backend.SyncPrefixHashTable(seed=0, block_size=BLOCK, background_eviction=False,
                                            clock=lambda v=reading: v)
            seen = []
            for call in (lambda: t.process_block_stored(BlockStored([1], list(range(BLOCK)), "m", -1, "p")),
                         lambda: t.match_blocks("m", -1, list(range(BLOCK)), ["p"]),
                         t.evict_now, lambda: t.save(io.BytesIO())):
                try:
                    seen.append(("ok", call()))
                except Exception as exc:  # noqa: BLE001 - compared across the backends below
                    seen.append((type(exc).__name__, str(exc)))
            sides.append((seen, t.stats()["entries"]))
        assert sides[0] == sides[1], reading
        assert (sides[0][1] == 1) == (sides[0][0][0][0] == "ok"), (reading, sides[0])


def test_a_clock_that_changes_the_ready_list_is_seen_alike():
    # The clock is read before ready_pods on both backends: a name the clock adds counts as ready
    answers = []
    for backend in (COMPILED, _core_py):
        ready = ["p"]

        def clock():
            if "q" not in ready:
                ready.append("q")
            return 1000.0

        t = backend.SyncPrefixHashTable(seed=0, block_size=BLOCK, background_eviction=False, clock=clock)
        for pod in ("p", "q"):
            t.process_block_stored(BlockStored([1, 2], list(range(2 * BLOCK)), "m", -1, pod))
        ready[:] = ["p"]
        answers.append(t.match_blocks("m", -1, list(range(2 * BLOCK)), ready))
    assert answers[0] == answers[1] == {"p": 2, "q": 2}


def test_an_event_subclass_is_read_once_alike():
    # A subclass may make its fields properties that answer differently on each read. The compiled core
    # read a BlockRemoved subclass's fields, then again through the shared validator when they failed its
    # check, and worded a batch's error from yet another read: a removal the fallback refused was applied,
    # and a batch's error lost its position (a hostile-input search). Both now read such fields once
    import itertools

    def shifty(base, field, values):
        answers = itertools.cycle(values)
        return type("Shifty" + base.__name__, (base,), {"__slots__": (), field: property(lambda self: next(answers))})

    def calls():
        removed = shifty(BlockRemoved, "model_name", [5, "m"])
        stored = shifty(BlockStored, "tokens", [np.zeros((1, BLOCK * 4 // 2), np.uint8),
                                               np.zeros((1, BLOCK * 4), np.uint8)])
        return [lambda t: t.process_block_removed(removed([1], "m", -1, "p")),
                lambda t: t.process_events([removed([1], "m", -1, "p")]),
                lambda t: t.process_events([stored([7], list(range(BLOCK)), "m", -1, "q")])]

    sides = []
    for backend in (COMPILED, _core_py):
        seen = []
        for k in range(3):
            t = backend.SyncPrefixHashTable(seed=0, block_size=BLOCK, background_eviction=False, clock=FakeClock())
            t.process_block_stored(BlockStored([1], list(range(BLOCK)), "m", -1, "p"))
            try:
                calls()[k](t)
                seen.append(("ok", t.snapshot()))
            except (TypeError, ValueError) as exc:
                seen.append((type(exc).__name__, str(exc), t.snapshot()))
        sides.append(seen)
    assert sides[0] == sides[1]
    assert sides[0][0][:2] == ("TypeError", "model_name must be a str, not int")
    assert sides[0][1][:2] == ("TypeError", "events[0]: model_name must be a str, not int")
    assert sides[0][2][1].startswith("events[0]: ")
