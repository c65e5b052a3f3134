"""The demo's four routing policies (python -m prefixindex demo): random, least-load, prefix-only and
prefixindex.routing.Router with its default settings. Each chooses among a model's ready pods; the
demo (prefixindex/_tools/demo.py) runs one cluster per policy on the same request stream."""

from __future__ import annotations

import heapq
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from prefixindex.routing import Choice, Router

if TYPE_CHECKING:
    from prefixindex._tools.demo import Cluster, DemoConfig

__all__ = ["POLICIES", "LeastLoadPolicy", "Policy", "PrefixOnlyPolicy", "RandomPolicy", "RouterPolicy"]


class Policy:
    """Chooses a ready pod for each request; ``index`` is None for policies that need no index."""

    name = ""
    uses_index = False

    def __init__(self, config: "DemoConfig", index: Any) -> None:
        self.index = index
        self.tie_break = np.random.default_rng([config.seed, 3])

    def choose(self, now: float, model: str, prompt: np.ndarray, ready: List[str], cluster: "Cluster") -> str:
        raise NotImplementedError

    def dispatched(self, pod: str, ttft_end: float, end: float) -> None:
        """Told when the chosen request's prefill and decode end (the queue model's times)."""

    def advance(self, now: float) -> None:
        """Called before each request with the modelled time."""


class RandomPolicy(Policy):
    name = "random"

    def choose(self, now: float, model: str, prompt: np.ndarray, ready: List[str], cluster: "Cluster") -> str:
        return ready[int(self.tie_break.integers(len(ready)))]


class LeastLoadPolicy(Policy):
    name = "least-load"

    def choose(self, now: float, model: str, prompt: np.ndarray, ready: List[str], cluster: "Cluster") -> str:
        least = min(cluster.in_flight[p] for p in ready)
        candidates = [p for p in ready if cluster.in_flight[p] == least]
        return candidates[int(self.tie_break.integers(len(candidates)))] if len(candidates) > 1 else candidates[0]


class PrefixOnlyPolicy(Policy):
    """Most matched blocks, ties to the least loaded, then at random: what the index alone suggests."""

    name = "prefix-only"
    uses_index = True

    def __init__(self, config: "DemoConfig", index: Any) -> None:
        super().__init__(config, index)
        self.latency_ns: List[int] = []
        self.last_matched: Dict[str, int] = {}

    def choose(self, now: float, model: str, prompt: np.ndarray, ready: List[str], cluster: "Cluster") -> str:
        t0 = time.perf_counter_ns()
        matched, _ = self.index.match(model, -1, prompt, ready)
        self.latency_ns.append(time.perf_counter_ns() - t0)
        self.last_matched = matched
        best = max(matched.get(p, 0) for p in ready)
        candidates = [p for p in ready if matched.get(p, 0) == best]
        least = min(cluster.in_flight[p] for p in candidates)
        candidates = [p for p in candidates if cluster.in_flight[p] == least]
        return candidates[int(self.tie_break.integers(len(candidates)))] if len(candidates) > 1 else candidates[0]


class RouterPolicy(Policy):
    """prefixindex.routing.Router with its default settings, on the modelled clock; it is told when
    each request's prefill ends (prefill_done) and when it finishes (finished)."""

    name = "router"
    uses_index = True

    def __init__(self, config: "DemoConfig", index: Any) -> None:
        super().__init__(config, index)
        self.now = 0.0
        self.router = Router(index, clock=lambda: self.now)
        self._due: List[Tuple[float, int, int, Choice]] = []  # heap of (time, seq, 0 prefill / 1 end, choice)
        self._seq = 0
        self._last: Optional[Choice] = None

    def advance(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            when, _, kind, choice = heapq.heappop(due)
            self.now = when
            (self.router.finished if kind else self.router.prefill_done)(choice)
        self.now = now

    def choose(self, now: float, model: str, prompt: np.ndarray, ready: List[str], cluster: "Cluster") -> str:
        self._last = self.router.choose(model, -1, prompt, ready)
        return self._last.pod

    def dispatched(self, pod: str, ttft_end: float, end: float) -> None:
        assert self._last is not None
        heapq.heappush(self._due, (ttft_end, self._seq, 0, self._last))
        heapq.heappush(self._due, (end, self._seq + 1, 1, self._last))
        self._seq += 2


POLICIES = (RandomPolicy, LeastLoadPolicy, PrefixOnlyPolicy, RouterPolicy)
