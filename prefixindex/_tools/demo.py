"""python -m prefixindex demo: four routing policies on the same synthetic LLM cluster and request stream.

The demo builds a simulated cluster and drives the index only through KV-cache events, the way a
router in front of vLLM pods would:

- Each simulated pod serves one model and has a finite prefix cache (a capacity in blocks, least
  recently used evicted first, as vLLM's prefix cache does). It names its blocks with its own engine
  block hashes (a per-pod salted hash of the parent block's hash and the block's tokens) and reports
  ``BlockStored`` (chained through ``parent_block_hash``; prefill in multi-block chunks, decode one
  block at a time) and ``BlockRemoved`` when it evicts. A pod that restarts reports
  ``AllBlocksCleared``, is not ready for a while, and comes back with a new salt.
- The workload mixes shared system prompts with multi-turn chat sessions: each turn's prompt is the
  whole conversation so far plus a new user message, and the model's answer is cached too.
- The same request stream runs once per policy, each on its own copy of the cluster (and its own
  index): random, least-load (fewest requests in flight), prefix-only (most matched blocks, ties to
  the least loaded) and ``prefixindex.routing.Router`` with its default settings.
- Time is modelled (docs/routing.md, "The demo's queue model"): requests arrive at a fixed rate per pod;
  each pod has a few slots, held from the start of a request's prefill to the end of its decode; a
  request waits for a slot, prefills its uncached tokens at a fixed rate, then decodes for a fixed time.
  Its time to first token is its wait plus its prefill.

The hit rate is ground truth: the fraction of prompt blocks that the chosen pod really held when the
request arrived, as the simulated pod counts it, not as the index claims it.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import prefixindex
from prefixindex._config import _MAXIMA
from prefixindex._tools._checks import check_count
from prefixindex._tools.demo_policies import POLICIES, Policy, PrefixOnlyPolicy, RouterPolicy

MODELS = ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct")
MODEL_TRAFFIC_SHARE = (0.6, 0.4)  # the first model is the busier one
VOCAB_SIZE = 32_000
MAX_MODEL_LEN = 4_096  # tokens; a session ends when its next turn would not fit
_BLOCK_SIZE_MAX = _MAXIMA["block_size"]  # (2**24 tokens)
SYSTEM_PROMPTS_PER_MODEL = 8
SYSTEM_PROMPT_TOKENS = (300, 1_200)  # [low, high) token counts
FIRST_MESSAGE_TOKENS = (30, 400)
FOLLOW_UP_TOKENS = (10, 200)
ANSWER_TOKENS = (30, 500)
TURN_CONTINUE_PROBABILITY = 0.7  # geometric number of turns per session, mean ~3.3
ACTIVE_SESSIONS = 40  # conversations in progress at any time
NEW_SESSION_PROBABILITY = 0.1  # chance that a tick starts a new session although enough are active
THINK_TICKS = (5, 60)  # ticks (one request arrives per tick) between an answer and the next turn
PREFILL_CHUNK_BLOCKS = 32  # chunked prefill: at most this many prompt blocks per BlockStored
RESTART_DOWN_TICKS = 60  # a restarting pod is not ready for this many ticks
REQUESTS_PER_RESTART = 1_000
#: The command line's bounds (DemoConfig itself takes any size a caller's memory holds).
MAX_DEMO_REQUESTS = 1_000_000
MAX_DEMO_PODS = 10_000


@dataclass(frozen=True)
class DemoConfig:
    requests: int = 3_000
    pods: int = 8
    seed: int = 0
    block_size: int = 16
    # 10,240 tokens of KV cache per pod: small next to a real GPU, but so is the workload, and it is
    # what makes the caches churn (evict) within a few thousand requests.
    cache_tokens_per_pod: int = 10_240
    # The queue model (docs/routing.md): vLLM's max_num_seqs in miniature, a prefill rate of a mid-size
    # model on one GPU, and a fixed decode time; arrivals scale with the pod count, so that 8 and 64
    # pods run at the same utilisation: about 2.1 slot-seconds per request, so a bit over half of the
    # slots are busy on average, about 63 % on the busier model's pods.
    slots_per_pod: int = 4
    prefill_tokens_per_s: float = 8_000.0
    decode_seconds: float = 2.0
    requests_per_s_per_pod: float = 1.0

    def __post_init__(self) -> None:
        for name in ("requests", "pods", "block_size", "cache_tokens_per_pod", "slots_per_pod"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prefill_tokens_per_s", "decode_seconds", "requests_per_s_per_pod"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.block_size > _BLOCK_SIZE_MAX:  # the index's own bound (D13): a usage error, not a traceback
            raise ValueError(f"block_size must be at most {_BLOCK_SIZE_MAX:,}, got {self.block_size}")
        if not 0 <= self.seed < 2**64:  # it also seeds the index's prefix hashes
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def models(self) -> Tuple[str, ...]:
        return MODELS[:min(len(MODELS), self.pods)]

    @property
    def cache_blocks_per_pod(self) -> int:
        # Never less than the longest sequence, so that serving one request cannot evict its own prefix.
        return max(self.cache_tokens_per_pod, MAX_MODEL_LEN) // self.block_size + 1


# ---------------------------------------------------------------------------------------------------
# workload


@dataclass(frozen=True)
class Session:
    """One conversation's whole transcript: system prompt, then each turn's message and answer."""

    model: str
    token_ids: np.ndarray = field(repr=False)  # uint32
    token_bytes: np.ndarray = field(repr=False)  # uint8, 4 big-endian bytes per token (SPEC: token bytes)
    raw_bytes: bytes = field(repr=False)  # the same bytes, for hashing by the simulated pods


@dataclass(frozen=True)
class Request:
    """One turn of a session: its prompt is the transcript's first prompt_tokens tokens, and its
    answer takes the transcript to total_tokens."""

    tick: int
    session: int
    prompt_tokens: int
    total_tokens: int
    duration_ticks: int  # how long the request keeps its pod busy (its share of the pod's load)


@dataclass(frozen=True)
class Restart:
    tick: int
    pod: int  # index into the cluster's pods


@dataclass
class Workload:
    models: Tuple[str, ...]
    sessions: List[Session]
    requests: List[Request]
    restarts: List[Restart]
    system_prompts: int


def pod_models(config: DemoConfig) -> List[str]:
    """The model each pod serves: pods are dealt to the models in turn."""
    models = config.models
    return [models[i % len(models)] for i in range(config.pods)]


def make_workload(config: DemoConfig) -> Workload:
    """The request stream, from config.seed alone: the same seed gives the same requests."""
    rng = np.random.default_rng([config.seed, 1])
    models = config.models
    share = np.array(MODEL_TRAFFIC_SHARE[:len(models)])
    share /= share.sum()

    def tokens(bounds: Tuple[int, int]) -> np.ndarray:
        return rng.integers(0, VOCAB_SIZE, size=int(rng.integers(*bounds)), dtype=np.uint32)

    system_prompts = {m: [tokens(SYSTEM_PROMPT_TOKENS) for _ in range(SYSTEM_PROMPTS_PER_MODEL)] for m in models}
    popularity = 1.0 / np.arange(1, SYSTEM_PROMPTS_PER_MODEL + 1)  # Zipf-like: a few prompts dominate
    popularity /= popularity.sum()

    session_models: List[str] = []
    chunks: List[List[np.ndarray]] = []  # per session, the pieces of its transcript
    lengths: List[int] = []
    turns_left: List[int] = []
    ready_at: List[int] = []
    active: List[int] = []
    requests: List[Request] = []

    def start_session() -> int:
        model = models[int(rng.choice(len(models), p=share))]
        system = system_prompts[model][int(rng.choice(SYSTEM_PROMPTS_PER_MODEL, p=popularity))]
        session_models.append(model)
        chunks.append([system])
        lengths.append(len(system))
        turns_left.append(int(rng.geometric(1.0 - TURN_CONTINUE_PROBABILITY)))
        ready_at.append(0)
        active.append(len(chunks) - 1)
        return len(chunks) - 1

    for tick in range(config.requests):
        eligible = [s for s in active if ready_at[s] <= tick]
        if len(active) < ACTIVE_SESSIONS or not eligible or rng.random() < NEW_SESSION_PROBABILITY:
            s, message = start_session(), tokens(FIRST_MESSAGE_TOKENS)
        else:
            s, message = eligible[int(rng.integers(len(eligible)))], tokens(FOLLOW_UP_TOKENS)
        answer = tokens(ANSWER_TOKENS)
        prompt_tokens = lengths[s] + len(message)
        total_tokens = min(prompt_tokens + len(answer), MAX_MODEL_LEN)
        answer = answer[:total_tokens - prompt_tokens]
        chunks[s] += [message, answer]
        lengths[s] = total_tokens
        duration = 2 + len(answer) // 40  # decoding dominates: longer answers hold the pod longer
        requests.append(Request(tick, s, prompt_tokens, total_tokens, duration))
        turns_left[s] -= 1
        ready_at[s] = tick + duration + int(rng.integers(*THINK_TICKS))
        if turns_left[s] == 0 or lengths[s] + FOLLOW_UP_TOKENS[1] >= MAX_MODEL_LEN:
            active.remove(s)

    sessions = []
    for model, pieces in zip(session_models, chunks):
        token_ids = np.concatenate(pieces)
        token_bytes = prefixindex.encode_tokens(token_ids)
        sessions.append(Session(model, token_ids, token_bytes, token_bytes.tobytes()))

    return Workload(models, sessions, requests, _restart_schedule(config, rng),
                    SYSTEM_PROMPTS_PER_MODEL * len(models))


def _restart_schedule(config: DemoConfig, rng: np.random.Generator) -> List[Restart]:
    """About one pod restart per REQUESTS_PER_RESTART requests (at least one), never leaving a model
    without a ready pod."""
    serving = pod_models(config)
    wanted = max(1, round(config.requests / REQUESTS_PER_RESTART))
    first = config.requests // 10  # restarts fall in the middle 80 % of the run, where caches are warm
    ticks = np.sort(rng.integers(first, max(config.requests * 9 // 10, first + 1), size=wanted))
    restarts: List[Restart] = []
    for tick in ticks.tolist():
        pod = int(rng.integers(config.pods))
        down = {r.pod for r in restarts if r.tick <= tick < r.tick + RESTART_DOWN_TICKS}
        others_up = [p for p in range(config.pods) if p != pod and serving[p] == serving[pod] and p not in down]
        if others_up and pod not in down:
            restarts.append(Restart(tick, pod))
    return restarts


# ---------------------------------------------------------------------------------------------------
# the simulated serving pods


class SimulatedPod:
    """A serving engine's prefix cache: finite, LRU, keyed by the engine's own chained block hashes.

    Recency keeps block 0 of every sequence the most recently used (blocks are touched from the tail
    to the head, as vLLM frees a request's blocks tail first), so a parent is always newer than its
    children and the LRU victim never has a cached child: the cache stays closed under prefixes.
    """

    def __init__(self, name: str, model: str, capacity_blocks: int, block_size: int, salt: bytes) -> None:
        self.name = name
        self.model = model
        self.capacity_blocks = capacity_blocks
        self.block_bytes = 4 * block_size
        self.salt = salt
        self.ready = True
        self.cache: "OrderedDict[int, None]" = OrderedDict()  # engine block hash, least recent first

    def engine_hashes(self, raw: bytes, n_blocks: int) -> List[int]:
        """The engine block hashes of the first n_blocks blocks of raw token bytes."""
        out: List[int] = []
        parent = b"\x00" * 8
        width = self.block_bytes
        for i in range(n_blocks):
            parent = hashlib.blake2b(parent + raw[i * width:(i + 1) * width], digest_size=8,
                                     key=self.salt).digest()
            out.append(int.from_bytes(parent, "little"))
        return out

    def cached_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of a sequence (given by its engine hashes) are in the cache."""
        n = 0
        cache = self.cache
        for h in hashes:
            if h not in cache:
                break
            n += 1
        return n

    def cached_prefix_blocks(self, raw: bytes) -> int:
        """Ground truth: how many leading blocks of these token bytes the pod holds right now."""
        return self.cached_blocks(self.engine_hashes(raw, len(raw) // self.block_bytes))

    def serve(self, session: Session, request: Request, events: Optional[List[Any]]) -> int:
        """Run one request: count the prompt blocks found in the cache, then cache the whole sequence
        (prompt and answer), evicting what does not fit. Appends the KV events to ``events`` when it is
        a list. Returns the number of prompt blocks that were served from the cache."""
        width = self.block_bytes
        prompt_blocks = request.prompt_tokens * 4 // width
        total_blocks = request.total_tokens * 4 // width
        hashes = self.engine_hashes(session.raw_bytes, total_blocks)
        cached = self.cached_blocks(hashes)
        cache = self.cache
        for h in reversed(hashes[:cached]):  # protect this request's hits from the eviction below
            cache.move_to_end(h)
        overflow = len(cache) + (total_blocks - cached) - self.capacity_blocks
        evicted = [cache.popitem(last=False)[0] for _ in range(overflow)]
        for h in reversed(hashes):  # block 0 ends up the most recent (see the class docstring)
            cache[h] = None
            cache.move_to_end(h)
        if events is not None:
            if evicted:
                events.append(prefixindex.BlockRemoved(evicted, self.model, -1, self.name))
            # Prefill stores the missing prompt blocks in chunks; decode completes one block at a time.
            # Each event chains onto the block before it through parent_block_hash.
            start = cached
            while start < total_blocks:
                stop = min(start + PREFILL_CHUNK_BLOCKS, prompt_blocks) if start < prompt_blocks else start + 1
                events.append(prefixindex.BlockStored(
                    hashes[start:stop],
                    session.token_bytes[start * width:stop * width].reshape(stop - start, width),
                    self.model, -1, self.name,
                    parent_block_hash=hashes[start - 1] if start else None))
                start = stop
        return min(cached, prompt_blocks)

    def restart(self, salt: bytes, events: Optional[List[Any]]) -> None:
        """The engine restarts with an empty cache and (as a new process) new engine block hashes."""
        self.cache.clear()
        self.salt = salt
        if events is not None:
            events.append(prefixindex.AllBlocksCleared(self.name))


class Cluster:
    """Pods, plus the queue model of docs/routing.md ("The demo's queue model"): each pod has ``slots_per_pod``
    slots, held from the start of a request's prefill to the end of its decode. A request waits for
    the pod's first free slot (first come, first served), prefills its uncached tokens at
    ``prefill_tokens_per_s``, then decodes for ``decode_seconds``; its time to first token is its wait
    plus its prefill."""

    def __init__(self, config: DemoConfig, salt_stream: int) -> None:
        # Engine salts come from their own random stream, so they never shift the workload's draws.
        self._salts = np.random.default_rng([config.seed, 2, salt_stream])
        self.config = config
        self.pods = [SimulatedPod(f"default/vllm-{model.split('-')[0]}-{i}", model, config.cache_blocks_per_pod,
                                  config.block_size, self._new_salt())
                     for i, model in enumerate(pod_models(config))]
        self.by_name = {pod.name: pod for pod in self.pods}
        self.in_flight = dict.fromkeys(self.by_name, 0)  # requests waiting for a slot or holding one
        self.requests_served = dict.fromkeys(self.by_name, 0)
        self._slots = {name: [0.0] * config.slots_per_pod for name in self.by_name}  # heaps of free times
        self._finishing: List[Tuple[float, str]] = []  # heap of (end time, pod name)
        self._back_up: List[Tuple[int, int]] = []  # heap of (tick, pod index) when a restarted pod is ready

    def _new_salt(self) -> bytes:
        return self._salts.bytes(16)

    def advance(self, now: float, tick: int, restarts: Sequence[Restart], events: Optional[List[Any]]) -> None:
        while self._finishing and self._finishing[0][0] <= now:
            self.in_flight[heapq.heappop(self._finishing)[1]] -= 1
        while self._back_up and self._back_up[0][0] <= tick:
            self.pods[heapq.heappop(self._back_up)[1]].ready = True
        for restart in restarts:
            pod = self.pods[restart.pod]
            pod.ready = False
            pod.restart(self._new_salt(), events)
            heapq.heappush(self._back_up, (tick + RESTART_DOWN_TICKS, restart.pod))

    def ready_pods(self, model: str) -> List[str]:
        return [pod.name for pod in self.pods if pod.ready and pod.model == model]

    def dispatch(self, pod_name: str, now: float, uncached_tokens: int) -> Tuple[float, float, float]:
        """Queue a request on the pod: returns (time to first token, prefill end, decode end)."""
        config = self.config
        slots = self._slots[pod_name]
        start = max(now, heapq.heappop(slots))
        prefill_end = start + uncached_tokens / config.prefill_tokens_per_s
        end = prefill_end + config.decode_seconds
        heapq.heappush(slots, end)
        self.in_flight[pod_name] += 1
        self.requests_served[pod_name] += 1
        heapq.heappush(self._finishing, (end, pod_name))
        return prefill_end - now, prefill_end, end




# ---------------------------------------------------------------------------------------------------
# the run


@dataclass
class RoutingResult:
    prompt_blocks: int = 0
    blocks_reused: int = 0
    busiest_pod_share: float = 0.0  # the busiest pod's requests over its model's fair share
    ttft: List[float] = field(default_factory=list, repr=False)  # modelled, seconds, per request

    @property
    def hit_rate(self) -> float:
        return self.blocks_reused / self.prompt_blocks if self.prompt_blocks else 0.0

    def as_dict(self) -> Dict[str, Any]:
        ttft = np.array(self.ttft) if self.ttft else np.zeros(1)
        return {"hit_rate": self.hit_rate, "blocks_reused": self.blocks_reused,
                "prompt_blocks": self.prompt_blocks, "busiest_pod_share": self.busiest_pod_share,
                "ttft_mean_s": float(ttft.mean()), "ttft_p99_s": float(np.percentile(ttft, 99))}


@dataclass
class DemoRun:
    """Everything a run made, for printing and for tests that look inside."""

    config: DemoConfig
    workload: Workload
    clusters: Dict[str, Cluster]
    policies: Dict[str, Policy]
    results: Dict[str, RoutingResult]
    events_sent: Dict[str, int]  # to the prefix-only policy's index
    index_agreed: int  # prefix-only's requests where the index's match for the chosen pod was the truth
    wall_seconds: float

    @property
    def index(self) -> Any:
        """The prefix-only policy's index (fed only by its cluster's events)."""
        return self.policies["prefix-only"].index

    def close(self) -> None:
        for policy in self.policies.values():
            if policy.index is not None:
                policy.index.close()

    def summary(self) -> Dict[str, Any]:
        config = self.config
        prefix_only = self.policies["prefix-only"]
        assert isinstance(prefix_only, PrefixOnlyPolicy) and isinstance(self.policies["router"], RouterPolicy)
        latency_us = np.array(prefix_only.latency_ns) / 1e3
        router_stats = self.policies["router"].router.stats()
        return {
            "backend": prefixindex.BACKEND,
            "seed": config.seed,
            "requests": config.requests,
            "pods": config.pods,
            "models": list(self.workload.models),
            "block_size": config.block_size,
            "cache_blocks_per_pod": config.cache_blocks_per_pod,
            "queue_model": {"slots_per_pod": config.slots_per_pod, "prefill_tokens_per_s": config.prefill_tokens_per_s,
                            "decode_seconds": config.decode_seconds,
                            "requests_per_s_per_pod": config.requests_per_s_per_pod},
            "sessions": len(self.workload.sessions),
            "system_prompts": self.workload.system_prompts,
            "pod_restarts": len(self.workload.restarts),
            "policies": {name: result.as_dict() for name, result in self.results.items()},
            "router_decisions": router_stats["decisions_by_reason"],
            "events_sent": dict(self.events_sent),
            "index_agreed": self.index_agreed,
            "index_stats": self.index.stats(),
            "match_latency_us": {
                "calls": int(len(latency_us)),
                "median": float(np.median(latency_us)) if len(latency_us) else 0.0,
                "p99": float(np.percentile(latency_us, 99)) if len(latency_us) else 0.0,
            },
            "wall_time_s": self.wall_seconds,
        }


def _busiest_share(cluster: Cluster, workload: Workload) -> float:
    """Max over pods of (requests it served) / (its model's requests / the model's pod count)."""
    per_model = {m: sum(1 for r in workload.requests if workload.sessions[r.session].model == m)
                 for m in workload.models}
    pods_per_model = {m: sum(1 for p in cluster.pods if p.model == m) for m in workload.models}
    shares = [cluster.requests_served[p.name] / (per_model[p.model] / pods_per_model[p.model])
              for p in cluster.pods if per_model[p.model]]
    return max(shares, default=0.0)


def _feed(index: Any, events: List[Any], counts: Dict[str, int]) -> None:
    for event in events:
        if isinstance(event, prefixindex.BlockStored):
            counts["block_stored"] += 1
            counts["blocks_in_block_stored"] += event.n_blocks
        elif isinstance(event, prefixindex.BlockRemoved):
            counts["block_removed"] += 1
            counts["blocks_in_block_removed"] += len(event.block_hashes)
        else:
            counts["all_blocks_cleared"] += 1
    index.process_events(events)
    events.clear()


def run(config: DemoConfig) -> DemoRun:
    """Simulate one cluster per policy on the same request stream. The caller calls ``run.close()``."""
    started = time.perf_counter()
    workload = make_workload(config)
    restarts_at: Dict[int, List[Restart]] = {}
    for restart in workload.restarts:
        restarts_at.setdefault(restart.tick, []).append(restart)
    seconds_per_tick = 1.0 / (config.requests_per_s_per_pod * config.pods)
    block_bytes = 4 * config.block_size

    clusters: Dict[str, Cluster] = {}
    policies: Dict[str, Policy] = {}
    results: Dict[str, RoutingResult] = {}
    event_counts: Dict[str, Dict[str, int]] = {}
    for policy_class in POLICIES:
        # Room for everything the pods can hold, so that the index never drops a prefix the pods still
        # have and the comparison is about routing, not about the index's memory bound.
        index = prefixindex.SyncPrefixHashTable(
            prefixindex.Config(seed=config.seed, block_size=config.block_size,
                               max_prefixes_per_context=max(10_000, 2 * config.pods * config.cache_blocks_per_pod)),
            background_eviction=False) if policy_class.uses_index else None
        name = policy_class.name
        policies[name] = policy_class(config, index)
        clusters[name] = Cluster(config, salt_stream=0)  # the same engines, so only the routing differs
        results[name] = RoutingResult()
        event_counts[name] = dict.fromkeys(("block_stored", "blocks_in_block_stored", "block_removed",
                                            "blocks_in_block_removed", "all_blocks_cleared"), 0)
    agreed = 0
    events: List[Any] = []

    for request in workload.requests:
        tick = request.tick
        now = tick * seconds_per_tick
        session = workload.sessions[request.session]
        model = session.model
        n_prompt_blocks = request.prompt_tokens * 4 // block_bytes
        prompt = session.token_bytes[:request.prompt_tokens * 4]
        for name, policy in policies.items():
            cluster, result = clusters[name], results[name]
            feed = policy.index is not None
            cluster.advance(now, tick, restarts_at.get(tick, ()), events if feed else None)
            if feed:
                _feed(policy.index, events, event_counts[name])
            policy.advance(now)
            chosen = policy.choose(now, model, prompt, cluster.ready_pods(model), cluster)
            hits = cluster.by_name[chosen].serve(session, request, events if feed else None)
            if isinstance(policy, PrefixOnlyPolicy):  # the index's match for the pod against its truth
                agreed += policy.last_matched.get(chosen, 0) == hits
            ttft, prefill_end, end = cluster.dispatch(chosen, now, request.prompt_tokens - hits * config.block_size)
            policy.dispatched(chosen, prefill_end, end)
            result.prompt_blocks += n_prompt_blocks
            result.blocks_reused += hits
            result.ttft.append(ttft)
            if feed:
                _feed(policy.index, events, event_counts[name])

    for name, cluster in clusters.items():
        results[name].busiest_pod_share = _busiest_share(cluster, workload)
    return DemoRun(config, workload, clusters, policies, results, event_counts["prefix-only"], agreed,
                   time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------
# output


def format_table(policies: Dict[str, Dict[str, Any]]) -> List[str]:
    """The four-policy table (the README shows one)."""
    lines = [f"{'policy':14}{'hit rate':>10}{'busiest/fair':>14}{'TTFT mean':>12}{'TTFT p99':>11}"]
    for name, p in policies.items():
        lines.append(f"{name:14}{p['hit_rate']:>9.1%} {p['busiest_pod_share']:>13.2f}x"
                     f"{p['ttft_mean_s'] * 1e3:>9.0f} ms{p['ttft_p99_s'] * 1e3:>8.0f} ms")
    return lines


def format_text(summary: Dict[str, Any]) -> str:
    ev, st, lat, q = summary["events_sent"], summary["index_stats"], summary["match_latency_us"], summary["queue_model"]
    decisions = ", ".join(f"{n:,} {reason}" for reason, n in sorted(summary["router_decisions"].items()))
    lines = [
        f"prefixindex demo (backend: {summary['backend']}, seed {summary['seed']})",
        f"cluster:  {summary['pods']} pods serving {len(summary['models'])} models "
        f"({', '.join(summary['models'])}), KV cache of {summary['cache_blocks_per_pod']:,} blocks "
        f"x {summary['block_size']} tokens per pod",
        f"workload: {summary['requests']:,} requests from {summary['sessions']:,} chat sessions over "
        f"{summary['system_prompts']} system prompts; {summary['pod_restarts']} pod restart(s)",
        f"queue model: {q['slots_per_pod']} slots per pod, prefill {q['prefill_tokens_per_s']:,.0f} tokens/s, "
        f"decode {q['decode_seconds']:g} s, arrivals {q['requests_per_s_per_pod']:g}/s per pod",
        "",
        *format_table(summary["policies"]),
        "",
        f"router decisions: {decisions}",
        f"events fed to the prefix-only index: {ev['block_stored']:,} BlockStored "
        f"({ev['blocks_in_block_stored']:,} blocks), {ev['block_removed']:,} BlockRemoved "
        f"({ev['blocks_in_block_removed']:,} blocks), {ev['all_blocks_cleared']:,} AllBlocksCleared",
        f"index stats: {st['contexts']} contexts, {st['prefixes']:,} prefixes, {st['entries']:,} entries, "
        f"{st['pods']} pods; {st['orphan_blocks']:,} orphans, {st['evicted_prefixes']:,} evicted by the bound",
        f"index agreed with the chosen pod's cache on {summary['index_agreed']:,} of {summary['requests']:,} "
        "prefix-only requests",
        f"match latency: median {lat['median']:.1f} us, p99 {lat['p99']:.1f} us ({lat['calls']:,} calls)",
        f"wall time: {summary['wall_time_s']:.2f} s",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from prefixindex.__main__ import command_prog

    parser = argparse.ArgumentParser(
        prog=command_prog("demo"),
        description="Route a synthetic multi-turn chat workload four ways (random, least-load, prefix-only "
                    "and prefixindex.routing.Router) on simulated pods that report KV-cache events, and "
                    "compare hit rate, load balance and modelled time to first token.")
    defaults = DemoConfig()
    parser.add_argument("--requests", type=int, default=defaults.requests,
                        help="requests to route (default %(default)s)")
    parser.add_argument("--pods", type=int, default=defaults.pods, help="serving pods (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="workload seed (default %(default)s)")
    parser.add_argument("--block-size", type=int, default=defaults.block_size,
                        help="tokens per KV-cache block (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    # A run takes ~1.3 ms and ~9 KB a request here and a little per pod: past these it would not end
    # in a working day, or hold more memory than a machine of ours has (a usage error, status 2).
    check_count(parser, "--requests", args.requests, MAX_DEMO_REQUESTS, "about half an hour and 9 GiB")
    check_count(parser, "--pods", args.pods, MAX_DEMO_PODS, "the simulated cluster is built in memory")
    try:
        config = DemoConfig(requests=args.requests, pods=args.pods, seed=args.seed, block_size=args.block_size)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(config)
    try:
        summary = result.summary()
    finally:
        result.close()
    print(json.dumps(summary, indent=2) if args.json else format_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
