"""Bad snapshots (docs/snapshot.md, "Errors" and "What a loader guarantees"): a corrupted byte at every
position, a truncation at every length, foreign and newer files, and checksum-valid files that break
one rule each. Every one is a ValueError that says which problem, and builds no table.

The fuzz runs in a subprocess per backend (with a timeout), so that a crash of the compiled core on a
bad file would be a failed test, not a dead test run.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xxhash

from helpers import FakeClock
from test_snapshot import TABLE_ARGS, populate, save_bytes, skip_without_snapshots
from prefixindex import _core_py, _snapshot
from prefixindex._snapshot import SnapshotError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data():
    """A small populated snapshot written by the reference backend."""
    clock = FakeClock()
    table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False, **TABLE_ARGS)
    populate(table, clock)
    return save_bytes(table)


@pytest.fixture
def spy(backend):
    """A subclass of the backend's table that records every _from_state call (none must happen)."""
    skip_without_snapshots(backend)
    calls = []

    class Spy(backend.SyncPrefixHashTable):
        @classmethod
        def _from_state(cls, state, **kw):
            calls.append(state)
            return super()._from_state(state, **kw)

    Spy.calls = calls
    return Spy


def expect(kind, blob, spy, *words):
    with pytest.raises(ValueError) as info:
        spy.load(io.BytesIO(blob), background_eviction=False)
    assert isinstance(info.value, SnapshotError) and info.value.kind == kind, str(info.value)
    text = str(info.value)
    for word in words:
        assert word in text, (word, text)
    assert spy.calls == []  # builds nothing
    return text


def sections(blob: bytes):
    """(offset, tag, payload offset, payload length) of every section, walking the documented layout."""
    out, pos = [], 16
    while pos < len(blob):
        tag, length, _ = struct.unpack_from("<4sQI", blob, pos)
        out.append((pos, tag, pos + 16, length))
        pos += 16 + length + 8
    assert pos == len(blob)
    return out


def rewrite(blob: bytes, index: int, fn) -> bytes:
    """The snapshot with section ``index``'s payload replaced by fn(payload), every checksum fixed."""
    pos, tag, start, length = sections(blob)[index]
    payload = fn(blob[start:start + length])
    head = struct.pack("<4sQ", tag, len(payload))
    head += struct.pack("<I", xxhash.xxh64_intdigest(head) & 0xFFFFFFFF)
    return blob[:pos] + head + payload + struct.pack("<Q", xxhash.xxh64_intdigest(payload)) \
        + blob[start + length + 8:]


def with_header(blob: bytes, version: int, flags: int) -> bytes:
    head = blob[:8] + struct.pack("<HH", version, flags)
    return head + struct.pack("<I", xxhash.xxh64_intdigest(head) & 0xFFFFFFFF) + blob[16:]


FUZZ = """
import io, json, sys
import prefixindex._core_py, importlib
module = importlib.import_module(sys.argv[1])
from prefixindex._snapshot import SnapshotError
data = open(sys.argv[2], "rb").read()
out = {}
for pos in range(len(data)):
    for mask in (0x01, 0xFF):
        blob = bytearray(data); blob[pos] ^= mask
        try:
            module.SyncPrefixHashTable.load(io.BytesIO(bytes(blob)), background_eviction=False)
            out[f"{pos}/{mask}"] = "loaded"
        except SnapshotError as exc:
            out[f"{pos}/{mask}"] = exc.kind
        except Exception as exc:
            out[f"{pos}/{mask}"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_a_corrupted_byte_anywhere_is_a_clear_error(backend, data, tmp_path):
    skip_without_snapshots(backend)
    path = tmp_path / "good.snapshot"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", FUZZ, backend.__name__, str(path)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert len(results) == 2 * len(data)
    for key, kind in results.items():
        pos = int(key.split("/")[0])
        assert kind == ("foreign" if pos < 8 else "corrupted"), (key, kind)


def test_truncation_at_every_length(data, spy):
    boundaries = {0, 8, 16} | {s[0] for s in sections(data)} | {s[2] for s in sections(data)} \
        | {s[2] + s[3] for s in sections(data)}
    assert len(boundaries) > 12
    for n in range(len(data)):
        text = expect("truncated", data[:n], spy, "truncated prefixindex snapshot")
        if n in {s[0] for s in sections(data)}:
            assert "the header of" in text and f"offset {n}" in text, text
    assert "empty" in expect("truncated", b"", spy)


def test_a_truncated_file(data, spy, tmp_path):
    path = tmp_path / "cut.snapshot"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated") as info:
        spy.load(path)
    assert info.value.kind == "truncated" and spy.calls == []


@pytest.mark.parametrize("blob", [
    b"hello, world\n" * 10, b"\x89PNG\r\n\x1a\n" + bytes(64), b"PK\x03\x04" + bytes(40), b"{}", b"\x89PFX-nope",
    b"\x00" * 100,
])
def test_foreign_input(blob, spy):
    expect("foreign", blob, spy, "not a prefixindex snapshot")


def test_newer_version_and_unknown_flags(data, spy):
    expect("newer", with_header(data, 2, 0), spy, "version 2 is newer", "(version 1)")
    expect("newer", with_header(data, 65535, 0), spy, "version 65535")
    expect("newer", with_header(data, 1, 0x8000), spy, "flags 0x8000")
    expect("corrupted", with_header(data, 0, 0), spy, "version 0")
    # the version is trusted only under the header's checksum: a flipped version byte is corruption
    blob = bytearray(data)
    blob[8] = 2
    expect("corrupted", bytes(blob), spy, "file header fails its checksum")


def test_trailing_bytes(data, spy, tmp_path):
    path = tmp_path / "long.snapshot"
    path.write_bytes(data + b"\x00")
    with pytest.raises(SnapshotError, match="bytes follow the end section") as info:
        spy.load(path)
    assert info.value.kind == "corrupted" and spy.calls == []


# -- checksum-valid files that break one rule each ------------------------------------------------------


def forged(state: dict, extra: bytes = b"") -> bytes:
    """The bytes of ``state`` as the encoder would write them, without its checks."""
    original = _snapshot._check_context
    _snapshot._check_context = lambda *a, **k: None
    try:
        return b"".join(_snapshot.encode(state, extra))
    finally:
        _snapshot._check_context = original


def small_state() -> dict:
    clock = FakeClock()
    table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False, **TABLE_ARGS)
    populate(table, clock)
    return table._export_state()


def _ctx(state, i=0):
    return state["contexts"][i]


BREAKS = {
    "unsorted pods": (lambda s: _ctx(s).update(pods=_ctx(s)["pods"][::-1]), "sorted"),
    "empty pod name": (lambda s: _ctx(s).update(pods=["", "b"]), "non-empty"),
    "duplicate prefix": (lambda s: _ctx(s)["prefixes"].__setitem__(1, _ctx(s)["prefixes"][0]), "twice"),
    "count of zero": (lambda s: _ctx(s)["entry_pod_counts"].__setitem__(0, 0), "between 1 and"),
    "count above the pods": (lambda s: _ctx(s)["entry_pod_counts"].__setitem__(0, 3), "between 1 and"),
    "counts do not sum": (lambda s: _ctx(s).update(entry_pods=np.append(_ctx(s)["entry_pods"], np.uint32(0))),
                          "add up"),
    "pod index out of range": (lambda s: _ctx(s)["entry_pods"].__setitem__(0, 7), "past the context's pods"),
    "pod twice in a prefix": (lambda s: _ctx(s).update(
        entry_pod_counts=np.array([2] + [1] * (len(_ctx(s)["prefixes"]) - 1), np.uint32),
        entry_pods=np.concatenate([[0, 0], _ctx(s)["entry_pods"][1:len(_ctx(s)["prefixes"])]]).astype(np.uint32)),
        "ascending"),
    "pod holding nothing": (lambda s: _ctx(s).update(entry_pods=np.zeros_like(_ctx(s)["entry_pods"])), "(D2)"),
    "unsorted engine keys": (lambda s: _ctx(s).update(engine=[(k[::-1].copy(), v[::-1].copy())
                                                              for k, v in _ctx(s)["engine"]]), "ascending"),
    "not finite idle": (lambda s: _ctx(s).update(idle=float("nan")), "finite"),
    "not finite pod idle": (lambda s: _ctx(s)["pod_idle"].__setitem__(0, np.inf), "finite"),
    "same context twice": (lambda s: _ctx(s, 1).update(model=_ctx(s)["model"], lora=_ctx(s)["lora"]),
                           "same (model, LoRA)"),
    "empty context": (lambda s: _ctx(s).update(prefixes=np.empty(0, np.uint64), pods=[], pod_idle=np.empty(0),
                                               entry_pod_counts=np.empty(0, np.uint32),
                                               entry_pods=np.empty(0, np.uint32), engine=[]), "(D2)"),
    "more contexts than the bound": (lambda s: s.update(config=s["config"].__class__(
        **{**s["config"].__dict__, "max_contexts": 2})), "own bounds"),
    "more prefixes than the bound": (lambda s: s.update(config=s["config"].__class__(
        **{**s["config"].__dict__, "max_prefixes_per_context": 2})), "own bounds"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_checksum_valid_file_that_breaks_a_rule(name, spy):
    state = small_state()
    change, words = BREAKS[name]
    change(state)
    expect("corrupted", forged(state), spy, words)


def _context_fields(payload: bytes):
    """Offsets of a CTXT payload's parts (docs/snapshot.md), for surgical edits."""
    (n,) = struct.unpack_from("<I", payload, 0)
    pos = 4 + n
    lora, idle, pods, prefixes, entries, engine, stale = struct.unpack_from("<qdIQQQQ", payload, pos)
    return pos, dict(pods=pods, prefixes=prefixes, entries=entries, engine=engine, stale=stale)


@pytest.mark.parametrize("edit, words", [
    (lambda p: p + b"\x00", "left over"),
    (lambda p: p[:-1], "run past the end"),
    (lambda p: b"\xff\xff\xff\xff" + p[4:], "run past the end"),  # a model name longer than the section
    (lambda p: p[:4] + b"\xff" + p[5:], "not valid UTF-8"),  # the first byte of the model name "m"
    # counts that cannot fit in the section fail at once (no loop, no allocation): 10^9 pods, 2^60 entries
    (lambda p: p[:21] + struct.pack("<I", 10**9) + p[25:], "run past the end"),
    (lambda p: p[:33] + struct.pack("<Q", 2**60) + p[41:], "run past the end"),
])
def test_a_checksum_valid_context_with_bad_fields(data, spy, edit, words):
    expect("corrupted", rewrite(data, 1, edit), spy, words)


def test_engine_value_index_and_stale_count(spy):
    state = small_state()
    blob = forged(state)
    # context #0 ("m", -1): set its first engine value index past the prefixes
    def bad_index(payload):
        pos, n = _context_fields(payload)
        end = len(payload) - 8 * n["stale"] - n["engine"]  # value width 1: fewer than 255 prefixes
        return payload[:end] + bytes([n["prefixes"] + 3]) + payload[end + 1:]
    expect("corrupted", rewrite(blob, 1, bad_index), spy, "indexes past")

    def escape_one(payload):
        pos, n = _context_fields(payload)
        end = len(payload) - 8 * n["stale"] - n["engine"]
        return payload[:end] + b"\xff" + payload[end + 1:]
    expect("corrupted", rewrite(blob, 1, escape_one), spy, "stale engine values announced")


def test_a_stale_value_that_names_a_prefix_is_not_canonical(spy):
    state = small_state()
    ctx = _ctx(state, 1)  # ("m", 7): its one engine value outside the prefixes is escaped
    original = _snapshot._engine_indices

    def escape_all(prefixes, values, width):
        return np.full(len(values), (1 << (8 * width)) - 1, np.dtype(f"<u{width}")), values
    _snapshot._engine_indices = escape_all
    try:
        blob = forged(state)
    finally:
        _snapshot._engine_indices = original
    assert len(ctx["engine"][0][0]) > 1
    expect("corrupted", blob, spy, "not canonical")


@pytest.mark.parametrize("edit, words", [
    (lambda p: p[:48] + b"\x00" * 4 + p[52:], "left over"),  # 0 counters: the counters are left over
    (lambda p: p[:53] + b"X" + p[54:], "unknown or repeated counter"),
    (lambda p: p[:32] + struct.pack("<Q", 0) + p[40:], "invalid value"),  # block_size 0
    (lambda p: p[:-8] + struct.pack("<Q", 1), "totals"),
    (lambda p: p[:-24] + struct.pack("<Q", 9) + p[-16:], "expected context #4"),  # 9 contexts announced
])
def test_a_checksum_valid_configuration_with_bad_fields(data, spy, edit, words):
    expect("corrupted", rewrite(data, 0, edit), spy, words)


def test_sections_out_of_place(data, spy):
    secs = sections(data)
    end = data[secs[-1][0]:]
    expect("corrupted", data[:secs[1][0]] + end, spy, "expected context #0")  # END where a context goes
    expect("corrupted", with_header(data, 1, 1), spy, "expected the extra section")  # flag but no XTRA
    extra = b"".join(_snapshot._section(_snapshot.TAG_EXTRA, b"x"))
    expect("corrupted", data[:secs[-1][0]] + extra + end, spy, "expected the end section")  # XTRA, no flag


def test_a_failed_save_check_names_the_backend_bug():
    state = small_state()
    _ctx(state)["pods"] = _ctx(state)["pods"][::-1]
    with pytest.raises(RuntimeError, match="exported an invalid state"):
        _snapshot.encode(state)


def test_the_subprocess_fuzz_script_compiles():
    compile(textwrap.dedent(FUZZ), "fuzz", "exec")


# -- found by a hostile-input search after issue 8 --------------------------------------------------------


def test_an_end_section_with_a_payload_is_corrupted(data, spy):
    assert sections(data)[-1][1] == b"END."
    expect("corrupted", rewrite(data, len(sections(data)) - 1, lambda p: p + b"junk"), spy, "end section")


def test_an_announced_extra_section_that_is_empty_is_corrupted(data, spy):
    blob = b"".join(_snapshot.encode(small_state(), b"x"))  # a snapshot with an XTRA section
    index = [tag for _, tag, _, _ in sections(blob)].index(b"XTRA")
    expect("corrupted", rewrite(blob, index, lambda p: b""), spy, "extra section", "empty")


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_a_counter_past_two_to_the_63_is_corrupted(spy, value):
    """A total near 2**64 wrapped on the compiled core and broke the fallback's next save (struct.error)."""
    state = small_state()
    state["counters"] = dict(state["counters"], evicted_contexts=value)
    expect("corrupted", forged(state), spy, "'evicted_contexts'", "2**63")
    state["counters"]["evicted_contexts"] = 2**63 - 1  # the last accepted: loads, and saves again
    table = spy.load(io.BytesIO(forged(state)), background_eviction=False, max_contexts=1)
    assert table.stats()["evicted_contexts"] >= 2**63 - 1
    table.save(io.BytesIO())
