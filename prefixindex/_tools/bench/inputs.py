"""The inputs section: queries and events in the forms callers really have (issue 9's targets).

A tokenizer hands out a list of ints, numpy users have int64 or int32 arrays, the vLLM subscriber has
token bytes; events built outside the subscriber come from lists. Each row is timed like the core rows
(``timing.measure``, both backends in turn) and checked once, untimed, first: every query form of a
prompt gives the same prefix hashes as its token bytes and the full hit the row names; every event
places the blocks it carries and is removed again between batches (untimed), so that each batch
starts from the same table.

Token ids are below 2**17 (a real vocabulary's range), so that the int32 form holds the same prompts.
The 10^6-entry table (~64 MB in the compiled core) is built for the compiled backend only; the
fallback (~500 bytes an entry) gets 10^5 entries, and ``--quick`` gives both 10^5 or fewer. The
targets are the compiled core's; the fallback's figures are for information, the ratio column
compares the two.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from .common import BLOCK_BYTES, BLOCK_SIZE, LORA, POD, RowSpec, judge, make_table, random_hashes, result_row
from .timing import Op, cycling_op, loop_op, measure, stat_us

SUMMARY = ("queries and events in the forms callers have (token ids < 2**17), timed like the core rows; "
           "the targets are the compiled core's, python's figures are for information")
ROWS: List[RowSpec] = [
    ("inputs_match_1024_list", "match_prefix, 1,024 tokens, full hit, a list of ints", "us/call", "lower", 6.0, None),
    ("inputs_match_1024_int64", "  the same, a numpy int64 array", "us/call", "lower", 1.8, None),
    ("inputs_match_1024_int32", "  the same, a numpy int32 array", "us/call", "lower", 1.8, None),
    ("inputs_match_1024_uint8", "  the same, token bytes as a uint8 array", "us/call", "lower", 1.3, None),
    ("inputs_match_1024_bytes", "  the same, token bytes as bytes", "us/call", "lower", 1.3, None),
    ("inputs_match_32768_uint8", "match_prefix, 32,768 tokens, full hit, token bytes", "us/call", "lower", 40.0, None),
    ("inputs_match_32768_list", "  the same, a list of ints", "us/call", "lower", 150.0, None),
    ("inputs_match_1024_million", "match_prefix, 1,024 tokens, 10^6 entries / 100 contexts, cycling (python: 10^5)",
     "us/call", "lower", 2.0, None),
    ("inputs_match_64_pods", "match_prefix, 64 pods share a 512-token prefix, all ready, 1,024 tokens", "us/call",
     "lower", 5.0, None),
    ("inputs_stored_from_lists_10", "BlockStored from lists + process_block_stored, 10-block events", "us/block",
     "lower", 0.5, None),
    ("inputs_stored_from_lists_1", "  the same, 1-block events", "us/event", "lower", 1.5, None),
    ("inputs_process_events_100x10", "process_events, 100 10-block events (token bytes) a call", "us/block", "lower",
     0.08, 20.0),
]
JUDGED = ("cython",)
VOCAB = 1 << 17
CONTEXTS = 100
PROMPT_TOKENS = 1024
LONG_TOKENS = 32_768
LONG_CONTEXTS = 4
MILLION = {"cython": 1_000_000, "python": 100_000}
MILLION_QUICK = {"cython": 100_000, "python": 25_600}
SHARED_PODS = 64
SHARED_TOKENS = 512
BATCH_EVENTS = 100  # events per process_events call


def token_bytes(ids: np.ndarray) -> np.ndarray:
    """Token ids -> token bytes (4 bytes each, unsigned big-endian: SPEC, Terms), as a uint8 array."""
    return np.ascontiguousarray(ids.astype(">u4")).view(np.uint8).reshape(*ids.shape[:-1], ids.shape[-1] * 4)


class Prompts:
    """``n`` prompts of ``tokens`` token ids each, with their token bytes, stored one per context."""

    def __init__(self, rng: np.random.Generator, n: int, tokens: int, prefix: str) -> None:
        self.ids = rng.integers(0, VOCAB, size=(n, tokens), dtype=np.uint32)
        self.bytes = token_bytes(self.ids)
        self.models = [f"{prefix}-{c:03d}" for c in range(n)]
        self.engine = [random_hashes(rng, tokens // BLOCK_SIZE) for _ in range(n)]
        self.blocks = tokens // BLOCK_SIZE

    def store(self, table: Any) -> None:
        import prefixindex

        for c, model in enumerate(self.models):
            table.process_block_stored(prefixindex.BlockStored(
                self.engine[c], self.bytes[c].reshape(self.blocks, BLOCK_BYTES), model, LORA, source_pod=POD))

    def forms(self, c: int) -> Dict[str, Any]:
        return {"list": self.ids[c].tolist(), "int64": self.ids[c].astype(np.int64),
                "int32": self.ids[c].astype(np.int32), "uint8": self.bytes[c], "bytes": self.bytes[c].tobytes()}


def _check_query(table: Any, model: str, query: Any, reference: np.ndarray, expected: Dict[str, int]) -> None:
    """The query (in whatever form) hashes like its token bytes and matches what the row says."""
    got = table.match_blocks(model, LORA, query, list(expected))
    same = np.array_equal(np.asarray(table.get_prefix_hashes(query)), np.asarray(table.get_prefix_hashes(reference)))
    if got != expected or not same:
        raise RuntimeError(f"a {type(query).__name__} query of {model} matched {got} (expected {expected}); "
                           f"hashes equal to its token bytes': {same}")


def _match_ops(table: Any, prompts: Prompts, form_rows: Dict[str, str], n_args: int) -> Dict[str, Op]:
    ready = [POD]
    forms = [prompts.forms(c) for c in range(len(prompts.models))]
    ops: Dict[str, Op] = {}
    for form, row_id in form_rows.items():
        args = [(prompts.models[i % len(forms)], LORA, forms[i % len(forms)][form], ready) for i in range(n_args)]
        op = loop_op(table.match_prefix, args)

        def check(form: str = form) -> None:
            for c in (0, len(forms) - 1):
                _check_query(table, prompts.models[c], forms[c][form], prompts.bytes[c], {POD: prompts.blocks})

        op.check = check
        ops[row_id] = op
    return ops


def _million_op(module: Any, entries: int, rng: np.random.Generator) -> Tuple[Any, Op]:
    """A table of ``entries`` single-pod entries over 100 contexts (chains of 64 blocks), queried for full
    hits context after context, so that consecutive probes land in different contexts' maps and miss
    the caches. Every context holds the same prompts (the prefix hash does not depend on the context),
    so that the queries' own bytes stay in the caches, as a router's freshly tokenised prompt does:
    the row measures the index's probes, not the reading of cold query memory."""
    import prefixindex

    chains_per_context = max(1, entries // (CONTEXTS * 64))
    data = rng.integers(0, 256, size=(chains_per_context, PROMPT_TOKENS * 4), dtype=np.uint8)
    table = make_table(module, max_prefixes_per_context=chains_per_context * 64 + 64, max_contexts=CONTEXTS + 1)
    models = [f"big-{c:03d}" for c in range(CONTEXTS)]
    for k in range(chains_per_context):
        for c in range(CONTEXTS):
            table.process_block_stored(prefixindex.BlockStored(random_hashes(rng, 64), data[k].reshape(64, BLOCK_BYTES),
                                                               models[c], LORA, source_pod=POD))
    chains = CONTEXTS * chains_per_context
    if table.stats()["entries"] != chains * 64:
        raise RuntimeError(f"the big table holds {table.stats()['entries']} entries, expected {chains * 64}")
    ready = [POD]
    args = [(models[i % CONTEXTS], LORA, data[(i // CONTEXTS) % chains_per_context], ready) for i in range(chains)]
    op = cycling_op(table.match_prefix, args)

    def check() -> None:
        for i in (0, chains - 1):
            got = table.match_blocks(*args[i])
            if got != {POD: 64}:
                raise RuntimeError(f"a full-hit query of the big table matched {got}")

    op.check = check
    return table, op


def _shared_op(module: Any, rng: np.random.Generator) -> Tuple[Any, Op]:
    import prefixindex

    blocks = SHARED_TOKENS // BLOCK_SIZE
    shared = rng.integers(0, 256, size=SHARED_TOKENS * 4, dtype=np.uint8)
    pods = [f"pod-{p:02d}" for p in range(SHARED_PODS)]
    table = make_table(module)
    for pod in pods:  # each pod has its own engine hashes for the same blocks, as separate engines do
        table.process_block_stored(prefixindex.BlockStored(random_hashes(rng, blocks), shared.reshape(blocks, BLOCK_BYTES),
                                                           "shared", LORA, source_pod=pod))
    queries = [np.concatenate([shared, rng.integers(0, 256, size=(PROMPT_TOKENS - SHARED_TOKENS) * 4, dtype=np.uint8)])
               for _ in range(16)]
    op = loop_op(table.match_prefix, [("shared", LORA, queries[i % 16], pods) for i in range(4096)])

    def check() -> None:
        got = table.match_blocks("shared", LORA, queries[0], pods)
        if got != {pod: blocks for pod in pods}:
            raise RuntimeError(f"the shared-prefix query matched {len(got)} pods, {sorted(set(got.values()))} blocks")

    op.check = check
    return table, op


def _from_lists_op(table: Any, prompts: Prompts, per_event: int, pool: int, rng: np.random.Generator) -> Op:
    """Builds BlockStored from a list of hashes and a flat list of token ids, and stores it (timed);
    the BlockRemoved of each (built ahead) takes the blocks out again after the batch (untimed)."""
    import prefixindex

    BlockStored = prefixindex.BlockStored
    n = len(prompts.models)
    args = []
    undo = []
    for j in range(pool):
        hashes = [int(h) for h in random_hashes(rng, per_event)]
        ids = rng.integers(0, VOCAB, size=per_event * BLOCK_SIZE).tolist()
        model = prompts.models[j % n]
        args.append((hashes, ids, model, int(prompts.engine[j % n][-1])))
        undo.append(prefixindex.BlockRemoved(hashes, model, LORA, source_pod=POD))
    store, remove = table.process_block_stored, table.process_block_removed

    def batch(k: int) -> int:
        todo = args[:k]
        t0 = time.perf_counter_ns()
        for hashes, ids, model, parent in todo:
            store(BlockStored(hashes, ids, model, LORA, source_pod=POD, parent_block_hash=parent))
        elapsed = time.perf_counter_ns() - t0
        for event in undo[:k]:
            remove(event)
        return elapsed

    def check() -> None:
        before = table.stats()["entries"]
        hashes, ids, model, parent = args[0]
        event = BlockStored(hashes, ids, model, LORA, source_pod=POD, parent_block_hash=parent)
        if not np.array_equal(event.tokens.reshape(-1), token_bytes(np.asarray(ids, dtype=np.uint32))):
            raise RuntimeError("an event from a token-id list does not hold those ids' token bytes")
        store(event)
        placed = table.stats()["entries"] - before
        remove(undo[0])
        if placed != per_event or table.stats()["entries"] != before:
            raise RuntimeError(f"a {per_event}-block event from lists placed {placed} blocks (or was not removed)")

    return Op(batch, pool, check)


def _process_events_op(table: Any, prompts: Prompts, pool: int, rng: np.random.Generator) -> Op:
    import prefixindex

    n = len(prompts.models)
    batches, undo = [], []
    for b in range(pool):
        events, removals = [], []
        for j in range(BATCH_EVENTS):
            c = (b * BATCH_EVENTS + j) % n
            hashes = random_hashes(rng, 10)
            tokens = rng.integers(0, 256, size=(10, BLOCK_BYTES), dtype=np.uint8)
            events.append(prefixindex.BlockStored(hashes, tokens, prompts.models[c], LORA, source_pod=POD,
                                                  parent_block_hash=int(prompts.engine[c][-1])))
            removals.append(prefixindex.BlockRemoved(hashes, prompts.models[c], LORA, source_pod=POD))
        batches.append(events)
        undo.append(removals)
    process = table.process_events

    def batch(k: int) -> int:
        todo = batches[:k]
        t0 = time.perf_counter_ns()
        for events in todo:
            process(events)
        elapsed = time.perf_counter_ns() - t0
        for removals in undo[:k]:
            process(removals)
        return elapsed

    def check() -> None:
        before = table.stats()["entries"]
        process(batches[0])
        placed = table.stats()["entries"] - before
        process(undo[0])
        if placed != BATCH_EVENTS * 10 or table.stats()["entries"] != before:
            raise RuntimeError(f"process_events of {BATCH_EVENTS} 10-block events placed {placed} blocks")

    return Op(batch, pool, check)


# per row: what a timed call is, in the row's unit (us per call, per block, per event)
PER = {"inputs_stored_from_lists_10": 10.0, "inputs_process_events_100x10": BATCH_EVENTS * 10.0}


def run(modules: Dict[str, Any], quick: bool, budget_s: float, say: Callable[[str], None]) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(0x1A9)
    prompts = Prompts(rng, CONTEXTS, PROMPT_TOKENS, "model")
    long_prompts = Prompts(rng, LONG_CONTEXTS, LONG_TOKENS, "long")
    sizes = MILLION_QUICK if quick else MILLION
    values: Dict[str, Dict[str, Dict[str, Any]]] = {spec[0]: {} for spec in ROWS}
    notes: List[str] = []
    tables: List[Any] = []
    ops: Dict[str, Dict[str, Op]] = {spec[0]: {} for spec in ROWS}
    try:
        for name, module in modules.items():
            say(f"inputs: building the tables ({name})")
            try:
                table = make_table(module)
                tables.append(table)
                prompts.store(table)
                long_prompts.store(table)
                built = _match_ops(table, prompts, {form: f"inputs_match_1024_{form}" for form in
                                                    ("list", "int64", "int32", "uint8", "bytes")}, 4096)
                built.update(_match_ops(table, long_prompts, {"uint8": "inputs_match_32768_uint8",
                                                              "list": "inputs_match_32768_list"}, 64))
                big, built["inputs_match_1024_million"] = _million_op(module, sizes[name], rng)
                tables.append(big)
                notes.append(f"{name}: {big.stats()['entries']:,} entries over {CONTEXTS} contexts")
                shared, built["inputs_match_64_pods"] = _shared_op(module, rng)
                tables.append(shared)
                built["inputs_stored_from_lists_10"] = _from_lists_op(table, prompts, 10, 500, rng)
                built["inputs_stored_from_lists_1"] = _from_lists_op(table, prompts, 1, 2000, rng)
                built["inputs_process_events_100x10"] = _process_events_op(table, prompts, 20 if quick else 50, rng)
            except Exception as exc:  # report it in the table rather than lose the other rows
                for spec in ROWS:
                    values[spec[0]][name] = {"error": f"{type(exc).__name__}: {exc}", "pass": None}
                continue
            for row_id, op in built.items():
                ops[row_id][name] = op
        for spec in ROWS:
            row_id = spec[0]
            if not ops[row_id]:
                continue
            say(f"timing {row_id}")
            for name, stat in measure(ops[row_id], budget_s).items():
                values[row_id][name] = stat_us(stat, PER.get(row_id, 1.0))
    finally:
        for table in tables:
            table.close()
    rows = []
    for spec in ROWS:
        row = result_row(spec, judge(values[spec[0]], spec, JUDGED))
        if spec[0] == "inputs_match_1024_million":
            row["notes"] = notes
        rows.append(row)
    return rows
