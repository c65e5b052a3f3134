"""What the Router is given for each choice: the candidates' names and their loads (``PodLoad``),
checked and made plain before the router's lock is taken (docs/routing.md, "API"; D15).
``prefixindex.routing`` re-exports ``PodLoad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import numpy as np

from ._events import _exact_int
from ._routing_settings import _type_name

__all__ = ["MAX_REQUESTS", "PodLoad"]


@dataclass(frozen=True)
class PodLoad:
    """What the caller knows of a pod's load beyond this router's own requests (for example vLLM's
    ``num_requests_running``, ``num_requests_waiting`` and ``kv_cache_usage_perc`` from /metrics)."""

    running: int = 0
    waiting: int = 0
    kv_usage: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("running", "waiting"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"PodLoad.{name} must be an int, not {_type_name(value)}")
            number = _exact_int(value)
            if not 0 <= number < MAX_REQUESTS:
                shown = number if abs(number) < 1 << 64 else f"an int of {number.bit_length()} bits"
                raise ValueError(f"PodLoad.{name} must be in [0, 2**53), got {shown}")
            object.__setattr__(self, name, number)
        usage = self.kv_usage
        if usage is not None:
            if not isinstance(usage, (int, float, np.integer, np.floating)) or isinstance(usage, (bool, np.bool_)):
                raise TypeError(f"PodLoad.kv_usage must be a float in [0, 1] or None, not {_type_name(usage)}")
            fraction = _own_float(usage)
            if not 0.0 <= fraction <= 1.0:  # NaN fails both comparisons
                raise ValueError(f"PodLoad.kv_usage must be in [0, 1], got {fraction}")
            object.__setattr__(self, "kv_usage", fraction)


def _own_float(value: Any) -> float:
    """A number's own value as a float, read once (an int or float subclass's __float__ is its author's
    code; what is checked is what is kept), or ValueError for an int past any float."""
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, (int, np.integer)):
        number = _exact_int(value)
        try:
            return float(number)
        except OverflowError:
            bits = number.bit_length()
            raise ValueError(f"PodLoad.kv_usage must be in [0, 1], got an int of {bits} bits") from None
    return float(value)


# Requests a PodLoad may report: counts a float holds exactly, so that every cost is a float
MAX_REQUESTS = 1 << 53


def _load_terms(name: str, load: Any) -> Tuple[int, float]:
    """A candidate's PodLoad as (requests it reports, kv usage), read once and checked again.

    A PodLoad was checked when it was made, but its fields can be replaced since (object.__setattr__)
    or be a subclass's properties; read here, before the router's lock is taken, they cannot run the
    caller's code under it, and what the cost uses is what was checked."""
    if not isinstance(load, PodLoad):
        raise TypeError(f"pods maps a pod name to a PodLoad, got {_type_name(load)} for {name!r}")
    running, waiting, usage = load.running, load.waiting, load.kv_usage
    if (type(running) is int and type(waiting) is int and 0 <= running < MAX_REQUESTS
            and 0 <= waiting < MAX_REQUESTS and (usage is None or type(usage) is float and 0.0 <= usage <= 1.0)):
        return running + waiting, usage or 0.0
    try:
        checked = PodLoad(running, waiting, usage)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"pods[{name!r}]: {exc}") from None
    return checked.running + checked.waiting, checked.kv_usage or 0.0


def _candidates(pods: Any) -> Tuple[List[str], Dict[str, int], Optional[Dict[str, Tuple[int, float]]]]:
    """The candidates' names in order (plain str: a str subclass's own hash and eq never run under the
    router's lock), a dict of them -> 0 (in order), and their loads as (requests, kv usage) when given
    as a mapping (all checked first)."""
    loads: Optional[Dict[str, Tuple[int, float]]] = None
    kind = type(pods)
    if kind is list or kind is tuple:  # the common case, without the ABC checks below
        names = list(pods)
    elif isinstance(pods, Mapping):
        given = [(name, pods[name]) for name in list(pods)]
        names = [name for name, _ in given]
        _plain_names(names)
        loads = {plain: _load_terms(plain, load) for plain, (_, load) in zip(names, given)}
    elif isinstance(pods, (str, bytes, bytearray, memoryview)) or not isinstance(pods, Iterable):
        raise TypeError(f"pods must be an iterable of pod names or a mapping name -> PodLoad, "
                        f"not {_type_name(pods)}")
    else:
        names = list(pods)
    if loads is None:
        _plain_names(names)
    if not names:
        raise ValueError("pods is empty: choose needs at least one candidate pod")
    zeros = dict.fromkeys(names, 0)
    if len(zeros) != len(names):
        seen: Set[str] = set()
        twice = next(p for p in names if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        raise ValueError(f"pods lists {twice!r} more than once")
    return names, zeros, loads


def _plain_names(names: List[Any]) -> None:
    """Check that names holds pod names, and make each a plain str in place."""
    if set(map(type, names)) - {str}:
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"pods must hold pod names (str), got {_type_name(name)}")
            names[i] = str.__str__(name)  # not str(name): that is "Pod.A" for a str enum
    if "" in names:
        raise ValueError("pods holds an empty name: a pod name is a non-empty str")
