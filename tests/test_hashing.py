"""The prefix hash chain (SPEC, "The prefix hash chain") and the token encodings (SPEC Terms, D1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixindex import BlockStored, encode_tokens
from helpers import U64, chain, id_bytes, ref_chain, stored, toks

HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- SPEC test vectors -------------------------------------------------------------------------------

def test_vector_bytes_seed_0(make_table):
    t = make_table(seed=0, block_size=4)
    got = t.get_prefix_hashes(bytes(range(64)))
    assert got.dtype == np.uint64
    assert got.tolist() == [11344027220848036247, 18003942762009276101, 14324276475049219208,
                            10343039462069839574]


def test_vector_bytes_seed_12345(make_table):
    t = make_table(seed=12345, block_size=4)
    assert t.get_prefix_hashes(bytes(range(64))).tolist() == [
        6083364958448685401, 6227983788108009764, 12622932646954752131, 17988495296683065305]


def test_vector_token_ids_block_size_16(make_table):
    t = make_table(seed=0, block_size=16)
    expected = [13063670922251535405, 15794143472128267642]
    assert t.get_prefix_hashes(list(range(32))).tolist() == expected
    assert t.get_prefix_hashes(np.arange(32, dtype=np.int64)).tolist() == expected
    assert t.get_prefix_hashes(encode_tokens(list(range(32)))).tolist() == expected


def test_reference_chain_reproduces_vectors():
    # the independent computation the other tests rely on agrees with SPEC
    assert ref_chain(bytes(range(64)), 16, 0)[0] == 11344027220848036247
    assert ref_chain(bytes(range(64)), 16, 12345)[3] == 17988495296683065305
    assert ref_chain(id_bytes(range(32)), 64, 0) == [13063670922251535405, 15794143472128267642]


# --- the chain against an independent xxhash computation ------------------------------------------------

@HYP
@given(data=st.binary(max_size=300), block_size=st.sampled_from([1, 2, 3, 4, 16]),
       seed=st.one_of(st.sampled_from([0, 1, 2**63, U64 - 1]), st.integers(0, U64 - 1)))
def test_chain_matches_xxhash_for_random_bytes(make_table, data, block_size, seed):
    t = make_table(seed=seed, block_size=block_size)
    expected = ref_chain(data, 4 * block_size, seed)
    assert len(expected) == len(data) // (4 * block_size)  # trailing partial block (any length) ignored
    assert t.get_prefix_hashes(data).tolist() == expected
    assert t.get_prefix_hashes(bytearray(data)).tolist() == expected
    assert t.get_prefix_hashes(memoryview(data)).tolist() == expected
    assert t.get_prefix_hashes(np.frombuffer(data, dtype=np.uint8)).tolist() == expected


@HYP
@given(ids=st.lists(st.integers(0, 2**32 - 1), max_size=70), block_size=st.sampled_from([1, 3, 4, 8]),
       seed=st.integers(0, U64 - 1))
def test_chain_matches_xxhash_for_random_token_ids(make_table, ids, block_size, seed):
    t = make_table(seed=seed, block_size=block_size)
    expected = ref_chain(id_bytes(ids), 4 * block_size, seed)
    assert len(expected) == len(ids) // block_size
    assert t.get_prefix_hashes(ids).tolist() == expected
    assert t.get_prefix_hashes(np.array(ids, dtype=np.uint32)).tolist() == expected


@pytest.mark.parametrize("extra_bytes", [0, 1, 2, 3, 5, 15])
def test_trailing_partial_block_ignored_byte_lengths(make_table, extra_bytes):
    t = make_table(seed=7, block_size=4)
    data = bytes((i * 37) % 256 for i in range(32 + extra_bytes))
    assert t.get_prefix_hashes(data).tolist() == ref_chain(data[:32], 16, 7)
    assert len(t.get_prefix_hashes(data)) == 2


def test_short_query_has_no_hashes(make_table):
    t = make_table()
    for q in (b"", b"\x00" * 15, [1, 2, 3], [], np.zeros(0, dtype=np.int64)):
        out = t.get_prefix_hashes(q)
        assert out.dtype == np.uint64 and out.shape == (0,)


# --- token id encodings ---------------------------------------------------------------------------------

def test_encode_tokens_spec_example():
    out = encode_tokens([1, 2])
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.tobytes() == bytes([0, 0, 0, 1, 0, 0, 0, 2])


def test_encode_tokens_big_ids_and_dtypes():
    ids = [0, 1, 255, 256, 65535, 2**31, 2**32 - 1]
    expected = id_bytes(ids)
    assert encode_tokens(ids).tobytes() == expected
    assert encode_tokens(np.array(ids, dtype=np.uint64)).tobytes() == expected
    assert encode_tokens(np.array(ids, dtype=">u4")).tobytes() == expected
    assert encode_tokens(np.array(ids, dtype=np.int64)).tobytes() == expected
    assert encode_tokens(np.array([7, 8], dtype=np.uint8)).tobytes() == id_bytes([7, 8])  # ids, not bytes


def _id_forms(ids):
    base = np.array(ids, dtype=np.int64)
    wide = np.zeros(2 * len(ids), dtype=np.int64)
    wide[::2] = ids
    ro = np.array(ids, dtype=np.uint32)
    ro.setflags(write=False)
    return {
        "list": list(ids),
        "tuple": tuple(ids),
        "int32": base.astype(np.int32),
        "int64": base,
        "uint16": base.astype(np.uint16),
        "uint32": base.astype(np.uint32),
        "uint64": base.astype(np.uint64),
        "big-endian u4": base.astype(">u4"),
        "big-endian i8": base.astype(">i8"),
        "little-endian i4": base.astype("<i4"),
        "strided": wide[::2],
        "reversed view": base[::-1].copy()[::-1],
        "read-only": ro,
    }


def test_token_id_forms_hash_alike(make_table):
    ids = [(i * 2654435761) % 60000 for i in range(23)]  # fits uint16; 5 blocks + 3 trailing tokens
    t = make_table(seed=99, block_size=4)
    expected = ref_chain(id_bytes(ids), 16, 99)
    assert len(expected) == 5
    assert t.get_prefix_hashes(encode_tokens(ids)).tolist() == expected
    assert t.get_prefix_hashes(encode_tokens(ids).tobytes()).tolist() == expected
    for name, form in _id_forms(ids).items():
        assert t.get_prefix_hashes(form).tolist() == expected, name
        if not isinstance(form, tuple):
            assert encode_tokens(form).tobytes() == id_bytes(ids), name


def test_uint8_array_is_token_bytes_not_ids(make_table):
    t = make_table(seed=0, block_size=1)
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    as_bytes = np.array(ids, dtype=np.uint8)
    assert t.get_prefix_hashes(as_bytes).tolist() == ref_chain(bytes(ids), 4, 0)
    assert t.get_prefix_hashes(as_bytes.astype(np.uint16)).tolist() == ref_chain(id_bytes(ids), 4, 0)
    assert ref_chain(bytes(ids), 4, 0) != ref_chain(id_bytes(ids), 4, 0)


def test_match_prefix_returns_query_hashes(make_table):
    t = make_table(seed=5)
    q = toks(1, 2, 3) + [9, 9]
    result, hashes = t.match_prefix("m", -1, q)
    assert result == {}
    assert isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64
    assert hashes.tolist() == t.get_prefix_hashes(q).tolist() == chain(1, 2, 3, seed=5)
    # also when the context exists and pods match
    t.process_block_stored(stored([1, 2], [1, 2], "A"))
    result, hashes = t.match_prefix("m", -1, id_bytes(q))
    assert result == {"A": 66}
    assert hashes.tolist() == chain(1, 2, 3, seed=5)


def test_stored_blocks_hash_as_queries(make_table):
    # every token form of an event indexes the same prefix hashes as the query chain
    ids = toks(1, 2, 3)
    forms = {
        "flat ids": ids,
        "flat id array": np.array(ids, dtype=np.int32),
        "2-D id array": np.array(ids, dtype=np.uint32).reshape(3, 4),
        "2-D id array other shape": np.array(ids, dtype=np.int64).reshape(6, 2),
        "2-D bytes": np.frombuffer(id_bytes(ids), dtype=np.uint8).reshape(3, 16),
        "flat bytes": id_bytes(ids),
        "flat uint8 array": np.frombuffer(id_bytes(ids), dtype=np.uint8),
        "per-block bytes": [id_bytes(ids[i:i + 4]) for i in (0, 4, 8)],
        "per-block ids": [ids[i:i + 4] for i in (0, 4, 8)],
        "per-block arrays": [np.array(ids[i:i + 4], dtype=">u8") for i in (0, 4, 8)],
    }
    for name, tokens in forms.items():
        t = make_table(seed=3)
        t.process_block_stored(BlockStored([10, 11, 12], tokens, "m", -1, "A"))
        assert set(t.snapshot()[("m", -1)]) == set(chain(1, 2, 3, seed=3)), name
        assert t.match_blocks("m", -1, ids) == {"A": 3}, name


def test_seeds_change_hashes(make_table):
    q = toks(1, 2, 3, 4)
    seen = set()
    for seed in (0, 1, 2, 12345, 2**63, U64 - 1):
        hs = make_table(seed=seed).get_prefix_hashes(q).tolist()
        assert hs == chain(1, 2, 3, 4, seed=seed)
        seen.update(hs)
    assert len(seen) == 6 * 4


def test_seed_none_draws_a_visible_seed(make_table, backend):
    a = make_table(seed=None)
    b = make_table(seed=None)
    for t in (a, b):
        assert isinstance(t.seed, int) and 0 <= t.seed < U64
        assert t.config.seed == t.seed
    assert a.seed != b.seed  # 64 random bits each
    q = toks(5, 6, 7)
    assert a.get_prefix_hashes(q).tolist() == chain(5, 6, 7, seed=a.seed)
    assert a.get_prefix_hashes(q).tolist() != b.get_prefix_hashes(q).tolist()
    # a second table made with the drawn seed hashes identically
    c = make_table(seed=a.seed)
    assert c.get_prefix_hashes(q).tolist() == a.get_prefix_hashes(q).tolist()
    with backend.SyncPrefixHashTable(a.config, background_eviction=False) as d:
        assert d.seed == a.seed
        assert d.get_prefix_hashes(q).tolist() == a.get_prefix_hashes(q).tolist()
