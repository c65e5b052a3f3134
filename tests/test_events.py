"""Events and natural inputs (SPEC, Terms and Public API): construction, immutability, names, bytes hashes,
source_pod, and the exact errors for odd elements whichever converter ran.

Table tests run on both backends (the ``make_table`` fixture). The converters that _events uses are the
compiled ones unless PREFIXINDEX_NO_EXTENSIONS=1; the errors must not depend on that (the fast path only
ever hands odd input on to the careful one).
"""

from __future__ import annotations

import array
import copy
import enum
import pickle
import re

import numpy as np
import pytest

from prefixindex import AllBlocksCleared, BlockRemoved, BlockStored, encode_tokens
from prefixindex._events import check_pod, check_str, hash_array, query_token_bytes
from helpers import chain, ctx, id_bytes, toks


class Pod(str, enum.Enum):
    A = "pod-a"
    B = "pod-b"


class Model(str, enum.Enum):
    LLAMA = "llama"


def ev_stored(**kw):
    args = dict(block_hashes=[11, 12], tokens=toks(1, 2), model_name="m", lora_id=-1, source_pod="A",
                parent_block_hash=None)
    args.update(kw)
    return BlockStored(**args)


# --- construction from every natural form ------------------------------------------------------------------

TOKEN_FORMS = {
    "list": lambda ids: list(ids),
    "tuple": lambda ids: tuple(ids),
    "array.array q": lambda ids: array.array("q", ids),
    "array.array I": lambda ids: array.array("I", ids),
    "int64": lambda ids: np.array(ids, dtype=np.int64),
    ">u2 strided": lambda ids: np.repeat(np.array(ids, dtype=">u2"), 2)[::2],
    "int32 reversed twice": lambda ids: np.array(ids[::-1], dtype=np.int32)[::-1],
    "uint64": lambda ids: np.array(ids, dtype=np.uint64),
    "2-D int16": lambda ids: np.array(ids, dtype=np.int16).reshape(2, -1),
    "token bytes": lambda ids: id_bytes(ids),
    "2-D token bytes": lambda ids: np.frombuffer(id_bytes(ids), dtype=np.uint8).reshape(2, -1),
    "list of blocks": lambda ids: [list(ids[:4]), list(ids[4:])],
    "numpy scalars": lambda ids: [np.int64(v) for v in ids],
}


@pytest.mark.parametrize("form", sorted(TOKEN_FORMS))
def test_event_tokens_in_every_form(form):
    ids = toks(1, 2)
    event = ev_stored(tokens=TOKEN_FORMS[form](ids))
    assert event.tokens.dtype == np.uint8 and event.tokens.shape == (2, 16) and event.tokens.flags.c_contiguous
    assert event.tokens.tobytes() == id_bytes(ids)


@pytest.mark.parametrize("form", sorted(set(TOKEN_FORMS) - {"2-D int16", "2-D token bytes", "list of blocks"}))
def test_query_tokens_in_every_form(make_table, form):
    t = make_table()
    t.process_block_stored(ev_stored())
    ids = toks(1, 2)
    query = TOKEN_FORMS[form](ids)
    assert bytes(query_token_bytes(query)) == id_bytes(ids)
    assert t.match_blocks("m", -1, query) == {"A": 2}
    pods, hashes = t.match_prefix("m", -1, query)
    assert pods == {"A": 100} and hashes.tolist() == chain(1, 2)
    assert t.get_prefix_hashes(query).tolist() == chain(1, 2)


@pytest.mark.parametrize("form", ["list", "tuple", "array.array q", "int64", ">u2 strided", "numpy scalars"])
def test_encode_tokens_in_every_form(form):
    out = encode_tokens(TOKEN_FORMS[form](toks(1, 2)))
    assert type(out) is np.ndarray and out.dtype == np.uint8 and out.tobytes() == id_bytes(toks(1, 2))


def test_encode_tokens_takes_uint8_arrays_as_ids():
    assert encode_tokens(np.array([1, 255], dtype=np.uint8)).tobytes() == id_bytes([1, 255])


# --- exact errors for odd elements (the careful path's messages, whichever converter ran) ---------------

ODD_TOKEN_LISTS = [
    ([1, 2, True], TypeError, "tokens: token ids must be ints, got bool at index 2"),
    ([True, 2, 3], TypeError, "tokens: token ids must be ints, got bool at index 0"),
    ([1, 2.0, 3], TypeError, "tokens: token ids must be ints, got float at index 1"),
    ([1, "2", 3], TypeError, "tokens: token ids must be ints, got str at index 1"),
    ([1, None], TypeError, "tokens: token ids must be ints, got NoneType at index 1"),
    ([1, np.bool_(True)], TypeError, "tokens: token ids must be ints, got bool at index 1"),
    ([1, 2, -1], ValueError, "tokens: token ids must be in [0, 2**32), got -1"),
    ([2**32, 2], ValueError, "tokens: token ids must be in [0, 2**32), got 4294967296"),
    ([1, 2**70], ValueError, "tokens: token ids must be in [0, 2**32), got 1180591620717411303424"),
    ([1, -(2**70)], ValueError, "tokens: token ids must be in [0, 2**32), got -1180591620717411303424"),
]


@pytest.mark.parametrize("seq, exc, message", ODD_TOKEN_LISTS)
def test_query_errors_are_exact(make_table, seq, exc, message):
    t = make_table()
    for form in (seq, tuple(seq)):
        for call in (lambda q: t.match_blocks("m", -1, q), lambda q: t.match_prefix("m", -1, q),
                     t.get_prefix_hashes, query_token_bytes):
            with pytest.raises(exc, match="^" + re.escape(message) + "$"):
                call(form)


@pytest.mark.parametrize("seq, exc, message", ODD_TOKEN_LISTS)
def test_encode_tokens_errors_are_exact(seq, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message.replace("tokens:", "token ids:")) + "$"):
        encode_tokens(seq)


@pytest.mark.parametrize("seq, exc, message", ODD_TOKEN_LISTS)
def test_event_token_errors_are_exact(seq, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        BlockStored([1], seq + [0] * (4 - len(seq) % 4), "m", -1, "A")


@pytest.mark.parametrize("arr, message", [
    (np.array([1, -1, 2], dtype=np.int64), "tokens: token ids must be in [0, 2**32), got -1"),
    (np.array([1, 2**32, 2], dtype=">u8"), "tokens: token ids must be in [0, 2**32), got 4294967296"),
    (array.array("q", [1, -5]), "tokens: token ids must be in [0, 2**32), got -5"),
])
def test_array_errors_are_exact(make_table, arr, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        make_table().match_blocks("m", -1, arr)


@pytest.mark.parametrize("hashes, exc, message", [
    ([1, True], TypeError, "block_hashes[1] must be an int, not bool"),
    ([1.5, 2], TypeError, "block_hashes[0] must be an int, not float"),
    ([1, bytearray(8)], TypeError, "block_hashes[1] must be an int, not bytearray"),
    ([1, 2**64], ValueError, "block_hashes[1] must be in [-2**63, 2**64), got 18446744073709551616"),
    ([-(2**63) - 1], ValueError, "block_hashes[0] must be in [-2**63, 2**64), got -9223372036854775809"),
    ([1, b"1234567"], ValueError,
     "block_hashes[1] as bytes must hold at least 8 bytes (the last 8 are the hash), got 7"),
])
def test_hash_errors_are_exact(make_table, hashes, exc, message):
    pattern = "^" + re.escape(message) + "$"
    with pytest.raises(exc, match=pattern):
        BlockStored(hashes, toks(*range(len(hashes))), "m", -1, "A")
    with pytest.raises(exc, match=pattern):
        BlockRemoved(hashes, "m", -1, "A")
    with pytest.raises(exc, match=pattern.replace("block_hashes", "prefix_hashes")):
        make_table().add_prefix("m", -1, "A", hashes)


# --- bytes engine hashes (SPEC, Terms) -------------------------------------------------------------------

def test_bytes_hashes_read_as_their_last_8_bytes_big_endian():
    digest = bytes(range(24))  # a 24-byte digest: its last 8 bytes are 16..23
    want = int.from_bytes(bytes(range(16, 24)), "big")
    assert hash_array([digest, b"\x00" * 7 + b"\x05", 7], "h").tolist() == [want, 5, 7]
    assert ev_stored(block_hashes=[digest, 2], parent_block_hash=b"\xff" * 8).parent_block_hash == 2**64 - 1
    assert ev_stored(block_hashes=(digest, 2)).block_hashes.tolist() == [want, 2]
    assert ev_stored(block_hashes=iter([digest, 2])).block_hashes.tolist() == [want, 2]
    assert BlockRemoved([digest], "m").block_hashes.tolist() == [want]
    with pytest.raises(ValueError, match=re.escape("parent_block_hash as bytes must hold at least 8 bytes")):
        ev_stored(parent_block_hash=b"abc")


def test_bytes_hashes_name_the_same_blocks_as_ints(make_table):
    t = make_table()
    h1, h2 = (1).to_bytes(32, "big"), (2**64 - 1).to_bytes(8, "big")
    t.process_block_stored(BlockStored([h1, h2], toks(1, 2), "m", -1, "A"))
    t.process_block_stored(BlockStored([3], toks(3), "m", -1, "A", parent_block_hash=-1))  # -1 == h2
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 3}
    t.process_block_removed(BlockRemoved([2**64 - 1], "m", -1, "A"))
    assert t.match_blocks("m", -1, toks(1, 2, 3)) == {"A": 1}
    t.add_prefix("m", -1, "B", [np.uint64(chain(1)[0]).tobytes()[::-1]])  # the prefix hash, big-endian bytes
    assert ctx(t)[chain(1)[0]] == frozenset({"A", "B"})


# --- immutability, pickle, copy, repr --------------------------------------------------------------------

def all_events():
    return [ev_stored(parent_block_hash=7), ev_stored(block_hashes=[], tokens=[]), BlockRemoved([1, 2], "m", 3, "A"),
            BlockRemoved([], "m"), AllBlocksCleared("A"), AllBlocksCleared("A", "m", 2)]


@pytest.mark.parametrize("event", all_events(), ids=repr)
def test_events_are_immutable(event):
    for name in type(event).__slots__:
        before = getattr(event, name)
        with pytest.raises(AttributeError, match=f"{type(event).__name__} events are immutable: cannot set '{name}'"):
            setattr(event, name, before)
        with pytest.raises(AttributeError, match=f"events are immutable: cannot delete '{name}'"):
            delattr(event, name)
        assert getattr(event, name) is before
    with pytest.raises(AttributeError, match="immutable"):
        event.other = 1
    before = repr(event)
    event.__init__([99], "other", 5, "Z")  # object.__init__: a live event cannot be rebuilt in place
    assert repr(event) == before


def test_subclass_shadowing_a_slot_cannot_redirect_construction():
    class Sneaky(BlockStored):
        __slots__ = ()
        calls = 0

        @property
        def tokens(self):  # a subclass may shadow the name; construction still fills the real slot
            type(self).calls += 1
            return np.zeros((9, 9), dtype=np.uint8)

    event = Sneaky([1, 2], toks(1, 2), "m", -1, "A")
    assert BlockStored.__dict__["tokens"].__get__(event).tobytes() == id_bytes(toks(1, 2))
    assert type(event).__mro__[1] is BlockStored


@pytest.mark.parametrize("event", all_events(), ids=repr)
def test_events_pickle_and_copy(event):
    for other in (pickle.loads(pickle.dumps(event)), copy.copy(event), copy.deepcopy(event)):
        assert type(other) is type(event) and repr(other) == repr(event)
        for name in type(event).__slots__:
            a, b = getattr(event, name), getattr(other, name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            else:
                assert type(a) is type(b) and a == b
        with pytest.raises(AttributeError, match="immutable"):
            setattr(other, type(event).__slots__[0], None)


def test_repr_unchanged():
    assert repr(ev_stored(parent_block_hash=5)) == ("BlockStored(n_blocks=2, bytes_per_block=16, model_name='m', "
                                                   "lora_id=-1, source_pod='A', parent_block_hash=5)")
    assert repr(BlockRemoved([1], "m", 2, "")) == "BlockRemoved(n_blocks=1, model_name='m', lora_id=2, source_pod='')"
    assert repr(AllBlocksCleared("A", None, 3)) == "AllBlocksCleared(source_pod='A', model_name=None, lora_id=3)"


# --- names given as str subclasses ---------------------------------------------------------------------

def test_str_subclass_names_are_stored_as_plain_str():
    events = [ev_stored(model_name=Model.LLAMA, source_pod=Pod.A), BlockRemoved([1], Model.LLAMA, -1, Pod.B),
              AllBlocksCleared(Pod.A, Model.LLAMA)]
    for event in events:
        for name in ("model_name", "source_pod"):
            value = getattr(event, name)
            assert type(value) is str and value in ("llama", "pod-a", "pod-b")
    assert check_str(Pod.A, "pod") == "pod-a" and type(check_str(Pod.A, "pod")) is str
    assert check_pod(Pod.B) == "pod-b" and type(check_pod(Pod.B)) is str


def test_enum_pods_are_the_same_pods_on_the_table(make_table):
    t = make_table()
    t.process_block_stored(ev_stored(source_pod=Pod.A, model_name=Model.LLAMA))
    t.process_block_stored(ev_stored(source_pod="pod-b", model_name="llama"))
    assert t.match_blocks("llama", -1, toks(1, 2)) == {"pod-a": 2, "pod-b": 2}
    assert t.match_blocks(Model.LLAMA, -1, toks(1, 2), ready_pods=[Pod.A]) == {"pod-a": 2}
    result = t.match_blocks("llama", -1, toks(1, 2), ready_pods=(p for p in [Pod.B]))
    assert result == {"pod-b": 2} and all(type(k) is str for k in result)
    t.process_block_removed(BlockRemoved([12], "llama", -1, Pod.A))
    t.process_all_blocks_cleared(AllBlocksCleared(Pod.B, "llama"))
    assert t.match_blocks("llama", -1, toks(1, 2)) == {"pod-a": 1}
    assert all(type(pod) is str for pods in ctx(t, "llama").values() for pod in pods)


# --- source_pod (SPEC, Public API) -----------------------------------------------------------------------

STORED_POD_MESSAGE = ('source_pod must be a non-empty pod name: a block is always stored by some pod, and "" '
                      "means every pod, only in BlockRemoved")
CLEARED_POD_MESSAGE = ('source_pod must be a non-empty pod name: a pod clears its own cache, and "" means every '
                       "pod, only in BlockRemoved")


def test_block_stored_needs_a_pod():
    for make in (lambda: BlockStored([1], toks(1), "m"), lambda: BlockStored([1], toks(1), "m", -1, ""),
                 lambda: BlockStored([1], toks(1), "m", source_pod="")):
        with pytest.raises(ValueError, match="^" + re.escape(STORED_POD_MESSAGE) + "$"):
            make()
    with pytest.raises(TypeError, match="^source_pod must be a str, not NoneType$"):
        BlockStored([1], toks(1), "m", -1, None)


def test_all_blocks_cleared_needs_a_pod():
    with pytest.raises(ValueError, match="^" + re.escape(CLEARED_POD_MESSAGE) + "$"):
        AllBlocksCleared("")
    with pytest.raises(TypeError, match="^source_pod must be a str, not int$"):
        AllBlocksCleared(5)


def test_block_removed_keeps_empty_as_every_pod(make_table):
    assert BlockRemoved([1], "m").source_pod == ""
    t = make_table()
    t.process_block_stored(ev_stored(source_pod="A"))
    t.process_block_stored(ev_stored(source_pod="B"))
    t.process_block_removed(BlockRemoved([12], "m"))
    assert t.match_blocks("m", -1, toks(1, 2)) == {"A": 1, "B": 1}


def test_check_pod():
    assert check_pod("x") == "x"
    with pytest.raises(ValueError, match="^" + re.escape('pod must be a non-empty pod name ("" means every pod only '
                                                         "in BlockRemoved)") + "$"):
        check_pod("")
    with pytest.raises(TypeError, match="^pod must be a str, not bytes$"):
        check_pod(b"x")


# --- the fast converters change nothing but speed ---------------------------------------------------------

def _never(*args):
    return None  # a converter that always hands over: only the careful path runs


def _outcome(fn, *args):
    try:
        out = fn(*args)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    if isinstance(out, (BlockStored, BlockRemoved, AllBlocksCleared)):
        return type(out), tuple(np.asarray(getattr(out, n)).tobytes() if isinstance(getattr(out, n), np.ndarray)
                                else getattr(out, n) for n in type(out).__slots__)
    return type(out), bytes(np.asarray(out).tobytes()), np.asarray(out).shape


INPUTS = [list(range(8)), tuple(range(8)), [1, True] * 4, [1.0] * 8, [0] * 7 + [-1], [0] * 7 + [2**32],
          [np.int64(1)] * 8, [np.int64(-1)] * 8, [0] * 7 + [2**80], [], np.arange(8, dtype=">i2"),
          np.arange(8, dtype=np.int64)[::-1], np.array([1, -1] * 4, dtype=np.int8), np.arange(8, dtype=np.uint8),
          array.array("q", range(8)), array.array("d", [1.0] * 8), bytes(32), bytearray(32), "abcdefgh", None,
          iter(range(8)), [[0, 1, 2, 3], [4, 5, 6, 7]], [bytes(16), bytes(16)], np.zeros((2, 16), dtype=np.uint8)]
HASH_INPUTS = [[1, 2], (1, 2), [-1, 2**64 - 1], [b"\x01" * 8, b"\x02" * 9], [1, b"short"], [True, 2], [1.0, 2],
               [2**64, 1], np.array([1, 2], dtype=np.int64), iter([1, 2]), [np.uint64(1), np.int8(2)], "12", None]


@pytest.mark.parametrize("converters", ["python", "careful only"])
def test_fast_converters_change_nothing_but_speed(monkeypatch, converters):
    from prefixindex import _convert_py, _events

    calls = {
        "query": lambda tokens: _outcome(query_token_bytes, tokens),
        "encode": lambda tokens: _outcome(encode_tokens, tokens),
        "stored": lambda tokens: _outcome(BlockStored, [1, 2], tokens, "m", -1, "A"),
    }
    hash_calls = {
        "hash_array": lambda hashes: _outcome(hash_array, hashes, "h"),
        "stored": lambda hashes: _outcome(BlockStored, hashes, [0] * 8, "m", -1, "A"),
        "removed": lambda hashes: _outcome(BlockRemoved, hashes, "m", -1, "A"),
    }

    def run():
        # inputs are rebuilt each run: an iterator is consumed by its first use
        return ([[fn(copy.copy(x) if not hasattr(x, "__next__") else iter(list(range(8))))
                  for fn in calls.values()] for x in INPUTS],
                [[fn(x if not hasattr(x, "__next__") else iter([1, 2])) for fn in hash_calls.values()]
                 for x in HASH_INPUTS])

    default = run()
    fast = {"python": (_convert_py.token_bytes, _convert_py.token_ids_block_bytes, _convert_py.hashes_u64),
            "careful only": (_never, _never, _never)}[converters]
    for name, fn in zip(("_fast_token_bytes", "_fast_block_bytes", "_fast_hashes"), fast):
        monkeypatch.setattr(_events, name, fn)
    assert run() == default
