"""Helpers shared by the benchmark modules; not benchmarks themselves.

The suite has to import and run against older commits of prefixindex too, so it relies only on the
public API of SPEC.md (``SyncPrefixHashTable``, ``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``),
imports prefixindex lazily, and selects a backend by importing its module. A backend that is absent
makes ``setup`` raise NotImplementedError, which asv reports as a skipped benchmark.

asv here re-runs ``setup`` before every timed call, and times one call per sample (the installed asv_runner 0.3.2:
"setup hooks isolate timed calls"). So expensive state is built once per process and kept in ``memo``,
``setup`` only resets what the previous call changed, and the classes of microsecond calls ask for
many samples (``MICRO_REPEAT``).
"""

from __future__ import annotations

import gc
import importlib
import os
from typing import Any, Callable, Dict, Hashable, List, Optional

import numpy as np

BACKENDS = ["python", "cython"]
MODULES = {"python": "prefixindex._core_py", "cython": "prefixindex._core"}
BLOCK_SIZE = 16
BLOCK_BYTES = 4 * BLOCK_SIZE
SEED = 0x5EED
LORA = -1
POD = "pod-0"

# asv's ``repeat`` (min samples, max samples, max seconds) for calls of microseconds to milliseconds:
# up to 200 one-call samples per round, each after a cheap setup
MICRO_REPEAT = (20, 200, 2.0)
# ... and for calls whose setup rebuilds a big table before every sample (with warmup_time = 0)
HEAVY_REPEAT = (2, 5, 60.0)


def backend(name: str) -> Any:
    """The backend module, or NotImplementedError (asv: skipped) when it does not import here.

    A module found outside the directory of the ``prefixindex`` package is refused too: with an older
    tree on PYTHONPATH (docs/performance.md, comparing commits), an editable install's import hook
    would otherwise hand out the work tree's compiled core alongside the old tree's Python code.
    """
    try:
        module = importlib.import_module(MODULES[name])
    except ImportError as exc:
        raise NotImplementedError(f"backend {name!r} is not available: {exc}") from None
    package_dir = os.path.dirname(os.path.abspath(api().__file__))
    if os.path.dirname(os.path.abspath(module.__file__)) != package_dir:
        raise NotImplementedError(f"backend {name!r} ({module.__file__}) is not part of the prefixindex "
                                  f"package in use ({package_dir})")
    return module


def api() -> Any:
    """The prefixindex package (events live there, shared by both backends)."""
    return importlib.import_module("prefixindex")


def make_table(module: Any, max_prefixes_per_context: int = 100_000, max_contexts: int = 1_000,
               **extra: Any) -> Any:
    return module.SyncPrefixHashTable(seed=SEED, block_size=BLOCK_SIZE, background_eviction=False,
                                      max_prefixes_per_context=max_prefixes_per_context,
                                      max_contexts=max_contexts, **extra)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def token_bytes(gen: np.random.Generator, *shape: int) -> np.ndarray:
    """Random token bytes (random 32-bit token ids, 4 bytes each)."""
    return gen.integers(0, 256, size=shape, dtype=np.uint8)


def engine_hashes(gen: np.random.Generator, n: int) -> np.ndarray:
    """n engine block hashes: arbitrary uint64 values, as vLLM's are."""
    return gen.integers(0, 2**64, size=n, dtype=np.uint64)


def model(c: int) -> str:
    return f"model-{c:04d}"


def pod(p: int) -> str:
    return f"pod-{p}"


class FakeClock:
    """A clock moved by hand, so that staleness is benchmarked without waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chain_events(gen: np.random.Generator, n_blocks: int, chain: int, model_name: str, pod_name: str) -> List[Any]:
    """n_blocks new blocks for one pod in one context, as BlockStored events of ``chain`` blocks each,
    every event a fresh chain from the root (the events keep views of two big arrays, not copies)."""
    P = api()
    tokens = token_bytes(gen, n_blocks, BLOCK_BYTES)
    hashes = engine_hashes(gen, n_blocks)
    return [P.BlockStored(hashes[i:i + chain], tokens[i:i + chain], model_name, LORA, source_pod=pod_name)
            for i in range(0, n_blocks, chain)]


class PromptTable:
    """``contexts`` contexts, each holding the chain of one random ``prompt_tokens``-token prompt for
    pod-0, stored as one BlockStored per prompt; in context 0, pods pod-0 .. pod-{pods-1} all hold it.

    ``queries[kind]`` are queries on context 0: "full" (the prompt), "partial" (its first half, then
    other tokens), "miss" (other tokens from block 0 on); ``expected[kind]`` the blocks each holder matches.
    """

    def __init__(self, module: Any, contexts: int, prompt_tokens: int, pods: int = 1, seed: int = 0) -> None:
        P = api()
        gen = rng(seed)
        self.n_blocks = n = prompt_tokens // BLOCK_SIZE
        self.contexts = contexts
        self.pods = [pod(p) for p in range(pods)]
        self.prompts = token_bytes(gen, contexts, prompt_tokens * 4)
        self.engine = [engine_hashes(gen, n) for _ in range(contexts)]
        self.table = make_table(module, max_prefixes_per_context=max(100_000, 4 * n),
                                max_contexts=max(1_000, 2 * contexts))
        for c in range(contexts):
            blocks = self.prompts[c].reshape(n, BLOCK_BYTES)
            for name in (self.pods if c == 0 else self.pods[:1]):
                self.table.process_block_stored(P.BlockStored(self.engine[c], blocks, model(c), LORA, source_pod=name))
        half = (n // 2) * BLOCK_BYTES
        other = token_bytes(gen, prompt_tokens * 4)
        self.queries = {"full": self.prompts[0], "partial": np.concatenate([self.prompts[0][:half], other[half:]]),
                        "miss": other}
        self.expected = {"full": n, "partial": n // 2, "miss": 0}
        self.entries = (contexts - 1 + pods) * n

    def close(self) -> None:
        self.table.close()


_MEMO: Dict[Hashable, Any] = {}


def memo(key: Hashable, build: Callable[[], Any]) -> Any:
    """The state for ``key``, built once per process; only the latest key is kept (memory)."""
    if key not in _MEMO:
        for old in _MEMO.values():
            close: Optional[Callable[[], None]] = getattr(old, "close", None)
            if close is not None:
                close()
        _MEMO.clear()
        gc.collect()
        _MEMO[key] = build()
    return _MEMO[key]


def forget() -> None:
    """Drop the memoised state (tests call this between benchmarks)."""
    memo(object(), lambda: None)
    _MEMO.clear()
