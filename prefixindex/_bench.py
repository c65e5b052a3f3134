"""python -m prefixindex bench: both backends on the standard workloads, one table of medians.

Every backend that imports here (the pure-Python ``prefixindex._core_py`` always, the compiled
``prefixindex._core`` when it is built, unless PREFIXINDEX_NO_EXTENSIONS=1) runs the same workload
objects in the same process, batch for batch in turn, so that the ratios compare like with like on a
noisy machine. The workload is the one the targets are stated on (docs/performance.md): block size 16;
100 contexts, each holding the 64-block chain of a 1,024-token prompt for one pod; queries and events
as token bytes (uint8 arrays), events as 2-D ``(n_blocks, 64)`` arrays.

Timing: ``time.perf_counter_ns`` around a batch of calls sized to about 200 us; the figure is
the median over batches of the per-call time, with the interquartile range as the spread. Bytes per
entry are measured in a fresh subprocess (see ``memory_probe``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BACKEND_MODULES", "Workload", "available_backends", "machine_info", "measure", "memory_probe",
           "run", "main"]

BLOCK_SIZE = 16
BLOCK_BYTES = 4 * BLOCK_SIZE
SEED = 0x5EED
POD = "pod-0"
LORA = -1

# backend name -> module; the name is what the module's BACKEND says
BACKEND_MODULES = {"python": "prefixindex._core_py", "cython": "prefixindex._core"}

# Entries stored by the bytes-per-entry probe, per backend: the pure-Python backend takes ~4 us and
# ~500 bytes per block (twice the time under tracemalloc), so it is measured on fewer blocks.
MEMORY_ENTRIES = {"python": 200_000, "cython": 1_000_000}
MEMORY_ENTRIES_QUICK = {"python": 25_600, "cython": 102_400}  # multiples of 64
# Per backend, the primary way of counting the index's bytes (docs/performance.md, "Bytes per entry").
MEMORY_METHOD = {"python": "tracemalloc", "cython": "mallinfo2"}
# A batch of calls is timed as one; ~200 us keeps most batches clear of the scheduler's time slices on
# a busy machine, and the two clock reads per batch far below the figures.
BATCH_NS = 200_000
MAX_BATCHES = 2000  # per backend and row: plenty for a median, and it keeps the run short
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def available_backends(names: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """({name: module} of the backends that import here, {name: why not} of the others)."""
    found: Dict[str, Any] = {}
    missing: Dict[str, str] = {}
    for name in (names or list(BACKEND_MODULES)):
        if name not in BACKEND_MODULES:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_MODULES)}")
        if name != "python" and _flag("PREFIXINDEX_NO_EXTENSIONS"):
            missing[name] = "PREFIXINDEX_NO_EXTENSIONS is set"
            continue
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
        except ImportError as exc:
            missing[name] = f"not importable: {exc}"
            continue
        # an editable install's import hook can hand out another tree's module (PYTHONPATH=old tree)
        if os.path.dirname(os.path.abspath(module.__file__)) != _PACKAGE_DIR:
            missing[name] = f"{module.__file__} is not part of the prefixindex package in use ({_PACKAGE_DIR})"
            continue
        found[name] = module
    return found, missing


def make_table(module: Any, max_prefixes_per_context: int = 100_000, max_contexts: int = 1_000,
               **extra: Any) -> Any:
    return module.SyncPrefixHashTable(seed=SEED, block_size=BLOCK_SIZE, background_eviction=False,
                                      max_prefixes_per_context=max_prefixes_per_context,
                                      max_contexts=max_contexts, **extra)


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n engine block hashes: arbitrary uint64 values, as vLLM's are."""
    return rng.integers(0, 2**64, size=n, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------------
# the workload


class Workload:
    """The targets' workload, built once and shared by every backend.

    ``contexts`` contexts ("model-000", ...; lora -1), each holding for pod "pod-0" the chain of one
    random ``prompt_tokens``-token prompt, stored as one BlockStored per prompt. Extra events extend
    those chains (parent = the prompt's last engine hash), so storing them is the steady state of a
    pod that keeps decoding; each has an undo (BlockRemoved) that restores the table between batches.
    """

    def __init__(self, contexts: int = 100, prompt_tokens: int = 1024, store_pool: int = 500,
                 seed: int = 0) -> None:
        import prefixindex

        rng = np.random.default_rng(seed)
        self.contexts = contexts
        self.prompt_tokens = prompt_tokens
        self.n_blocks = prompt_tokens // BLOCK_SIZE
        self.models = [f"model-{c:03d}" for c in range(contexts)]
        # row c: the token bytes of prompt c (random 32-bit token ids, big-endian)
        self.prompts = rng.integers(0, 256, size=(contexts, prompt_tokens * 4), dtype=np.uint8)
        self.engine = [random_hashes(rng, self.n_blocks) for _ in range(contexts)]
        self.base_events = [
            prefixindex.BlockStored(self.engine[c], self.prompts[c].reshape(self.n_blocks, BLOCK_BYTES),
                                    self.models[c], LORA, source_pod=POD)
            for c in range(contexts)]
        half = (self.n_blocks // 2) * BLOCK_BYTES
        others = rng.integers(0, 256, size=(contexts, prompt_tokens * 4), dtype=np.uint8)
        self.queries = {
            "full": [self.prompts[c] for c in range(contexts)],
            # the first half of the prompt, then other tokens: every pod matches n_blocks // 2 blocks
            "partial": [np.concatenate([self.prompts[c][:half], others[c][half:]]) for c in range(contexts)],
            # other tokens from block 0 on: nobody matches, every hash is still computed
            "miss": [others[c] for c in range(contexts)],
        }
        self.expected_blocks = {"full": self.n_blocks, "partial": self.n_blocks // 2, "miss": 0}
        self.store_events: Dict[int, List[Any]] = {}
        self.store_undo: Dict[int, List[Any]] = {}
        for per_event in (1, 10):
            events, undo = [], []
            for j in range(store_pool if per_event > 1 else store_pool * 4):
                c = j % contexts
                hashes = random_hashes(rng, per_event)
                tokens = rng.integers(0, 256, size=(per_event, BLOCK_BYTES), dtype=np.uint8)
                events.append(prefixindex.BlockStored(hashes, tokens, self.models[c], LORA, source_pod=POD,
                                                      parent_block_hash=int(self.engine[c][-1])))
                undo.append(prefixindex.BlockRemoved(hashes, self.models[c], LORA, source_pod=POD))
            self.store_events[per_event] = events
            self.store_undo[per_event] = undo

    def build_table(self, module: Any) -> Any:
        table = make_table(module)
        for event in self.base_events:
            table.process_block_stored(event)
        stats = table.stats()
        expected = self.contexts * self.n_blocks
        if stats["entries"] != expected or stats["contexts"] != self.contexts:
            raise RuntimeError(f"{module.__name__}: the workload table holds {stats['entries']} entries in "
                               f"{stats['contexts']} contexts, expected {expected} in {self.contexts}")
        return table


# ---------------------------------------------------------------------------------------------------
# timing


class Op:
    """One workload on one backend: ``batch(k)`` makes k calls and returns the ns they took.

    ``max_batch`` bounds k (the size of a pool of distinct events or prepared arguments); ``check()``,
    run once before the timing, raises if the calls do not do what the workload says they do.
    """

    def __init__(self, batch: Callable[[int], int], max_batch: int = 1 << 20,
                 check: Optional[Callable[[], None]] = None) -> None:
        self.batch = batch
        self.max_batch = max_batch
        self.check = check


def loop_op(fn: Callable[..., Any], args: Sequence[Tuple[Any, ...]]) -> Op:
    """Calls fn(*args[i]) for i = 0 .. k-1 (args cycled to the batch size ahead of time)."""

    def batch(k: int) -> int:
        todo = args[:k]
        t0 = time.perf_counter_ns()
        for a in todo:
            fn(*a)
        return time.perf_counter_ns() - t0

    return Op(batch, len(args))


def events_op(process: Callable[[Any], Any], events: Sequence[Any],
              before: Optional[Tuple[Callable[[Any], Any], Sequence[Any]]] = None,
              after: Optional[Tuple[Callable[[Any], Any], Sequence[Any]]] = None) -> Op:
    """Processes k distinct events; ``before`` and ``after`` (a function and its k events, untimed) set
    the table up for the batch and put it back, so that every batch starts from the same table."""

    def batch(k: int) -> int:
        if before is not None:
            for event in before[1][:k]:
                before[0](event)
        todo = events[:k]
        t0 = time.perf_counter_ns()
        for event in todo:
            process(event)
        elapsed = time.perf_counter_ns() - t0
        if after is not None:
            for event in after[1][:k]:
                after[0](event)
        return elapsed

    return Op(batch, len(events))


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(per_call_ns: Sequence[float], calls: int) -> Dict[str, Any]:
    values = sorted(per_call_ns)
    return {"median_ns": statistics.median(values), "p25_ns": _quantile(values, 0.25),
            "p75_ns": _quantile(values, 0.75), "min_ns": values[0], "batches": len(values), "calls": calls}


def measure(ops: Dict[str, Op], budget_s: float, batch_ns: float = BATCH_NS, min_batches: int = 7,
            max_batches: int = MAX_BATCHES) -> Dict[str, Dict[str, Any]]:
    """Median per-call ns of each op, taking batches of the ops in turn until the budget is spent.

    An op whose check or first calls raise is left out, with ``{"error": message}`` as its result.
    """
    sizes: Dict[str, int] = {}
    errors: Dict[str, Dict[str, Any]] = {}
    for name, op in ops.items():
        try:
            if op.check is not None:
                op.check()
            op.batch(1)  # warm up: first-call costs, caches
            estimate = min(op.batch(1) for _ in range(3))
            k = max(1, int(batch_ns / max(estimate, 1)))
            sizes[name] = min(k, op.max_batch)
            op.batch(sizes[name])
        except Exception as exc:  # report it in the table rather than lose the other rows
            errors[name] = {"error": f"{type(exc).__name__}: {exc}"}
    samples: Dict[str, List[float]] = {name: [] for name in sizes}
    calls = dict.fromkeys(sizes, 0)
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while sizes and rounds < max_batches and (rounds < min_batches or time.perf_counter() < deadline):
        for name, k in sizes.items():
            samples[name].append(ops[name].batch(k) / k)
            calls[name] += k
        rounds += 1
    out = {name: summarize(samples[name], calls[name]) for name in sizes}
    out.update(errors)
    return out


def loop_overhead_ns(budget_s: float = 0.05) -> float:
    """What the timing loop itself costs per call (a call of a no-op function): context for the figures."""

    def noop(*_: Any) -> None:
        return None

    op = loop_op(noop, [("m", LORA, b"", None)] * 1000)
    return measure({"noop": op}, budget_s, batch_ns=2e5)["noop"]["median_ns"]


# ---------------------------------------------------------------------------------------------------
# bytes per entry


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _heap_bytes(method: str) -> int:
    """The process's live heap, counted one way (see memory_probe)."""
    if method == "tracemalloc":
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]
    libc = _libc()
    if method == "mallinfo2":
        fn = libc.mallinfo2  # type: ignore[union-attr]
        fn.restype = _MallInfo2
        info = fn()
        return int(info.uordblks + info.hblkhd)  # in use: heap chunks + mmapped chunks
    if method == "rss":
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)  # hand freed memory back, so that RSS counts what is live
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    raise ValueError(f"unknown memory method {method!r}")


def memory_methods_available() -> Dict[str, bool]:
    libc = _libc()
    return {"tracemalloc": True, "mallinfo2": libc is not None and hasattr(libc, "mallinfo2"),
            "rss": os.path.exists("/proc/self/statm")}


def _memory_probe_child(argv: List[str]) -> int:
    """In a fresh process: build the events, measure, store them all, measure again; print JSON."""
    backend, n, method = argv[0], int(argv[1]), argv[2]
    module = importlib.import_module(BACKEND_MODULES[backend])
    import prefixindex

    chain = 64  # blocks per event: the chain of a 1,024-token prompt
    n = max(chain, n - n % chain)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=(n, BLOCK_BYTES), dtype=np.uint8)
    hashes = random_hashes(rng, n)
    events = [prefixindex.BlockStored(hashes[i:i + chain], tokens[i:i + chain], "model", LORA, source_pod=POD)
              for i in range(0, n, chain)]
    table = make_table(module, max_prefixes_per_context=n + chain, max_contexts=16)
    if method == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    gc.collect()
    before = _heap_bytes(method)
    t0 = time.perf_counter()
    for event in events:
        table.process_block_stored(event)
    store_s = time.perf_counter() - t0
    gc.collect()
    after = _heap_bytes(method)
    stats = table.stats()
    print(json.dumps({
        "backend": backend, "method": method, "entries": stats["entries"], "prefixes": stats["prefixes"],
        "blocks": n, "delta_bytes": after - before, "bytes_per_entry": (after - before) / max(stats["entries"], 1),
        "store_seconds": store_s, "pythonmalloc": os.environ.get("PYTHONMALLOC", ""),
    }))
    return 0 if stats["entries"] == n else 1


def memory_probe(backend: str, entries: int, method: str, timeout: float = 600.0) -> Dict[str, Any]:
    """Bytes per stored (pod, block) entry, engine-hash mapping included, measured in a fresh process.

    ``entries`` single-pod blocks (chains of 64, in one context) are stored; the events are built
    before the first reading, so only the index is counted. Methods:
    - ``tracemalloc``: every Python allocation (the pure-Python backend's whole index);
    - ``mallinfo2``: glibc's bytes in use (``uordblks + hblkhd``), with ``PYTHONMALLOC=malloc`` so that
      Python objects go through malloc too: C++ allocations are invisible to tracemalloc;
    - ``rss``: the resident set, after ``malloc_trim(0)`` (a cross-check, page-granular).
    """
    env = dict(os.environ)
    if method == "mallinfo2":
        env["PYTHONMALLOC"] = "malloc"
    code = "import sys; from prefixindex._bench import _memory_probe_child as f; sys.exit(f(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, backend, str(entries), method], capture_output=True,
                          text=True, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe ({backend}, {entries}, {method}) failed with exit code "
                           f"{proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
# machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(here, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> Dict[str, Any]:
    import xxhash

    import prefixindex

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(), "machine": platform.machine(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "memory_bytes": _memory_total(), "platform": platform.platform(), "libc": " ".join(platform.libc_ver()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__, "xxhash": xxhash.VERSION, "prefixindex": prefixindex.__version__,
        "default_backend": prefixindex.BACKEND, "commit": _git_commit(), "load_average": load,
    }


# ---------------------------------------------------------------------------------------------------
# the run

# id, title, unit, better, target (None: for information), speedup target (None: none)
ROWS = [
    ("match_prefix_full", "match_prefix, 1,024 tokens, full hit, 1 ready pod", "us/call", "lower", 1.5, 20.0),
    ("match_prefix_partial", "match_prefix, 1,024 tokens, half hit, 1 ready pod", "us/call", "lower", None, None),
    ("match_prefix_miss", "match_prefix, 1,024 tokens, miss, 1 ready pod", "us/call", "lower", None, None),
    ("process_block_stored_10", "process_block_stored, 10-block events", "us/block", "lower", 0.2, 20.0),
    ("process_block_stored_1", "process_block_stored, 1-block events", "us/event", "lower", 0.6, 20.0),
    ("process_block_removed_10", "process_block_removed, 10-block events", "us/block", "lower", None, None),
    ("get_prefix_hashes_32768", "get_prefix_hashes, 32,768 tokens", "GB/s", "higher", 4.0, None),
    ("bytes_per_entry", "bytes per stored (pod, block) entry", "bytes", "lower", 64.0, None),
]
TIMED = [row[0] for row in ROWS if row[0] != "bytes_per_entry"]


def _ops_for(workload: Workload, table: Any, hash_query: np.ndarray, batch_cap: int) -> Dict[str, Op]:
    ready = [POD]
    cycle = [(workload.models[i % workload.contexts], LORA, None, ready) for i in range(batch_cap)]

    def queries(kind: str) -> List[Tuple[Any, ...]]:
        qs = workload.queries[kind]
        return [(m, lora, qs[i % workload.contexts], r) for i, (m, lora, _, r) in enumerate(cycle)]

    # The figures are only worth something if the calls do what the rows say: each op is checked once,
    # untimed, before it is timed.
    def check_match(kind: str) -> Callable[[], None]:
        def check() -> None:
            expected = workload.expected_blocks[kind]
            for c in (0, workload.contexts - 1):
                got = table.match_blocks(workload.models[c], LORA, workload.queries[kind][c], ready)
                if got != ({POD: expected} if expected else {}):
                    raise RuntimeError(f"a {kind} query matched {got}, expected {expected} blocks for {POD}")
        return check

    def check_events(per_event: int) -> Callable[[], None]:
        def check() -> None:
            before = table.stats()["entries"]
            table.process_block_stored(workload.store_events[per_event][0])
            stored = table.stats()["entries"] - before
            table.process_block_removed(workload.store_undo[per_event][0])
            if stored != per_event or table.stats()["entries"] != before:
                raise RuntimeError(f"a {per_event}-block event placed {stored} blocks (or its BlockRemoved "
                                   "did not remove them)")
        return check

    def check_hashes() -> None:
        got = table.get_prefix_hashes(hash_query)
        if len(got) != hash_query.size // BLOCK_BYTES:
            raise RuntimeError(f"get_prefix_hashes gave {len(got)} hashes for {hash_query.size // BLOCK_BYTES} blocks")

    ops = {
        "match_prefix_full": loop_op(table.match_prefix, queries("full")),
        "match_prefix_partial": loop_op(table.match_prefix, queries("partial")),
        "match_prefix_miss": loop_op(table.match_prefix, queries("miss")),
        "process_block_stored_10": events_op(table.process_block_stored, workload.store_events[10],
                                             after=(table.process_block_removed, workload.store_undo[10])),
        "process_block_stored_1": events_op(table.process_block_stored, workload.store_events[1],
                                            after=(table.process_block_removed, workload.store_undo[1])),
        "process_block_removed_10": events_op(table.process_block_removed, workload.store_undo[10],
                                              before=(table.process_block_stored, workload.store_events[10])),
        "get_prefix_hashes_32768": loop_op(table.get_prefix_hashes, [(hash_query,)] * 64),
    }
    for kind in ("full", "partial", "miss"):
        ops[f"match_prefix_{kind}"].check = check_match(kind)
    ops["process_block_stored_10"].check = ops["process_block_removed_10"].check = check_events(10)
    ops["process_block_stored_1"].check = check_events(1)
    ops["get_prefix_hashes_32768"].check = check_hashes
    return ops


def _convert(row_id: str, unit: str, stat: Dict[str, Any], query_bytes: int) -> Dict[str, Any]:
    """Per-call ns -> the row's unit; p25/p75 follow (for GB/s, the faster quartile is the higher value)."""
    per = {"process_block_stored_10": 10, "process_block_removed_10": 10}.get(row_id, 1)
    out = {"batches": stat["batches"], "calls": stat["calls"], "median_ns_per_call": stat["median_ns"]}
    if unit == "GB/s":
        for key, src in (("median", "median_ns"), ("p25", "p75_ns"), ("p75", "p25_ns"), ("best", "min_ns")):
            out[key] = query_bytes / stat[src]  # bytes per ns = GB/s
    else:
        for key, src in (("median", "median_ns"), ("p25", "p25_ns"), ("p75", "p75_ns"), ("best", "min_ns")):
            out[key] = stat[src] / per / 1000.0
    return out


def _passes(value: float, target: Optional[float], better: str) -> Optional[bool]:
    if target is None:
        return None
    return value <= target if better == "lower" else value >= target


def run(backends: Optional[Sequence[str]] = None, quick: bool = False, budget_s: Optional[float] = None,
        memory: bool = True, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Every workload on every available backend; the document that ``--json`` prints."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    modules, missing = available_backends(backends)
    per_row = (0.25 if quick else 3.0) if budget_s is None else budget_s
    say(f"backends: {', '.join(modules) or 'none'}" + (f"; missing: {missing}" if missing else ""))
    workload = Workload(store_pool=100 if quick else 500)
    tables = {name: workload.build_table(module) for name, module in modules.items()}
    hash_query = np.random.default_rng(2).integers(0, 256, size=32768 * 4, dtype=np.uint8)
    ops = {name: _ops_for(workload, table, hash_query, 4096) for name, table in tables.items()}

    measured: Dict[str, Dict[str, Any]] = {}
    for row_id in TIMED:
        say(f"timing {row_id}")
        measured[row_id] = measure({name: ops[name][row_id] for name in tables}, per_row)

    memory_results: Dict[str, Dict[str, Any]] = {}
    if memory:
        sizes = MEMORY_ENTRIES_QUICK if quick else MEMORY_ENTRIES
        can = memory_methods_available()
        for name in modules:
            primary = MEMORY_METHOD[name] if can[MEMORY_METHOD[name]] else "rss"
            say(f"bytes per entry: {name} ({primary}, {sizes[name]:,} entries)")
            memory_results[name] = {"primary": memory_probe(name, sizes[name], primary)}
            if can["rss"] and primary != "rss":
                memory_results[name]["rss"] = memory_probe(name, sizes[name], "rss")

    results = []
    for row_id, title, unit, better, target, speedup_target in ROWS:
        values: Dict[str, Dict[str, Any]] = {}
        for name in modules:
            if row_id == "bytes_per_entry":
                if name not in memory_results:
                    continue
                probe = memory_results[name]["primary"]
                value = {"median": probe["bytes_per_entry"], "method": probe["method"], "entries": probe["entries"]}
                if "rss" in memory_results[name]:
                    value["rss_cross_check"] = memory_results[name]["rss"]["bytes_per_entry"]
            elif "error" in measured[row_id][name]:
                values[name] = {"error": measured[row_id][name]["error"], "pass": None}
                continue
            else:
                value = _convert(row_id, unit, measured[row_id][name], hash_query.size)
            value["pass"] = _passes(value["median"], target, better)
            values[name] = value
        speedup = None
        if "median" in values.get("python", {}) and "median" in values.get("cython", {}):
            a, b = values["python"]["median"], values["cython"]["median"]
            speedup = (a / b if better == "lower" else b / a) if min(a, b) > 0 else None
        results.append({
            "id": row_id, "title": title, "unit": unit, "better": better, "target": target, "values": values,
            "speedup": speedup, "speedup_target": speedup_target,
            "speedup_pass": None if speedup is None or speedup_target is None else speedup >= speedup_target,
        })
    for table in tables.values():
        table.close()
    return {
        "prefixindex_bench": 1,
        "machine": machine_info(),
        "settings": {
            "quick": quick, "seconds_per_row": per_row, "block_size": BLOCK_SIZE, "contexts": workload.contexts,
            "prompt_tokens": workload.prompt_tokens, "pod": POD, "timer": "time.perf_counter_ns",
            "batch_us": BATCH_NS / 1000, "max_batches": MAX_BATCHES,
            "loop_overhead_ns": loop_overhead_ns(),
            "memory_entries": {name: memory_results[name]["primary"]["entries"] for name in memory_results},
        },
        "backends": {name: {"module": BACKEND_MODULES[name], "file": getattr(modules[name], "__file__", None),
                            "backend": getattr(modules[name], "BACKEND", None),
                            "source_hash": getattr(modules[name], "SOURCE_HASH", None)} for name in modules},
        "missing_backends": missing,
        "results": results,
        "elapsed_seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------------
# the table


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(value: Optional[Dict[str, Any]]) -> str:
    if value is None:
        return "n/a"
    if "error" in value:
        return "error"
    text = _fmt(value["median"])
    if "p25" in value and value["median"] > 0:
        spread = (value["p75"] - value["p25"]) / 2 / value["median"] * 100
        text += f" ±{spread:.0f}%"
    return text


def _verdict(ok: Optional[bool]) -> str:
    return "" if ok is None else ("pass" if ok else "MISS")


def format_table(doc: Dict[str, Any]) -> str:
    names = list(doc["backends"]) or ["python"]
    for name in ("python", "cython"):
        if name not in names and name in BACKEND_MODULES:
            names.append(name)
    header = ["workload", "unit", "target"]
    for name in names:
        header += [name, ""]
    header += ["ratio", ""]
    rows = [header]
    for r in doc["results"]:
        target = "" if r["target"] is None else ("<= " if r["better"] == "lower" else ">= ") + _fmt(r["target"])
        line = [r["title"], r["unit"], target]
        for name in names:
            value = r["values"].get(name)
            line += [_cell(value), _verdict(value.get("pass")) if value else ""]
        if r["speedup"] is None:
            line += ["n/a" if r["speedup_target"] else "", ""]
        else:
            ratio = f"{r['speedup']:.2f}x" if r["speedup"] < 100 else f"{r['speedup']:.0f}x"
            line += [ratio + (f" (>= {r['speedup_target']:.0f}x)" if r["speedup_target"] else ""),
                     _verdict(r["speedup_pass"])]
        rows.append(line)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = set(range(3, len(header)))
    out = []
    for i, row in enumerate(rows):
        cells = [c.rjust(w) if j in numeric and c and i else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_report(doc: Dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    mem = m["memory_bytes"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m["load_average"] else "?"
    lines = [
        f"prefixindex {m['prefixindex']} bench" + (f" at {m['commit']}" if m["commit"] else "")
        + (" (--quick: smoke run, not for comparison)" if s["quick"] else ""),
        f"machine: {m['cpu']} ({m['machine']}), {m['usable_cpus']} of {m['logical_cpus']} CPUs usable, "
        + (f"{mem / 2**30:.1f} GiB" if mem else "? GiB") + f"; load average {load}",
        f"software: {m['python']}, numpy {m['numpy']}, xxhash {m['xxhash']}; {m['platform']}",
        f"workload: block_size {s['block_size']}; {s['contexts']} contexts, each the {s['prompt_tokens'] // 16}-block "
        f"chain of a {s['prompt_tokens']:,}-token prompt for one pod; token bytes as uint8 arrays",
        f"figures: medians of per-call times over batches of ~{s['batch_us']:.0f} us (at most {s['max_batches']:,} "
        f"batches or {s['seconds_per_row']:g} s per row, backends in turn), ± half the interquartile range; the "
        f"timing loop costs {s['loop_overhead_ns']:.0f} ns per call, included",
        "ratio: how many times better the compiled core (cython) does than the fallback (python), same run",
        "",
        format_table(doc),
        "",
    ]
    for r in doc["results"]:
        if r["id"] != "bytes_per_entry":
            continue
        for name, v in r["values"].items():
            how = {"tracemalloc": "tracemalloc", "mallinfo2": "glibc mallinfo2 with PYTHONMALLOC=malloc",
                   "rss": "RSS"}[v["method"]]
            extra = f"; RSS cross-check {v['rss_cross_check']:.0f}" if "rss_cross_check" in v else ""
            lines.append(f"bytes per entry, {name}: {how}, {v['entries']:,} entries in a fresh process{extra}")
    for r in doc["results"]:
        for name, v in r["values"].items():
            if "error" in v:
                lines.append(f"error: {r['title']}, {name}: {v['error']}")
    for name, why in doc["missing_backends"].items():
        lines.append(f"{name}: {why}")
    lines.append(f"ran in {doc['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefixindex bench",
        description="Time every available backend on the standard workloads (same run, same workload "
                    "objects) and print one table of medians, the targets, the ratios and bytes per entry.")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for machines)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run, not for comparisons")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated subset of {','.join(BACKEND_MODULES)} (default: all that import)")
    parser.add_argument("--seconds-per-row", type=float, default=None, dest="budget",
                        help="timing budget per row, all backends together (default 3, 0.25 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the bytes-per-entry probes")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 unless the compiled backend ran and met every target")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    try:
        doc = run(names, quick=args.quick, budget_s=args.budget, memory=not args.no_memory,
                  progress=None if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)))
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(doc, indent=2) if args.json else format_report(doc))
    if any("error" in v for r in doc["results"] for v in r["values"].values()):
        return 1
    if args.strict:
        if "cython" not in doc["backends"]:
            return 1
        for r in doc["results"]:
            if r["values"].get("cython", {}).get("pass") is False or r["speedup_pass"] is False:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
