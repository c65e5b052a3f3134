"""Configuration of a SyncPrefixHashTable, shared by both backends.

The fields, environment variables and defaults are those of AIBrix's Go indexer (SPEC, Configuration).
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
from typing import Any, Mapping, NamedTuple, Optional

__all__ = ["COUNTER_KEYS", "Config", "ENV_VARS", "REINIT_MESSAGE", "STAT_KEYS", "TableSettings", "UNBUILT_MESSAGE",
           "resolve_config", "table_settings"]

# The keys of SyncPrefixHashTable.stats(), in order, for both backends: four sizes, then running totals.
STAT_KEYS = (
    "contexts", "prefixes", "entries", "pods",
    "events_block_stored", "events_block_removed", "events_all_blocks_cleared",
    "blocks_stored", "blocks_removed", "orphan_blocks", "matches",
    "evicted_contexts", "evicted_pods", "evicted_prefixes",
)
COUNTER_KEYS = STAT_KEYS[4:]

# The errors of a table's lifecycle, the same on both backends (D14).
REINIT_MESSAGE = ("SyncPrefixHashTable.__init__ was called on a table that is already built; "
                  "make a new table instead")
UNBUILT_MESSAGE = "this SyncPrefixHashTable was never initialised (SyncPrefixHashTable.__new__ without __init__)"
REENTERED_MESSAGE = ("the table was re-entered from Python code that ran during one of its own calls (a finalizer, "
                     "a __hash__ or __eq__): that call cannot be served")

# field name -> environment variable, in the order of the SPEC table
ENV_VARS = {
    "max_contexts": "AIBRIX_SYNC_MAX_CONTEXTS",
    "max_prefixes_per_context": "AIBRIX_SYNC_MAX_PREFIXES_PER_CONTEXT",
    "eviction_interval_seconds": "AIBRIX_SYNC_EVICTION_INTERVAL_SECONDS",
    "eviction_duration_minutes": "AIBRIX_SYNC_EVICTION_DURATION_MINUTES",
    "block_size": "AIBRIX_PREFIX_CACHE_BLOCK_SIZE",
    "seed": "AIBRIX_SYNC_HASH_SEED",
}

_INT_FIELDS = ("max_contexts", "max_prefixes_per_context", "block_size")
_FLOAT_FIELDS = ("eviction_interval_seconds", "eviction_duration_minutes")
# Upper bounds (docs/decisions.md, D13): every value validation accepts builds a working table on both
# backends. A block of 2**24 tokens is 64 MiB of token bytes; 2**32 contexts or prefixes per context is
# far past any memory; a wait of 2**31 s (68 years) is the longest threading.Event.wait takes everywhere.
_MAXIMA = {"max_contexts": 2**32, "max_prefixes_per_context": 2**32, "block_size": 2**24,
           "eviction_interval_seconds": 2**31}


def _name(field: str, from_env: bool) -> str:
    # Errors name the variable the user actually set: the env var when it came from the environment.
    return f"{ENV_VARS[field]} (Config.{field})" if from_env else f"Config.{field} ({ENV_VARS[field]})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Config:
    """Limits, timings and hashing parameters of one table.

    ``seed=None`` means "draw a random 64-bit seed for each table", as AIBrix does; the table's
    ``config`` attribute then holds the seed it drew.
    """

    max_contexts: int = 1000
    max_prefixes_per_context: int = 10000
    eviction_interval_seconds: float = 60.0
    eviction_duration_minutes: float = 20.0
    block_size: int = 16
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        _validate({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, from_env=False)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "Config":
        """Read the AIBRIX_* variables; keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        unknown = set(overrides) - set(ENV_VARS)
        if unknown:
            raise TypeError(f"Config has no field(s) {', '.join(sorted(unknown))}")
        values = {field: _parse_env(field, var, env[var])
                  for field, var in ENV_VARS.items() if field not in overrides and var in env}
        _validate(values, from_env=True)  # so that the error names the environment variable
        values.update(overrides)
        return cls(**values)

    def with_seed(self) -> "Config":
        """This config with a concrete seed (a random one when seed is None)."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbits(64))


def resolve_config(config: Optional[Config], overrides: Mapping[str, Any]) -> Config:
    """The configuration a table runs with (D10): the environment's when ``config`` is None, with
    ``overrides`` applied either way, and a concrete seed."""
    if config is None:
        config = Config.from_env(**overrides)
    elif not isinstance(config, Config):
        raise TypeError(f"config must be a prefixindex.Config, not {type(config).__name__}")
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return config.with_seed()


def _validate(values: Mapping[str, Any], from_env: bool) -> None:
    for field, value in values.items():
        if field in _INT_FIELDS:
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{_name(field, from_env)} must be a positive integer, got {value!r}")
        elif field in _FLOAT_FIELDS:
            try:
                ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value > 0
            except OverflowError:  # an int past any float: isfinite converts it first (the tables would too)
                raise ValueError(f"{_name(field, from_env)} must be a positive number that a float holds, "
                                 f"got an int of {int.bit_length(value)} bits") from None
            if not ok:
                raise ValueError(f"{_name(field, from_env)} must be a positive number, got {value!r}")
        elif value is not None and (not _is_int(value) or not 0 <= value < 2**64):
            raise ValueError(f"{_name(field, from_env)} must be an integer in [0, 2**64), got {value!r}")
        limit = _MAXIMA.get(field)
        if limit is not None and value > limit:
            raise ValueError(f"{_name(field, from_env)} must be at most {limit:,}, got {value!r}")


class TableSettings(NamedTuple):
    """What a table runs with, read once from its Config and checked whatever the Config's class."""

    max_contexts: int
    max_prefixes: int
    interval: float
    stale_after: float  # seconds
    block_size: int
    seed: int


def table_settings(config: Config) -> TableSettings:
    """The checked values of a resolved config. A Config subclass may skip __post_init__, so the table
    validates what it uses itself (issue: a block_size of 0 must be a ValueError, never a SIGFPE)."""
    values = {f: getattr(config, f) for f in ENV_VARS}
    if values["seed"] is None:
        raise ValueError("Config.seed must be resolved to an integer before a table uses it")
    _validate(values, from_env=False)
    return TableSettings(int(values["max_contexts"]), int(values["max_prefixes_per_context"]),
                         float(values["eviction_interval_seconds"]), float(values["eviction_duration_minutes"]) * 60.0,
                         int(values["block_size"]), int(values["seed"]))


def _parse_env(field: str, var: str, raw: str) -> Any:
    text = raw.strip()
    try:
        return float(text) if field in _FLOAT_FIELDS else int(text, 10)
    except ValueError:
        kind = "a positive number" if field in _FLOAT_FIELDS else (
            "an integer in [0, 2**64)" if field == "seed" else "a positive integer")
        raise ValueError(f"{var} (Config.{field}) must be {kind}, got {raw!r}") from None
