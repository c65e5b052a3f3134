"""The core section: the rows the original targets are stated on (docs/performance.md).

Block size 16; 100 contexts, each holding the 64-block chain of a 1,024-token prompt for one pod;
queries and events as token bytes (uint8 arrays), events as 2-D ``(n_blocks, 64)`` arrays. Every
backend runs the same workload objects, batch for batch in turn. Bytes per entry are measured in a
fresh subprocess (memory.py).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from .common import BLOCK_BYTES, BLOCK_SIZE, LORA, POD, RowSpec, make_table, passes, random_hashes, result_row
from .memory import MEMORY_ENTRIES, MEMORY_ENTRIES_QUICK, MEMORY_METHOD, memory_methods_available, memory_probe
from .timing import Op, events_op, loop_op, measure

CONTEXTS = 100
PROMPT_TOKENS = 1024


class Workload:
    """The targets' workload, built once and shared by every backend.

    ``contexts`` contexts ("model-000", ...; lora -1), each holding for pod "pod-0" the chain of one
    random ``prompt_tokens``-token prompt, stored as one BlockStored per prompt. Extra events extend
    those chains (parent = the prompt's last engine hash), so storing them is the steady state of a
    pod that keeps decoding; each has an undo (BlockRemoved) that restores the table between batches.
    """

    def __init__(self, contexts: int = CONTEXTS, prompt_tokens: int = PROMPT_TOKENS, store_pool: int = 500,
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




# id, title, unit, better, target (None: for information), speedup target (None: none)
ROWS: List[RowSpec] = [
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


def run(modules: Dict[str, Any], quick: bool, budget_s: float, say: Callable[[str], None],
        memory: bool = True) -> List[Dict[str, Any]]:
    """The core rows on every backend in ``modules`` ({name: backend module}), in ROWS order."""
    workload = Workload(store_pool=100 if quick else 500)
    tables = {name: workload.build_table(module) for name, module in modules.items()}
    hash_query = np.random.default_rng(2).integers(0, 256, size=32768 * 4, dtype=np.uint8)
    ops = {name: _ops_for(workload, table, hash_query, 4096) for name, table in tables.items()}

    measured: Dict[str, Dict[str, Any]] = {}
    for row_id in TIMED:
        say(f"timing {row_id}")
        measured[row_id] = measure({name: ops[name][row_id] for name in tables}, budget_s)
    for table in tables.values():
        table.close()

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
    for spec in ROWS:
        row_id, _, unit, better, target, _ = spec
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
            value["pass"] = passes(value["median"], target, better)
            values[name] = value
        results.append(result_row(spec, values))
    return results
