"""Loading a snapshot under other bounds: the overrides a load takes, and the trims that tighter
bounds make, exactly as a running table would (docs/snapshot.md, "Loading"). ``_snapshot`` calls these.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ._config import Config, _validate

__all__ = ["apply_bounds", "held_by_pod", "resolve_load_config"]

_TABLE_KEYWORDS = ("clock", "background_eviction")
_CONFIG_FIELDS_NAMES = tuple(f.name for f in dataclasses.fields(Config))


def _split_overrides(overrides: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[Config], Dict[str, Any]]:
    """(table keywords, config=, config fields); an unknown keyword is a TypeError and a field's invalid
    value Config's ValueError, both before any I/O (a stream that holds several snapshots, or a socket,
    keeps the snapshot a typo would otherwise have consumed)."""
    rest = dict(overrides)
    table_kw = {k: rest.pop(k) for k in _TABLE_KEYWORDS if k in rest}
    config = rest.pop("config", None)
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a prefixindex.Config, not {type(config).__name__}")
    unknown = sorted(set(rest) - set(_CONFIG_FIELDS_NAMES))
    if unknown:
        raise TypeError(f"load() got unknown keyword(s) {', '.join(unknown)}; it takes clock=, "
                        f"background_eviction=, config= and the Config fields")
    # Config's own per-field check, in field order: the error resolve_load_config's Config would raise
    # after the read (the other fields come from a valid Config). Only a block size or seed that
    # differs from the snapshot's needs the snapshot to be found.
    _validate({k: rest[k] for k in _CONFIG_FIELDS_NAMES if k in rest}, from_env=False)
    return table_kw, config, rest


def resolve_load_config(saved: Config, config: Optional[Config], fields: Mapping[str, Any]) -> Config:
    """The loaded table's configuration: the snapshot's, replaced by ``config`` and then by ``fields``
    (D10's order). A seed of None means "the snapshot's"; a block size or seed that differs from the
    snapshot's is a ValueError, because the saved prefix hashes were computed with them."""
    values: Dict[str, Any] = {"seed": saved.seed} if config is None or config.seed is None else {}
    values.update((k, v) for k, v in fields.items() if not (k == "seed" and v is None))
    # Config validates: a bad value is a ValueError naming the field
    final = dataclasses.replace(saved if config is None else config, **values)
    for field in ("block_size", "seed"):
        if getattr(final, field) != getattr(saved, field):
            raise ValueError(f"load(): {field}={getattr(final, field)!r} differs from the snapshot's "
                             f"{field} ({getattr(saved, field)!r}); the saved prefix hashes depend on it")
    return final


def held_by_pod(prefixes: np.ndarray, counts: np.ndarray, entry_pods: np.ndarray, n_pods: int) -> List[np.ndarray]:
    """The prefix hashes each pod of a context holds, from its entries (one sort: a pass per pod over
    all the entries was quadratic in a context of many pods)."""
    owner = np.repeat(prefixes, counts.astype(np.intp))  # the prefix of each entry
    order = np.argsort(entry_pods, kind="stable")
    bounds = np.cumsum(np.bincount(entry_pods, minlength=n_pods))[:n_pods]
    return np.split(owner[order], bounds[:-1]) if n_pods else []


def _trim_context(c: Dict[str, Any], keep: int) -> Dict[str, Any]:
    """The context after a trim to its ``keep`` newest prefixes, exactly as a store's trim (D4): the
    oldest go with all their pods, pods left with nothing go (D2), and every remaining pod forgets the
    engine hashes whose prefix it no longer holds (D3, memory)."""
    drop = len(c["prefixes"]) - keep
    counts = c["entry_pod_counts"]
    cut = int(counts[:drop].sum(dtype=np.int64))
    prefixes, counts, entry_pods = c["prefixes"][drop:], counts[drop:], c["entry_pods"][cut:]
    used = np.bincount(entry_pods, minlength=len(c["pods"])) > 0
    remap = (np.cumsum(used) - 1).astype(np.uint32)
    by_pod = held_by_pod(prefixes, counts, entry_pods, len(c["pods"]))
    engine = []
    for j in np.flatnonzero(used):
        keys, values = c["engine"][j]
        held = np.isin(values, by_pod[j])
        engine.append((keys[held], values[held]))
    return dict(c, prefixes=prefixes, entry_pod_counts=counts, entry_pods=remap[entry_pods],
                pods=[p for p, u in zip(c["pods"], used) if u], pod_idle=c["pod_idle"][used], engine=engine)


def apply_bounds(state: Dict[str, Any], config: Config) -> Dict[str, Any]:
    """The state within ``config``'s bounds, trimmed as a store would trim it (SPEC 5, D4, D5), the
    evictions counted; a state already within them is returned as is."""
    contexts = state["contexts"]
    counters = dict(state["counters"])
    excess = len(contexts) - config.max_contexts
    if excess > 0:  # the least recently used go first (D5)
        contexts = contexts[excess:]
        counters["evicted_contexts"] += excess
    bound = config.max_prefixes_per_context
    target = bound - bound // 4
    trimmed = []
    for c in contexts:
        if len(c["prefixes"]) > bound:
            counters["evicted_prefixes"] += len(c["prefixes"]) - target
            c = _trim_context(c, target)
        trimmed.append(c)
    return dict(state, contexts=trimmed, counters=counters)
