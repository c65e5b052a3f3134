"""Rejected calls change nothing (issue 8: "State changed by rejected calls"; SPEC 8).

Each item fills a table to max_contexts, makes one call that must be rejected, and checks that stats()
and snapshot() are identical before and after, and that the next new context evicts the context that
was least recently used before the rejected call (so the call neither evicted a context nor touched the
recency order). The item returns the exception's type; the parent checks it against EXPECT.
"""

from __future__ import annotations

import functools
from typing import Tuple, Any, Callable, Dict

import numpy as np

from common import BlockRemoved, BlockStored, AllBlocksCleared, chain, force, make_table, stored, toks

MAX = 3


def _full_table(backend: Any) -> Any:
    t = make_table(backend, max_contexts=MAX)
    for i in range(MAX):  # "c0" is the least recently used context, "c2" the most
        t.process_block_stored(stored([1, 2], [0, 1], "p", model=f"c{i}"))
    return t


def _forced(field: str, value: Any, kind: str = "stored") -> Callable[[Any], Any]:
    def call(t: Any) -> Any:
        if kind == "stored":
            ev: Any = stored([5, 6], [4, 5], "p", model="new")
            method = t.process_block_stored
        elif kind == "removed":
            ev = BlockRemoved([1], "new", -1, "p")
            method = t.process_block_removed
        else:
            ev = AllBlocksCleared("p", "new", -1)
            method = t.process_all_blocks_cleared
        if not force(ev, field, value):
            raise TypeError("unforceable")  # the event gives no way in: counted as rejected
        return method(ev)
    return call


def _batch_with_bad_event(t: Any) -> Any:
    bad = stored([7], [6], "p", model="new2")
    force(bad, "lora_id", 1.5)
    return t.process_events([stored([5], [4], "p", model="new"), stored([8], [9], "p", model="c0"), bad])


def _batch_with_wrong_width(t: Any) -> Any:
    return t.process_events([stored([5], [4], "p", model="new"),
                             BlockStored([7], list(range(8)), "new2", -1, "p")])


CALLS: Dict[str, Callable[[Any], Any]] = {
    "stored_lora_float": _forced("lora_id", 1.5),
    "stored_lora_str": _forced("lora_id", "-1"),
    "stored_lora_huge": _forced("lora_id", 2**70),
    "stored_model_list": _forced("model_name", ["new"]),
    "stored_model_bytes": _forced("model_name", b"new"),
    "stored_model_none": _forced("model_name", None),
    "stored_pod_none": _forced("source_pod", None),
    "stored_pod_list": _forced("source_pod", ["p"]),
    "stored_parent_str": _forced("parent_block_hash", "x"),
    "stored_hashes_float": _forced("block_hashes", np.array([5.0, 6.0])),
    "stored_tokens_narrow": _forced("tokens", np.zeros((2, 4), dtype=np.uint8)),
    "removed_model_list": _forced("model_name", ["c0"], "removed"),
    "removed_lora_float": _forced("lora_id", 1.5, "removed"),
    "cleared_lora_float": _forced("lora_id", 1.5, "cleared"),
    "batch_with_a_bad_event": _batch_with_bad_event,
    "batch_with_a_wrong_width": _batch_with_wrong_width,
    "add_prefix_pod_none": lambda t: t.add_prefix("new", -1, None, chain(0)),
    "add_prefix_pod_empty": lambda t: t.add_prefix("new", -1, "", chain(0)),
    "add_prefix_pod_int": lambda t: t.add_prefix("new", -1, 5, chain(0)),
    "add_prefix_model_list": lambda t: t.add_prefix(["new"], -1, "p", chain(0)),
    "add_prefix_lora_float": lambda t: t.add_prefix("new", 1.5, "p", chain(0)),
    "add_prefix_bad_hash": lambda t: t.add_prefix("new", -1, "p", [1, "x"]),
    "add_prefix_hash_too_big": lambda t: t.add_prefix("new", -1, "p", [1, 2**70]),
    "add_prefix_existing_context_bad_hash": lambda t: t.add_prefix("c0", -1, "p", [1, 2.5]),
    "remove_prefix_pod_none": lambda t: t.remove_prefix("c0", -1, None),
    "match_float_tokens": lambda t: t.match_blocks("c0", -1, np.zeros(8)),
    "match_2d_tokens": lambda t: t.match_blocks("c0", -1, np.zeros((2, 16), dtype=np.uint8)),
    "match_bad_ready_pods": lambda t: t.match_blocks("c0", -1, toks(0, 1), ready_pods=[b"p"]),
    "match_ready_pods_str": lambda t: t.match_blocks("c0", -1, toks(0, 1), ready_pods="p"),
    "match_prefix_negative_token": lambda t: t.match_prefix("c0", -1, [-1, 0, 0, 0]),
    "match_lora_float": lambda t: t.match("c0", 1.0, toks(0, 1)),
}
EXPECT: Dict[str, Tuple[Any, ...]] = {k: ("TypeError", "ValueError") for k in CALLS}
EXPECT.update({k: ("TypeError",) for k in (
    "stored_lora_float", "stored_lora_str", "stored_model_list", "stored_model_bytes", "stored_model_none",
    "stored_pod_none", "stored_pod_list", "removed_model_list", "removed_lora_float", "cleared_lora_float",
    "batch_with_a_bad_event", "add_prefix_pod_none", "add_prefix_pod_int", "add_prefix_model_list",
    "add_prefix_lora_float", "add_prefix_bad_hash", "remove_prefix_pod_none", "match_float_tokens",
    "match_bad_ready_pods", "match_ready_pods_str", "match_lora_float")})
EXPECT.update({k: ("ValueError",) for k in (
    "stored_lora_huge", "stored_tokens_narrow", "batch_with_a_wrong_width", "add_prefix_pod_empty",
    "add_prefix_hash_too_big", "match_2d_tokens", "match_prefix_negative_token")})


def _rejected(call: Callable[[Any], Any], backend: Any) -> Dict[str, Any]:
    t = _full_table(backend)
    before = (t.snapshot(), t.stats())
    try:
        call(t)
    except Exception as exc:  # the parent judges the type
        raised = type(exc).__name__
        message = str(exc)
    else:
        return {"raised": None, "message": "the call was accepted"}
    after = (t.snapshot(), t.stats())
    out: Dict[str, Any] = {"raised": raised, "message": message, "unchanged": after == before}
    if after != before:
        out["diff"] = {"contexts_before": sorted(map(str, before[0])), "contexts_after": sorted(map(str, after[0])),
                       "stats_changed": {k: (before[1][k], after[1][k]) for k in before[1]
                                         if before[1][k] != after[1].get(k)}}
    # The next new context must evict "c0", the least recently used one before the rejected call.
    t.process_block_stored(stored([9], [9], "p", model="probe"))
    out["evicted"] = sorted({"c0", "c1", "c2"} - {k[0] for k in t.snapshot()})
    return out


ITEMS: Dict[str, Callable[[Any], Any]] = {k: functools.partial(_rejected, v) for k, v in CALLS.items()}
