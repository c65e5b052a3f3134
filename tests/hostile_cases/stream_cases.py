"""Streams that answer read() and write() with impossible counts, and a slot writer given another class's
slot: each was a hang or a heap overwrite (a hostile-input search after issue 8), now a clear error.

save() and load() are shared by both backends (prefixindex._snapshot); a read() that returned more than it
was asked for drove the count of bytes still needed below zero, and a write() that returned 0 or a negative
count never advanced: both looped for ever. The compiled slot writer (prefixindex._convert.slot_writer)
took any member descriptor found in the class's dict, even another class's, and wrote at its offset.
"""

from __future__ import annotations

import io
from typing import Any

from common import BlockStored, check_usable, make_table, toks


def _table(backend: Any) -> Any:
    t = make_table(backend)
    t.process_block_stored(BlockStored([1, 2, 3], toks(0, 1, 2), "m", -1, "p"))
    return t


class _Generous(io.RawIOBase):
    """read(n) answers with more than n bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        return self.data[:max(n, 0) + 3] or b"x" * (n + 3)


class _Stuck(io.RawIOBase):
    """write() answers with a fixed count whatever it was given."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> Any:  # type: ignore[override]
        return self.answer


def load_from_a_stream_that_reads_too_much(backend: Any) -> None:
    t = _table(backend)
    good = io.BytesIO()
    t.save(good)
    fresh = make_table(backend)
    try:
        fresh.load(_Generous(good.getvalue()))
    except OSError as exc:
        assert "more than it was asked for" in str(exc), exc
    else:
        raise AssertionError("a stream whose read() returned more than asked was loaded from")
    assert fresh.stats()["entries"] == 0, "a refused load changed the table"
    check_usable(fresh, backend)


def _save_to(backend: Any, answer: Any) -> None:
    t = _table(backend)
    try:
        t.save(_Stuck(answer))
    except OSError as exc:
        assert "it must take 1 to" in str(exc), exc
    else:
        raise AssertionError(f"save() to a stream whose write() returns {answer!r} completed")
    check_usable(t, backend)


def save_to_a_stream_that_writes_nothing(backend: Any) -> None:
    _save_to(backend, 0)


def save_to_a_stream_that_answers_minus_one(backend: Any) -> None:
    _save_to(backend, -1)


def save_to_a_stream_that_claims_too_much(backend: Any) -> None:
    _save_to(backend, 10**9)


def save_to_a_stream_that_answers_a_float(backend: Any) -> None:
    _save_to(backend, 1.5)


def slot_writer_refuses_another_classes_slot(backend: Any) -> None:
    if backend.__name__ == "prefixindex._core":
        from prefixindex import _convert as conv
    else:
        from prefixindex import _convert_py as conv  # type: ignore[no-redef]

    class Big:
        __slots__ = tuple(f"s{i}" for i in range(16))

    class Small:
        __slots__ = ()

    Small.__slots__ = ("s15",)  # what slot_writer reads as the slot names
    Small.s15 = Big.__dict__["s15"]  # type: ignore[attr-defined]  # Big's descriptor, Big's offset
    try:
        write = conv.slot_writer(Small)
    except TypeError as exc:
        assert str(exc) == "Small.s15 is not an object slot of Small", exc
    else:
        for _ in range(1000):
            write(Small(), object())
        raise AssertionError("slot_writer took another class's slot")


SCENARIOS = ["load_from_a_stream_that_reads_too_much", "save_to_a_stream_that_writes_nothing",
             "save_to_a_stream_that_answers_minus_one", "save_to_a_stream_that_claims_too_much",
             "save_to_a_stream_that_answers_a_float", "slot_writer_refuses_another_classes_slot"]
