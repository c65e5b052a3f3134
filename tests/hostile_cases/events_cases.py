"""Hostile events (issue 8, "Out-of-bounds reads"; SPEC Public API "Events are immutable", SPEC 8).

Each item builds a table holding a little data, forces a field of an event past its constructor (or uses
a BlockStored subclass whose properties answer differently on each read), hands it to the table, and
reports what happened: "rejected" with the exception type (the index must then be unchanged) or
"applied" (the index must then be consistent). Either way the table must stay usable. EXPECT says which
outcomes the parent accepts: where the arrays in hand disagree (rows != hashes, width != 4*block_size)
only a ValueError is right, on both backends.
"""

from __future__ import annotations

import functools
import itertools
from typing import Tuple, Any, Callable, Dict, List

import numpy as np

from common import (BlockRemoved, BlockStored, AllBlocksCleared, check_usable, consistent, force, make_table,
                    state, stored, toks)

BIG = 1 << 22  # hashes forced into a two-block event: reading that many rows of tokens runs far off the heap


def _table(backend: Any) -> Any:
    t = make_table(backend)
    t.process_block_stored(stored([1, 2], [0, 1], "p"))
    t.process_block_stored(stored([3], [0], "q", model="other"))
    return t


def _run(backend: Any, t: Any, call: Callable[[], Any]) -> str:
    before = state(t)
    try:
        call()
    except (TypeError, ValueError) as exc:
        assert state(t) == before, "a rejected call changed the index"
        result = type(exc).__name__
    else:
        result = "applied"
    consistent(t)
    check_usable(t, backend)
    return result


def _token_rows(n: int, width: int = 16) -> np.ndarray:
    return np.ascontiguousarray(np.arange(n * width, dtype=np.uint32).astype(np.uint8).reshape(n, width))


def _forced_stored(field: str, value: Callable[[], Any], via_batch: bool, backend: Any) -> Dict[str, Any]:
    t = _table(backend)
    ev = stored([10, 11], [2, 3], "p", parent=2)
    if not force(ev, field, value()):
        return {"result": "unforceable"}
    call = (lambda: t.process_events([ev])) if via_batch else (lambda: t.process_block_stored(ev))
    out: Dict[str, Any] = {"result": _run(backend, t, call)}
    if out["result"] == "applied" and field == "tokens":
        # What was applied must be the tokens the event now holds (when they are two blocks of 16 bytes).
        arr = np.asarray(getattr(ev, "tokens"))
        if arr.dtype == np.uint8 and arr.shape == (2, 16):
            ref = _table(backend)
            ref.process_block_stored(BlockStored([10, 11], np.ascontiguousarray(arr), "m", -1, "p", 2))
            out["correct"] = t.snapshot()[("m", -1)] == ref.snapshot()[("m", -1)]
    return out


def _forced_other(kind: str, field: str, value: Callable[[], Any], backend: Any) -> Dict[str, Any]:
    t = _table(backend)
    if kind == "removed":
        ev: Any = BlockRemoved([1, 2], "m", -1, "p")
        call = (lambda: t.process_block_removed(ev))
    else:
        ev = AllBlocksCleared("p", "m", -1)
        call = (lambda: t.process_all_blocks_cleared(ev))
    if not force(ev, field, value()):
        return {"result": "unforceable"}
    return {"result": _run(backend, t, call)}


def _shifty(field_values: Dict[str, List[Callable[[], Any]]], via_batch: bool, backend: Any) -> Dict[str, Any]:
    """A BlockStored subclass whose fields answer from a cycle of values, one step per read."""
    reads = itertools.count()
    values = {f: [make() for make in makes] for f, makes in field_values.items()}
    # What the constructor sees, before the properties start to shift.
    steady = {"tokens": _token_rows(2), "block_hashes": np.array([10, 11], dtype=np.uint64)}
    armed = [False]

    def prop(field: str) -> property:
        def get(self: Any) -> Any:
            if not armed[0]:
                return steady[field]
            vs = values[field]
            return vs[next(reads) % len(vs)]
        return property(get, lambda self, value: None)

    try:
        shifty = type("ShiftyBlockStored", (BlockStored,), {"__slots__": (), **{f: prop(f) for f in values}})
        ev = shifty([10, 11], toks(2, 3), "m", -1, "p", 2)
    except TypeError as exc:  # the event class refuses such subclasses: the attack is closed
        return {"results": [f"refused: {exc}"]}
    t = _table(backend)
    armed[0] = True
    results = []
    for _ in range(6):  # every phase of the cycle against every read of the core
        call = (lambda: t.process_events([ev])) if via_batch else (lambda: t.process_block_stored(ev))
        results.append(_run(backend, t, call))
        next(reads)
    return {"results": results}


def _strided() -> np.ndarray:
    return _token_rows(2, 32)[:, ::2]


def _fortran() -> np.ndarray:
    return np.asfortranarray(_token_rows(2))


def _readonly() -> np.ndarray:
    a = _token_rows(2)
    a.setflags(write=False)
    return a


STORED_FIELDS: Dict[str, Tuple[Any, ...]] = {
    # rows != hashes or width != 4*block_size: a ValueError, nothing else
    "hashes_longer": ("block_hashes", lambda: np.arange(100, 100 + BIG, dtype=np.uint64), "ValueError"),
    "hashes_shorter": ("block_hashes", lambda: np.array([10], dtype=np.uint64), "ValueError"),
    "hashes_empty": ("block_hashes", lambda: np.array([], dtype=np.uint64), "ValueError"),
    "tokens_narrow": ("tokens", lambda: _token_rows(2, 4), "ValueError"),
    "tokens_wide": ("tokens", lambda: _token_rows(2, 64), "ValueError"),
    "tokens_fewer_rows": ("tokens", lambda: _token_rows(1), "ValueError"),
    "tokens_more_rows": ("tokens", lambda: _token_rows(4096), "ValueError"),
    "tokens_no_rows": ("tokens", lambda: _token_rows(0), "ValueError"),
    # other forms: rejected (TypeError/ValueError) or applied as what the event now holds
    "tokens_1d": ("tokens", lambda: _token_rows(2).reshape(-1), "any"),
    "tokens_strided": ("tokens", _strided, "any"),
    "tokens_fortran": ("tokens", _fortran, "any"),
    "tokens_readonly": ("tokens", _readonly, "any"),
    "tokens_int64": ("tokens", lambda: np.arange(32, dtype=np.int64).reshape(2, 16), "any"),
    "tokens_float": ("tokens", lambda: np.zeros((2, 16)), "any"),
    "tokens_3d": ("tokens", lambda: np.zeros((2, 16, 1), dtype=np.uint8), "any"),
    "tokens_bytes": ("tokens", lambda: bytes(32), "any"),
    "tokens_list": ("tokens", lambda: [0] * 32, "any"),
    "tokens_none": ("tokens", lambda: None, "any"),
    "hashes_list": ("block_hashes", lambda: [10, 11], "any"),
    "hashes_2d": ("block_hashes", lambda: np.array([[10], [11]], dtype=np.uint64), "any"),
    "hashes_float": ("block_hashes", lambda: np.array([10.0, 11.0]), "any"),
    "hashes_int8": ("block_hashes", lambda: np.array([10, 11], dtype=np.int8), "any"),
    "hashes_strided": ("block_hashes", lambda: np.arange(4, dtype=np.uint64)[::2], "any"),
    "hashes_none": ("block_hashes", lambda: None, "any"),
    "parent_huge": ("parent_block_hash", lambda: 2**70, "any"),
    "parent_negative": ("parent_block_hash", lambda: -2**70, "any"),
    "parent_str": ("parent_block_hash", lambda: "2", "any"),
    "parent_float": ("parent_block_hash", lambda: 2.0, "any"),
    "source_pod_empty": ("source_pod", lambda: "", "any"),
    "source_pod_none": ("source_pod", lambda: None, "any"),
    "source_pod_bytes": ("source_pod", lambda: b"p", "any"),
    "lora_huge": ("lora_id", lambda: 2**70, "any"),
}

OTHER_FIELDS: Dict[str, Tuple[Any, ...]] = {
    "removed_hashes_longer": ("removed", "block_hashes", lambda: np.arange(BIG, dtype=np.uint64)),
    "removed_hashes_list": ("removed", "block_hashes", lambda: [1, 2]),
    "removed_hashes_2d": ("removed", "block_hashes", lambda: np.array([[1], [2]], dtype=np.uint64)),
    "removed_hashes_float": ("removed", "block_hashes", lambda: np.array([1.0, 2.0])),
    "removed_hashes_none": ("removed", "block_hashes", lambda: None),
    "removed_pod_none": ("removed", "source_pod", lambda: None),
    "removed_model_list": ("removed", "model_name", lambda: ["m"]),
    "removed_lora_float": ("removed", "lora_id", lambda: -1.0),
    "cleared_pod_none": ("cleared", "source_pod", lambda: None),
    "cleared_model_list": ("cleared", "model_name", lambda: ["m"]),
    "cleared_lora_str": ("cleared", "lora_id", lambda: "-1"),
}

SHIFTY: Dict[str, Dict[str, List[Callable[[], Any]]]] = {
    "shifty_tokens_width": {"tokens": [lambda: _token_rows(2), lambda: _token_rows(2, 4)]},
    "shifty_tokens_rows": {"tokens": [lambda: _token_rows(2), lambda: _token_rows(4096)]},
    "shifty_hashes_length": {"block_hashes": [lambda: np.array([10, 11], dtype=np.uint64),
                                              lambda: np.arange(BIG, dtype=np.uint64)]},
    "shifty_both": {"tokens": [lambda: _token_rows(2), lambda: _token_rows(4096), lambda: _token_rows(2)],
                    "block_hashes": [lambda: np.arange(4096, dtype=np.uint64),
                                     lambda: np.array([10, 11], dtype=np.uint64)]},
}

ITEMS: Dict[str, Callable[[Any], Any]] = {}
EXPECT: Dict[str, str] = {}
for _name, (_field, _value, _expect) in STORED_FIELDS.items():
    for _batch in (False, True):
        _id = f"{_name}{'_in_batch' if _batch else ''}"
        ITEMS[_id] = functools.partial(_forced_stored, _field, _value, _batch)
        EXPECT[_id] = _expect
for _name, (_kind, _field, _value) in OTHER_FIELDS.items():
    ITEMS[_name] = functools.partial(_forced_other, _kind, _field, _value)
    EXPECT[_name] = "any"
for _name, _fields in SHIFTY.items():
    for _batch in (False, True):
        _id = f"{_name}{'_in_batch' if _batch else ''}"
        ITEMS[_id] = functools.partial(_shifty, _fields, _batch)
        EXPECT[_id] = "any"
