"""The snapshot state of the pure-Python table (docs/snapshot.md, "The state of a table").

The fallback's twin of the compiled core's ``_table_state.pxi``: ``SyncPrefixHashTable._export_state``
and ``_from_state`` of ``_core_py`` call these. The format itself lives in ``_snapshot.py``; this is the
contract both backends implement, so that their snapshots are byte-identical. Both make a million small
objects at once: the cyclic collector, which would scan the growing heap again and again (and could run
finalizers inside the lock), is paused meanwhile.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ._core_py import _Context, _PodState, _Prefix
from ._snapshot_bounds import held_by_pod

__all__ = ["context_from_state", "export_state", "from_state"]


def export_state(table: Any) -> Dict[str, Any]:
    """The canonical state of docs/snapshot.md ("The state of a table"). The lock is held only while
    copying; ordering and conversion to arrays happen after it is released, so matches and events
    wait no longer than the copy (issue 12, Deliver 2)."""
    now = table._clock()  # the caller's callbacks run before the lock is taken (SPEC 7)
    collecting = gc.isenabled()
    gc.disable()
    try:
        with table._lock:
            counters = dict(table._counters)
            copied = [(key, ctx.last_access,
                       [(e.tick, p, tuple(e.pods)) for p, e in ctx.prefixes.items()],
                       {name: (ps.last_seen, ps.engine.copy()) for name, ps in ctx.pods.items()})
                      for key, ctx in table._contexts.items()]
    finally:
        if collecting:
            gc.enable()
    contexts = []
    for (model, lora), last_access, prefixes, pods in copied:
        prefixes.sort()  # by tick, oldest first (D4): ticks are unique, so the order is exact
        names = sorted(pods)
        index = {name: i for i, name in enumerate(names)}
        entry_pods: List[int] = []
        for _, _, holders in prefixes:
            if len(holders) == 1:
                entry_pods.append(index[holders[0]])
            else:
                entry_pods.extend(sorted(map(index.__getitem__, holders)))
        engine = []
        for name in names:
            mapping = pods[name][1]
            keys = np.fromiter(mapping.keys(), np.uint64, len(mapping))
            values = np.fromiter(mapping.values(), np.uint64, len(mapping))
            order = np.argsort(keys)
            engine.append((keys[order], values[order]))
        contexts.append({
            "model": model, "lora": lora, "idle": now - last_access,
            "prefixes": np.array([p for _, p, _ in prefixes], dtype=np.uint64),
            "pods": names,
            "pod_idle": np.array([now - pods[name][0] for name in names], dtype=np.float64),
            "entry_pod_counts": np.array([len(h) for _, _, h in prefixes], dtype=np.uint32),
            "entry_pods": np.array(entry_pods, dtype=np.uint32),
            "engine": engine,
        })
    return {"config": table.config, "counters": counters, "contexts": contexts}


def from_state(cls: Any, state: Dict[str, Any], clock: Optional[Callable[[], float]],
               background_eviction: bool, config: Any) -> Any:
    """A table holding exactly ``state`` (as checked by _snapshot.py): ticks 0..n-1 in the given
    order, contexts in the given recency order, idle times continued on this table's clock."""
    table = cls(config, clock=clock, background_eviction=background_eviction)
    now = table._clock()
    collecting = gc.isenabled()
    gc.disable()
    try:
        with table._lock:
            for c in state["contexts"]:
                table._contexts[(c["model"], c["lora"])] = context_from_state(c, now)
            table._counters.update(state["counters"])
    finally:
        if collecting:
            gc.enable()
    return table


def context_from_state(c: Dict[str, Any], now: float) -> _Context:
    """One context of an exported state as the fallback's structures (from_state)."""
    ctx = _Context(now - c["idle"])
    names: List[str] = c["pods"]
    entry_pods = c["entry_pods"]
    holders = [names[i] for i in entry_pods.tolist()]
    pos = 0
    new = object.__new__
    for tick, (p, k) in enumerate(zip(c["prefixes"].tolist(), c["entry_pod_counts"].tolist())):
        entry = ctx.prefixes[p] = new(_Prefix)
        entry.tick = tick
        entry.pods = set(holders[pos:pos + k])
        pos += k
    ctx.next_tick = len(ctx.prefixes)
    by_pod = held_by_pod(c["prefixes"], c["entry_pod_counts"], entry_pods, len(names))
    for i, (name, idle, (keys, values)) in enumerate(zip(names, c["pod_idle"].tolist(), c["engine"])):
        ps = ctx.pods[name] = _PodState(now - idle)
        ps.held = set(by_pod[i].tolist())
        ps.engine = dict(zip(keys.tolist(), values.tolist()))
    return ctx
