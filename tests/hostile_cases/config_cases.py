"""Configurations (issue 8: "Configs that skip validation"; Deliver 4).

ITEMS build a table from a config that skipped validation (a Config subclass whose ``__post_init__``
does nothing, or one built with ``object.__new__`` + ``object.__setattr__``), from a public Config at a
documented bound, or one past it. An item returns "built" after using the table (a store and a match),
or raises; EXPECT says what is right: a ValueError whose message names the field, or a working table.
Documented bounds: block_size <= 2**24, max_contexts <= 2**32, max_prefixes_per_context <= 2**32,
eviction_interval_seconds <= 2**31, eviction_duration_minutes finite.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import Config, FakeClock, chain, stored, toks

FIELDS = ("max_contexts", "max_prefixes_per_context", "eviction_interval_seconds", "eviction_duration_minutes",
          "block_size", "seed")
VALID: Dict[str, Any] = {"max_contexts": 10, "max_prefixes_per_context": 100, "eviction_interval_seconds": 60.0,
         "eviction_duration_minutes": 20.0, "block_size": 4, "seed": 0}
BOUNDS = {"block_size": 2**24, "max_contexts": 2**32, "max_prefixes_per_context": 2**32,
          "eviction_interval_seconds": 2**31}


class UnvalidatedConfig(Config):
    def __post_init__(self) -> None:  # skips Config's validation
        pass


def _raw_config(values: Dict[str, Any]) -> Config:
    config = object.__new__(Config)
    for field, value in values.items():
        object.__setattr__(config, field, value)
    return config


def _use(table: Any) -> str:
    """Exercise the table: the crash of a bad value shows on the first store or match, not in __init__."""
    try:
        bs = table.block_size
        if bs == 4:
            table.process_block_stored(stored([3], [0], "p", model="other"))
            table.process_block_stored(stored([1, 2], [0, 1], "p"))
            got = table.match_blocks("m", -1, toks(0, 1, 2))
            # a bound of one prefix per context keeps block 0 (the newest tick, D4) or nothing
            assert got == {"p": 2} if table.config.max_prefixes_per_context >= 2 else got in ({"p": 1}, {}), got
            assert table.get_prefix_hashes(toks(0, 1)).tolist() == chain(0, 1, seed=table.seed)
        else:
            table.match_blocks("m", -1, list(range(8)))
        table.evict_now()
        table.stats()
    finally:
        table.close()
    return "built"


def _unvalidated(how: str, field: str, value: Any, backend: Any) -> str:
    values = dict(VALID, **{field: value})
    if how == "subclass":
        config: Config = UnvalidatedConfig(**values)
        return _use(backend.SyncPrefixHashTable(config, clock=FakeClock(), background_eviction=True))
    if how == "raw":
        return _use(backend.SyncPrefixHashTable(_raw_config(values), clock=FakeClock(), background_eviction=True))
    # how == "override": a valid unvalidated config, the bad value given as a keyword override
    config = UnvalidatedConfig(**VALID)
    return _use(backend.SyncPrefixHashTable(config, clock=FakeClock(), background_eviction=True, **{field: value}))


def _public(how: str, field: str, value: Any, backend: Any) -> str:
    values = dict(VALID, **{field: value})
    if how == "config":
        return _use(backend.SyncPrefixHashTable(Config(**values), clock=FakeClock(), background_eviction=True))
    return _use(backend.SyncPrefixHashTable(clock=FakeClock(), background_eviction=True, **values))


BAD: Dict[str, Tuple[Any, ...]] = {
    "block_size": (0, -1, 1.5, float("nan"), True, "16", None, 2**24 + 1, 2**31, 2**64, 2**100),
    "max_contexts": (0, -3, 2.5, float("nan"), None, 2**32 + 1, 2**64, 2**100),
    "max_prefixes_per_context": (0, -3, 2.5, float("nan"), None, 2**32 + 1, 2**64, 2**100),
    "eviction_interval_seconds": (0, -1.0, float("nan"), float("inf"), "60", None, 2**31 + 1, 2**100),
    "eviction_duration_minutes": (0, -1.0, float("nan"), float("inf"), float("-inf"), "20", None),
    "seed": (-1, 2**64, 1.5, "0"),
}

ITEMS: Dict[str, Callable[[Any], Any]] = {}
EXPECT: Dict[str, str] = {}  # item -> "ValueError:<field>" or "built"
for _field, _values in BAD.items():
    for _value in _values:
        for _how in ("subclass", "raw", "override"):
            _id = f"{_how}_{_field}={_value!r}"
            ITEMS[_id] = functools.partial(_unvalidated, _how, _field, _value)
            EXPECT[_id] = f"ValueError:{_field}"
for _field, _bound in BOUNDS.items():
    for _how in ("config", "keywords"):
        ITEMS[f"{_how}_{_field}_at_bound"] = functools.partial(_public, _how, _field, _bound)
        EXPECT[f"{_how}_{_field}_at_bound"] = "built"
        ITEMS[f"{_how}_{_field}_past_bound"] = functools.partial(_public, _how, _field, _bound + 1)
        EXPECT[f"{_how}_{_field}_past_bound"] = f"ValueError:{_field}"
for _how in ("config", "keywords"):
    for _name, _field, _value in (("huge_finite_duration", "eviction_duration_minutes", 1e300),
                                  ("tiny_interval", "eviction_interval_seconds", 1e-3),
                                  ("one_context", "max_contexts", 1), ("one_prefix", "max_prefixes_per_context", 1),
                                  ("max_seed", "seed", 2**64 - 1)):
        ITEMS[f"{_how}_{_name}"] = functools.partial(_public, _how, _field, _value)
        EXPECT[f"{_how}_{_name}"] = "built"
    ITEMS[f"{_how}_infinite_duration"] = functools.partial(_public, _how, "eviction_duration_minutes", float("inf"))
    EXPECT[f"{_how}_infinite_duration"] = "ValueError:eviction_duration_minutes"


def _eviction_threads() -> int:
    return sum(1 for th in threading.enumerate() if th.name == "prefixindex-eviction" and th.is_alive())


def init_again_on_a_live_table(backend: Any) -> None:
    """__init__ on a live table is a RuntimeError; it changes nothing and starts no second thread."""
    base = _eviction_threads()
    t = backend.SyncPrefixHashTable(seed=0, block_size=4, clock=FakeClock(), eviction_interval_seconds=0.05)
    assert _eviction_threads() == base + 1
    t.process_block_stored(stored([1, 2], [0, 1], "p"))
    before = (t.snapshot(), t.stats(), t.config)
    for args, kwargs in (((), {}), ((), {"block_size": 8}), ((Config(block_size=2, seed=1),), {}),
                         ((), {"background_eviction": True, "eviction_interval_seconds": 0.01}),
                         ((), {"max_contexts": 0})):
        try:
            t.__init__(*args, **kwargs)
        except RuntimeError:
            pass
        else:
            raise AssertionError(f"__init__{args, kwargs} on a live table did not raise RuntimeError")
        assert (t.snapshot(), t.stats(), t.config) == before, "a refused __init__ changed the table"
        assert t.block_size == 4 and t.seed == 0
        assert _eviction_threads() == base + 1, f"{_eviction_threads() - base} eviction threads"
    assert t.match_blocks("m", -1, toks(0, 1)) == {"p": 2}
    t.close()
    assert _eviction_threads() == base


def _init_from_clock(catch: bool) -> Callable[[Any], None]:
    def run(backend: Any) -> None:
        seen: List[Optional[RuntimeError]] = []
        armed = [False]
        holder: Dict[str, Any] = {}

        def clock() -> float:
            if armed[0]:
                armed[0] = False
                try:
                    holder["t"].__init__(block_size=8, max_contexts=1)
                except RuntimeError as exc:
                    seen.append(exc)
                    if not catch:
                        raise
                else:
                    seen.append(None)
            return 1000.0

        base = _eviction_threads()
        t = holder["t"] = backend.SyncPrefixHashTable(seed=0, block_size=4, clock=clock,
                                                      eviction_interval_seconds=3600)
        t.process_block_stored(stored([1, 2], [0, 1], "p"))
        for call in (lambda: t.match_blocks("m", -1, toks(0, 1)),
                     lambda: t.process_block_stored(stored([3], [2], "p", parent=2)),
                     lambda: t.add_prefix("other", 3, "q", chain(0)), lambda: t.evict_now()):
            armed[0] = True
            try:
                call()  # type: ignore[no-untyped-call]  # (a tuple of lambdas)
            except RuntimeError:
                assert not catch, "the clock caught the RuntimeError, yet the call raised one"
        assert seen and all(isinstance(e, RuntimeError) for e in seen), f"__init__ from the clock gave {seen}"
        assert t.block_size == 4 and t.config.max_contexts != 1
        assert _eviction_threads() == base + 1, f"{_eviction_threads() - base} eviction threads"
        got = t.match_blocks("m", -1, toks(0, 1, 2))
        assert got in ({"p": 3}, {"p": 2}), got
        t.close()
    return run


init_again_from_the_clock_caught = _init_from_clock(True)
init_again_from_the_clock_uncaught = _init_from_clock(False)


def table_never_initialised(backend: Any) -> None:
    """A table made by __new__ alone: each call raises (never crashes), and __init__ then still works."""
    cls = backend.SyncPrefixHashTable
    t = cls.__new__(cls)
    for call in (lambda: t.process_block_stored(stored([1], [0], "p")), lambda: t.match_blocks("m", -1, toks(0)),
                 lambda: t.get_prefix_hashes(toks(0)), lambda: t.add_prefix("m", -1, "p", [1]),
                 lambda: t.stats(), lambda: t.snapshot(), lambda: t.evict_now(), lambda: t.close()):
        try:
            call()  # type: ignore[no-untyped-call]  # (a tuple of lambdas)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            pass
    try:
        t.__init__(seed=0, block_size=4, background_eviction=False)
    except RuntimeError:
        return  # refusing a late __init__ is fine too
    t.process_block_stored(stored([1], [0], "p"))
    assert t.match_blocks("m", -1, toks(0)) == {"p": 1}


_ = dataclasses  # (Config is a frozen dataclass: the subclass above inherits its generated __init__)
