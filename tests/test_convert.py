"""The fast input converters: prefixindex._convert (compiled) against prefixindex._convert_py and an oracle.

Both converters must give the same answer for every input: the same array (dtype, shape, bytes), the
input itself where it is already canonical, or None where the input is off the happy path (the careful
validators of _events then run). The oracle is written straight from SPEC, Terms, element by element.
Inputs that could crash a C loop (resized during a conversion, odd strides, huge) run in a subprocess.
"""

from __future__ import annotations

import array
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixindex import _convert_py

ROOT = Path(__file__).resolve().parent.parent


def _compiled():
    if os.environ.get("PREFIXINDEX_NO_EXTENSIONS", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("prefixindex._convert")
    except ImportError:
        if os.environ.get("PREFIXINDEX_REQUIRE_EXTENSIONS", "") not in ("", "0"):
            raise
        return None


_convert = _compiled()
# PREFIXINDEX_NO_EXTENSIONS=1 or no build: the fallback is still held to the oracle
CONVERTERS = {"python": _convert_py} if _convert is None else {"cython": _convert, "python": _convert_py}

INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
U32 = 2**32


@pytest.fixture(params=sorted(CONVERTERS))
def conv(request):
    return CONVERTERS[request.param]


# --- oracles, from SPEC ------------------------------------------------------------------------------------

def oracle_ids(seq):
    """Token bytes of a sequence that must hold exact ints in [0, 2**32); None otherwise."""
    if not all(type(v) is int and 0 <= v < U32 for v in seq):
        return None
    return b"".join(v.to_bytes(4, "big") for v in seq)


def oracle_hashes(seq):
    out = []
    for v in seq:
        if type(v) is int and -(2**63) <= v < 2**64:
            out.append(v % 2**64)
        elif type(v) is bytes and len(v) >= 8:
            out.append(int.from_bytes(v[-8:], "big"))
        else:
            return None
    return out


def same(a, b):
    """Two converter answers are the same: both None, the same object passed through, or equal arrays."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, bytes):
        return a == b
    return (a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous
            and a.tobytes() == b.tobytes())


def all_agree(fn_name, *args):
    """Every converter's answer, checked to be the same; returns the compiled one (or the only one)."""
    answers = {name: getattr(mod, fn_name)(*args) for name, mod in CONVERTERS.items()}
    first = next(iter(answers.values()))
    for name, answer in answers.items():
        assert same(answer, first), (name, fn_name, args, answers)
    return first


# --- same shape ------------------------------------------------------------------------------------------

@pytest.mark.skipif(_convert is None, reason="the compiled converters are not built in this run")
def test_both_modules_have_the_same_api():
    assert _convert.__all__ == _convert_py.__all__ == ["hashes_u64", "slot_writer", "token_bytes",
                                                       "token_ids_block_bytes"]
    for name in _convert.__all__:
        assert getattr(_convert, name).__doc__ == getattr(_convert_py, name).__doc__


# --- token_bytes -------------------------------------------------------------------------------------------

ODD_ELEMENTS = [True, False, 1.0, np.int64(3), np.uint32(3), np.bool_(True), -1, U32, 2**63, 2**64, 2**200,
                -(2**200), "1", b"1", None, [1], 1j]


@pytest.mark.parametrize("container", [list, tuple])
def test_lists_of_ints(conv, container):
    for seq in ([], [0], [U32 - 1], list(range(1024)), [5] * 7, [2**31, 2**32 - 1, 0, 1]):
        out = conv.token_bytes(container(seq))
        assert type(out) is np.ndarray and out.dtype == np.uint8 and out.ndim == 1 and out.flags.c_contiguous
        assert out.tobytes() == oracle_ids(seq)
        assert same(out, all_agree("token_bytes", container(seq)))


@pytest.mark.parametrize("odd", ODD_ELEMENTS, ids=repr)
@pytest.mark.parametrize("where", ["first", "middle", "last", "only"])
def test_an_odd_element_anywhere_is_none(odd, where):
    base = list(range(10, 19))
    seq = {"first": [odd] + base, "middle": base[:4] + [odd] + base[4:], "last": base + [odd], "only": [odd]}[where]
    assert all_agree("token_bytes", seq) is None
    assert all_agree("token_bytes", tuple(seq)) is None
    assert all_agree("token_ids_block_bytes", seq + [0] * (10 - len(seq) % 10), (len(seq) + 9) // 10) is None


def test_int_subclasses_are_not_plain_ints():
    class MyInt(int):
        pass

    assert all_agree("token_bytes", [1, MyInt(2)]) is None
    assert all_agree("hashes_u64", [1, MyInt(2)]) is None


@pytest.mark.parametrize("container", [list, tuple])
def test_the_fallbacks_marshal_step_takes_only_plain_small_ints(container):
    # the pure-Python converter first reads a list through marshal (one C pass; docs/performance.md):
    # it must take exactly the exact ints in [0, 2**31) and decline everything else, which the
    # general path then converts or refuses as before (the tests above hold the end results)
    take = _convert_py._marshalled_ids
    for seq in ([0], [2**31 - 1], list(range(1024)), [5] * 7):
        assert take(container(seq)).tobytes() == oracle_ids(seq)
    assert take(container([])).tobytes() == b""
    for odd in ODD_ELEMENTS + [2**31, 2**32 - 1]:
        for seq in ([odd], [1, 2, odd], [odd, 1, 2]):
            assert take(container(seq)) is None, seq


def test_canonical_inputs_pass_through(conv):
    data = b"\x00\x00\x00\x01" * 3
    assert conv.token_bytes(data) is data
    arr = np.arange(12, dtype=np.uint8)
    assert conv.token_bytes(arr) is arr
    # uint8 that is not 1-D C-contiguous, or not a plain ndarray: the careful path copies or refuses
    assert conv.token_bytes(arr[::2]) is None
    assert conv.token_bytes(arr.reshape(3, 4)) is None
    class Sub(np.ndarray):
        pass

    assert conv.token_bytes(arr.view(Sub)) is None
    for other in (bytearray(data), memoryview(data), "abc", 5, None, {1: 2}, iter([1]), range(3)):
        assert all_agree("token_bytes", other) is None


@pytest.mark.parametrize("dtype", INT_DTYPES[:1] + INT_DTYPES[2:])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("step", [1, 2, -1, -3])
def test_numpy_id_arrays(dtype, order, step):
    ids = np.array([0, 1, 7, 100, 127, 3, 0, 99, 42, 5, 11], dtype=np.dtype(dtype).newbyteorder(order))[::step]
    out = all_agree("token_bytes", ids)
    assert out.tobytes() == oracle_ids([int(v) for v in ids])


@pytest.mark.parametrize("dtype", INT_DTYPES[:1] + INT_DTYPES[2:])
def test_numpy_id_ranges(dtype):
    info = np.iinfo(dtype)
    top = min(info.max, U32 - 1)
    ok = np.array([0, top, 1], dtype=dtype)
    assert all_agree("token_bytes", ok).tobytes() == oracle_ids([0, int(top), 1])
    for bad in ([info.min, 1], [1, info.max]):
        arr = np.array(bad, dtype=dtype)
        expect_ok = all(0 <= int(v) < U32 for v in arr)
        got = all_agree("token_bytes", arr)
        assert (got is not None) == expect_ok
        for position in range(3):  # the bad id first, middle, last
            longer = np.insert(np.arange(2, dtype=dtype), position, arr[0 if info.min < 0 else 1])
            assert (all_agree("token_bytes", longer) is None) == (not all(0 <= int(v) < U32 for v in longer))


def test_numpy_odd_arrays_are_none():
    for arr in (np.arange(4, dtype=np.float64), np.ones(4, dtype=bool), np.array([1, 2], dtype=object),
                np.zeros((2, 2), dtype=np.int64), np.array(5, dtype=np.int64), np.array(["a"]),
                np.arange(4).astype("datetime64[s]"), np.array([1 + 0j])):
        assert all_agree("token_bytes", arr) is None


def test_numpy_arrays_of_every_memory_layout():
    base = np.arange(64, dtype=np.int64)
    raw = np.frombuffer(b"\x00" + base.astype("<i4").tobytes(), dtype="<i4", offset=1)  # unaligned
    readonly = base.copy()
    readonly.flags.writeable = False
    for arr in (raw, readonly, np.broadcast_to(np.int32(9), (16,)), base[::7], base[10:3:-2],
                np.asfortranarray(base), base.reshape(8, 8)[:, 3], np.empty(0, dtype=np.int16)):
        assert all_agree("token_bytes", arr).tobytes() == oracle_ids([int(v) for v in arr])


@pytest.mark.parametrize("code", "bBhHiIlLqQ")
def test_array_array(code):
    values = [0, 1, 100, 127]
    out = all_agree("token_bytes", array.array(code, values))
    assert out.tobytes() == oracle_ids(values)
    assert all_agree("token_bytes", array.array(code)).tobytes() == b""
    if code.islower():
        assert all_agree("token_bytes", array.array(code, [1, -1, 2])) is None
    if array.array(code).itemsize == 8:
        assert all_agree("token_bytes", array.array(code, [1, 2**32, 2])) is None


def test_array_array_of_other_typecodes_is_none():
    for arr in (array.array("d", [1.0]), array.array("f", [1.0]), array.array("u", "ab")):
        assert all_agree("token_bytes", arr) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, U32 - 1), st.integers(-(2**70), 2**70),
                          st.sampled_from(ODD_ELEMENTS)), max_size=40))
def test_lists_agree_with_the_oracle(seq):
    got = all_agree("token_bytes", seq)
    want = oracle_ids(seq)
    assert (got is None) == (want is None)
    if want is not None:
        assert got.tobytes() == want


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INT_DTYPES[:1] + INT_DTYPES[2:]), st.sampled_from("<>"), st.integers(-3, 3).filter(bool),
       st.data())
def test_arrays_agree_with_the_oracle(dtype, order, step, data):
    info = np.iinfo(dtype)
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), max_size=30))
    arr = np.array(values, dtype=np.dtype(dtype).newbyteorder(order))[::step]
    got = all_agree("token_bytes", arr)
    want = oracle_ids([int(v) for v in arr])
    assert (got is None) == (want is None)
    if want is not None:
        assert got.tobytes() == want


# --- token_ids_block_bytes --------------------------------------------------------------------------------

def test_block_bytes_from_flat_ids(conv):
    ids = list(range(40))
    for form in (ids, tuple(ids), np.array(ids, dtype=np.int64), np.array(ids, dtype=">u2")[::-1][::-1],
                 array.array("l", ids)):
        out = conv.token_ids_block_bytes(form, 5)
        assert out.shape == (5, 32) and out.dtype == np.uint8 and out.flags.c_contiguous
        assert out.tobytes() == oracle_ids(ids)
        assert same(out, all_agree("token_ids_block_bytes", form, 5))


def test_block_bytes_off_the_happy_path_is_none():
    ids = list(range(12))
    for tokens, n in ((ids, 5), (ids, 0), (ids, -1), ([], 0), (np.zeros(12, dtype=np.uint8), 3),
                      (bytes(48), 3), (np.zeros((3, 4), dtype=np.int64), 3), ([[0, 1], [2, 3]], 2),
                      (ids[:-1] + [True], 3), (ids[:-1] + [-5], 3)):
        assert all_agree("token_ids_block_bytes", tokens, n) is None
    # no ids for 3 blocks: 3 empty rows, as the careful path gives (the table then refuses the width)
    assert all_agree("token_ids_block_bytes", [], 3).shape == (3, 0)


# --- hashes_u64 -------------------------------------------------------------------------------------------

HASH_EDGES = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63), b"\x00" * 8, b"\xff" * 8, b"\x01" * 32,
              bytes(range(8)), bytes(range(40))]


def test_hashes(conv):
    for seq in ([], HASH_EDGES, [2**64 - 1, -1], [-(2**63), 2**63], [b"abcdefgh"] * 3, list(range(100))):
        for form in (list(seq), tuple(seq)):
            out = conv.hashes_u64(form)
            assert type(out) is np.ndarray and out.dtype == np.uint64 and out.ndim == 1 and out.flags.c_contiguous
            assert out.tolist() == oracle_hashes(seq)
            assert same(out, all_agree("hashes_u64", form))


@pytest.mark.parametrize("odd", [True, 1.0, np.uint64(1), np.int64(-1), 2**64, -(2**63) - 1, 2**100, b"",
                                 b"1234567", bytearray(8), memoryview(bytes(8)), "12345678", None],
                         ids=repr)
@pytest.mark.parametrize("where", [0, 3, 6])
def test_odd_hashes_are_none(odd, where):
    seq = [1, 2, 3, b"abcdefgh", 5, 6]
    seq.insert(where, odd)
    assert all_agree("hashes_u64", seq) is None


def test_hashes_only_from_lists_and_tuples():
    for other in (np.arange(3, dtype=np.uint64), iter([1, 2]), {1, 2}, b"abcdefgh", 5, None, range(3)):
        assert all_agree("hashes_u64", other) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**64), 2**65), st.binary(min_size=0, max_size=12),
                          st.sampled_from([True, 1.5, None])), max_size=20))
def test_hashes_agree_with_the_oracle(seq):
    got = all_agree("hashes_u64", seq)
    want = oracle_hashes(seq)
    assert (got is None) == (want is None)
    if want is not None:
        assert got.tolist() == want


# --- slot_writer ---------------------------------------------------------------------------------------

class Slotted:
    __slots__ = ("a", "b", "c")

    def __setattr__(self, name, value):
        raise AttributeError("refused")


def test_slot_writer_fills_every_slot_past_setattr(conv):
    write = conv.slot_writer(Slotted)
    obj = object.__new__(Slotted)
    payload = [object()]
    write(obj, 1, payload, None)
    assert (obj.a, obj.b, obj.c) == (1, payload, None)
    write(obj, "x", "y", "z")  # overwriting releases the old values (no leak, no crash)
    assert (obj.a, obj.b, obj.c) == ("x", "y", "z")

    class Shadow(Slotted):
        __slots__ = ()
        a = property(lambda self: "shadowed")

    sub = object.__new__(Shadow)
    write(sub, 1, 2, 3)
    assert Slotted.__dict__["a"].__get__(sub) == 1 and sub.a == "shadowed"


def test_slot_writer_refuses_what_it_cannot_write(conv):
    write = conv.slot_writer(Slotted)
    obj = object.__new__(Slotted)
    for bad in (lambda: write(object(), 1, 2, 3), lambda: write(obj, 1, 2), lambda: write(obj, 1, 2, 3, 4)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(AttributeError):
        obj.a  # nothing was written by the refused calls

    class NoSlots:
        pass

    with pytest.raises((AttributeError, TypeError, KeyError)):
        conv.slot_writer(NoSlots)


# --- nothing crashes ---------------------------------------------------------------------------------------

HOSTILE = textwrap.dedent("""
    import array, gc, sys
    import numpy as np
    from prefixindex import _convert_py
    mods = [_convert_py]
    try:
        from prefixindex import _convert
        mods.append(_convert)
    except ImportError:
        pass
    for mod in mods:
        # a list shrunk by a collector callback while a conversion allocates its output: the answer
        # is None or the conversion of the list in one of the states it passed through, never garbage
        victim = list(range(4096))
        armed, states = [], []
        def meddle(phase, info):
            if phase == "start" and armed and victim:
                del victim[len(victim) // 2:]
                states.append(list(victim))
        gc.callbacks.append(meddle)
        gc.set_threshold(1, 1, 1)
        def check(fn, decode):
            states[:] = [list(victim)]
            armed.append(1)
            out = fn(victim)
            armed.clear()
            assert out is None or decode(out) in states, (mod, fn)
        for _ in range(200):
            junk = [[] for _ in range(5)]  # cyclic-GC-tracked garbage keeps the collector busy
            check(mod.token_bytes, lambda out: np.frombuffer(out, dtype=">u4").tolist())
            check(mod.hashes_u64, lambda out: out.tolist())
            check(lambda v: mod.token_ids_block_bytes(v, 1), lambda out: np.frombuffer(out, dtype=">u4").tolist())
            victim.extend(range(64))
        gc.callbacks.remove(meddle)
        gc.set_threshold(700, 10, 10)
        big = np.arange(1 << 22, dtype=np.int64)
        assert mod.token_bytes(big[::-1]).size == 4 << 22
        assert mod.token_bytes(np.broadcast_to(np.int64(1), (1 << 20,))).size == 4 << 20
        assert mod.token_bytes(array.array("q", range(100000))).size == 400000
        assert mod.hashes_u64([b"\\xff" * 10**6] * 3).tolist() == [2**64 - 1] * 3
        assert mod.token_bytes(np.empty(0, dtype=np.int64)[::-1]).size == 0
        if mod.__name__.endswith("_convert"):
            try:
                type(mod.slot_writer(tuple))  # tuple has no __slots__
            except AttributeError:
                pass
            bare = type(mod.slot_writer(type("S", (), {"__slots__": ("x",)})))()
            try:
                bare(object())
            except TypeError:
                pass
    print("ok")
""")


def test_hostile_inputs_do_not_crash():
    proc = subprocess.run([sys.executable, "-c", HOSTILE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
