"""Configuration (SPEC, Configuration; D10)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from prefixindex import BlockStored, Config
from helpers import U64, chain, ref_chain, id_bytes, toks

ENV = {
    "max_contexts": "AIBRIX_SYNC_MAX_CONTEXTS",
    "max_prefixes_per_context": "AIBRIX_SYNC_MAX_PREFIXES_PER_CONTEXT",
    "eviction_interval_seconds": "AIBRIX_SYNC_EVICTION_INTERVAL_SECONDS",
    "eviction_duration_minutes": "AIBRIX_SYNC_EVICTION_DURATION_MINUTES",
    "block_size": "AIBRIX_PREFIX_CACHE_BLOCK_SIZE",
    "seed": "AIBRIX_SYNC_HASH_SEED",
}
INT_FIELDS = ("max_contexts", "max_prefixes_per_context", "block_size")
FLOAT_FIELDS = ("eviction_interval_seconds", "eviction_duration_minutes")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


def test_defaults():
    c = Config()
    assert (c.max_contexts, c.max_prefixes_per_context, c.eviction_interval_seconds,
            c.eviction_duration_minutes, c.block_size, c.seed) == (1000, 10000, 60, 20, 16, None)
    assert Config.from_env({}) == c
    assert Config.from_env() == c   # the (cleaned) process environment


@pytest.mark.parametrize("field, raw, value", [
    ("max_contexts", "7", 7),
    ("max_contexts", " 12 ", 12),
    ("max_prefixes_per_context", "123", 123),
    ("eviction_interval_seconds", "2.5", 2.5),
    ("eviction_interval_seconds", "0.25", 0.25),
    ("eviction_interval_seconds", "30", 30),
    ("eviction_duration_minutes", "0.5", 0.5),
    ("eviction_duration_minutes", "45", 45),
    ("block_size", "32", 32),
    ("seed", "0", 0),
    ("seed", "12345", 12345),
    ("seed", str(U64 - 1), U64 - 1),
])
def test_from_env_reads_each_variable(field, raw, value):
    c = Config.from_env({ENV[field]: raw})
    assert getattr(c, field) == value
    others = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != field}
    assert others == {k: v for k, v in dataclasses.asdict(Config()).items() if k != field}


def test_from_env_all_together_and_overrides_win():
    env = {ENV["max_contexts"]: "5", ENV["max_prefixes_per_context"]: "50",
           ENV["eviction_interval_seconds"]: "1.5", ENV["eviction_duration_minutes"]: "0.1",
           ENV["block_size"]: "8", ENV["seed"]: "99"}
    c = Config.from_env(env)
    assert dataclasses.asdict(c) == dict(max_contexts=5, max_prefixes_per_context=50,
                                         eviction_interval_seconds=1.5, eviction_duration_minutes=0.1,
                                         block_size=8, seed=99)
    c = Config.from_env(env, max_contexts=9, seed=None, eviction_duration_minutes=3)
    assert (c.max_contexts, c.seed, c.eviction_duration_minutes) == (9, None, 3)
    assert (c.block_size, c.max_prefixes_per_context) == (8, 50)


def test_unrelated_environment_is_ignored():
    assert Config.from_env({"AIBRIX_OTHER": "abc", "PATH": "/bin"}) == Config()


BAD_INTS = ["0", "-1", "-100", "abc", "1.5", "", "1e3", "0x10"]
BAD_FLOATS = ["0", "0.0", "-1", "-0.5", "abc", "", "nan", "NaN", "inf", "-inf"]
BAD_SEEDS = ["-1", str(U64), str(2**70), "abc", "1.5", ""]


def _bad_env_cases():
    for field in INT_FIELDS:
        for raw in BAD_INTS:
            yield field, raw
    for field in FLOAT_FIELDS:
        for raw in BAD_FLOATS:
            yield field, raw
    for raw in BAD_SEEDS:
        yield "seed", raw


@pytest.mark.parametrize("field, raw", list(_bad_env_cases()))
def test_invalid_env_value_names_the_variable(field, raw):
    var = ENV[field]
    with pytest.raises(ValueError, match=var) as info:
        Config.from_env({var: raw})
    msg = str(info.value)
    assert field in msg and msg.index(var) < msg.index(field)   # the variable first (D10)


@pytest.mark.parametrize("field, value", [
    *[(f, v) for f in INT_FIELDS for v in (0, -1, 1.5, 2.0, "5", None, True)],
    *[(f, v) for f in FLOAT_FIELDS for v in (0, 0.0, -1, -0.1, math.nan, math.inf, -math.inf, "5", None, True)],
    *[(f, v) for f in FLOAT_FIELDS for v in (10**400, -10**400)],  # past any float: was an OverflowError
    *[("seed", v) for v in (-1, U64, 2**70, 1.0, "5", True)],
])
def test_invalid_value_names_field_and_variable(field, value):
    with pytest.raises(ValueError, match=field) as info:
        Config(**{field: value})
    assert ENV[field] in str(info.value)
    with pytest.raises(ValueError, match=field):
        Config.from_env({}, **{field: value})


def test_fractional_times_accepted():
    c = Config(eviction_interval_seconds=0.01, eviction_duration_minutes=0.001)
    assert (c.eviction_interval_seconds, c.eviction_duration_minutes) == (0.01, 0.001)
    c = Config(eviction_interval_seconds=3, eviction_duration_minutes=1)
    assert (c.eviction_interval_seconds, c.eviction_duration_minutes) == (3, 1)


def test_valid_edges_accepted():
    c = Config(max_contexts=1, max_prefixes_per_context=1, block_size=1, seed=0)
    assert (c.max_contexts, c.max_prefixes_per_context, c.block_size, c.seed) == (1, 1, 1, 0)
    assert Config(seed=U64 - 1).seed == U64 - 1


def test_unknown_field_is_a_type_error(backend):
    with pytest.raises(TypeError):
        Config(max_context=5)
    with pytest.raises(TypeError, match="max_context"):
        Config.from_env({}, max_context=5)
    with pytest.raises(TypeError):
        backend.SyncPrefixHashTable(max_context=5, background_eviction=False)
    with pytest.raises(TypeError):
        backend.SyncPrefixHashTable(Config(), max_context=5, background_eviction=False)


# --- the table reads its configuration ---------------------------------------------------------------------

def test_table_with_config_and_overrides(backend, monkeypatch):
    monkeypatch.setenv(ENV["max_contexts"], "5")   # a given config does not read the environment
    cfg = Config(max_contexts=3, block_size=2, seed=7, max_prefixes_per_context=40)
    with backend.SyncPrefixHashTable(cfg, background_eviction=False) as t:
        assert t.config == cfg and t.seed == 7
    with backend.SyncPrefixHashTable(cfg, block_size=4, seed=8, background_eviction=False) as t:
        assert dataclasses.asdict(t.config) == {**dataclasses.asdict(cfg), "block_size": 4, "seed": 8}
        assert t.seed == 8
        assert t.get_prefix_hashes(toks(1, 2)).tolist() == chain(1, 2, seed=8)
    with pytest.raises(ValueError, match="block_size"):
        backend.SyncPrefixHashTable(cfg, block_size=0, background_eviction=False)
    with pytest.raises(TypeError, match="config"):
        backend.SyncPrefixHashTable({"max_contexts": 3}, background_eviction=False)


def test_table_reads_the_environment(backend, monkeypatch):
    monkeypatch.setenv(ENV["max_contexts"], "2")
    monkeypatch.setenv(ENV["block_size"], "2")
    monkeypatch.setenv(ENV["seed"], "4242")
    monkeypatch.setenv(ENV["max_prefixes_per_context"], "8")
    with backend.SyncPrefixHashTable(background_eviction=False) as t:
        assert (t.config.max_contexts, t.config.block_size, t.config.seed, t.seed) == (2, 2, 4242, 4242)
        ids = list(range(9))
        assert t.get_prefix_hashes(ids).tolist() == ref_chain(id_bytes(ids), 8, 4242)  # 4 blocks of 2
        # the limits act
        for lora in range(3):
            t.process_block_stored(BlockStored([1], [1, 2], "m", lora, "A"))
        assert set(t.snapshot()) == {("m", 1), ("m", 2)}
        t.process_block_stored(BlockStored(list(range(10)), list(range(20)), "m", 2, "A"))
        assert len(t.snapshot()[("m", 2)]) == 6
    # keyword arguments win over the environment
    with backend.SyncPrefixHashTable(max_contexts=3, seed=1, background_eviction=False) as t:
        assert (t.config.max_contexts, t.config.block_size, t.seed) == (3, 2, 1)


def test_table_rejects_a_bad_environment(backend, monkeypatch):
    monkeypatch.setenv(ENV["max_prefixes_per_context"], "lots")
    with pytest.raises(ValueError, match=ENV["max_prefixes_per_context"]):
        backend.SyncPrefixHashTable(background_eviction=False)
    monkeypatch.setenv(ENV["max_prefixes_per_context"], "100")
    monkeypatch.setenv(ENV["eviction_duration_minutes"], "inf")
    with pytest.raises(ValueError, match=ENV["eviction_duration_minutes"]):
        backend.SyncPrefixHashTable(background_eviction=False)


def test_table_without_seed_draws_one(backend, monkeypatch):
    with backend.SyncPrefixHashTable(background_eviction=False) as a, \
            backend.SyncPrefixHashTable(background_eviction=False) as b:
        assert a.seed != b.seed
        assert a.config.seed == a.seed and 0 <= a.seed < U64
    monkeypatch.setenv(ENV["seed"], str(a.seed))
    with backend.SyncPrefixHashTable(background_eviction=False) as c:
        assert c.seed == a.seed
        assert c.get_prefix_hashes(toks(3, block_size=16)).tolist() == chain(3, seed=a.seed, block_size=16)
