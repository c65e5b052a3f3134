"""Bad and edge inputs (SPEC Terms, Public API, Semantics 8; decisions D1, D11).

Every rejected call is checked for the exception type, a message naming what was wrong, and that the
table's snapshot and stats (counters included) are exactly as before.
"""

from __future__ import annotations

import numpy as np
import pytest

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored, encode_tokens
from helpers import U64, chain, ctx, id_bytes, removed, stored, toks

GOOD_TOKENS = toks(1, 2)          # two blocks of 4 token ids
GOOD_HASHES = [11, 12]


@pytest.fixture
def table(make_table):
    """A table holding some state in two contexts, so that "unchanged" means something."""
    t = make_table()
    t.process_block_stored(stored([1, 2, 3], [1, 2, 3], "A"))
    t.process_block_stored(stored([1, 2], [1, 2], "B"))
    t.process_block_stored(stored([7], [7], "A", model="n", lora=3))
    t.process_block_stored(stored([9], [9], "B", parent=4242))  # an orphan
    t.process_block_removed(removed([3], "A"))
    t.match_prefix("m", -1, toks(1, 2, 3))
    t.add_prefix("m", -1, "C", [5, 6])
    t.process_all_blocks_cleared(AllBlocksCleared("nobody"))
    return t


def rejected(table, exc, match, fn, *args, **kwargs):
    snap, stats = table.snapshot(), table.stats()
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    assert table.snapshot() == snap
    assert table.stats() == stats


# --- event constructors --------------------------------------------------------------------------------------

BAD_HASHES = [
    (TypeError, "block_hashes", [1.0, 2.0]),
    (TypeError, "block_hashes", [1, True]),
    (TypeError, "block_hashes", [1, "2"]),
    (ValueError, r"block_hashes\[0\] as bytes must hold at least 8 bytes", [b"ab", 2]),
    (TypeError, "block_hashes", [bytearray(8), 2]),
    (TypeError, "block_hashes", [1, None]),
    (TypeError, "block_hashes", "12"),
    (TypeError, "block_hashes", b"\x01\x02"),
    (TypeError, "block_hashes", 12),
    (TypeError, "block_hashes", None),
    # in no order a chain could mean (a hostile-input search after issue 8)
    (TypeError, "block_hashes must be a sequence of ints, not set", {1, 2}),
    (TypeError, "block_hashes must be a sequence of ints, not dict", {1: 0, 2: 0}),
    (TypeError, "block_hashes", np.array([1.0, 2.0])),
    (TypeError, "block_hashes", np.array([True, False])),
    (ValueError, "block_hashes", [1, 2**64]),
    (ValueError, "block_hashes", [-(2**63) - 1, 2]),
    (ValueError, "block_hashes", [2**70, 2]),
    (ValueError, "block_hashes", np.array([[1, 2]], dtype=np.uint64)),
]


@pytest.mark.parametrize("exc, what, hashes", BAD_HASHES)
def test_block_hashes_rejected(exc, what, hashes):
    with pytest.raises(exc, match=what):
        BlockStored(hashes, GOOD_TOKENS, "m", -1, "A")
    with pytest.raises(exc, match=what):
        BlockRemoved(hashes, "m", -1, "A")


BAD_TOKENS = [
    (TypeError, "tokens", "abcdefgh"),
    (TypeError, "tokens", 8),
    (TypeError, "tokens", None),
    (TypeError, "tokens", [1.0] * 8),
    (TypeError, "tokens", [1, 2, 3, 4, 5, 6, 7, True]),
    (TypeError, "tokens", np.arange(8, dtype=np.float64)),
    (TypeError, "tokens", np.arange(8, dtype=np.float32).reshape(2, 4)),
    (TypeError, "tokens", np.ones(8, dtype=bool)),
    (TypeError, "tokens", np.array(list(range(8)), dtype=object)),
    (TypeError, "tokens", [[1, 2, 3, 4], "abcd"]),
    (TypeError, "tokens", [[1, 2, 3, 4], 5]),
    (TypeError, "tokens", [[1, 2, 3, 4], [1.0, 2, 3, 4]]),
    (ValueError, "token ids", [0, 1, 2, 3, 4, 5, 6, -1]),
    (ValueError, "token ids", [0, 1, 2, 3, 4, 5, 6, 2**32]),
    (ValueError, "token ids", [0, 1, 2, 3, 4, 5, 6, 2**70]),
    (ValueError, "token ids", np.array([0, 1, 2, 3, 4, 5, 6, -1], dtype=np.int32)),
    (ValueError, "token ids", np.array([0, 1, 2, 3, 4, 5, 6, 2**32], dtype=np.uint64)),
    (ValueError, "token ids", np.array([[0, 1, 2, 3], [4, 5, 6, -7]], dtype=np.int64)),
    (ValueError, "token ids", [[1, 2, 3, 4], [1, 2, 3, -4]]),
    (ValueError, "2-D|shape", np.zeros((2, 2, 2), dtype=np.int64)),
    (ValueError, "2-D|shape", np.zeros((2, 2, 16), dtype=np.uint8)),
    (ValueError, "rows", np.zeros((3, 16), dtype=np.uint8)),
    (ValueError, "blocks", [[1, 2, 3, 4]] * 3),
    (ValueError, "differ", [[1, 2, 3, 4], [1, 2, 3]]),
    (TypeError, "tokens must be token bytes or token ids, not set", set(range(8))),
    (TypeError, "tokens must be token bytes or token ids, not frozenset", frozenset(range(8))),
]


@pytest.mark.parametrize("exc, what, tokens", BAD_TOKENS)
def test_block_stored_tokens_rejected(exc, what, tokens):
    with pytest.raises(exc, match=what):
        BlockStored(GOOD_HASHES, tokens, "m", -1, "A")


@pytest.mark.parametrize("tokens", [list(range(7)), np.arange(10, dtype=np.int64), bytes(32),
                                    np.zeros(40, dtype=np.uint8)])
def test_tokens_not_dividing_into_blocks_rejected(tokens):
    with pytest.raises(ValueError, match="divide"):
        BlockStored([1, 2, 3], tokens, "m", -1, "A")


def test_no_hashes_but_tokens_rejected():
    with pytest.raises(ValueError, match="no block hashes"):
        BlockStored([], [1, 2, 3, 4], "m", -1, "A")


@pytest.mark.parametrize("kwargs, exc, what", [
    (dict(model_name=5), TypeError, "model_name"),
    (dict(model_name=None), TypeError, "model_name"),
    (dict(model_name=b"m"), TypeError, "model_name"),
    (dict(lora_id=True), TypeError, "lora_id"),
    (dict(lora_id=1.0), TypeError, "lora_id"),
    (dict(lora_id="1"), TypeError, "lora_id"),
    (dict(lora_id=None), TypeError, "lora_id"),
    (dict(lora_id=np.bool_(True)), TypeError, "lora_id"),
    (dict(lora_id=2**63), ValueError, "lora_id"),
    (dict(lora_id=-(2**63) - 1), ValueError, "lora_id"),
    (dict(source_pod=5), TypeError, "source_pod"),
    (dict(source_pod=None), TypeError, "source_pod"),
    (dict(source_pod=["A"]), TypeError, "source_pod"),
])
def test_event_identifiers_rejected(kwargs, exc, what):
    base = dict(model_name="m", lora_id=-1, source_pod="A")
    with pytest.raises(exc, match=what):
        BlockStored(GOOD_HASHES, GOOD_TOKENS, **{**base, **kwargs})
    with pytest.raises(exc, match=what):
        BlockRemoved(GOOD_HASHES, **{**base, **kwargs})


@pytest.mark.parametrize("parent, exc", [
    (1.5, TypeError), (True, TypeError), ("1", TypeError), (b"1", ValueError), ([1], TypeError),
    (bytearray(8), TypeError),
    (2**64, ValueError), (-(2**63) - 1, ValueError),
])
def test_parent_block_hash_rejected(parent, exc):
    with pytest.raises(exc, match="parent_block_hash"):
        BlockStored(GOOD_HASHES, GOOD_TOKENS, "m", -1, "A", parent)


@pytest.mark.parametrize("args, exc, what", [
    ((None,), TypeError, "source_pod"),
    ((5,), TypeError, "source_pod"),
    (("A", 5), TypeError, "model_name"),
    (("A", b"m"), TypeError, "model_name"),
    (("A", "m", True), TypeError, "lora_id"),
    (("A", "m", 1.0), TypeError, "lora_id"),
    (("A", None, "1"), TypeError, "lora_id"),
    (("A", "m", 2**63), ValueError, "lora_id"),
])
def test_all_blocks_cleared_rejected(args, exc, what):
    with pytest.raises(exc, match=what):
        AllBlocksCleared(*args)


# --- process_* ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, event, what", [
    ("process_block_stored", BlockRemoved([1], "m", -1, "A"), "BlockStored"),
    ("process_block_stored", AllBlocksCleared("A"), "BlockStored"),
    ("process_block_stored", None, "BlockStored"),
    ("process_block_stored", {"block_hashes": [1]}, "BlockStored"),
    ("process_block_removed", BlockStored([1], toks(1), "m", -1, "A"), "BlockRemoved"),
    ("process_block_removed", [1], "BlockRemoved"),
    ("process_all_blocks_cleared", BlockRemoved([1], "m", -1, "A"), "AllBlocksCleared"),
    ("process_all_blocks_cleared", "A", "AllBlocksCleared"),
])
def test_wrong_event_type(table, method, event, what):
    rejected(table, TypeError, what, getattr(table, method), event)


@pytest.mark.parametrize("tokens", [
    list(range(24)),                          # 2 blocks of 12 ids: too wide
    list(range(4)),                           # 2 blocks of 2 ids: too narrow
    np.zeros((2, 32), dtype=np.uint8),        # 2 blocks of 8 tokens, as token bytes
    bytes(12),                                # 2 blocks of 6 bytes: not even whole tokens
    [bytes(20), bytes(20)],                   # per-block token bytes, 5 tokens each
    [list(range(8)), list(range(8))],         # per-block token ids, 8 each
    list(range(7)),                           # 3.5 tokens a block
])
def test_block_width_checked_at_process_time(table, tokens):
    event = BlockStored([1, 2], tokens, "m", -1, "A")    # the event cannot know the block size
    rejected(table, ValueError, "block_size", table.process_block_stored, event)
    # a fresh pod and a new context change nothing either (no pod state, no context, no eviction)
    rejected(table, ValueError, "block_size", table.process_block_stored,
             BlockStored([1, 2], tokens, "new-model", -1, "Z"))


def test_block_width_checked_even_for_an_orphan(table):
    event = BlockStored([1], list(range(8)), "m", -1, "A", parent_block_hash=99999)
    rejected(table, ValueError, "block_size", table.process_block_stored, event)


# --- queries ----------------------------------------------------------------------------------------------

BAD_QUERY_TOKENS = [
    (TypeError, "tokens", "abcd" * 4),
    (TypeError, "tokens", None),
    (TypeError, "tokens", 16),
    (TypeError, "tokens", 1.5),
    (TypeError, "tokens", [1.0, 2, 3, 4]),
    (TypeError, "tokens", [1, 2, 3, None]),
    (TypeError, "tokens", [1, 2, 3, True]),
    # a set or a mapping has no order a prompt could mean: it was hashed in whatever order it iterated
    (TypeError, "tokens must be token bytes or token ids, not set", {1, 2, 3, 4}),
    (TypeError, "tokens must be token bytes or token ids, not dict_keys", dict.fromkeys([1, 2, 3, 4]).keys()),
    (TypeError, "tokens must be token bytes or token ids, not dict", dict.fromkeys([1, 2, 3, 4])),
    (TypeError, "dtype", np.arange(8, dtype=np.float64)),
    (TypeError, "dtype", np.ones(8, dtype=bool)),
    (TypeError, "dtype", np.array(list(range(8)), dtype=object)),
    (ValueError, "one-dimensional", np.zeros((2, 4), dtype=np.int64)),
    (ValueError, "one-dimensional", np.zeros((2, 16), dtype=np.uint8)),
    (ValueError, "one-dimensional", np.zeros((1, 1, 4), dtype=np.int32)),
    (ValueError, r"2\*\*32", [1, 2, 3, -1]),
    (ValueError, r"2\*\*32", [1, 2, 3, 2**32]),
    (ValueError, r"2\*\*32", [1, 2, 3, 2**64]),
    (ValueError, r"2\*\*32", np.array([1, 2, 3, -1], dtype=np.int16)),
    (ValueError, r"2\*\*32", np.array([1, 2, 3, 2**40], dtype=np.uint64)),
]


@pytest.mark.parametrize("exc, what, tokens", BAD_QUERY_TOKENS)
@pytest.mark.parametrize("method", ["match_prefix", "match_blocks", "get_prefix_hashes"])
def test_query_tokens_rejected(table, method, exc, what, tokens):
    fn = getattr(table, method)
    args = (tokens,) if method == "get_prefix_hashes" else ("m", -1, tokens)
    rejected(table, exc, what, fn, *args)


@pytest.mark.parametrize("model, lora, exc, what", [
    (5, -1, TypeError, "model_name"),
    (None, -1, TypeError, "model_name"),
    (b"m", -1, TypeError, "model_name"),
    ("m", True, TypeError, "lora_id"),
    ("m", 1.0, TypeError, "lora_id"),
    ("m", None, TypeError, "lora_id"),
    ("m", "-1", TypeError, "lora_id"),
    ("m", 2**63, ValueError, "lora_id"),
])
@pytest.mark.parametrize("method", ["match_prefix", "match_blocks"])
def test_query_identifiers_rejected(table, method, model, lora, exc, what):
    rejected(table, exc, what, getattr(table, method), model, lora, toks(1, 2))


@pytest.mark.parametrize("ready", ["A", "", b"A", bytearray(b"A"), 5, 1.5, [1], ["A", None], ("A", b"B"),
                                   {"A", 3}, [["A"]]])
@pytest.mark.parametrize("method", ["match_prefix", "match_blocks"])
def test_ready_pods_rejected(table, method, ready):
    rejected(table, TypeError, "ready_pods", getattr(table, method), "m", -1, toks(1, 2), ready_pods=ready)


@pytest.mark.parametrize("args, exc, what", [
    ((5, -1, "A", [1]), TypeError, "model_name"),
    (("m", True, "A", [1]), TypeError, "lora_id"),
    (("m", 2**63, "A", [1]), ValueError, "lora_id"),
    (("m", -1, None, [1]), TypeError, "pod"),
    (("m", -1, 5, [1]), TypeError, "pod"),
    (("m", -1, "A", "12"), TypeError, "prefix_hashes"),
    (("m", -1, "A", 12), TypeError, "prefix_hashes"),
    (("m", -1, "A", [1, 2.0]), TypeError, "prefix_hashes"),
    (("m", -1, "A", [1, False]), TypeError, "prefix_hashes"),
    (("m", -1, "A", np.array([1.0])), TypeError, "prefix_hashes"),
    (("m", -1, "A", [1, 2**64]), ValueError, "prefix_hashes"),
    (("m", -1, "A", [1, -(2**63) - 1]), ValueError, "prefix_hashes"),
    (("m", -1, "A", np.zeros((1, 2), dtype=np.uint64)), ValueError, "prefix_hashes"),
])
def test_add_prefix_rejected(table, args, exc, what):
    rejected(table, exc, what, table.add_prefix, *args)


@pytest.mark.parametrize("args, exc, what", [
    ((5, -1, "A"), TypeError, "model_name"),
    (("m", False, "A"), TypeError, "lora_id"),
    (("m", 0.0, "A"), TypeError, "lora_id"),
    (("m", -(2**63) - 1, "A"), ValueError, "lora_id"),
    (("m", -1, None), TypeError, "pod"),
    (("m", -1, b"A"), TypeError, "pod"),
])
def test_remove_prefix_rejected(table, args, exc, what):
    rejected(table, exc, what, table.remove_prefix, *args)


@pytest.mark.parametrize("ids, exc, what", [
    ("abc", TypeError, "token ids"),
    (b"abc", TypeError, "token ids"),
    (5, TypeError, "token ids"),
    ([1, 2.0], TypeError, "token ids"),
    ([1, None], TypeError, "token ids"),
    (np.array([1.0, 2.0]), TypeError, "dtype"),
    (np.zeros((2, 2), dtype=np.int64), ValueError, "one-dimensional"),
    ([1, -1], ValueError, r"2\*\*32"),
    ([1, 2**32], ValueError, r"2\*\*32"),
    (np.array([-5], dtype=np.int8), ValueError, r"2\*\*32"),
])
def test_encode_tokens_rejected(ids, exc, what):
    with pytest.raises(exc, match=what):
        encode_tokens(ids)


# --- accepted edge inputs ------------------------------------------------------------------------------------

def test_minus_one_and_max_u64_are_the_same_block(make_table):
    t = make_table()
    t.process_block_stored(BlockStored([-1], toks(1), "m", -1, "A"))
    t.process_block_stored(BlockStored([2], toks(2), "m", -1, "A", parent_block_hash=U64 - 1))
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 2}
    t.process_block_stored(BlockStored(np.array([-(2**63)], dtype=np.int64), toks(3), "m", -1, "A",
                                       parent_block_hash=np.uint64(2)))
    t.process_block_stored(BlockStored([4], toks(4), "m", -1, "A", parent_block_hash=2**63))
    assert t.match_blocks("m", -1, toks(1, 2, 3, 4)) == {"A": 4}
    t.process_block_removed(BlockRemoved(np.array([U64 - 1], dtype=np.uint64), "m", -1, "A"))
    assert chain(1)[0] not in ctx(t)
    assert t.stats()["blocks_removed"] == 1 and t.stats()["orphan_blocks"] == 0
    t.add_prefix("m", -1, "B", [-1, np.int64(-2)])
    assert ctx(t)[U64 - 1] == frozenset({"B"}) and ctx(t)[U64 - 2] == frozenset({"B"})


def test_hash_edges_of_the_range_accepted(make_table):
    t = make_table()
    t.process_block_stored(BlockStored([-(2**63), U64 - 1], toks(1, 2), "m", -1, "A"))
    t.process_block_removed(BlockRemoved([2**63], "m", -1, "A"))   # -2**63 modulo 2**64
    assert t.match_blocks("m", -1, toks(1, 2)) == {}
    assert set(ctx(t)) == {chain(1, 2)[1]}


def test_numpy_integer_scalars_accepted(make_table):
    t = make_table()
    t.process_block_stored(BlockStored([np.uint64(1), np.int32(2)], [np.int32(v) for v in toks(1, 2)],
                                       "m", np.int64(3), "A"))
    t.process_block_stored(BlockStored(np.array([3], dtype=np.uint16), toks(3), "m", np.int8(3), "A",
                                       parent_block_hash=np.int16(2)))
    assert t.match_blocks("m", np.int16(3), toks(1, 2, 3)) == {"A": 3}
    assert t.match_prefix("m", np.uint8(3), np.array(toks(1, 2, 3), dtype=np.uint32))[0] == {"A": 100}
    t.add_prefix("m", np.int32(3), "B", np.array(chain(1), dtype=np.uint64))
    t.process_block_removed(BlockRemoved([np.uint64(3)], "m", np.int64(3), "A"))
    assert t.match_blocks("m", 3, toks(1, 2, 3)) == {"A": 2, "B": 1}
    t.remove_prefix("m", np.int64(3), "B")
    t.process_all_blocks_cleared(AllBlocksCleared("A", "m", np.int32(3)))
    assert t.snapshot() == {}


def test_lora_id_range_edges_accepted(make_table):
    t = make_table()
    for lora in (-(2**63), 2**63 - 1, 0, -1):
        t.process_block_stored(stored([1], [1], "A", lora=lora))
        assert t.match_blocks("m", lora, toks(1)) == {"A": 1}
    assert set(t.snapshot()) == {("m", -(2**63)), ("m", 2**63 - 1), ("m", 0), ("m", -1)}


def test_event_hash_and_token_containers(make_table):
    t = make_table()
    t.process_block_stored(BlockStored((1, 2), tuple(toks(1, 2)), "m", -1, "A"))
    t.process_block_stored(BlockStored(iter([3]), iter(toks(3)), "m", -1, "A", 2))
    t.process_block_removed(BlockRemoved(range(3, 4), "m", -1, "A"))
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 2}
    t.add_prefix("m", -1, "B", (h for h in chain(1, 2)))
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 2, "B": 2}


def test_max_token_id_accepted(make_table):
    t = make_table(block_size=2)
    ids = [2**32 - 1, 0, 2**31, 2**32 - 2]
    t.process_block_stored(BlockStored([1, 2], ids, "m", -1, "A"))
    t.process_block_stored(BlockStored([5, 6], np.array(ids, dtype=np.uint64), "m", -1, "B"))
    assert t.match_blocks("m", -1, np.array(ids, dtype=">u4")) == {"A": 2, "B": 2}
    assert t.get_prefix_hashes(ids).tolist() == t.get_prefix_hashes(id_bytes(ids)).tolist()


# --- a rejected call changes nothing that time or limits could show either (D11) ---------------------------

def test_rejected_event_does_not_refresh_the_pod(make_table, clock):
    t = make_table(eviction_duration_minutes=1)
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([2], [2], "B"))
    clock.advance(50)
    with pytest.raises(ValueError, match="block_size"):
        t.process_block_stored(BlockStored([5], list(range(8)), "m", -1, "A"))   # 8 tokens, not 4
    t.process_block_stored(stored([3], [3], "B"))                                 # keeps the context
    clock.advance(20)
    assert t.evict_now() == {"contexts": 0, "pods": 1}
    assert set().union(*ctx(t).values()) == {"B"}


def test_rejected_match_does_not_use_the_context(make_table, clock):
    t = make_table(eviction_duration_minutes=1, max_contexts=2)
    t.process_block_stored(stored([1], [1], "A"))
    t.process_block_stored(stored([1], [1], "A", lora=2))
    clock.advance(50)
    for bad in (dict(ready_pods="A"), dict(tokens=np.zeros((2, 4), dtype=np.int64)), dict(tokens=[-1] * 4)):
        kwargs = {"tokens": toks(1), **bad}
        with pytest.raises((TypeError, ValueError)):
            t.match_prefix("m", -1, kwargs.pop("tokens"), **kwargs)
    # ("m", -1) is still the least recently used context
    t.process_block_stored(stored([1], [1], "A", lora=3))
    assert set(t.snapshot()) == {("m", 2), ("m", 3)}
    assert t.stats()["matches"] == 0


def test_rejected_event_into_a_new_context_evicts_nothing(make_table):
    t = make_table(max_contexts=1)
    t.process_block_stored(stored([1], [1], "A"))
    snap, stats = t.snapshot(), t.stats()
    with pytest.raises(ValueError, match="block_size"):
        t.process_block_stored(BlockStored([1, 2], bytes(64), "new", -1, "A"))
    with pytest.raises(ValueError, match="prefix_hashes"):
        t.add_prefix("new", -1, "A", [1, 2**64])
    assert t.snapshot() == snap and t.stats() == stats


# ---------------------------------------------------------------------------------------------------
# a query inside another query's Python code (the compiled core converts a short query's ids into one
# buffer of the table, held until that query is done: a query that comes in meanwhile needs its own)


@pytest.mark.parametrize("form", ["list", "int64", "int32"])
def test_a_query_run_by_another_querys_ready_pods_leaves_both_answers_right(make_table, form):
    t = make_table()
    t.process_block_stored(stored([1, 2, 3, 4], [1, 2, 3, 4], "A"))
    t.process_block_stored(stored([5, 6, 7], [5, 6, 7], "B"))

    def as_form(ids):
        return ids if form == "list" else np.array(ids, dtype=form)

    outer_ids, inner_ids = toks(1, 2, 3, 4), toks(5, 6, 7)
    want_outer = t.match_prefix("m", -1, as_form(outer_ids))
    want_inner = t.match_prefix("m", -1, as_form(inner_ids))
    inner_answers = []

    def ready():
        # runs after the outer query's ids were converted, before its walk: a second query (of other
        # ids, so other bytes) in between must neither see nor overwrite the outer one's bytes
        inner_answers.append(t.match_prefix("m", -1, as_form(inner_ids), ["A", "B"]))
        inner_answers.append(t.match_blocks("m", -1, as_form(inner_ids)))
        yield "A"
        yield "B"

    outer = t.match_prefix("m", -1, as_form(outer_ids), ready())
    assert outer[0] == want_outer[0] == {"A": 100}
    assert outer[1].tolist() == want_outer[1].tolist()
    assert inner_answers[0][0] == want_inner[0] == {"B": 100}
    assert inner_answers[0][1].tolist() == want_inner[1].tolist()
    assert inner_answers[1] == {"B": 3}
    # and the table's buffer is free again: the next query gives the same answer as the first time
    again = t.match_prefix("m", -1, as_form(outer_ids))
    assert again[0] == want_outer[0] and again[1].tolist() == want_outer[1].tolist()


def test_a_query_whose_ready_pods_raise_frees_the_buffer_for_the_next(make_table):
    t = make_table()
    t.process_block_stored(stored([1, 2], [1, 2], "A"))

    def broken():
        raise ValueError("no pods today")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="no pods today"):
        t.match_prefix("m", -1, toks(1, 2), broken())
    first = t.match_prefix("m", -1, toks(1, 2))
    assert first[0] == {"A": 100}
    assert t.match_prefix("m", -1, toks(3, 4))[0] == {}
    assert t.match_prefix("m", -1, toks(1, 2))[1].tolist() == first[1].tolist()
