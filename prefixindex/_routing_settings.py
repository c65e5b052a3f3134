"""The Router's settings: their defaults and the checks that each given value passes (docs/routing.md,
"Settings"). ``prefixindex.routing`` resolves a Router's keyword arguments with ``resolve_settings``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Mapping, cast

import numpy as np

from ._events import _exact_int

__all__ = ["DEFAULTS", "resolve_settings"]


def _type_name(value: Any) -> str:
    return type(value).__name__


# A setting's check returns the value to keep, or raises TypeError (wrong type) / ValueError (bad value).
def _number(name: str, low: float, low_inclusive: bool = True) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
            raise TypeError(f"setting {name} must be a number, not {_type_name(value)}")
        # an int or float subclass's own value (its __float__ or __int__ is its author's code; the rest
        # of the library reads the value itself, _events._exact_int), converted once: checked as kept
        own: Any = (float.__float__(value) if isinstance(value, float)
                    else _exact_int(value) if isinstance(value, int) else value)
        try:
            number = float(own)
        except OverflowError:  # an int past any float
            bits = int(own).bit_length()
            raise ValueError(f"setting {name} must be a finite number, got an int of {bits} bits") from None
        if math.isnan(number) or math.isinf(number) or number < low or (number == low and not low_inclusive):
            bound = ">=" if low_inclusive else ">"
            raise ValueError(f"setting {name} must be a finite number {bound} {low:g}, got {number}")
        return number
    return check


def _count(name: str, low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise TypeError(f"setting {name} must be an int, not {_type_name(value)}")
        number = _exact_int(value)  # an int subclass's own value, checked as it is kept
        if number < low:
            raise ValueError(f"setting {name} must be >= {low}, got {number}")
        return number
    return check


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"setting {name} must be a bool, not {_type_name(value)}")
        return bool(value)
    return check


def _callable(value: Any) -> Callable[[], float]:
    if not callable(value):
        raise TypeError(f"setting clock must be a callable returning seconds, not {_type_name(value)}")
    return cast(Callable[[], float], value)


DEFAULTS: Dict[str, Any] = {
    "prefill_weight": 1.0,
    "pending_weight": 0.0,
    "request_tokens": 64.0,
    "load_exponent": 2.5,
    "kv_usage_tokens": 0.0,
    "guard_requests": 2,
    "guard_idle_pods": 3,
    "learn_concurrency": True,
    "queue_tokens": 1500.0,
    "predicted_ttl_seconds": 5.0,
    "max_predicted_entries": 100_000,
    "clock": time.monotonic,
}

_CHECKS: Dict[str, Callable[[Any], Any]] = {
    "prefill_weight": _number("prefill_weight", 0.0),
    "pending_weight": _number("pending_weight", 0.0),
    "request_tokens": _number("request_tokens", 0.0),
    "load_exponent": _number("load_exponent", 1.0),
    "kv_usage_tokens": _number("kv_usage_tokens", 0.0),
    "guard_requests": _count("guard_requests", 1),
    "guard_idle_pods": _count("guard_idle_pods", 1),
    "learn_concurrency": _flag("learn_concurrency"),
    "queue_tokens": _number("queue_tokens", 0.0),
    "predicted_ttl_seconds": _number("predicted_ttl_seconds", 0.0, low_inclusive=False),
    "max_predicted_entries": _count("max_predicted_entries", 0),
    "clock": _callable,
}


def resolve_settings(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Every setting in force: the defaults, overridden by the given ones once each has passed its check."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown Router setting(s): {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    resolved = dict(DEFAULTS)
    for name, value in settings.items():
        resolved[name] = _CHECKS[name](value)
    return resolved
