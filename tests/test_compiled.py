"""Properties of the compiled core that the pure-Python backend does not have: its own XXH64, the GIL
released while hashing, memory that comes back, pod ids that are recycled, 32-bit ticks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time

import msgspec
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixindex import BlockRemoved, BlockStored, _core_py

from helpers import COMPILED, PKG, ROOT, compiled_source_hash, compiled_sources

pytestmark = pytest.mark.skipif(
    COMPILED is None, reason="PREFIXINDEX_NO_EXTENSIONS=1: this run tests the pure-Python backend only")

SEEDS = [0, 1, 12345, 2**63, 2**64 - 1, 0x9E3779B185EBCA87]


# --- XXH64 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_xxh64_is_bit_exact_for_every_length_to_300(seed):
    rng = random.Random(seed)
    for length in range(301):
        data = rng.randbytes(length)
        assert COMPILED.xxh64_digest(data, seed) == xxhash.xxh64_intdigest(data, seed), length


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), seed=st.integers(0, 2**64 - 1))
def test_xxh64_matches_xxhash_on_random_input(data, seed):
    assert COMPILED.xxh64_digest(data, seed) == xxhash.xxh64_intdigest(data, seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("block_bytes", [0, 4, 8, 16, 20, 24, 28, 60, 64, 68, 120, 256, 1024])
def test_chain_step_matches_hashing_the_concatenation(seed, block_bytes):
    # The chain step never builds le_u64(parent) || block; it must equal XXH64 of exactly that.
    rng = random.Random(block_bytes)
    data = rng.randbytes(block_bytes * 7)
    parent = rng.getrandbits(64)
    expected, h = [], parent
    for i in range(7):
        h = xxhash.xxh64_intdigest(h.to_bytes(8, "little") + data[i * block_bytes:(i + 1) * block_bytes], seed)
        expected.append(h)
    assert COMPILED.prefix_hash_chain(data, block_bytes, seed, parent, 7) == expected
    assert _core_py.prefix_hash_chain(data, block_bytes, seed, parent, 7) == expected


def test_spec_vectors():
    table = COMPILED.SyncPrefixHashTable(seed=0, block_size=4, background_eviction=False)
    assert table.get_prefix_hashes(bytes(range(64))).tolist() == [
        11344027220848036247, 18003942762009276101, 14324276475049219208, 10343039462069839574]
    table = COMPILED.SyncPrefixHashTable(seed=12345, block_size=4, background_eviction=False)
    assert table.get_prefix_hashes(bytes(range(64))).tolist() == [
        6083364958448685401, 6227983788108009764, 12622932646954752131, 17988495296683065305]
    table = COMPILED.SyncPrefixHashTable(seed=0, block_size=16, background_eviction=False)
    assert table.get_prefix_hashes(list(range(32))).tolist() == [13063670922251535405, 15794143472128267642]


# --- the GIL --------------------------------------------------------------------------------------

def main_thread_saw_a_call_in_progress(work) -> bool:
    """With a switch interval far beyond the test's length, Python never takes the GIL from the worker
    thread: the main thread can only run while the worker is inside ``work`` if ``work`` released the
    GIL, or else after the worker has finished. The worker repeats the call until the main thread has
    looked, so however late the main thread wakes, the answer is True exactly when the call releases
    the GIL. Deterministic: no timing is measured."""
    started, looked, inside = threading.Event(), threading.Event(), [False]

    def worker():
        started.set()
        for i in range(200):
            if looked.is_set():
                break
            inside[0] = True
            work(i)
            inside[0] = False

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        started.wait()
        seen_inside = inside[0]
        looked.set()
        thread.join()
    finally:
        sys.setswitchinterval(old)
    return seen_inside


@pytest.mark.parametrize("call", ["get_prefix_hashes", "match_prefix_hit", "match_prefix_miss", "store"])
def test_long_hashing_releases_the_gil(call):
    rng = np.random.default_rng(0)
    blocks = 1 << 15  # 2 MiB of token bytes at block_size 16
    tokens = rng.integers(0, 256, blocks * 64, dtype=np.uint8)
    table = COMPILED.SyncPrefixHashTable(seed=1, block_size=16, background_eviction=False,
                                         max_prefixes_per_context=4 * blocks)
    if call == "match_prefix_hit":
        table.process_block_stored(BlockStored(np.arange(blocks, dtype=np.uint64), tokens.reshape(blocks, 64), "m",
                                               source_pod="p"))
    events = [BlockStored(np.arange(blocks, dtype=np.uint64) + i * blocks, tokens.reshape(blocks, 64), f"m{i}",
                          source_pod="p") for i in range(4)] if call == "store" else []
    work = {
        "get_prefix_hashes": lambda i: table.get_prefix_hashes(tokens),
        "match_prefix_hit": lambda i: table.match_prefix("m", -1, tokens, ["p"]),
        "match_prefix_miss": lambda i: table.match_prefix("absent", -1, tokens),
        "store": lambda i: table.process_block_stored(events[i % 4]),
    }[call]
    assert main_thread_saw_a_call_in_progress(work), f"{call} kept the GIL for the whole call"


@pytest.mark.parametrize("call", ["match_prefix", "match_blocks", "match", "store", "get_prefix_hashes"])
def test_short_calls_keep_the_gil(call):
    # SPEC 7: releasing and retaking the GIL around a ~1 us call costs more than the call, and with a
    # second thread runnable it hands the GIL over and back on every call (a convoy): short work keeps it
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, 1024 * 4, dtype=np.uint8)  # 1,024 tokens: 4 KiB of token bytes
    table = COMPILED.SyncPrefixHashTable(seed=1, block_size=16, background_eviction=False)
    table.process_block_stored(BlockStored(np.arange(64, dtype=np.uint64), tokens.reshape(64, 64), "m",
                                           source_pod="p"))
    events = [BlockStored(np.arange(10, dtype=np.uint64) + 100 * i, tokens[:640].reshape(10, 64), "m",
                          source_pod="p") for i in range(200)]
    work = {
        "match_prefix": lambda i: table.match_prefix("m", -1, tokens, ["p"]),
        "match_blocks": lambda i: table.match_blocks("m", -1, tokens),
        "match": lambda i: table.match("m", -1, tokens, ["p"]),
        "store": lambda i: table.process_block_stored(events[i]),
        "get_prefix_hashes": lambda i: table.get_prefix_hashes(tokens),
    }[call]
    assert not main_thread_saw_a_call_in_progress(work), f"{call} released the GIL for short work"


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_the_walk_gives_the_same_answer_whatever_its_chunk(chunk):
    # the walk hashes a chunk of blocks, then probes it (docs/performance.md); the chunk's size, a
    # benchmark knob, must change nothing but speed: a run ending at every block position, any pod mix
    rng = np.random.default_rng(chunk)
    tokens = rng.integers(0, 256, 100 * 16, dtype=np.uint8)  # 100 blocks of block_size 4
    tables = [COMPILED.SyncPrefixHashTable(seed=3, block_size=4, background_eviction=False) for _ in range(2)]
    for t in tables:
        for pod, blocks in (("a", 100), ("b", 37), ("c", 64), ("d", 1), ("e", 65)):
            t.process_block_stored(BlockStored(np.arange(blocks, dtype=np.uint64), tokens[:blocks * 16].reshape(blocks, 16),
                                               "m", source_pod=pod))
    try:
        COMPILED._debug_set_probe_chunk(chunk)
        got = [tables[0].match("m", -1, tokens[:k * 16 + 5], ready) for k in range(0, 101, 7)
               for ready in (None, ["b", "e"], ["zz"])]
    finally:
        COMPILED._debug_set_probe_chunk(8)
    expected = [(tables[1].match_blocks("m", -1, tokens[:k * 16 + 5], ready),
                 tables[1].get_prefix_hashes(tokens[:k * 16 + 5])) for k in range(0, 101, 7)
                for ready in (None, ["b", "e"], ["zz"])]
    assert [(b, h.tolist()) for b, h in got] == [(b, h.tolist()) for b, h in expected]


def turns_a_waiting_thread_got_during(call) -> int:
    """How many times a thread that wants the GIL got it while ``call`` ran in this thread. With the
    switch interval at 100 us the worker asks for the GIL 100 us after it lost it; a call that offers the
    GIL between its critical sections then hands it over (CPython's forced switch: a holder that was
    asked waits until the other thread has taken it), and a call that keeps it cannot be interrupted.
    The worker counts its turns while the call runs: a gap of more than 50 us between two steps of its
    loop is the GIL lost and won back. The call's start and end give at most two (the worker may run
    between setting the phase and the call, or between the call's return and the phase's reset)."""
    phase, turns = [0], [0]
    stop, ready = threading.Event(), threading.Event()

    def worker():
        clock = time.perf_counter
        last = clock()
        ready.set()
        while not stop.is_set():
            now = clock()
            if now - last > 50e-6 and phase[0] == 1:
                turns[0] += 1
            last = now

    old = sys.getswitchinterval()
    thread = threading.Thread(target=worker, daemon=True)
    sys.setswitchinterval(1e-4)
    try:
        thread.start()
        ready.wait()
        phase[0] = 1
        call()
        phase[0] = 2
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    return turns[0]


def test_a_save_lets_other_threads_run_between_contexts():
    # issue 12, Deliver 2: a save does not stop matches. Each context is copied in its own critical
    # section and the GIL is offered between two, at most once in two switch intervals, so that a
    # thread that waits for it has asked for it by then and is handed it (_offer_gil). Offered after
    # every context instead, the waiting thread never asked and had to win a race for the GIL, which
    # it lost through whole saves on a slow machine.
    table = COMPILED.SyncPrefixHashTable(seed=1, block_size=4, background_eviction=False, max_contexts=5000)
    for c in range(4000):  # some 50 ms of copying at the least
        table.add_prefix(f"m{c}", -1, "p", list(range(100)))
    assert turns_a_waiting_thread_got_during(table._export_state) >= 3  # (the call's two ends give two)
    assert len(table._export_state()["contexts"]) == 4000


def test_evict_now_lets_other_threads_run_between_contexts():
    # the staleness pass offers the GIL the same way, also between contexts it drops
    clock = [0.0]
    table = COMPILED.SyncPrefixHashTable(seed=1, block_size=4, background_eviction=False, max_contexts=5000,
                                         clock=lambda: clock[0])
    for c in range(4000):
        table.add_prefix(f"m{c}", -1, "p", list(range(300)))
    clock[0] = 1e6  # every context stale: each is dropped, 1.2 M entries freed (some 35 ms)
    turns = turns_a_waiting_thread_got_during(table.evict_now)
    assert table.stats()["contexts"] == 0
    assert turns >= 3


def test_the_turns_check_sees_a_call_that_keeps_the_gil():
    # sorting a list of floats keeps the GIL throughout (some 60 ms): the waiting thread gets no turn
    # inside it, only (at most) at its two ends
    values = [random.random() for _ in range(300_000)]
    assert turns_a_waiting_thread_got_during(lambda: sorted(values)) <= 2


def test_the_gil_check_detects_a_call_that_keeps_the_gil():
    # the pure-Python backend hashes with the GIL held: the check above must say so
    table = _core_py.SyncPrefixHashTable(seed=1, block_size=16, background_eviction=False)
    tokens = bytes(64 * 64)
    assert not main_thread_saw_a_call_in_progress(lambda i: table.get_prefix_hashes(tokens))


# --- memory -----------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import gc, json, numpy as np, psutil
    from prefixindex import _core, BlockStored, BlockRemoved
    N, PER = 1_000_000, 10_000
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, (PER, 64), dtype=np.uint8) for _ in range(N // PER)]  # 64 MB, made once
    table = _core.SyncPrefixHashTable(seed=1, block_size=16, background_eviction=False,
                                      max_prefixes_per_context=2 * N)
    proc = psutil.Process()
    rss, pool = [], []
    for cycle in range(5):
        base = cycle * N  # new engine hashes every cycle, as a pod's cache churns
        for i in range(N // PER):
            table.process_block_stored(BlockStored(np.arange(PER, dtype=np.uint64) + base + i * PER, chunks[i],
                                                   "m", -1, "pod-%d" % (i % 4)))
        full = table.stats()["entries"]
        for i in range(N // PER):
            table.process_block_removed(BlockRemoved(np.arange(PER, dtype=np.uint64) + base + i * PER, "m", -1,
                                                     "pod-%d" % (i % 4)))
        gc.collect()
        rss.append(proc.memory_info().rss)
        pool.append(table._debug_memory())
        assert full == N, full
        assert table.stats()["entries"] == 0
    print(json.dumps({"rss": rss, "pool": pool}))
""")


def test_memory_comes_back_after_storing_and_removing_a_million_blocks():
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    import json
    out = json.loads(proc.stdout)
    rss = out["rss"]
    # The pool hands its slabs back when the last node goes, and every map of an emptied context is freed.
    assert all(p["pool_nodes"] == 0 and p["pool_bytes"] == 0 for p in out["pool"]), out["pool"]
    # Resident memory does not keep growing: later cycles stay within 16 MiB of the first one
    # (a million stored blocks take about 60 MB, so a leak of even a quarter of them would show).
    assert max(rss[1:]) - rss[0] < 16 * 2**20, rss


def test_a_large_pool_counts_its_small_and_huge_slabs_and_gives_them_back():
    """Past its first 4 MiB the node pool takes 2 MiB slabs (huge pages where the system has them,
    malloc'd slabs where not): every entry stays findable, the pool reports what it holds (at most one
    slab of each kind more than its live nodes need), and removing everything hands it all back."""
    table = COMPILED.SyncPrefixHashTable(seed=2, block_size=4, background_eviction=False,
                                         max_prefixes_per_context=1 << 20)
    rng = np.random.default_rng(4)
    per, events = 500, 240  # 120,000 blocks: 240,000 nodes (prefix and engine maps), ~5.8 MB of them
    chains = [rng.integers(0, 256, (per, 16), dtype=np.uint8) for _ in range(events)]
    for i, tokens in enumerate(chains):
        table.process_block_stored(BlockStored(np.arange(per, dtype=np.uint64) + i * per, tokens, "m", -1, "p"))
    memory = table._debug_memory()
    live_bytes = memory["pool_nodes"] * 24
    assert memory["pool_nodes"] == 2 * per * events, memory
    assert live_bytes <= memory["pool_bytes"] <= live_bytes + (2 << 20) + 4096 * 24, memory
    assert memory["pool_bytes"] > 4 << 20, memory  # past the small slabs
    assert memory["pool_mapped_bytes"] <= memory["pool_bytes"] - (4 << 20), memory  # the rest, mmap'd or not
    for i in (0, events // 2, events - 1):
        assert table.match_blocks("m", -1, chains[i].tobytes()[:64]) == {"p": 4}
    for i in range(events):
        table.process_block_removed(BlockRemoved(np.arange(per, dtype=np.uint64) + i * per, "m", -1, "p"))
    memory = table._debug_memory()
    assert memory["pool_nodes"] == 0 and memory["pool_bytes"] == memory["pool_mapped_bytes"] == 0, memory


def test_pod_ids_are_recycled_when_pods_churn():
    """Kubernetes renames pods on every restart: 10,000 pod names passing through must not leave
    10,000 interned ids behind."""
    table = COMPILED.SyncPrefixHashTable(seed=1, block_size=4, background_eviction=False)
    tokens = np.zeros((1, 16), dtype=np.uint8)
    for generation in range(10_000):
        pod = f"default/vllm-{generation}"
        table.process_block_stored(BlockStored([generation], tokens, "m", -1, pod))
        if generation >= 3:  # then the one three generations back goes: at most three hold blocks
            table.process_block_removed(BlockRemoved([generation - 3], "m", -1, f"default/vllm-{generation - 3}"))
    memory = table._debug_memory()
    assert table.stats()["pods"] == 3
    assert memory["pod_ids"] <= 8, memory  # ids are reused, not appended
    assert table.match_blocks("m", -1, bytes(16)) == {f"default/vllm-{g}": 1 for g in range(9997, 10_000)}


# --- 32-bit ticks -----------------------------------------------------------------------------------

def test_tick_renumbering_keeps_the_same_victims_as_the_reference():
    """The compiled core keeps ticks in 32 bits and renumbers a context's ticks (in order) before they
    could wrap. Driving both backends across that point must leave them evicting the same prefixes."""
    rng = random.Random(7)
    tables = [mod.SyncPrefixHashTable(seed=3, block_size=1, max_prefixes_per_context=40,
                                      background_eviction=False, clock=lambda: 0.0)
              for mod in (COMPILED, _core_py)]
    first = BlockStored([0], [0], "m", -1, "a")
    for table in tables:
        table.process_block_stored(first)
        table._debug_set_next_tick("m", -1, 2**31 - 50)  # just below the renumbering point
    for step in range(400):
        engine = rng.randrange(1, 60)
        tokens = [rng.randrange(0, 4) for _ in range(3)]
        query = [rng.randrange(0, 4) for _ in range(rng.randrange(1, 6))]
        event = BlockStored([engine, engine + 100, engine + 200], tokens, "m", -1, rng.choice("ab"))
        results = []
        for table in tables:
            table.process_block_stored(event)
            results.append((table.match_blocks("m", -1, query), table.snapshot(), table.stats()))
        assert results[0] == results[1], step
    assert results[0][2]["evicted_prefixes"] > 0  # trims happened on both sides of the renumbering


# --- msgpack token ids ---------------------------------------------------------------------------



@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.lists(st.integers(0, 2**32 - 1), max_size=300).map(msgspec.msgpack.encode),
    st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(), st.booleans(), st.none(), st.text(max_size=2)),
             max_size=8).map(msgspec.msgpack.encode),
    st.binary(max_size=40),
    st.lists(st.integers(0, 300), max_size=20).map(lambda ids: msgspec.msgpack.encode(ids)[:-1]),
))
def test_msgpack_token_ids_match_the_reference(raw):
    outcomes = []
    for mod in (COMPILED, _core_py):
        try:
            outcomes.append(("ok", mod.token_bytes_from_msgpack(raw).tobytes()))
        except (TypeError, ValueError) as exc:
            outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]


# --- the build -------------------------------------------------------------------------------------

def test_compiled_module_was_built_from_these_sources():
    # setup.py's rule (tests/helpers.py): every Cython and C++ source of the package, sorted by name
    assert {p.name for p in compiled_sources(PKG)} >= {"_core.pyx", "_native.pxd", "_native.h", "_xxh64.h",
                                                        "_entries.pxd"}
    assert COMPILED.SOURCE_HASH == compiled_source_hash(PKG)
