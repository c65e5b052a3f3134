"""Helpers shared by the test suite: the backends this run tests (``COMPILED``, ``BACKENDS``), paths
(``ROOT``, ``PKG``), ``FakeClock``, and small builders of blocks, chains and events.

The prefix hash chain is recomputed here straight from SPEC with the ``xxhash`` package, so that no
test takes the index's own hashing on trust. Blocks are named by small integers: block ``k`` holds the
token ids ``k*bs, k*bs+1, ..., k*bs+bs-1`` (``bs`` = 4, the block size of the ``make_table`` fixture).
"""

from __future__ import annotations

import hashlib
import importlib
import struct
from pathlib import Path
from typing import Iterable, List, Optional

import xxhash

from prefixindex import BlockRemoved, BlockStored, _backend, _core_py

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "prefixindex"


# --- the backends this run tests ----------------------------------------------------------------------------


def compiled_sources(package_dir: Path = PKG) -> List[Path]:
    """Every Cython and C++ source of the compiled modules (``*.pyx``, ``*.pxd``, ``*.pxi``, ``*.h`` of
    the package), in order of file name: the files setup.py's source_hash reads."""
    return sorted((p for pattern in ("*.pyx", "*.pxd", "*.pxi", "*.h") for p in package_dir.glob(pattern)),
                  key=lambda p: p.name)


def compiled_source_hash(package_dir: Path = PKG) -> str:
    """What setup.py compiles into the core as SOURCE_HASH: sha256 over the bytes of
    ``compiled_sources``, first 16 hex digits."""
    digest = hashlib.sha256()
    for path in compiled_sources(package_dir):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _load_compiled():
    """The compiled core, None when this run cannot use it (prefixindex._backend's rules), or an error:
    with PREFIXINDEX_REQUIRE_EXTENSIONS=1 (CI) when it does not import, and always when it was built
    from other sources than the ones checked out (a stale in-place build)."""
    try:
        core = _backend.load("cython")
    except ImportError:
        if _backend.flag(_backend.REQUIRE_EXTENSIONS) and _backend.why_not_compiled() is None:
            raise
        return None
    if any(PKG.glob("*.pyx")):
        for module in (core, importlib.import_module("prefixindex._convert")):
            if module.SOURCE_HASH != compiled_source_hash():
                raise RuntimeError(
                    f"{module.__name__} ({module.__file__}) was built from other sources than the checked-out "
                    "prefixindex/*.pyx, *.pxd, *.pxi, *.h: rebuild it (pip install -e . or "
                    "python setup.py build_ext --inplace)")
    return core


COMPILED = _load_compiled()
BACKENDS = {"python": _core_py}  # name -> backend module: "python" always, "cython" when COMPILED
if COMPILED is not None:
    BACKENDS["cython"] = COMPILED


class FakeClock:
    """A clock the tests move by hand: eviction is tested without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- blocks, chains and events ----------------------------------------------------------------------------

U64 = 2**64
BS = 4  # block_size of the make_table fixture
STAT_KEYS = (
    "contexts", "prefixes", "entries", "pods",
    "events_block_stored", "events_block_removed", "events_all_blocks_cleared",
    "blocks_stored", "blocks_removed", "orphan_blocks", "matches",
    "evicted_contexts", "evicted_pods", "evicted_prefixes",
)


def le_u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def ref_chain(data: bytes, block_bytes: int, seed: int, parent: Optional[int] = None) -> List[int]:
    """h[-1] = parent (seed by default); h[i] = XXH64(le_u64(h[i-1]) || block i, seed)."""
    h = seed if parent is None else parent
    out = []
    for i in range(len(data) // block_bytes):
        h = xxhash.xxh64_intdigest(le_u64(h) + data[i * block_bytes:(i + 1) * block_bytes], seed)
        out.append(h)
    return out


def id_bytes(ids: Iterable[int]) -> bytes:
    """Token ids as token bytes: 4 bytes each, unsigned big-endian (SPEC, Terms)."""
    ids = list(ids)
    return struct.pack(f">{len(ids)}I", *ids)


def blk(k: int, block_size: int = BS) -> List[int]:
    return [k * block_size + j for j in range(block_size)]


def toks(*ks: int, block_size: int = BS) -> List[int]:
    return [t for k in ks for t in blk(k, block_size)]


def chain(*ks: int, seed: int = 0, parent: Optional[int] = None, block_size: int = BS) -> List[int]:
    """The prefix hashes of the blocks ks (chained from parent, or from the root)."""
    return ref_chain(id_bytes(toks(*ks, block_size=block_size)), 4 * block_size, seed, parent)


def stored(engine_hashes, ks, pod, model="m", lora=-1, parent=None) -> BlockStored:
    return BlockStored(list(engine_hashes), toks(*ks), model, lora, pod, parent)


def removed(engine_hashes, pod, model="m", lora=-1) -> BlockRemoved:
    return BlockRemoved(list(engine_hashes), model, lora, pod)


def ctx(table, model="m", lora=-1):
    """{prefix hash: frozenset(pods)} of one context ({} when it does not exist)."""
    return table.snapshot().get((model, lora), {})


def counters(table) -> dict:
    s = table.stats()
    return {k: s[k] for k in STAT_KEYS[4:]}


def check_invariants(table, max_contexts: Optional[int] = None, max_prefixes: Optional[int] = None) -> None:
    """What must hold of any state: bounds, no empty context/prefix, stats agree with the snapshot."""
    snap = table.snapshot()
    stats = table.stats()
    if max_contexts is not None:
        assert len(snap) <= max_contexts
    for key, prefixes in snap.items():
        assert prefixes, f"empty context {key} kept"
        if max_prefixes is not None:
            assert len(prefixes) <= max_prefixes, key
        for p, pods in prefixes.items():
            assert isinstance(p, int) and 0 <= p < U64
            assert pods, f"prefix {p} in {key} has no pods"
            assert all(isinstance(pod, str) for pod in pods)
    assert stats["contexts"] == len(snap)
    assert stats["prefixes"] == sum(len(v) for v in snap.values())
    assert stats["entries"] == sum(len(pods) for v in snap.values() for pods in v.values())
    assert stats["pods"] == len({pod for v in snap.values() for pods in v.values() for pod in pods})
