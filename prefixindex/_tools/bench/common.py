"""What every bench section shares: the workload constants, the backends, tables, and result rows."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ... import _backend

BLOCK_SIZE = 16
BLOCK_BYTES = 4 * BLOCK_SIZE
SEED = 0x5EED
POD = "pod-0"
LORA = -1

# backend name -> module; the name is what the module's BACKEND says
BACKEND_MODULES = dict(_backend.BACKENDS)


def available_backends(names: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """({name: module} of the backends that import here, {name: why not} of the others)."""
    found: Dict[str, Any] = {}
    missing: Dict[str, str] = {}
    for name in (names or list(BACKEND_MODULES)):
        if name not in BACKEND_MODULES:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_MODULES)}")
        try:
            found[name] = _backend.load(name)
        except ImportError as exc:
            missing[name] = str(exc)
    return found, missing


def make_table(module: Any, max_prefixes_per_context: int = 100_000, max_contexts: int = 1_000,
               **extra: Any) -> Any:
    return module.SyncPrefixHashTable(seed=SEED, block_size=BLOCK_SIZE, background_eviction=False,
                                      max_prefixes_per_context=max_prefixes_per_context,
                                      max_contexts=max_contexts, **extra)


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n engine block hashes: arbitrary uint64 values, as vLLM's are."""
    return rng.integers(0, 2**64, size=n, dtype=np.uint64)


# id, title, unit, better ("lower" / "higher"), target (None: for information), speedup target (None: none)
RowSpec = Tuple[str, str, str, str, Optional[float], Optional[float]]


def passes(value: float, target: Optional[float], better: str) -> Optional[bool]:
    if target is None:
        return None
    return value <= target if better == "lower" else value >= target


def result_row(spec: RowSpec, values: Dict[str, Dict[str, Any]], compare: bool = True) -> Dict[str, Any]:
    """One row of the results: ``values`` {backend: {"median": ..., "pass": ...} or {"error": ...}}; the
    ratio is how many times better the compiled core does than the fallback, from the same run (none
    when ``compare`` is false: for rows whose figures are themselves ratios)."""
    row_id, title, unit, better, target, speedup_target = spec
    speedup = None
    if compare and "median" in values.get("python", {}) and "median" in values.get("cython", {}):
        a, b = values["python"]["median"], values["cython"]["median"]
        speedup = (a / b if better == "lower" else b / a) if min(a, b) > 0 else None
    return {
        "id": row_id, "title": title, "unit": unit, "better": better, "target": target, "values": values,
        "speedup": speedup, "speedup_target": speedup_target,
        "speedup_pass": None if speedup is None or speedup_target is None else speedup >= speedup_target,
    }


def judge(values: Dict[str, Dict[str, Any]], spec: RowSpec,
          judged: Sequence[str] = tuple(BACKEND_MODULES)) -> Dict[str, Dict[str, Any]]:
    """Sets each value's "pass" against the row's target; backends not in ``judged`` get None (their
    figures are for information: the targets of the newer sections are the compiled core's)."""
    for name, value in values.items():
        if "median" in value:
            value["pass"] = passes(value["median"], spec[4], spec[3]) if name in judged else None
        else:
            value.setdefault("pass", None)
    return values
