"""Snapshots of a SyncPrefixHashTable: the file format of docs/snapshot.md, atomic saves, streams.

Both backends hand this module the same canonical state (``table._export_state()``, a dict of numpy
arrays in recency order) and build a table back from it (``cls._from_state(state, ...)``), so the bytes
of a snapshot depend only on what the index holds, never on the backend that wrote it. Everything that
can be wrong with an input is found here, before ``_from_state`` is called: a bad file builds nothing.
The checks that a backend's ``_from_state`` may rely on are listed in docs/snapshot.md ("What a loader
guarantees") and implemented by ``_check_context``. The encoding is numpy bulk conversions per context
(no Python loop per entry): that keeps 10^6 entries within issue 12's save/load targets.
"""

from __future__ import annotations

import io
import math
import os
import struct
from typing import IO, Any, Callable, Dict, List, Mapping, Sequence, Tuple, Type, TypeVar, Union

import numpy as np
import xxhash

from ._config import COUNTER_KEYS, Config
from ._snapshot_bounds import _split_overrides, apply_bounds, resolve_load_config

__all__ = ["MAGIC", "VERSION", "SnapshotError", "decode", "encode", "load_table", "load_table_and_extra",
           "read_extra", "read_snapshot", "save_table"]

MAGIC = b"\x89PFXIDX\n"  # \x89 and \n: a file mangled as text (high bit, newlines) is "not a snapshot"
VERSION = 1
FLAG_EXTRA = 1  # an XTRA section (the subscriber's per-pod positions) follows the contexts
KNOWN_FLAGS = FLAG_EXTRA

COUNTER_NAMES = COUNTER_KEYS  # the running totals of stats() (D9); the first four are recomputed

TAG_CONFIG, TAG_CONTEXT, TAG_EXTRA, TAG_END = b"CONF", b"CTXT", b"XTRA", b"END."

_HEADER = struct.Struct("<8sHHI")  # magic, version, flags, check32(first 12 bytes)
_SECTION = struct.Struct("<4sQI")  # tag, payload length, check32(first 12 bytes); payload; xxh64(payload)
_DIGEST = struct.Struct("<Q")
_CONFIG_FIELDS = struct.Struct("<QQddQQ")  # max_contexts, max_prefixes, interval s, duration min, block, seed
_TOTALS = struct.Struct("<QQQ")  # contexts, prefixes, entries
_CONTEXT_HEAD = struct.Struct("<qdIQQQQ")  # lora, idle, pods, prefixes, entries, engine hashes, stale
_U8, _U32, _U64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<Q")
_U64_MAX = 2**64 - 1
_READ_CHUNK = 1 << 24  # a length field is never trusted with one allocation: read at most 16 MiB at once

T = TypeVar("T")
File = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", IO[bytes]]


class SnapshotError(ValueError):
    """A snapshot that cannot be loaded. ``kind`` is "truncated", "corrupted", "foreign" or "newer"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _truncated(what: str) -> SnapshotError:
    return SnapshotError("truncated", f"truncated prefixindex snapshot: {what}")


def _corrupted(what: str) -> SnapshotError:
    return SnapshotError("corrupted", f"corrupted prefixindex snapshot: {what}")


def _check32(data: bytes) -> int:  # the small checks of the header and the section headers
    return xxhash.xxh64_intdigest(data) & 0xFFFFFFFF


def width_for(max_value: int) -> int:
    """Bytes per element of an array whose values are at most ``max_value`` (1, 2, 4 or 8)."""
    return next((w for w in (1, 2, 4) if max_value < 1 << (8 * w)), 8)


def _dtype(width: int) -> np.dtype:
    return np.dtype(f"<u{width}")


# ---------------------------------------------------------------------------------------------------
# encoding


def _section(tag: bytes, payload: bytes) -> List[bytes]:
    head = _SECTION.pack(tag, len(payload), 0)[:12]
    return [head + _U32.pack(_check32(head)), payload, _DIGEST.pack(xxhash.xxh64_intdigest(payload))]


def _name_bytes(name: str) -> bytes:
    # surrogatepass: names are any str (SPEC, Public API), lone surrogates included
    data = name.encode("utf-8", "surrogatepass")
    return _U32.pack(len(data)) + data


def _encode_config(config: Config, counters: Mapping[str, int], totals: Tuple[int, int, int]) -> bytes:
    for field in ("max_contexts", "max_prefixes_per_context", "block_size", "seed"):
        value = getattr(config, field)
        if value is None or not 0 <= value <= _U64_MAX:
            raise ValueError(f"cannot save: Config.{field} = {value!r} does not fit the snapshot format "
                             "(an integer in [0, 2**64))")
    unknown = set(counters) - set(COUNTER_NAMES)
    if unknown:
        raise RuntimeError(f"cannot save: the table exported unknown counters {sorted(unknown)}")
    parts = [_CONFIG_FIELDS.pack(config.max_contexts, config.max_prefixes_per_context,
                                 float(config.eviction_interval_seconds), float(config.eviction_duration_minutes),
                                 config.block_size, config.seed),
             _U32.pack(len(COUNTER_NAMES))]
    for name in COUNTER_NAMES:
        parts += [_U8.pack(len(name)), name.encode("ascii"), _U64.pack(int(counters.get(name, 0)))]
    parts.append(_TOTALS.pack(*totals))
    return b"".join(parts)


def _engine_indices(prefixes: np.ndarray, values: np.ndarray, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each engine value as its index in the context's prefix array, or the escape (all ones) followed
    in the stale array by the value itself when the context has no such prefix (a stale alias, D3)."""
    escape = (1 << (8 * width)) - 1
    if not values.size:
        return np.empty(0, _dtype(width)), np.empty(0, np.uint64)
    # Prefixes are distinct, so any sort order is exact. Searching sorted needles is several times
    # faster than searching them in key order (memory locality), hence the second argsort.
    order = np.argsort(prefixes)
    ordered = prefixes[order]
    needles = np.argsort(values)
    pos = np.empty(len(values), np.intp)
    pos[needles] = np.searchsorted(ordered, values[needles])
    np.minimum(pos, len(ordered) - 1, out=pos)
    found = ordered[pos] == values
    index = np.where(found, order[pos], escape).astype(_dtype(width))
    return index, values[~found]


def _encode_context(c: Mapping[str, Any]) -> Tuple[bytes, int, int]:
    """One context's payload, and its prefix and entry counts."""
    prefixes = np.asarray(c["prefixes"], dtype=np.uint64)
    pods: Sequence[str] = c["pods"]
    counts = np.asarray(c["entry_pod_counts"], dtype=np.uint32)
    entry_pods = np.asarray(c["entry_pods"], dtype=np.uint32)
    engine = c["engine"]
    n_pods, n_prefixes, n_entries = len(pods), len(prefixes), len(entry_pods)
    keys = [np.asarray(k, dtype=np.uint64) for k, _ in engine]
    values = [np.asarray(v, dtype=np.uint64) for _, v in engine]
    all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    all_values = np.concatenate(values) if values else np.empty(0, np.uint64)
    value_width = width_for(n_prefixes)
    index, stale = _engine_indices(prefixes, all_values, value_width)
    parts = [_name_bytes(c["model"]),
             _CONTEXT_HEAD.pack(int(c["lora"]), float(c["idle"]), n_pods, n_prefixes, n_entries, len(all_keys),
                                len(stale))]
    parts += [_name_bytes(p) for p in pods]
    parts += [np.asarray(c["pod_idle"], dtype="<f8").tobytes(),
              prefixes.astype("<u8", copy=False).tobytes(),
              counts.astype(_dtype(width_for(n_pods)), copy=False).tobytes(),
              entry_pods.astype(_dtype(width_for(max(n_pods - 1, 0))), copy=False).tobytes(),
              np.array([len(k) for k in keys], dtype="<u8").tobytes(),
              all_keys.astype("<u8", copy=False).tobytes(),
              index.tobytes(),
              stale.astype("<u8", copy=False).tobytes()]
    return b"".join(parts), n_prefixes, n_entries


def encode(state: Mapping[str, Any], extra: bytes = b"") -> List[bytes]:
    """The snapshot of an exported state, as chunks to write in order (docs/snapshot.md)."""
    if not isinstance(extra, (bytes, bytearray, memoryview)):
        raise TypeError(f"extra must be bytes, not {type(extra).__name__}")
    contexts = state["contexts"]
    for c in contexts:  # a backend that exports something a loader would refuse fails here, at the save
        _check_context(c, "exported state")
    bodies = [_encode_context(c) for c in contexts]
    totals = (len(bodies), sum(b[1] for b in bodies), sum(b[2] for b in bodies))
    flags = FLAG_EXTRA if len(extra) else 0
    head = _HEADER.pack(MAGIC, VERSION, flags, 0)[:12]
    chunks = [head + _U32.pack(_check32(head))]
    chunks += _section(TAG_CONFIG, _encode_config(state["config"], state["counters"], totals))
    for body, _, _ in bodies:
        chunks += _section(TAG_CONTEXT, body)
    if flags & FLAG_EXTRA:
        chunks += _section(TAG_EXTRA, bytes(extra))
    chunks += _section(TAG_END, b"")
    return chunks


# ---------------------------------------------------------------------------------------------------
# decoding


class _Reader:
    """Exact reads from a binary stream, from its current position; a short read is "truncated"."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.offset = 0

    def read_upto(self, n: int) -> bytes:
        """Up to n bytes: fewer only at the end of the input."""
        chunks: List[bytes] = []
        need = n
        while need:
            ask = min(need, _READ_CHUNK)
            data = self._stream.read(ask)
            if data is None:
                raise BlockingIOError("the stream has no data ready (a non-blocking stream cannot be loaded from)")
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"load needs a binary stream, but read() returned {type(data).__name__}")
            if not data:
                break
            if len(data) > ask:  # counting on would never end (need < 0)
                raise OSError(f"read({ask}) returned {len(data)} bytes, more than it was asked for")
            chunks.append(bytes(data))
            need -= len(data)
        self.offset += n - need
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read(self, n: int, what: str) -> bytes:
        start = self.offset
        data = self.read_upto(n)
        if len(data) < n:
            raise _truncated(f"{what} needs {n} bytes at offset {start}, only {len(data)} left")
        return data


class _Cursor:
    """Fields of one checksummed payload; running past its end or leaving bytes over is "corrupted"
    (the checksum matched, so the writer, not the disk, got it wrong)."""

    def __init__(self, payload: bytes, label: str) -> None:
        self.payload, self.label, self.pos = payload, label, 0

    def take(self, n: int) -> bytes:
        if n > len(self.payload) - self.pos:
            raise _corrupted(f"{self.label}: fields run past the end of the section")
        out = self.payload[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> Tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def name(self, what: str) -> str:
        (n,) = self.unpack(_U32)
        try:
            return self.take(n).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _corrupted(f"{self.label}: {what} is not valid UTF-8") from None

    def array(self, dtype: Any, count: int, native: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        if count > (len(self.payload) - self.pos) // dt.itemsize:
            raise _corrupted(f"{self.label}: fields run past the end of the section")
        out = np.frombuffer(self.payload, dtype=dt, count=count, offset=self.pos).astype(native)
        self.pos += count * dt.itemsize
        return out

    def finish(self) -> None:
        if self.pos != len(self.payload):
            raise _corrupted(f"{self.label}: {len(self.payload) - self.pos} bytes left over after its fields")


def _read_section(reader: _Reader, tags: Sequence[bytes], label: str) -> Tuple[bytes, bytes]:
    start = reader.offset
    head = reader.read(_SECTION.size, f"the header of {label}")
    tag, length, check = _SECTION.unpack(head)
    if check != _check32(head[:12]):
        raise _corrupted(f"the header of {label} (offset {start}) fails its checksum")
    if tag not in tags:
        raise _corrupted(f"expected {label} at offset {start}, found a section tagged {tag!r}")
    name = f"{label} ({tag.decode('ascii')} at offset {start})"
    payload = reader.read(length, name)
    (digest,) = _DIGEST.unpack(reader.read(_DIGEST.size, f"the checksum of {name}"))
    if digest != xxhash.xxh64_intdigest(payload):
        raise _corrupted(f"{name} fails its checksum")
    return tag, payload


def _read_header(reader: _Reader) -> int:
    magic = reader.read_upto(len(MAGIC))
    if magic != MAGIC[:len(magic)]:  # checked first, so that a short foreign file is called foreign
        raise SnapshotError("foreign", "not a prefixindex snapshot (the file does not start with its magic bytes)")
    if len(magic) < len(MAGIC):
        raise _truncated("the input is empty" if not magic else "the input ends inside the magic bytes")
    head = magic + reader.read(_HEADER.size - len(MAGIC), "the file header")
    _, version, flags, check = _HEADER.unpack(head)
    if check != _check32(head[:12]):
        raise _corrupted("the file header fails its checksum")
    if version > VERSION:
        raise SnapshotError("newer", f"prefixindex snapshot version {version} is newer than this prefixindex "
                                     f"reads (version {VERSION}): upgrade prefixindex to load it")
    if version < 1:
        raise _corrupted(f"version {version} does not exist")
    if flags & ~KNOWN_FLAGS:
        raise SnapshotError("newer", f"prefixindex snapshot uses format flags {flags & ~KNOWN_FLAGS:#x} that this "
                                     f"prefixindex (format version {VERSION}) does not know: upgrade to load it")
    return int(flags)


def _decode_config(payload: bytes) -> Tuple[Config, Dict[str, int], Tuple[int, int, int]]:
    cur = _Cursor(payload, "the configuration section")
    max_contexts, max_prefixes, interval, duration, block_size, seed = cur.unpack(_CONFIG_FIELDS)
    try:
        config = Config(max_contexts=max_contexts, max_prefixes_per_context=max_prefixes,
                        eviction_interval_seconds=interval, eviction_duration_minutes=duration,
                        block_size=block_size, seed=seed)
    except ValueError as exc:
        raise _corrupted(f"the configuration section holds an invalid value: {exc}") from None
    (n,) = cur.unpack(_U32)
    counters: Dict[str, int] = {}
    for _ in range(n):
        (length,) = cur.unpack(_U8)
        name = cur.take(length).decode("ascii", "replace")
        if name not in COUNTER_NAMES or name in counters:
            raise _corrupted(f"the configuration section names an unknown or repeated counter {name!r}")
        (counters[name],) = cur.unpack(_U64)
        if counters[name] >> 63:  # no table counts that far; past it a running total would wrap
            raise _corrupted(f"the configuration section's counter {name!r} is past 2**63")
    totals = cur.unpack(_TOTALS)
    cur.finish()
    return config, {name: counters.get(name, 0) for name in COUNTER_NAMES}, (totals[0], totals[1], totals[2])


def _decode_context(payload: bytes, label: str) -> Dict[str, Any]:
    cur = _Cursor(payload, label)
    model = cur.name("the model name")
    lora, idle, n_pods, n_prefixes, n_entries, n_engine, n_stale = cur.unpack(_CONTEXT_HEAD)
    # the fewest bytes those counts take: a count that cannot fit never drives a loop or an allocation
    if n_pods * 20 + n_prefixes * 9 + n_entries + n_engine * 9 + n_stale * 8 > len(payload) - cur.pos:
        raise _corrupted(f"{label}: fields run past the end of the section")
    pods = [cur.name("a pod name") for _ in range(n_pods)]
    pod_idle = cur.array("<f8", n_pods, np.float64)
    prefixes = cur.array("<u8", n_prefixes, np.uint64)
    counts = cur.array(_dtype(width_for(n_pods)), n_prefixes, np.uint32)
    entry_pods = cur.array(_dtype(width_for(max(n_pods - 1, 0))), n_entries, np.uint32)
    engine_counts = cur.array("<u8", n_pods, np.uint64)
    keys = cur.array("<u8", n_engine, np.uint64)
    width = width_for(n_prefixes)
    index = cur.array(_dtype(width), n_engine, np.uint64)
    stale = cur.array("<u8", n_stale, np.uint64)
    cur.finish()
    escaped = index == (1 << (8 * width)) - 1
    if int(np.count_nonzero(escaped)) != n_stale:
        raise _corrupted(f"{label}: {n_stale} stale engine values announced, {np.count_nonzero(escaped)} escaped")
    if int(index[~escaped].max(initial=0)) >= n_prefixes and not escaped.all():
        raise _corrupted(f"{label}: an engine value indexes past the context's prefixes")
    values = np.empty(n_engine, np.uint64)
    values[~escaped] = prefixes[index[~escaped]]
    values[escaped] = stale
    if n_stale and n_prefixes and np.isin(stale, prefixes).any():
        raise _corrupted(f"{label}: a stale engine value names a prefix of the context (not canonical)")
    if int(engine_counts.sum(dtype=np.uint64)) != n_engine or (engine_counts > n_engine).any():
        raise _corrupted(f"{label}: the pods' engine hash counts do not add up to {n_engine}")
    bounds = np.concatenate(([0], np.cumsum(engine_counts.astype(np.int64))))
    engine = [(keys[bounds[i]:bounds[i + 1]], values[bounds[i]:bounds[i + 1]]) for i in range(n_pods)]
    ctx = {"model": model, "lora": int(lora), "idle": float(idle), "prefixes": prefixes, "pods": pods,
           "pod_idle": pod_idle, "entry_pod_counts": counts, "entry_pods": entry_pods, "engine": engine}
    _check_context(ctx, label, corrupt=True)
    return ctx


def _check_context(c: Mapping[str, Any], label: str, corrupt: bool = False) -> None:
    """The invariants a backend's _from_state relies on (docs/snapshot.md, "What a loader guarantees")."""

    def fail(what: str) -> None:
        if corrupt:
            raise _corrupted(f"{label}: {what}")
        raise RuntimeError(f"cannot save: the table exported an invalid state ({label}: {what})")

    pods, prefixes = c["pods"], c["prefixes"]
    counts, entry_pods = c["entry_pod_counts"], c["entry_pods"]
    n_pods, n_prefixes = len(pods), len(prefixes)
    if not -2**63 <= c["lora"] < 2**63:
        fail("the LoRA id does not fit in 64 bits")
    if not math.isfinite(c["idle"]) or not np.isfinite(c["pod_idle"]).all() or len(c["pod_idle"]) != n_pods:
        fail("an idle time is missing or not finite")
    if n_prefixes == 0 or n_pods == 0:
        fail("a context holds at least one prefix and one pod (D2)")
    if any(not p for p in pods) or any(a >= b for a, b in zip(pods, pods[1:])):
        fail("pod names must be non-empty, distinct and sorted")
    if counts is None or len(counts) != n_prefixes or counts.min() < 1 or counts.max() > n_pods:
        fail("every prefix is held by between 1 and all of the context's pods")
    if int(counts.sum(dtype=np.uint64)) != len(entry_pods):
        fail("the prefixes' pod counts do not add up to the entries")
    if len(entry_pods) and int(entry_pods.max()) >= n_pods:
        fail("an entry names a pod index past the context's pods")
    starts = np.zeros(len(entry_pods), bool)
    starts[np.cumsum(counts.astype(np.int64))[:-1]] = True
    if (np.diff(entry_pods.astype(np.int64)) <= 0)[~starts[1:]].any():
        fail("each prefix's pod indices must be strictly ascending")
    if (np.bincount(entry_pods, minlength=n_pods) == 0).any():
        fail("every pod holds at least one entry (D2)")
    ordered = np.sort(prefixes)
    if (ordered[1:] == ordered[:-1]).any():
        fail("a prefix hash appears twice")
    if len(c["engine"]) != n_pods:
        fail("one engine map per pod")
    for keys, values in c["engine"]:
        if len(keys) != len(values) or (keys[1:] <= keys[:-1]).any():
            fail("engine hashes must be strictly ascending, one value each")


def decode(reader: _Reader) -> Tuple[Dict[str, Any], bytes]:
    """(state, extra) from a reader positioned at a snapshot; every check of docs/snapshot.md done."""
    flags = _read_header(reader)
    _, payload = _read_section(reader, (TAG_CONFIG,), "the configuration section")
    config, counters, (n_contexts, n_prefixes, n_entries) = _decode_config(payload)
    contexts = []
    for i in range(n_contexts):
        label = f"context #{i}"
        _, payload = _read_section(reader, (TAG_CONTEXT,), label)
        contexts.append(_decode_context(payload, label))
    extra = b""
    if flags & FLAG_EXTRA:
        _, extra = _read_section(reader, (TAG_EXTRA,), "the extra section")
        if not extra:  # the writer sets the flag only for an extra section with something in it
            raise _corrupted("the header announces an extra section, and it is empty")
    _, end = _read_section(reader, (TAG_END,), "the end section")
    if end:
        raise _corrupted("the end section is not empty")
    if len({(c["model"], c["lora"]) for c in contexts}) != n_contexts:
        raise _corrupted("two contexts have the same (model, LoRA)")
    if (sum(len(c["prefixes"]) for c in contexts), sum(len(c["entry_pods"]) for c in contexts)) \
            != (n_prefixes, n_entries):
        raise _corrupted("the totals of the configuration section do not match the contexts")
    if len(contexts) > config.max_contexts or any(len(c["prefixes"]) > config.max_prefixes_per_context
                                                   for c in contexts):
        raise _corrupted("the contexts exceed the snapshot's own bounds")
    return {"config": config, "counters": counters, "contexts": contexts}, extra


# ---------------------------------------------------------------------------------------------------
# files and streams


def _is_path(file: Any) -> bool:
    return isinstance(file, (str, bytes, os.PathLike))


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _write_atomic(path: str, chunks: Sequence[bytes]) -> None:
    """Write to a new file beside ``path``, fsync it, rename it over ``path``: the name always holds
    either the old snapshot or the whole new one, and a failure removes the temporary file."""
    directory, base = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # 0o666 & ~umask, as a plain open() would create it
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        try:
            _write_all(fd, chunks)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not every system or file system allows a directory fsync
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_stream(stream: Any, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            n = stream.write(view)
            if n is None:
                # RawIOBase's convention: a non-blocking raw stream that took nothing. Any other writer
                # that returns None (codecs writers, hand-written sinks, response objects) took it all.
                if isinstance(stream, io.RawIOBase):
                    raise BlockingIOError("the stream took no data (a non-blocking stream cannot be saved to)")
                n = len(view)
            if type(n) is not int or not 0 < n <= len(view):  # 0 or less would never end, more loses data
                raise OSError(f"write() of {len(view)} bytes returned {n!r}: it must take 1 to {len(view)} bytes")
            view = view[n:]
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def save_table(table: Any, file: File, extra: bytes = b"") -> None:
    """``table.save(file)``: the snapshot of ``table`` to a path (atomically) or to a binary stream
    (from its current position, left open). ``extra`` becomes the XTRA section (docs/snapshot.md)."""
    if not _is_path(file) and not callable(getattr(file, "write", None)):
        raise TypeError(f"save takes a path or a binary stream, not {type(file).__name__}")
    if not isinstance(extra, (bytes, bytearray, memoryview)):
        raise TypeError(f"extra must be bytes, not {type(extra).__name__}")
    state = table._export_state()  # the only part under the table's lock: encoding and I/O run after
    chunks = encode(state, extra)
    if _is_path(file):
        _write_atomic(os.fsdecode(os.fspath(file)), chunks)  # type: ignore[arg-type]
    else:
        _write_stream(file, chunks)


def read_snapshot(file: File) -> Tuple[Dict[str, Any], bytes, int]:
    """(state, extra, size in bytes) of the snapshot in a path or at a binary stream's position."""
    if _is_path(file):
        with open(file, "rb") as stream:  # type: ignore[arg-type]  # a missing path is open()'s OSError
            reader = _Reader(stream)
            state, extra = decode(reader)
            if stream.read(1):
                raise _corrupted(f"bytes follow the end section (offset {reader.offset})")
            return state, extra, reader.offset
    if not callable(getattr(file, "read", None)):
        raise TypeError(f"load takes a path or a binary stream, not {type(file).__name__}")
    reader = _Reader(file)
    state, extra = decode(reader)
    return state, extra, reader.offset


def load_table_and_extra(cls: Type[T], file: File, overrides: Mapping[str, Any],
                         decode_extra: Callable[[bytes], Any] = bytes) -> Tuple[T, Any]:
    """A new ``cls`` table from a snapshot, and ``decode_extra`` of its extra bytes (b"" when it has
    none), decoded before the table is built so that a bad extra section builds nothing either."""
    table_kw, config, fields = _split_overrides(overrides)
    state, extra, _ = read_snapshot(file)
    decoded = decode_extra(extra)
    final = resolve_load_config(state["config"], config, fields)
    state = apply_bounds(state, final)
    return cls._from_state(state, config=final, **table_kw), decoded  # type: ignore[attr-defined]


def load_table(cls: Type[T], file: File, overrides: Mapping[str, Any]) -> T:
    """``cls.load(file, **overrides)``."""
    return load_table_and_extra(cls, file, overrides)[0]


def read_extra(file: File) -> bytes:
    """Only the extra section of a snapshot (after checking the whole snapshot), b"" when it has none."""
    return read_snapshot(file)[1]
