"""Inputs that a review of the converters brought down or let through (both backends, the same words):

- A zero-stride numpy array of 2**62 int8 token ids is one byte of memory; 4 bytes an id wrapped the
  compiled core's size arithmetic, and it filled a buffer far too small (a crash), or took 2**62 + 4 ids
  for 4. Past what an array can hold, both backends now say so. Run in a child process with a timeout.
- An event whose token ids do not divide into its blocks was refused only after a pass over every id
  (minutes, or never, for such an array); the count alone decides it, and is checked first.
- A masked array's masked ids (and any subclass's own reductions) escaped the range check and wrapped.
- An ndarray subclass whose len() is not its length made the fallback fail where the compiled core
  answered; an int subclass as a hash or parent counted by its __int__, not its value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prefixindex import BlockStored

from helpers import ROOT

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import prefixindex
    from prefixindex import BlockStored, encode_tokens
    t = prefixindex.SyncPrefixHashTable(block_size=4, background_eviction=False)
    t.process_block_stored(BlockStored([1], [1] * 4, "m", source_pod="p"))
    out = {}
    for n in (2**61, 2**62, 2**62 + 4):
        ids = np.broadcast_to(np.int8(1), (n,))
        for name, call in (("match_blocks", lambda: t.match_blocks("m", -1, ids)),
                           ("match", lambda: t.match("m", -1, ids)),
                           ("match_prefix", lambda: t.match_prefix("m", -1, ids)),
                           ("get_prefix_hashes", lambda: t.get_prefix_hashes(ids)),
                           ("encode_tokens", lambda: encode_tokens(ids)),
                           ("BlockStored", lambda: BlockStored([1], ids, "m", source_pod="p")),
                           ("BlockStored, no hashes", lambda: BlockStored([], ids, "m", source_pod="p"))):
            try:
                call()
                out[f"{n} {name}"] = "returned"
            except Exception as exc:
                out[f"{n} {name}"] = f"{type(exc).__name__}: {exc}"
        # the converters themselves never raise: None, and the shared path (_events) says why
        conv = prefixindex._events.CONVERTERS
        out[f"{n} converters"] = [conv.token_bytes(ids), conv.token_ids_block_bytes(ids, 1)]
    out["stats"] = t.stats()["entries"]
    out["limit"] = prefixindex._events.CONVERTERS.MAX_TOKEN_IDS
    print(json.dumps(out))
""")


@pytest.mark.parametrize("backend_name", ["cython", "python"])
def test_more_token_ids_than_an_array_holds_are_an_error_never_a_crash(backend_name):
    from helpers import COMPILED

    if backend_name == "cython" and COMPILED is None:
        pytest.skip("PREFIXINDEX_NO_EXTENSIONS=1: no compiled core in this run")
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    env.pop("PREFIXINDEX_NO_EXTENSIONS", None)
    if backend_name == "python":
        env["PREFIXINDEX_NO_EXTENSIONS"] = "1"
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, f"the child died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout)
    assert out.pop("stats") == 1  # nothing was added or taken
    assert out.pop("limit") == (2**63 - 1) // 4
    for case, result in out.items():
        n = int(case.split()[0])
        if case.endswith("converters"):
            assert result == [None, None], (case, result)
        elif case.endswith("no hashes"):  # the count decides first: no pass over 2**61 ids
            assert result == f"ValueError: the event has no block hashes but {n} tokens", (case, result)
        else:
            assert result == (f"ValueError: {n:,} token ids are more than an array can hold "
                              f"(at most {(2**63 - 1) // 4:,})"), (case, result)


def test_ids_that_do_not_divide_into_the_blocks_are_refused_from_their_count():
    # eight bytes of ids; a pass over them takes hours: in a child with a timeout, so a regression fails
    code = textwrap.dedent("""
        import numpy as np
        from prefixindex import BlockStored
        ids = np.broadcast_to(np.int64(7), (2**40 + 1,))
        for hashes in ([1, 2], []):
            try:
                BlockStored(hashes, ids, "m", source_pod="p")
            except ValueError as exc:
                print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["1099511627777 tokens do not divide into 2 equal blocks",
                                        "the event has no block hashes but 1099511627777 tokens"]


@pytest.mark.parametrize("data, bad", [(np.array([-1, 1, 2, 3], dtype=np.int64), -1),
                                       (np.array([2**40 + 5, 1, 2, 3], dtype=np.uint64), 2**40 + 5)])
def test_a_masked_id_is_an_id_to_the_range_check(make_table, data, bad):
    table = make_table()
    masked = np.ma.masked_array(data, mask=[1, 0, 0, 0])
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 2\*\*32\), got {bad}"):
        table.get_prefix_hashes(masked)
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 2\*\*32\), got {bad}"):
        table.match_blocks("m", -1, masked)
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 2\*\*32\), got {bad}"):
        BlockStored([1], masked, "m", source_pod="p")
    assert table.stats()["entries"] == 0


class _ShortLen(np.ndarray):
    def __len__(self):  # a subclass's own len(): the conversion reads the array's dimension
        return 3


def test_an_array_subclass_is_read_by_its_dimension_not_its_len(make_table):
    table = make_table()
    ids = np.arange(32, dtype=np.int32).view(_ShortLen)
    plain = np.arange(32, dtype=np.int32)
    assert list(table.get_prefix_hashes(ids)) == list(table.get_prefix_hashes(plain))
    event = BlockStored(list(range(1, 9)), ids, "m", source_pod="p")  # 8 blocks of 4 ids (block_size 4)
    assert event.tokens.shape == (8, 16)
    table.process_block_stored(event)
    assert table.match_blocks("m", -1, plain) == {"p": 8}


class _Lying(int):
    def __int__(self):
        return 9

    def __index__(self):
        return 9


def test_an_int_subclass_hash_counts_by_its_value():
    event = BlockStored([_Lying(3)], [1] * 4, "m", -1, "p", parent_block_hash=_Lying(3))
    assert list(event.block_hashes) == [3] and event.parent_block_hash == 3
