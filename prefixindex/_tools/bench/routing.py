"""Bench section: ``Router.choose`` with 64 candidate pods and a 1,024-token prompt, as a list of ints
(the row with the target) and as a uint32 array (the same call without the list conversion, which
shows how much of the time is the router's own).

``run(modules, quick, budget_s, say)`` returns result rows shaped like the bench's other rows (id,
title, unit, better, target, values per backend with median/p25/p75/best in us per call, speedup).
The table holds the prompt's leading blocks on a few pods (8, 16, 32 and all 64 blocks), as a router
in front of a warm cluster sees it. Each timed call is ``choose`` followed by ``finished`` for that
choice, so that the router's state is the same at every call (in-flight work does not pile up and move
the choice from pod to pod); ``finished`` is a few hundred nanoseconds of the figure.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from prefixindex.routing import Router

from .common import RowSpec, judge, result_row

SUMMARY = ("Router.choose then finished, 64 candidates, four of which hold 8/16/32/64 of the prompt's "
           "64 blocks; the target is the compiled core's")
BLOCK_SIZE = 16
PROMPT = list(range(1_000, 2_024))
ROWS: List[RowSpec] = [
    ("router_choose_64", "Router.choose + finished, 1,024-token list of ints, 64 candidates", "us/call", "lower",
     15.0, None),
    ("router_choose_64_array", "  the same, a uint32 array", "us/call", "lower", None, None),
]
PROMPTS: List[Any] = [PROMPT, np.array(PROMPT, dtype=np.uint32)]  # one per row
PODS = [f"default/vllm-{i}" for i in range(64)]
HOLDERS = {PODS[3]: 8, PODS[17]: 16, PODS[40]: 32, PODS[62]: 64}  # pod -> leading blocks it holds


def _router(module: Any) -> Router:
    from prefixindex import BlockStored

    table = module.SyncPrefixHashTable(seed=0, block_size=BLOCK_SIZE, background_eviction=False)
    for pod, blocks in HOLDERS.items():
        engine = [hash((pod, i)) % 2**63 for i in range(blocks)]
        table.process_block_stored(BlockStored(engine, PROMPT[:blocks * BLOCK_SIZE], "bench-model", -1, pod, None))
    return Router(table)


def _time_batches(router: Router, prompt: Any, budget_s: float, min_batches: int = 7) -> List[float]:
    """Per-call ns of batches of choose, until the budget is spent (at least min_batches)."""
    choose, finished = router.choose, router.finished
    k = 50
    samples: List[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_batches or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        for _ in range(k):
            finished(choose("bench-model", -1, prompt, PODS))
        samples.append((time.perf_counter_ns() - t0) / k)
        if len(samples) >= 2_000:
            break
    return samples


def _row(spec: RowSpec, prompt: Any, modules: Dict[str, Any], per_row: float,
         say: Callable[[str], None]) -> Dict[str, Any]:
    values: Dict[str, Dict[str, Any]] = {}
    for name, module in modules.items():
        say(f"timing {spec[0]} ({name})")
        router = _router(module)
        try:
            check = router.choose("bench-model", -1, prompt, PODS)  # checked once, untimed
            assert check.pod == PODS[62] and check.matched[PODS[62]] == 64 and len(check.cost) == 64
            router.finished(check)
            for _ in range(20):  # warm up
                router.finished(router.choose("bench-model", -1, prompt, PODS))
            samples = sorted(_time_batches(router, prompt, per_row / max(1, len(modules))))
        except Exception as exc:  # report it in the table rather than lose the other rows
            values[name] = {"error": f"{type(exc).__name__}: {exc}", "pass": None}
            continue
        finally:
            router._table.close()
        n = len(samples)
        values[name] = {"median": statistics.median(samples) / 1000.0, "p25": samples[n // 4] / 1000.0,
                        "p75": samples[(3 * n) // 4] / 1000.0, "best": samples[0] / 1000.0, "batches": n,
                        "calls": 50 * n}
    return result_row(spec, judge(values, spec, judged=("cython",)))


def run(modules: Dict[str, Any], quick: bool, budget_s: Optional[float], say: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The section's rows, timed on every backend in ``modules`` (name -> backend module)."""
    per_row = (0.25 if quick else 3.0) if budget_s is None else budget_s
    return [_row(spec, prompt, modules, per_row, say) for spec, prompt in zip(ROWS, PROMPTS)]
