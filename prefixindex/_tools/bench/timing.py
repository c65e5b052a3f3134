"""Timing: an ``Op`` is a workload on one backend; ``measure`` times ops batch by batch, in turn.

``time.perf_counter_ns`` around a batch of calls sized to about 200 us; the figure is the median over
batches of the per-call time, with the interquartile range as the spread.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import LORA

# A batch of calls is timed as one; ~200 us keeps most batches clear of the scheduler's time slices on
# a busy machine, and the two clock reads per batch far below the figures.
BATCH_NS = 200_000
MAX_BATCHES = 2000  # per backend and row: plenty for a median, and it keeps the run short


class Op:
    """One workload on one backend: ``batch(k)`` makes k calls and returns the ns they took.

    ``max_batch`` bounds k (the size of a pool of distinct events or prepared arguments); ``check()``,
    run once before the timing, raises if the calls do not do what the workload says they do.
    """

    def __init__(self, batch: Callable[[int], int], max_batch: int = 1 << 20,
                 check: Optional[Callable[[], None]] = None) -> None:
        self.batch = batch
        self.max_batch = max_batch
        self.check = check


def loop_op(fn: Callable[..., Any], args: Sequence[Tuple[Any, ...]]) -> Op:
    """Calls fn(*args[i]) for i = 0 .. k-1 (args cycled to the batch size ahead of time)."""

    def batch(k: int) -> int:
        todo = args[:k]
        t0 = time.perf_counter_ns()
        for a in todo:
            fn(*a)
        return time.perf_counter_ns() - t0

    return Op(batch, len(args))


def cycling_op(fn: Callable[..., Any], args: Sequence[Tuple[Any, ...]]) -> Op:
    """Like loop_op, but each batch takes the next k arguments (wrapping around), so that batch after
    batch walks the whole pool: for workloads whose point is that the data is not in the caches."""
    cursor = [0]
    n = len(args)

    def batch(k: int) -> int:
        start = cursor[0]
        todo = args[start:start + k]
        if len(todo) < k:
            todo = list(todo) + list(args[:k - len(todo)])
        cursor[0] = (start + k) % n
        t0 = time.perf_counter_ns()
        for a in todo:
            fn(*a)
        return time.perf_counter_ns() - t0

    return Op(batch, n)


def events_op(process: Callable[[Any], Any], events: Sequence[Any],
              before: Optional[Tuple[Callable[[Any], Any], Sequence[Any]]] = None,
              after: Optional[Tuple[Callable[[Any], Any], Sequence[Any]]] = None) -> Op:
    """Processes k distinct events; ``before`` and ``after`` (a function and its k events, untimed) set
    the table up for the batch and put it back, so that every batch starts from the same table."""

    def batch(k: int) -> int:
        if before is not None:
            for event in before[1][:k]:
                before[0](event)
        todo = events[:k]
        t0 = time.perf_counter_ns()
        for event in todo:
            process(event)
        elapsed = time.perf_counter_ns() - t0
        if after is not None:
            for event in after[1][:k]:
                after[0](event)
        return elapsed

    return Op(batch, len(events))


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(per_call_ns: Sequence[float], calls: int) -> Dict[str, Any]:
    values = sorted(per_call_ns)
    return {"median_ns": statistics.median(values), "p25_ns": _quantile(values, 0.25),
            "p75_ns": _quantile(values, 0.75), "min_ns": values[0], "batches": len(values), "calls": calls}


def measure(ops: Dict[str, Op], budget_s: float, batch_ns: float = BATCH_NS, min_batches: int = 7,
            max_batches: int = MAX_BATCHES) -> Dict[str, Dict[str, Any]]:
    """Median per-call ns of each op, taking batches of the ops in turn until the budget is spent.

    An op whose check or first calls raise is left out, with ``{"error": message}`` as its result.
    """
    sizes: Dict[str, int] = {}
    errors: Dict[str, Dict[str, Any]] = {}
    for name, op in ops.items():
        try:
            if op.check is not None:
                op.check()
            op.batch(1)  # warm up: first-call costs, caches
            estimate = min(op.batch(1) for _ in range(3))
            k = max(1, int(batch_ns / max(estimate, 1)))
            sizes[name] = min(k, op.max_batch)
            op.batch(sizes[name])
        except Exception as exc:  # report it in the table rather than lose the other rows
            errors[name] = {"error": f"{type(exc).__name__}: {exc}"}
    samples: Dict[str, List[float]] = {name: [] for name in sizes}
    calls = dict.fromkeys(sizes, 0)
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while sizes and rounds < max_batches and (rounds < min_batches or time.perf_counter() < deadline):
        for name, k in sizes.items():
            samples[name].append(ops[name].batch(k) / k)
            calls[name] += k
        rounds += 1
    out = {name: summarize(samples[name], calls[name]) for name in sizes}
    out.update(errors)
    return out


def loop_overhead_ns(budget_s: float = 0.05) -> float:
    """What the timing loop itself costs per call (a call of a no-op function): context for the figures."""

    def noop(*_: Any) -> None:
        return None

    op = loop_op(noop, [("m", LORA, b"", None)] * 1000)
    return float(measure({"noop": op}, budget_s, batch_ns=2e5)["noop"]["median_ns"])



def stat_us(stat: Dict[str, Any], per: float = 1.0) -> Dict[str, Any]:
    """A ``measure`` result (ns per call) in us per ``per`` units of work (per block, per event, ...),
    or the error it reported."""
    if "error" in stat:
        return {"error": stat["error"], "pass": None}
    out: Dict[str, Any] = {"batches": stat["batches"], "calls": stat["calls"], "median_ns_per_call": stat["median_ns"]}
    for key, src in (("median", "median_ns"), ("p25", "p25_ns"), ("p75", "p75_ns"), ("best", "min_ns")):
        out[key] = stat[src] / per / 1000.0
    return out
