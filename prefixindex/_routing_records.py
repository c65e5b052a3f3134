"""What a Router keeps of its choices: the read-only views a Choice hands out and the predictions behind
the predicted index (docs/routing.md, "Predicted entries"). ``prefixindex.routing`` uses both.
"""

from __future__ import annotations

from typing import Iterator, List, Mapping, Tuple, TypeVar

__all__ = ["_CandidateView", "_Prediction"]

_V = TypeVar("_V")


class _CandidateView(Mapping[str, _V]):
    """A read-only mapping of every candidate: ``values`` where given, ``default`` for the others.
    Choice's mappings are views, so that a choice among 64 pods does not build three 64-entry dicts."""

    __slots__ = ("_names", "_values", "_default")
    _names: Mapping[str, int]
    _values: Mapping[str, _V]
    _default: _V

    def __init__(self, names: Mapping[str, int], values: Mapping[str, _V], default: _V) -> None:
        self._names = names  # the candidates, in order (never changed after the choice)
        self._values = values
        self._default = default

    def __getitem__(self, pod: str) -> _V:
        got = self._values.get(pod)
        if got is not None:
            return got
        if pod in self._names:
            return self._default
        raise KeyError(pod)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return repr(dict(self))


class _Prediction:
    """The blocks [start, stop) of one prompt, assumed cached on one pod until ``expires``.

    It owns ``owned`` entries of the predicted index, all in [start, stop). When it owns none (confirmed,
    or taken over by newer predictions of the same pod) it is dead: start == stop, its hashes are let go
    at once, and it waits in the heap, holding nothing, for its TTL to count it."""

    __slots__ = ("key", "pod", "hashes", "base", "start", "stop", "expires", "confirmed", "seq", "owned")

    def __init__(self, key: Tuple[str, int], pod: str, hashes: List[int], start: int, stop: int,
                 expires: float, seq: int) -> None:
        self.key = key
        self.pod = pod
        self.hashes = hashes  # the prompt's prefix hashes [start, stop) as they were predicted
        self.base = start  # block index of hashes[0]
        self.start = start
        self.stop = stop
        self.expires = expires
        self.confirmed = False
        self.seq = seq
        self.owned = 0

    def __lt__(self, other: "_Prediction") -> bool:  # heap order: soonest expiry, then oldest
        return (self.expires, self.seq) < (other.expires, other.seq)
