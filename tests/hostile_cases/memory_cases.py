"""Running out of memory (issue 8: "C++ exceptions as aborts"; SPEC 8): a MemoryError, never an abort,
and a consistent, usable index afterwards.

The address space of the child is limited (RLIMIT_AS) to what it uses now plus a headroom well below what
the call needs, read from /proc/self/status (VmSize) right before the call, so the limit tracks whatever
numpy and the backend already mapped. The inputs are built before the limit; the limit is lifted again
before the checks, which build snapshots.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Any, Iterator

import numpy as np

from common import BlockStored, check_usable, consistent, make_table, stored, toks

HEADROOM = 48 << 20  # far below any of the calls below (hundreds of MB), far above what a small call needs


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def _address_space_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _expect_memory_error(call: Any) -> None:
    try:
        with _address_space_limit():
            call()
    except MemoryError:
        return
    raise AssertionError("the call succeeded within the address-space limit: no MemoryError to test")


def _check_after(t: Any, backend: Any, max_entries: int) -> None:
    stats = t.stats()
    assert 0 <= stats["entries"] <= max_entries and stats["prefixes"] <= stats["entries"] + 1, stats
    check_usable(t, backend)  # (consistent() first and last)
    bs = t.block_size
    t.process_block_stored(BlockStored([1, 2], toks(0, 1, block_size=bs), "m", -1, "small"))
    got = t.match_blocks("m", -1, toks(0, 1, block_size=bs))
    assert got.get("small") == 2, got


def add_prefix_of_six_million_hashes(backend: Any) -> None:
    t = make_table(backend, max_prefixes_per_context=10**8)
    t.process_block_stored(stored([1], [0], "before"))
    hashes = np.arange(1, 6_000_001, dtype=np.uint64)
    _expect_memory_error(lambda: t.add_prefix("big", -1, "pod", hashes))
    _check_after(t, backend, 6_000_001)
    assert t.match_blocks("m", -1, toks(0)) == {"before": 1, "small": 1}
    assert t.match_blocks("m", -1, toks(0, 1)) == {"before": 1, "small": 2}


def block_stored_of_three_million_blocks(backend: Any) -> None:
    t = make_table(backend, block_size=1, max_prefixes_per_context=10**8)
    n = 3_000_000
    event = BlockStored(np.arange(1, n + 1, dtype=np.uint64), np.arange(n, dtype=np.uint32), "big", -1, "pod")
    _expect_memory_error(lambda: t.process_block_stored(event))
    _check_after(t, backend, n + 10)


def match_of_a_huge_query(backend: Any) -> None:
    """match_prefix returns the query's prefix hashes: 8 bytes per 4 token bytes, twice the query."""
    t = make_table(backend, block_size=1)
    t.process_block_stored(BlockStored([1, 2], [0, 1], "m", -1, "pod"))
    query = np.zeros(64 << 20, dtype=np.uint8)  # 16 M blocks of one token
    query[:8] = [0, 0, 0, 0, 0, 0, 0, 1]
    _expect_memory_error(lambda: t.match_prefix("m", -1, query))
    _expect_memory_error(lambda: t.get_prefix_hashes(query))
    try:  # match_blocks needs no hash array back: it may run in little memory, or raise MemoryError
        with _address_space_limit():
            got = t.match_blocks("m", -1, query)
            assert got == {"pod": 2}, got
    except MemoryError:
        pass
    _check_after(t, backend, 10)


def token_ids_that_cannot_fit_in_memory(backend: Any) -> None:
    """A zero-stride array of 2**38 int32 ids is 4 bytes of memory but a TiB of token bytes: a MemoryError
    at once, the same on both backends (the fallback used to range-check every id first, ~100 s)."""
    from numpy.lib.stride_tricks import as_strided

    t = make_table(backend)
    t.process_block_stored(BlockStored([1, 2], toks(0, 1), "m", -1, "pod"))
    ids = as_strided(np.zeros(1, dtype=np.int32), shape=(2**38,), strides=(0,))
    expected = "Unable to allocate 1.00 TiB for an array with shape ({}) and data type uint8"
    for shape, call in (("1099511627776,", lambda: t.match_blocks("m", -1, ids)),
                        ("1099511627776,", lambda: t.get_prefix_hashes(ids)),
                        ("1, 1099511627776", lambda: BlockStored([1], ids, "m", -1, "pod"))):
        try:
            call()
        except MemoryError as exc:
            assert str(exc) == expected.format(shape), exc
        else:
            raise AssertionError("a TiB of token bytes was accepted")
    _check_after(t, backend, 10)
