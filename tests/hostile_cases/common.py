"""What every hostile child shares: building tables and events, and the checks run after an attack.

A child imports its backend module directly (``prefixindex._core`` or ``prefixindex._core_py``), so that
the case runs on exactly that backend whatever the environment says. The checks are those of SPEC 8 and
of issue 8: after any attack the index is consistent (stats agree with the snapshot) and usable (a store
and a match give what a fresh table gives).
"""

from __future__ import annotations

import json
import os
import re
import struct
import random
import sys
import threading
import time
import traceback
from itertools import chain as _iter_chain
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import xxhash

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored, Config

__all__ = [
    "AllBlocksCleared", "BlockRemoved", "BlockStored", "Config", "FakeClock", "REENTRY", "attempt", "chain",
    "check_usable", "consistent", "fail_now", "force", "fork_while_running", "in_fork_child", "make_table", "state",
    "stored", "toks",
]

BS = 4
U64 = 2**64
# SPEC 7: a re-entrant call completes, or raises a RuntimeError "that says why" (issue 8, Deliver 1).
REENTRY = re.compile(r"re-?enter", re.IGNORECASE)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_table(backend: Any, **overrides: Any) -> Any:
    overrides.setdefault("seed", 0)
    overrides.setdefault("block_size", BS)
    overrides.setdefault("clock", FakeClock())
    overrides.setdefault("background_eviction", False)
    return backend.SyncPrefixHashTable(**overrides)


def toks(*ks: int, block_size: int = BS) -> List[int]:
    """Block k holds the token ids k*bs .. k*bs+bs-1."""
    return [k * block_size + j for k in ks for j in range(block_size)]


def chain(*ks: int, seed: int = 0, block_size: int = BS) -> List[int]:
    """The prefix hashes of the blocks ks from the root, straight from SPEC with the xxhash package."""
    data = struct.pack(f">{len(ks) * block_size}I", *toks(*ks, block_size=block_size))
    h, out, width = seed, [], 4 * block_size
    for i in range(len(ks)):
        h = xxhash.xxh64_intdigest(struct.pack("<Q", h) + data[i * width:(i + 1) * width], seed)
        out.append(h)
    return out


def stored(engine: Iterable[int], ks: Iterable[int], pod: str, model: str = "m", lora: int = -1,
           parent: Optional[int] = None) -> BlockStored:
    return BlockStored(list(engine), toks(*ks), model, lora, pod, parent)


def state(table: Any) -> Tuple[Dict[Any, Any], Dict[str, int]]:
    return table.snapshot(), table.stats()


def consistent(table: Any) -> Dict[Any, Any]:
    """Assert that stats() agrees with snapshot() and that every name is an exact str / int.

    Every prefix hash and every pod object of every frozenset is checked, through map() and
    itertools.chain rather than generator expressions: the memory cases check tables of ~2 M entries."""
    snap: Dict[Any, Any] = table.snapshot()
    stats = table.stats()
    n_prefixes = n_entries = 0
    pods_seen: set = set()
    for key, prefixes in snap.items():
        assert type(key[0]) is str and type(key[1]) is int, f"context key {key!r} is not (str, int)"
        assert prefixes, f"empty context {key!r} kept"
        hashes = prefixes.keys()
        if set(map(type, hashes)) != {int} or min(hashes) < 0 or max(hashes) >= U64:
            raise AssertionError(f"prefix hashes {[p for p in hashes if type(p) is not int or not 0 <= p < U64][:5]} "
                                 f"of {key!r} are not exact ints in [0, 2**64)")
        if not all(prefixes.values()):
            raise AssertionError(f"prefixes {[p for p, pods in prefixes.items() if not pods][:5]} of {key!r} "
                                 "have no pods")
        pod_objects = list(_iter_chain.from_iterable(prefixes.values()))  # each frozenset's own objects
        if set(map(type, pod_objects)) != {str}:
            raise AssertionError(f"pods {[pod for pod in pod_objects if type(pod) is not str][:5]!r} of {key!r} "
                                 "are not exact str")
        n_prefixes += len(prefixes)
        n_entries += len(pod_objects)
        pods_seen.update(pod_objects)
    assert stats["contexts"] == len(snap), (stats, len(snap))
    assert stats["prefixes"] == n_prefixes, stats
    assert stats["entries"] == n_entries, stats
    assert stats["pods"] == len(pods_seen), stats
    return snap


def check_usable(table: Any, backend: Any) -> None:
    """A store and a match on the table give what they give on a fresh table with the same seed."""
    consistent(table)
    fresh = backend.SyncPrefixHashTable(seed=table.seed, block_size=table.block_size, background_eviction=False)
    bs = table.block_size
    event = BlockStored([901, 902, 903], toks(50, 51, 52, block_size=bs), "usable-check", 77, "usable-pod")
    query = toks(50, 51, 53, block_size=bs)
    for t in (table, fresh):
        t.process_block_stored(event)
    got = table.match_blocks("usable-check", 77, query)
    assert got == fresh.match_blocks("usable-check", 77, query) == {"usable-pod": 2}, got
    assert table.snapshot()[("usable-check", 77)] == fresh.snapshot()[("usable-check", 77)]
    assert table.get_prefix_hashes(query).tolist() == fresh.get_prefix_hashes(query).tolist()
    consistent(table)


OUTCOMES: Dict[str, int] = {}


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn; a RuntimeError that says the table was re-entered is an accepted outcome (SPEC 7)."""
    try:
        result = fn(*args, **kwargs)
    except RuntimeError as exc:
        if not REENTRY.search(str(exc)):
            raise
        OUTCOMES["reentry-error"] = OUTCOMES.get("reentry-error", 0) + 1
        return None
    OUTCOMES["completed"] = OUTCOMES.get("completed", 0) + 1
    return result


def force(obj: Any, field: str, value: Any) -> bool:
    """Put value into obj.field past any immutability (object.__setattr__, or the slot behind a
    property). False when there is no way in from Python, which closes the attack."""
    try:
        object.__setattr__(obj, field, value)
    except (AttributeError, TypeError):
        current = getattr(obj, field)
        for klass in type(obj).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                descr = klass.__dict__.get(slot)
                if descr is None or not hasattr(descr, "__set__"):
                    continue
                try:
                    if descr.__get__(obj, type(obj)) is current:
                        descr.__set__(obj, value)
                        break
                except AttributeError:
                    continue
            else:
                continue
            break
    try:
        return getattr(obj, field) is value
    except AttributeError:
        return False


def _order(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def to_jsonable(value: Any) -> Any:
    """Outcomes of item children go to the parent as JSON; arrays keep dtype and bytes."""
    if isinstance(value, np.ndarray):
        return {"ndarray": str(value.dtype), "shape": list(value.shape), "hex": value.tobytes().hex()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, dict):
        return {"dict": sorted(([to_jsonable(k), to_jsonable(v)] for k, v in value.items()), key=_order)}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((to_jsonable(v) for v in value), key=_order)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"repr": repr(value)}


def fail_now(message: str) -> None:
    """Fail the child at once: other threads may still be blocked inside the table, so do not wait."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)


def fork_while_running(step: Callable[[], None], child: Callable[[], None], refusal: str, attempts: int,
                       seed: int, gap: Tuple[float, float]) -> Dict[str, int]:
    """fork() `attempts` times, at random gaps, while another thread calls step() in a loop. Each child
    runs child(): it must return (the object works after the fork) or raise a RuntimeError whose message
    holds `refusal` (the object refuses: the other thread may have left it half-changed). A hang, a
    crash or any other error fails this process. Returns how many children did which."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            step()

    def in_child() -> int:
        try:
            child()
        except RuntimeError as exc:
            if refusal in str(exc):
                return 3
            raise
        return 0

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    outcomes = {"works": 0, "refused": 0}
    rng = random.Random(seed)
    try:
        for attempt in range(attempts):
            time.sleep(rng.uniform(*gap))
            code = in_fork_child(in_child, f"child {attempt}")
            assert code in (0, 3), f"fork child {attempt} failed (exit {code}); its traceback is above"
            outcomes["works" if code == 0 else "refused"] += 1
    finally:
        stop.set()
        worker.join(60.0)
    return outcomes


def in_fork_child(child: Callable[[], int], what: str, timeout: float = 20.0) -> int:
    """Run child() in a fork()ed process and return its exit code (its own, or 1 with the traceback of
    what it raised). A child that hangs past `timeout` (it is killed) or dies of a signal fails this
    process (fail_now), naming `what`."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        except BaseException:
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            fail_now(f"FORK CHILD HUNG ({what}): no progress in {timeout:.0f} s (killed)")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        fail_now(f"FORK CHILD CRASHED ({what}): killed by signal {os.WTERMSIG(status)}")
    return os.WEXITSTATUS(status)
