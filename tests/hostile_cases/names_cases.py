"""Names given as str (and int) subclasses (issue 8: "use after free", "state changed by rejected calls";
SPEC Public API: names given as a str subclass are stored as plain str).

A model name, pod or ready_pods member that is a str subclass whose ``__hash__`` changes on every call,
or raises, or whose ``__eq__`` lies, or an ``enum`` of pods, is stored as the plain str of the same text
(``str.__str__(member)``): one context per text, snapshot() and match results keyed by exact str, an Enum
pod matching as its value text. A model name that is not a str at all is a TypeError.
"""

from __future__ import annotations

import enum
import itertools
from typing import Any, Callable, Dict

from common import (AllBlocksCleared, BlockRemoved, BlockStored, chain, check_usable, consistent, make_table,
                    toks)

_counter = itertools.count(1)


class ShiftingHashStr(str):
    def __hash__(self) -> int:  # a new hash on every call: the same text filed twice in a dict
        return next(_counter)


class RaisingHashStr(str):
    def __hash__(self) -> int:
        raise LookupError("the __hash__ of a str subclass was called: names must be taken as plain str")


class LyingEqStr(str):
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True


class Pod(str, enum.Enum):
    A = "default/llama-0"
    B = "default/llama-1"


class Model(str, enum.Enum):
    LLAMA = "llama-3-8b"


def _exact_keys(result: Dict[Any, Any]) -> None:
    assert all(type(k) is str for k in result), f"result keys {list(result)!r} are not exact str"


def _scenario(backend: Any, model_name: Callable[[], Any], pod_a: Callable[[], Any], pod_b: Callable[[], Any],
              ready_a: Callable[[], Any], ready_b: Callable[[], Any], model_text: str, a_text: str,
              b_text: str) -> None:
    """Every call that takes a name, with fresh subclass instances each time, against plain-str answers."""
    t = make_table(backend)
    for i in range(3):  # the same text three times: one context, one pod
        t.process_block_stored(BlockStored([1, 2], toks(0, 1), model_name(), -1, pod_a()))
    t.process_block_stored(BlockStored([1], toks(0), model_name(), -1, pod_b()))
    snap = consistent(t)
    assert list(snap) == [(model_text, -1)], snap
    assert type(list(snap)[0][0]) is str
    h = chain(0, 1)
    assert snap[(model_text, -1)] == {h[0]: frozenset({a_text, b_text}), h[1]: frozenset({a_text})}, snap
    assert t.stats()["contexts"] == 1 and t.stats()["pods"] == 2, t.stats()

    for name in (model_name(), model_text):
        got = t.match_blocks(name, -1, toks(0, 1))
        assert got == {a_text: 2, b_text: 1}, got
        _exact_keys(got)
        got = t.match_blocks(name, -1, toks(0, 1), ready_pods=[ready_a()])
        assert got == {a_text: 2}, got
        _exact_keys(got)
        got = t.match_blocks(name, -1, toks(0, 1), ready_pods=iter([a_text, ready_b()]))
        assert got == {a_text: 2, b_text: 1}, got
        percent, hashes = t.match_prefix(name, -1, toks(0, 1), ready_pods=(ready_b(),))  # a tuple: a set would hash the member here
        assert percent == {b_text: 50} and hashes.tolist() == h, (percent, hashes)
        _exact_keys(percent)
        blocks, hashes = t.match(name, -1, toks(0, 1), [ready_a(), ready_b()])
        assert blocks == {a_text: 2, b_text: 1} and hashes.tolist() == h
        _exact_keys(blocks)

    t.add_prefix(model_name(), -1, pod_b(), chain(0, 1))
    assert t.match_blocks(model_text, -1, toks(0, 1)) == {a_text: 2, b_text: 2}
    t.remove_prefix(model_name(), -1, pod_b())
    assert t.match_blocks(model_text, -1, toks(0, 1)) == {a_text: 2}
    t.process_block_stored(BlockStored([1], toks(0), model_name(), -1, pod_b()))
    t.process_block_removed(BlockRemoved([1], model_name(), -1, pod_b()))
    assert t.match_blocks(model_text, -1, toks(0, 1)) == {a_text: 2}
    t.process_events([BlockStored([1], toks(0), model_name(), -1, pod_b()),
                      BlockRemoved([2], model_name(), -1, pod_a())])
    assert t.match_blocks(model_text, -1, toks(0, 1)) == {a_text: 1, b_text: 1}
    t.process_all_blocks_cleared(AllBlocksCleared(pod_a(), model_name(), -1))
    assert t.match_blocks(model_text, -1, toks(0, 1)) == {b_text: 1}
    t.process_all_blocks_cleared(AllBlocksCleared(pod_b(), model_name()))
    assert t.snapshot() == {} and t.stats()["contexts"] == 0, t.snapshot()
    t.process_block_stored(BlockStored([1], toks(0), model_name(), -1, pod_a()))
    assert t.evict_now() == {"contexts": 0, "pods": 0}
    consistent(t)
    check_usable(t, backend)


TEXTS = ("llama-3-8b", "default/llama-0", "default/llama-1")
MAKERS = {
    "shifting_hash": (lambda: ShiftingHashStr(TEXTS[0]), lambda: ShiftingHashStr(TEXTS[1]),
                      lambda: ShiftingHashStr(TEXTS[2])),
    "raising_hash": (lambda: RaisingHashStr(TEXTS[0]), lambda: RaisingHashStr(TEXTS[1]),
                     lambda: RaisingHashStr(TEXTS[2])),
    "lying_eq": (lambda: LyingEqStr(TEXTS[0]), lambda: LyingEqStr(TEXTS[1]), lambda: LyingEqStr(TEXTS[2])),
    "enum": (lambda: Model.LLAMA, lambda: Pod.A, lambda: Pod.B),
}
ROLES = ("model", "pod", "ready_pods")


def names(kind: str, role: str) -> Callable[[Any], None]:
    """The scenario with the str subclass `kind` in one role (model name, pods, or ready_pods members)."""
    model, a, b = MAKERS[kind]
    plain = (lambda: TEXTS[0], lambda: TEXTS[1], lambda: TEXTS[2])

    def run(backend: Any) -> None:
        m = model if role == "model" else plain[0]
        pa, pb = (a, b) if role == "pod" else plain[1:]
        ra, rb = (a, b) if role == "ready_pods" else plain[1:]
        _scenario(backend, m, pa, pb, ra, rb, *TEXTS)
    return run


for _kind in MAKERS:
    for _role in ROLES:
        globals()[f"{_kind}_as_{_role}"] = names(_kind, _role)


class ShiftingHashInt(int):
    def __hash__(self) -> int:
        return next(_counter)


class Lora(enum.IntEnum):
    ADAPTER = 7


def int_subclass_lora_ids(backend: Any) -> None:
    """A lora_id given as an int subclass (shifting hash, IntEnum) is the plain int of the same value."""
    t = make_table(backend)
    for lora in (ShiftingHashInt(7), ShiftingHashInt(7), Lora.ADAPTER, 7):
        t.process_block_stored(BlockStored([1], toks(0), "m", lora, "p"))
    snap = consistent(t)
    assert list(snap) == [("m", 7)] and type(list(snap)[0][1]) is int, snap
    assert t.match_blocks("m", ShiftingHashInt(7), toks(0)) == {"p": 1}
    assert t.match_blocks("m", Lora.ADAPTER, toks(0)) == {"p": 1}
    t.add_prefix("m", ShiftingHashInt(7), "q", chain(0))
    t.remove_prefix("m", Lora.ADAPTER, "q")
    assert t.match_blocks("m", 7, toks(0)) == {"p": 1}
    check_usable(t, backend)


def non_str_names_are_type_errors(backend: Any) -> None:
    t = make_table(backend)
    t.process_block_stored(BlockStored([1], toks(0), "m", -1, "p"))
    before = (t.snapshot(), t.stats())
    bads: Any = (b"m", 5, None, ["m"], ("m",), 1.5)
    for bad in bads:
        for call in (lambda: BlockStored([1], toks(0), bad, -1, "p"),
                     lambda: BlockRemoved([1], bad, -1, "p"),
                     lambda: t.match_blocks(bad, -1, toks(0)),
                     lambda: t.match_prefix(bad, -1, toks(0)),
                     lambda: t.match(bad, -1, toks(0)),
                     lambda: t.add_prefix(bad, -1, "p", chain(0)),
                     lambda: t.remove_prefix(bad, -1, "p")):
            try:
                call()
            except TypeError:
                pass
            else:
                raise AssertionError(f"a model name {bad!r} was accepted")
            assert (t.snapshot(), t.stats()) == before, f"a rejected model name {bad!r} changed the index"
    check_usable(t, backend)
