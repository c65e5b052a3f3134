"""The threads section: the table under concurrent callers (issue 8's targets: lock fairness, GIL convoy,
context floods).

Threads run for a fixed wall time (half the per-row budget, 0.2-2 s) and count their calls; latency
rows are the 99th percentile of per-call times taken with ``perf_counter_ns`` around each call (the two
clock reads, ~0.1 us, are included). Two-versus-one rows alternate one thread and two threads twice,
so that a change of load on the machine hits both. The GIL-free baseline (``hashlib.sha256`` over
1 MiB buffers, which releases the GIL) is measured beside the 32,768-token row for each backend: it
says how far two threads can scale here and now. Beside the 1,024-token row, a GIL-holding baseline
(``bytes.count`` over 2 KiB, ~1-2 us a call, about a short match's time) says what two threads of any
call that keeps the GIL give here: parity less what each handover of the GIL costs, the ceiling of a
short query that keeps the GIL (SPEC 7). The targets are the compiled core's; the fallback's
figures are for information (its threads share one GIL by design).

The workload is the core section's (100 contexts, each the 64-block chain of a 1,024-token prompt for
one pod); stored events extend those chains. A pool of distinct events is built ahead of time; when
a run goes through it, later stores re-store blocks already held (said in the row's notes).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import BLOCK_BYTES, LORA, POD, RowSpec, judge, make_table, random_hashes, result_row
from .core import Workload
from .timing import Op, measure, stat_us

SUMMARY = ("threads run a fixed wall time and count calls; p99 of per-call times; 2-vs-1 rows alternate "
           "1, 2, 1, 2 threads; the targets are the compiled core's, python's figures are for information")
ROWS: List[RowSpec] = [
    ("threads_store_beside_3_matchers", "3 threads matching 1,024 tokens + 1 storing 10-block events: stores",
     "events/s", "higher", 20_000.0, None),
    ("threads_store_p99_beside_3_matchers", "  the same: p99 store latency", "ms", "lower", 5.0, None),
    ("threads_match_beside_ingest", "1 thread matching beside 1 applying 20,000 10-block events/s: matches",
     "matches/s", "higher", 300_000.0, None),
    ("threads_match_p99_beside_ingest", "  the same: p99 match latency", "us", "lower", 20.0, None),
    ("threads_match_1024_2_vs_1", "2 threads matching 1,024 tokens: throughput / 1 thread's", "x", "higher", 1.0,
     None),
    ("threads_gil_held_2_vs_1", "  baseline, same run: 2 threads of a GIL-holding ~1 us C call / 1 thread's", "x",
     "higher", None, None),
    ("threads_match_32768_2_vs_1", "2 threads matching 32,768 tokens: throughput / 1 thread's", "x", "higher", 1.6,
     None),
    ("threads_gil_free_2_vs_1", "  baseline, same run: 2 threads of GIL-free sha256 / 1 thread's", "x", "higher",
     None, None),
    ("threads_new_context_at_bound", "a new context at max_contexts=100,000, evicting the LRU (python: 10,000)",
     "us/context", "lower", 3.0, None),
]
JUDGED = ("cython",)
INGEST_RATE = 20_000  # events/s of the paced ingest thread (row b)
CONTEXT_BOUND = {"cython": 100_000, "python": 10_000}  # filling 100,000 contexts takes the fallback ~4 s
CONTEXT_BOUND_QUICK = 10_000
# distinct 10-block events built ahead of time, per backend: bounded so that the fallback's index
# (~500 bytes a block) stays small; a run that goes through the pool re-stores held blocks
EVENT_POOL = {"cython": 60_000, "python": 8_000}
EVENT_POOL_QUICK = {"cython": 4_000, "python": 2_000}
SHA_BUFFER = b"\x5a" * (1 << 20)
SHORT_BUFFER = bytes(range(256)) * 8  # 2 KiB: bytes.count over it keeps the GIL for ~1-2 us
LONG_TOKENS = 32_768
LONG_CONTEXTS = 4

Worker = Callable[[threading.Event], Dict[str, Any]]


def run_threads(workers: Sequence[Worker], seconds: float) -> List[Dict[str, Any]]:
    """Starts the workers together, lets them run ``seconds``, then sets the stop event and returns
    what each returned. A worker that raised re-raises here."""
    stop = threading.Event()
    start = threading.Barrier(len(workers) + 1)
    results: List[Optional[Dict[str, Any]]] = [None] * len(workers)
    errors: List[BaseException] = []

    def wrap(i: int, work: Worker) -> None:
        start.wait()
        try:
            results[i] = work(stop)
        except BaseException as exc:  # noqa: B036 - handed to the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=wrap, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    start.wait()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
        if t.is_alive():
            raise RuntimeError("a bench thread did not stop within 60 s of being asked to (a hang)")
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def matcher(table: Any, args: Sequence[Tuple[Any, ...]], record: bool = False) -> Worker:
    """Calls match_prefix over ``args`` (cycled) until stopped: {"calls", "seconds", "latencies_ns"}."""
    chunk = 32  # the stop flag is read once per chunk of calls

    def work(stop: threading.Event) -> Dict[str, Any]:
        match = table.match_prefix
        clock = time.perf_counter_ns
        lat: List[int] = []
        calls, i, n = 0, 0, len(args)
        t0 = clock()
        while not stop.is_set():
            part = args[i:i + chunk]
            if record:
                for model, lora, query, ready in part:
                    t = clock()
                    match(model, lora, query, ready)
                    lat.append(clock() - t)
            else:
                for model, lora, query, ready in part:
                    match(model, lora, query, ready)
            calls += len(part)
            i = (i + chunk) % n
        return {"calls": calls, "seconds": (clock() - t0) / 1e9, "latencies_ns": lat}

    return work


def storer(table: Any, events: Sequence[Any], rate: Optional[float] = None,
           undo: Optional[Sequence[Any]] = None) -> Worker:
    """Stores ``events`` in order (cycled), each timed; paced at ``rate`` events/s when given, else as
    fast as the table takes them, until stopped. With ``undo`` (the events' BlockRemoved), each pass
    through the pool after the first starts by removing the pool's blocks, so that every store places
    new blocks; the removals' time is left out of "seconds"."""

    def work(stop: threading.Event) -> Dict[str, Any]:
        store = table.process_block_stored
        clock = time.perf_counter_ns
        lat: List[int] = []
        done = 0
        paused = 0
        t0 = clock()
        while not stop.is_set():
            if undo is not None and done and done % len(events) == 0:
                t = clock()
                for removal in undo:
                    table.process_block_removed(removal)
                paused += clock() - t
            if rate is None:
                due = done + 1
            else:
                due = int((clock() - t0) * rate / 1e9)
            while done < due and not stop.is_set():
                event = events[done % len(events)]
                t = clock()
                store(event)
                lat.append(clock() - t)
                done += 1
            if rate is not None:
                time.sleep(0.0002)
        return {"calls": done, "seconds": (clock() - t0 - paused) / 1e9, "latencies_ns": lat}

    return work


def repeat_worker(call: Callable[[], Any], per_check: int = 1) -> Worker:
    """Calls ``call`` until stopped, the stop flag read once per ``per_check`` calls: a baseline beside
    the matchers (the same result shape as ``matcher``, without latencies)."""

    def work(stop: threading.Event) -> Dict[str, Any]:
        calls = 0
        t0 = time.perf_counter()
        while not stop.is_set():
            for _ in range(per_check):
                call()
            calls += per_check
        return {"calls": calls, "seconds": time.perf_counter() - t0, "latencies_ns": []}

    return work


# GIL-free: hashlib releases the GIL over buffers this large
sha_worker = repeat_worker(functools.partial(hashlib.sha256, SHA_BUFFER))
# a short C call that keeps the GIL, read as the matcher reads its stop flag (once per 32 calls)
gil_held_worker = repeat_worker(functools.partial(SHORT_BUFFER.count, b"\xff\xfe"), 32)


def p99(latencies_ns: Sequence[int]) -> float:
    if not latencies_ns:
        raise RuntimeError("no call completed in the time given")
    return float(np.percentile(np.asarray(latencies_ns, dtype=np.float64), 99))


def two_vs_one(make_worker: Callable[[int], Worker], seconds: float) -> Tuple[float, float, float]:
    """(ratio, calls/s of one thread, calls/s of two threads), alternating 1, 2, 1, 2 threads."""
    rates: Dict[int, List[float]] = {1: [], 2: []}
    for k in (1, 2, 1, 2):
        results = run_threads([make_worker(j) for j in range(k)], seconds / 2)
        rates[k].append(sum(r["calls"] for r in results) / max(r["seconds"] for r in results))
    one, two = sum(rates[1]) / 2, sum(rates[2]) / 2
    return two / one, one, two


# ---------------------------------------------------------------------------------------------------
# the rows, one group at a time for one backend


def _match_args(workload: Workload, offset: int, n: int = 2048) -> List[Tuple[Any, ...]]:
    ready = [POD]
    return [(workload.models[(offset + i) % workload.contexts], LORA,
             workload.queries["full"][(offset + i) % workload.contexts], ready) for i in range(n)]


def _check_full_hits(table: Any, args: Sequence[Tuple[Any, ...]], blocks: int) -> None:
    for model, lora, query, ready in (args[0], args[-1]):
        got = table.match_blocks(model, lora, query, ready)
        if got != {POD: blocks}:
            raise RuntimeError(f"a full-hit query matched {got}, expected {{{POD!r}: {blocks}}}")


def _event_pool(workload: Workload, n: int, seed: int) -> Tuple[List[Any], List[Any]]:
    """n distinct 10-block BlockStored extending the workload's chains, and their BlockRemoved."""
    import prefixindex

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, size=(n, 10, BLOCK_BYTES), dtype=np.uint8)
    hashes = random_hashes(rng, n * 10).reshape(n, 10)
    models = [workload.models[j % workload.contexts] for j in range(n)]
    stored = [prefixindex.BlockStored(hashes[j], tokens[j], models[j], LORA, source_pod=POD,
                                      parent_block_hash=int(workload.engine[j % workload.contexts][-1]))
              for j in range(n)]
    return stored, [prefixindex.BlockRemoved(hashes[j], models[j], LORA, source_pod=POD) for j in range(n)]


def _check_store(table: Any, event: Any) -> None:
    before = table.stats()["entries"]
    table.process_block_stored(event)
    if table.stats()["entries"] - before != 10:
        raise RuntimeError("a 10-block event did not place 10 blocks")


def _wrapped_note(name: str, done: int, pool: int) -> List[str]:
    if done <= pool:
        return []
    return [f"{name}: {done:,} stores went through the pool of {pool:,} distinct events "
            f"{done / pool:.1f} times; later passes re-store blocks already held"]


def _removed_note(name: str, done: int, pool: int) -> List[str]:
    if done <= pool:
        return []
    return [f"{name}: {done:,} stores went through the pool of {pool:,} distinct events {done / pool:.1f} "
            "times; each pass after the first began by removing the pool's blocks (not timed), so that "
            "every store placed new blocks"]


def _group_store_beside_matchers(module: Any, name: str, workload: Workload, seconds: float,
                                 pool: Tuple[List[Any], List[Any]]) -> Dict[str, Any]:
    table = workload.build_table(module)
    try:
        args = [_match_args(workload, 37 * j) for j in range(3)]
        _check_full_hits(table, args[0], workload.n_blocks)
        events, undo = pool
        _check_store(table, events[0])
        table.process_block_removed(undo[0])
        workers = [matcher(table, a) for a in args] + [storer(table, events, undo=undo)]
        results = run_threads(workers, seconds)
        store = results[3]
        rate = store["calls"] / store["seconds"]
        notes = [f"{name}: {store['calls']:,} stores in {store['seconds']:.2f} s while the matchers made "
                 f"{sum(r['calls'] for r in results[:3]) / max(r['seconds'] for r in results[:3]):,.0f} matches/s"]
        return {"threads_store_beside_3_matchers": {"median": rate},
                "threads_store_p99_beside_3_matchers": {"median": p99(store["latencies_ns"]) / 1e6},
                "notes": {"threads_store_beside_3_matchers": notes + _removed_note(name, store["calls"], len(events))}}
    finally:
        table.close()


def _group_match_beside_ingest(module: Any, name: str, workload: Workload, seconds: float,
                               pool: Tuple[List[Any], List[Any]]) -> Dict[str, Any]:
    table = workload.build_table(module)
    try:
        args = _match_args(workload, 0)
        _check_full_hits(table, args, workload.n_blocks)
        events = pool[0]
        _check_store(table, events[0])
        results = run_threads([matcher(table, args, record=True), storer(table, events[1:], rate=INGEST_RATE)],
                              seconds)
        match, ingest = results
        applied = ingest["calls"] / ingest["seconds"]
        notes = [f"{name}: the ingest thread applied {applied:,.0f} events/s (paced at {INGEST_RATE:,}), "
                 "one process_block_stored each"] + _wrapped_note(name, ingest["calls"], len(events) - 1)
        return {"threads_match_beside_ingest": {"median": match["calls"] / match["seconds"]},
                "threads_match_p99_beside_ingest": {"median": p99(match["latencies_ns"]) / 1e3},
                "notes": {"threads_match_beside_ingest": notes}}
    finally:
        table.close()


def _group_two_vs_one(module: Any, name: str, workload: Workload, seconds: float) -> Dict[str, Any]:
    notes: Dict[str, List[str]] = {}
    out: Dict[str, Any] = {"notes": notes}
    table = workload.build_table(module)
    try:
        _check_full_hits(table, _match_args(workload, 0), workload.n_blocks)
        ratio, one, two = two_vs_one(lambda j: matcher(table, _match_args(workload, 53 * j)), seconds)
        out["threads_match_1024_2_vs_1"] = {"median": ratio}
        notes["threads_match_1024_2_vs_1"] = [f"{name}: {one:,.0f} matches/s on one thread, {two:,.0f} on two"]
    finally:
        table.close()
    ratio, one, two = two_vs_one(lambda j: gil_held_worker, seconds)
    out["threads_gil_held_2_vs_1"] = {"median": ratio}
    notes["threads_gil_held_2_vs_1"] = [f"{name}: bytes.count over 2 KiB, {one:,.0f}/s on one thread, {two:,.0f}/s "
                                        "on two (what two threads of a call that keeps the GIL give here, measured "
                                        "beside the 1,024-token row)"]
    # a few contexts, each the chain of one 32,768-token prompt
    long_table = make_table(module)
    try:
        import prefixindex

        rng = np.random.default_rng(7)
        blocks = LONG_TOKENS // 16
        prompts = rng.integers(0, 256, size=(LONG_CONTEXTS, LONG_TOKENS * 4), dtype=np.uint8)
        models = [f"long-{c}" for c in range(LONG_CONTEXTS)]
        for c in range(LONG_CONTEXTS):
            long_table.process_block_stored(prefixindex.BlockStored(
                random_hashes(rng, blocks), prompts[c].reshape(blocks, BLOCK_BYTES), models[c], LORA, source_pod=POD))
        ready = [POD]
        long_args = [(models[i % LONG_CONTEXTS], LORA, prompts[i % LONG_CONTEXTS], ready) for i in range(64)]
        _check_full_hits(long_table, long_args, blocks)
        ratio, one, two = two_vs_one(lambda j: matcher(long_table, long_args[j:] + long_args[:j]), seconds)
        out["threads_match_32768_2_vs_1"] = {"median": ratio}
        notes["threads_match_32768_2_vs_1"] = [f"{name}: {one:,.0f} matches/s on one thread, {two:,.0f} on two"]
    finally:
        long_table.close()
    ratio, one, two = two_vs_one(lambda j: sha_worker, seconds)
    out["threads_gil_free_2_vs_1"] = {"median": ratio}
    notes["threads_gil_free_2_vs_1"] = [f"{name}: sha256 of 1 MiB, {one:,.1f}/s on one thread, {two:,.1f}/s on two "
                                        "(what two threads can give here, measured beside the 32,768-token row)"]
    return out


class _NewContexts:
    """Each call adds a prefix under a context name not held: with the table full at ``bound``, each
    creates a context and evicts the least recently used one. Names cycle through 2 x bound, so a
    name comes back only after ``bound`` newer contexts pushed it out."""

    def __init__(self, table: Any, bound: int) -> None:
        self.table = table
        self.names = [f"flood-{i:07d}" for i in range(2 * bound)]
        self.hashes = np.array([0x1234_5678_9ABC_DEF0], dtype=np.uint64)
        self.cursor = 0
        for i in range(bound):
            self.table.add_prefix(self.names[i], LORA, POD, self.hashes)
        self.cursor = bound

    def batch(self, k: int) -> int:
        add, names, hashes, n = self.table.add_prefix, self.names, self.hashes, len(self.names)
        todo = [names[(self.cursor + j) % n] for j in range(k)]
        self.cursor = (self.cursor + k) % n
        t0 = time.perf_counter_ns()
        for model in todo:
            add(model, LORA, POD, hashes)
        return time.perf_counter_ns() - t0

    def check(self) -> None:
        before = self.table.stats()
        self.batch(1)
        after = self.table.stats()
        if after["contexts"] != before["contexts"] or after["evicted_contexts"] != before["evicted_contexts"] + 1:
            raise RuntimeError(f"a new context at the bound left {after['contexts']} contexts and evicted "
                               f"{after['evicted_contexts'] - before['evicted_contexts']} (expected 1)")


def _group_new_context(module: Any, name: str, quick: bool, budget_s: float) -> Dict[str, Any]:
    bound = CONTEXT_BOUND_QUICK if quick else CONTEXT_BOUND[name]
    table = make_table(module, max_contexts=bound)
    try:
        flood = _NewContexts(table, bound)
        if table.stats()["contexts"] != bound:
            raise RuntimeError(f"the flood table holds {table.stats()['contexts']} contexts, expected {bound}")
        stat = measure({name: Op(flood.batch, max_batch=bound, check=flood.check)}, budget_s)[name]
        value = stat_us(stat)
        return {"threads_new_context_at_bound": value,
                "notes": {"threads_new_context_at_bound": [f"{name}: max_contexts={bound:,}, full before the timing"]}}
    finally:
        table.close()


def run(modules: Dict[str, Any], quick: bool, budget_s: float, say: Callable[[str], None]) -> List[Dict[str, Any]]:
    seconds = min(2.0, max(0.2, budget_s / 2))
    workload = Workload(store_pool=1)
    pools = EVENT_POOL_QUICK if quick else EVENT_POOL
    values: Dict[str, Dict[str, Dict[str, Any]]] = {spec[0]: {} for spec in ROWS}
    notes: Dict[str, List[str]] = {spec[0]: [] for spec in ROWS}
    groups: List[Tuple[str, List[str], Callable[[Any, str], Dict[str, Any]]]] = [
        ("3 matchers + 1 storer", ROWS_OF["store"],
         lambda m, n: _group_store_beside_matchers(m, n, workload, seconds, _event_pool(workload, pools[n], 11))),
        ("1 matcher beside paced ingest", ROWS_OF["ingest"],
         lambda m, n: _group_match_beside_ingest(m, n, workload, seconds, _event_pool(workload, pools[n], 12))),
        ("2 threads vs 1", ROWS_OF["scaling"], lambda m, n: _group_two_vs_one(m, n, workload, seconds)),
        ("new contexts at the bound", ROWS_OF["flood"], lambda m, n: _group_new_context(m, n, quick, budget_s)),
    ]
    for title, row_ids, group in groups:
        for name, module in modules.items():  # backends in turn, group by group: same-run figures
            say(f"threads: {title} ({name})")
            try:
                got = group(module, name)
            except Exception as exc:  # report it in the table rather than lose the other rows
                for row_id in row_ids:
                    values[row_id][name] = {"error": f"{type(exc).__name__}: {exc}", "pass": None}
                continue
            for row_id in row_ids:
                values[row_id][name] = got[row_id]
            for row_id, lines in got.get("notes", {}).items():
                notes[row_id].extend(lines)
    rows = []
    for spec in ROWS:
        # a ratio of two-thread ratios says nothing: the compiled/fallback column is for the other rows
        row = result_row(spec, judge(values[spec[0]], spec, JUDGED), compare=spec[2] != "x")
        if notes[spec[0]]:
            row["notes"] = notes[spec[0]]
        rows.append(row)
    return rows


ROWS_OF = {
    "store": ["threads_store_beside_3_matchers", "threads_store_p99_beside_3_matchers"],
    "ingest": ["threads_match_beside_ingest", "threads_match_p99_beside_ingest"],
    "scaling": ["threads_match_1024_2_vs_1", "threads_gil_held_2_vs_1", "threads_match_32768_2_vs_1",
                "threads_gil_free_2_vs_1"],
    "flood": ["threads_new_context_at_bound"],
}
