"""Choosing a pod: prefill still to compute traded against load, with predicted entries for bursts.

``Router(table).choose(model, lora_id, tokens, pods)`` asks the table once (``table.match``: the blocks
each candidate holds from block 0 and the prompt's prefix hashes, one walk), adds what this router
predicts its own recent choices have put in the pods' caches, and picks the candidate with the lowest
cost. docs/routing.md explains the cost, the hot-spot guard, the predictions and every setting.

The cost of sending the prompt to pod ``p``, in prefill tokens (lower wins)::

    cost(p) = prefill_weight * still_to_compute(p)
            + pending_weight * (pending_prefill(p) - shared_pending(p))
            + load(p)
            + kv_usage_tokens * kv_usage(p)
    load(p) = request_tokens * requests(p)                                  below the concurrency
            = request_tokens * requests(p) + queue_tokens * (requests(p) + 1 - concurrency)  from it on
            = request_tokens * requests(p) ** load_exponent                 while none is learned
    (and request_tokens * requests(p) on a pod prefilling this very prefix, shared_pending(p) > 0)

- ``still_to_compute``: the prompt's full-block tokens beyond the pod's matched-or-predicted run;
- ``pending_prefill``: prompt tokens this router sent to the pod that are still being prefilled;
- ``shared_pending``: the part of them that is this prompt's own predicted blocks (a burst's prefix
  being prefilled there is what this request would wait for anyway: it is not charged twice);
- ``requests``: requests in flight on the pod, this router's own plus the caller's ``running + waiting``;
- ``kv_usage``: the caller's ``PodLoad.kv_usage`` (0 when unknown);
- ``concurrency``: the most of this router's requests seen decoding at once on one pod (learned at
  ``prefill_done``; none before or with ``learn_concurrency=False``). Below it a pod has a free place
  in its batch and a new request starts at once; from it on it would queue (``queue_tokens``). A pod
  that is prefilling this very prefix now (``shared_pending > 0``) is not charged ``queue_tokens``: the
  request waits for that prefill, which it shares, and a burst stays together whatever was learned.

Hot-spot guard: when the cheapest pod has at least ``guard_requests`` requests in flight and at least
``guard_idle_pods`` candidates have none (fewer when there are fewer other candidates), the cheapest
idle candidate is chosen instead.

Thread safety: the table is queried outside this router's lock (the table has its own); everything the
router keeps (in-flight work, predictions, counters) changes under one lock, so that concurrent
``choose``/``prefill_done``/``finished``/``stats`` calls see and leave a consistent state.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from operator import countOf
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._events import check_lora_id, check_str
from ._routing_inputs import PodLoad, _candidates
from ._routing_lock import _REENTERED, _RouterLock
from ._routing_records import _CandidateView, _Prediction
from ._routing_settings import DEFAULTS, _type_name, resolve_settings

__all__ = ["Choice", "PodLoad", "Router"]
PodLoad.__module__ = __name__  # where users import it from (its code lives in _routing_inputs)


# Pods whose prediction counters are kept while idle (stats()["predictions"]; docs/routing.md)
COUNTED_PODS = 1024
_NO_LOAD = (0, 0.0)  # (requests the caller reports, kv usage) of a candidate given without a PodLoad


class _Ticket:
    """A choice's request as this router tracks it (mutable; the Choice that carries it is not)."""

    __slots__ = ("router", "pod", "tokens", "state", "accepted")

    def __init__(self, router: "Router", pod: str, tokens: int) -> None:
        self.router = router
        self.pod = pod
        self.tokens = tokens  # prompt tokens still to prefill on the pod
        self.state = 0  # 0 prefilling, 1 decoding, 2 finished: as applied
        self.accepted = 0  # the same, counting the calls accepted but deferred (what calls are checked on)


@dataclass(frozen=True, eq=False)
class Choice:
    """One routing decision. Its mappings are read-only and its array is not writeable.

    A choice stands for one request in flight: two choices are equal only when they are the same
    object (so that choices can be dict keys, set members and list items), a copy or deep copy is the
    choice itself, and pickling one is a TypeError (it belongs to its router, in this process)."""

    pod: str
    n_blocks: int
    matched: Mapping[str, int]
    predicted: Mapping[str, int]
    cost: Mapping[str, float]
    reason: str
    prefix_hashes: npt.NDArray[np.uint64] = field(repr=False)
    _ticket: _Ticket = field(repr=False, compare=False)

    def __copy__(self) -> "Choice":
        return self

    def __deepcopy__(self, memo: Any) -> "Choice":
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Choice cannot be pickled: it stands for a request in flight on its Router, "
                        "in this process (send its fields instead)")


PodsArg = Union[Iterable[str], Mapping[str, PodLoad]]


class Router:
    """Routes prompts to pods with one ``SyncPrefixHashTable`` (either backend). See the module
    docstring for the cost and docs/routing.md for the settings."""

    def __init__(self, table: Any, **settings: Any) -> None:
        if not callable(getattr(table, "match", None)) or not hasattr(table, "block_size"):
            raise TypeError(f"table must be a SyncPrefixHashTable, not {_type_name(table)}")
        resolved = resolve_settings(settings)
        self._table = table
        self._block_size = int(table.block_size)
        self._settings = resolved
        self._prefill_weight: float = resolved["prefill_weight"]
        self._pending_weight: float = resolved["pending_weight"]
        self._request_tokens: float = resolved["request_tokens"]
        self._load_exponent: float = resolved["load_exponent"]
        self._kv_usage_tokens: float = resolved["kv_usage_tokens"]
        self._guard_requests: int = resolved["guard_requests"]
        self._guard_idle_pods: int = resolved["guard_idle_pods"]
        self._learn_concurrency: bool = resolved["learn_concurrency"]
        self._queue_tokens: float = resolved["queue_tokens"]
        self._ttl: float = resolved["predicted_ttl_seconds"]
        self._max_entries: int = resolved["max_predicted_entries"]
        self._clock: Callable[[], float] = resolved["clock"]

        self._lock = _RouterLock()
        # in flight, per pod: requests (prefilling + decoding), prefilling requests, tokens to prefill
        self._requests: Dict[str, int] = {}
        self._prefilling: Dict[str, int] = {}
        self._pending: Dict[str, int] = {}
        # predicted index: (model, lora) -> prefix hash -> pod -> the prediction that owns the entry
        self._predicted: Dict[Tuple[str, int], Dict[int, Dict[str, _Prediction]]] = {}
        self._entries = 0
        # the live predictions (start < stop), per (model, lora) and pod, in the order they were made:
        # what _confirm checks when the exact run goes past every predicted block (multi-turn chat)
        self._live: Dict[Tuple[str, int], Dict[str, Dict[_Prediction, None]]] = {}
        self._held = 0  # prompt hashes held by live predictions (at most 2 * max_predicted_entries)
        self._expiry: List[_Prediction] = []  # heap
        self._seq = 0
        self._decisions = 0
        self._by_reason: Dict[str, int] = {}
        self._made: Dict[str, List[int]] = {}  # pod -> [made, confirmed, expired, live]
        self._made_bound = COUNTED_PODS  # past it, the counters of idle pods go (_forget_idle_pods)
        # the most of this router's requests seen decoding at once on one pod (see the docstring)
        self._concurrency = 0
        self._candidate_cache: Dict[Tuple[Any, ...], Tuple[List[str], Dict[str, int]]] = {}

    @property
    def settings(self) -> Mapping[str, Any]:
        """Every setting in force (defaults included), read-only."""
        return MappingProxyType(self._settings)

    # -- choosing ----------------------------------------------------------------------------------

    def choose(self, model_name: str, lora_id: int, tokens: Any, pods: PodsArg) -> Choice:
        """Choose one of ``pods`` for the prompt and record the request as in flight there."""
        names, candidates, loads = self._candidates(pods)  # candidates: every name -> 0, in order
        now = self._now()  # the caller's code (the clock, names, loads) runs before the lock is taken
        matched_some, hashes_array = self._table.match(model_name, lora_id, tokens, names)
        # read-only for good: an array over bytes cannot be made writeable again (one that owns its
        # data can), so a choice's hashes stay what was chosen on
        hashes_array = np.frombuffer(hashes_array.tobytes(), dtype=hashes_array.dtype)
        hashes: Optional[List[int]] = None  # as Python ints, made only when predictions need them
        n = len(hashes_array)
        bs = self._block_size
        # plain values (match has checked them): a str subclass's hash never runs under the lock
        key = (model_name if type(model_name) is str else check_str(model_name, "model_name"),
               lora_id if type(lora_id) is int else check_lora_id(lora_id))
        with self._lock:
            self._expire(now)
            preds = self._predicted.get(key)
            requests, pending = self._requests, self._pending
            # Only pods with something to tell apart need a cost of their own; the others share
            # `base` (nothing cached, nothing in flight) and the first of them in order stands for all.
            interesting = set(matched_some)
            if requests:
                if len(requests) < len(names):
                    interesting.update(p for p in requests if p in candidates)
                else:
                    interesting.update(p for p in names if p in requests)
            if loads is not None:
                interesting.update(p for p, (extra, usage) in loads.items() if extra or usage)
            predicted_run: Dict[str, int] = {}
            if preds:
                hashes = hashes_array.tolist()
                self._walk_predictions(key, preds, candidates, matched_some, hashes, predicted_run)
                interesting.update(predicted_run)

            base = self._prefill_weight * n * bs
            matched = matched_some  # pods left out hold nothing: 0
            predicted = {**matched_some, **predicted_run} if predicted_run else matched_some
            cost: Dict[str, float] = {}  # pods left out cost `base`
            # (cost, requests in flight, tokens pending, position) for each pod that can win
            ranked: List[Tuple[float, int, int, int, str]] = []
            plain = next((i for i, p in enumerate(names) if p not in interesting), -1)
            if plain >= 0:
                ranked.append((base, 0, 0, plain, names[plain]))
            order = {p: i for i, p in enumerate(names)} if len(interesting) > 8 else None
            concurrency = self._concurrency  # 0: not learned (yet)
            idle_count = len(names) - len(interesting)  # the plain pods have nothing in flight
            for p in interesting:
                got = predicted.get(p, 0)
                m = matched.get(p, 0)
                extra, usage = loads[p] if loads is not None else _NO_LOAD
                reqs = requests.get(p, 0) + extra
                pend = pending.get(p, 0)
                shared = min(pend, (got - m) * bs)
                c = self._prefill_weight * (n - got) * bs + self._pending_weight * (pend - shared)
                if not concurrency:
                    try:
                        c += self._request_tokens * reqs ** self._load_exponent
                    except OverflowError:  # a load past any float: the most a cost can be (0 if unweighted)
                        c = math.inf if self._request_tokens else c
                elif reqs < concurrency or shared:
                    # below the concurrency a place is free; a pod prefilling this very prefix makes the
                    # request wait for that prefill, which it shares, not for a place (the burst rule)
                    c += self._request_tokens * reqs
                else:
                    c += self._request_tokens * reqs + self._queue_tokens * (reqs + 1 - concurrency)
                if not reqs:
                    idle_count += 1
                if usage:
                    c += self._kv_usage_tokens * usage
                cost[p] = c
                ranked.append((c, reqs, pend, order[p] if order is not None else names.index(p), p))
            best = min(ranked)
            reason = "lowest cost"
            if predicted.get(best[4], 0) > matched.get(best[4], 0) and pending.get(best[4], 0):
                # A burst: the pod is prefilling this prefix right now. The guard leaves it alone, as
                # the extra requests share that work (docs/routing.md, "The hot-spot guard").
                reason = "lowest cost (predicted)"
            elif best[1] >= self._guard_requests and idle_count >= min(self._guard_idle_pods, len(names) - 1):
                # Spread only when the cluster has room to spare: with one idle pod among a few busy
                # ones, moving a session loses its cached prefix for little (docs/routing.md).
                idle = [r for r in ranked if r[1] == 0]
                if idle:
                    best = min(idle)
                    reason = "hot-spot guard"
            pod = best[4]
            got = predicted.get(pod, 0)
            if got < n and self._max_entries > 0:
                self._predict(key, pod, hashes_array.tolist() if hashes is None else hashes, got, n, now)
            ticket = _Ticket(self, pod, (n - got) * bs)
            requests[pod] = requests.get(pod, 0) + 1
            self._prefilling[pod] = self._prefilling.get(pod, 0) + 1
            pending[pod] = pending.get(pod, 0) + ticket.tokens
            self._decisions += 1
            self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
        return Choice(pod, n, _CandidateView(candidates, matched, 0), _CandidateView(candidates, predicted, 0),
                      _CandidateView(candidates, cost, base), reason, hashes_array, ticket)

    def _candidates(self, pods: Any) -> Tuple[List[str], Dict[str, int], Optional[Dict[str, Tuple[int, float]]]]:
        """_candidates(pods), remembered for lists and tuples of names: a router usually sees the same
        few candidate lists again and again, and checking 64 names each time is a good part of a choice.
        The cached list and dict are shared by choices and never changed."""
        kind = type(pods)
        if kind is not list and kind is not tuple:
            return _candidates(pods)
        key = tuple(pods)
        # Only lists of exact str are looked up (a C-level pass over the types): a lookup compares by
        # equality, and an object that compares equal to a cached name, a str subclass among them, is
        # not that name. Anything else gets the full check, and is not cached.
        if countOf(map(type, key), str) != len(key):
            return _candidates(pods)
        hit = self._candidate_cache.get(key)
        if hit is None:
            names, zeros, _ = _candidates(key)  # names is list(key): exact str stay as they are
            if len(self._candidate_cache) >= 64:  # bounded: many different lists are just not cached
                self._candidate_cache.clear()
            hit = self._candidate_cache[key] = (names, zeros)
        return hit[0], hit[1], None

    def _now(self) -> float:
        """The clock's reading as finite seconds, or the error that says what it returned instead."""
        reading = self._clock()
        try:
            now = float(reading)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"the Router's clock must return seconds, got {_type_name(reading)}: {exc}") from None
        if not math.isfinite(now):
            raise ValueError(f"the Router's clock must return finite seconds, got {now}")
        return now

    def _walk_predictions(self, key: Tuple[str, int], preds: Dict[int, Dict[str, _Prediction]],
                          nameset: Mapping[str, int], matched_some: Mapping[str, int], hashes: List[int],
                          out: Dict[str, int]) -> None:
        """Fill ``out`` with pod -> blocks held or predicted from block 0, for candidates whose
        predictions extend their exact run; confirm the predictions that the exact run now covers."""
        n = len(hashes)
        if not n:
            return
        if matched_some:
            self._confirm(key, preds, matched_some, hashes)
        starts: List[Tuple[str, int]] = []
        owners = preds.get(hashes[0])
        if owners:  # candidates with nothing exact whose predictions start at block 0
            starts.extend((p, 0) for p in owners if p in nameset and p not in matched_some)
        for p, m in matched_some.items():
            if m < n:
                owners = preds.get(hashes[m])
                if owners and p in owners:
                    starts.append((p, m))
        get = preds.get
        for p, i in starts:
            i += 1
            while i < n:
                owners = get(hashes[i])
                if owners is None or p not in owners:
                    break
                i += 1
            out[p] = i

    def _confirm(self, key: Tuple[str, int], preds: Dict[int, Dict[str, _Prediction]],
                 matched_some: Mapping[str, int], hashes: List[int]) -> None:
        """A prediction whose blocks the exact index now holds for its pod is confirmed: its entries
        under the exact run are dropped (the index says it all there) and it counts as confirmed."""
        live = self._live.get(key)
        for p, m in matched_some.items():
            i = m - 1
            low = m
            while i >= 0:  # the exact run ends inside predicted blocks: walk down through them
                owners = preds.get(hashes[i])
                rec = owners.get(p) if owners else None
                if rec is None:
                    break
                low = rec.start  # rec owns entries only in [start, stop), and it owns block i
                self._confirm_upto(rec, min(rec.stop, m))
                i = low - 1  # an older prediction of the same pod may own the blocks before it
            if low == m and live:
                # Nothing predicted at block m - 1: the run may go past a prediction's last block (the
                # pod reported a turn and its answer). Prefix hashes chain, so a prediction whose block
                # min(stop, m) - 1 has the query's hash there agrees with the query up to it: O(1) each.
                recs = live.get(p)
                for rec in list(recs) if recs else ():
                    j = min(rec.stop, m) - 1
                    if j >= rec.start and hashes[j] == rec.hashes[j - rec.base]:
                        self._confirm_upto(rec, j + 1)

    def _confirm_upto(self, rec: _Prediction, stop: int) -> None:
        """rec's blocks [start, stop) are in the exact index for its pod: confirmed, their entries dropped."""
        if not rec.confirmed:
            rec.confirmed = True
            self._made[rec.pod][1] += 1
        start = rec.start
        rec.start = stop  # before the drop: if rec then owns nothing, _release makes it start == stop
        self._drop_entries(rec, start, stop)

    def _predict(self, key: Tuple[str, int], pod: str, hashes: List[int], start: int, stop: int,
                 now: float) -> None:
        """Assume the prompt's blocks [start, stop) cached on pod until now + ttl (bounded)."""
        room = self._max_entries
        if stop - start > room:
            stop = start + room  # a prompt longer than the whole bound: predict its head only
        size = stop - start
        # Oldest first; the heap's length is held to the bound too (dead predictions, owning no entries,
        # wait there for their TTL), and so are the hashes live ones hold: one that owns a single entry
        # still holds its prompt's hashes from its first block, so the entries alone bound nothing.
        while self._expiry and (self._entries + size > room or len(self._expiry) >= room
                                or self._held + size > 2 * room):
            self._retire(heapq.heappop(self._expiry))
        self._seq += 1
        rec = _Prediction(key, pod, hashes[start:stop], start, stop, now + self._ttl, self._seq)
        preds = self._predicted.setdefault(key, {})
        added = owned = 0
        for h in rec.hashes:
            owners = preds.get(h)
            if owners is None:
                preds[h] = {pod: rec}
                added += 1
            else:
                old = owners.get(pod)
                if old is rec:  # the same prefix hash twice in one prompt: one entry
                    continue
                owners[pod] = rec
                if old is None:
                    added += 1
                else:  # a newer prediction of the same pod takes the entry over
                    old.owned -= 1
                    if not old.owned:
                        self._release(old)
            owned += 1
        rec.owned = owned
        self._entries += added
        self._held += size
        self._live.setdefault(key, {}).setdefault(pod, {})[rec] = None
        heapq.heappush(self._expiry, rec)
        counts = self._made.get(pod)
        if counts is None:
            counts = self._made[pod] = [0, 0, 0, 0]
        counts[0] += 1
        counts[3] += 1
        if len(self._made) > self._made_bound:
            self._forget_idle_pods()

    def _expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0].expires <= now:
            self._retire(heapq.heappop(heap))

    def _retire(self, rec: _Prediction) -> None:
        """A prediction leaves the index (its TTL passed, or room was needed for a newer one)."""
        if rec.start < rec.stop:  # live: it owns entries, and dropping the last one releases it
            self._drop_entries(rec, rec.start, rec.stop)
        counts = self._made[rec.pod]
        counts[3] -= 1
        if not rec.confirmed:
            counts[2] += 1

    def _forget_idle_pods(self) -> None:
        """Drop the prediction counters of every pod with no live prediction and no request in flight,
        so that pods that come and go (renamed at each restart) do not grow the router for ever."""
        requests = self._requests
        for pod in [p for p, counts in self._made.items() if not counts[3] and p not in requests]:
            del self._made[pod]
        self._made_bound = max(COUNTED_PODS, 2 * len(self._made))  # a sweep costs O(pods) once per doubling

    def _drop_entries(self, rec: _Prediction, start: int, stop: int) -> None:
        preds = self._predicted.get(rec.key)
        if preds is not None:  # (it is, while rec owns an entry)
            pod = rec.pod
            dropped = 0
            for h in rec.hashes[start - rec.base:stop - rec.base]:
                owners = preds.get(h)
                if owners is not None and owners.get(pod) is rec:
                    del owners[pod]
                    dropped += 1
                    if not owners:
                        del preds[h]
            rec.owned -= dropped
            self._entries -= dropped
            if not preds:
                del self._predicted[rec.key]
        if not rec.owned:
            self._release(rec)

    def _release(self, rec: _Prediction) -> None:
        """rec owns no entry any more: it leaves the live predictions and lets its prompt's hashes go now
        (it stays in the heap, holding nothing, until its TTL or the room rule counts it)."""
        self._held -= len(rec.hashes)
        rec.hashes = []
        rec.start = rec.stop
        by_pod = self._live.get(rec.key)
        if by_pod is not None:
            recs = by_pod.get(rec.pod)
            if recs is not None and rec in recs:  # not there when released before (idempotent)
                del recs[rec]
                if not recs:
                    del by_pod[rec.pod]
                    if not by_pod:
                        del self._live[rec.key]

    # -- in-flight accounting ----------------------------------------------------------------------

    def prefill_done(self, choice: Choice) -> None:
        """The chosen pod has prefilled the prompt: the request now decodes (its prefill tokens no
        longer count as pending)."""
        self._settle(self._ticket(choice, "prefill_done"), 1)

    def finished(self, choice: Choice) -> None:
        """The request has ended (completed or aborted; prefill_done first is not required)."""
        self._settle(self._ticket(choice, "finished"), 2)

    def _settle(self, ticket: _Ticket, state: int) -> None:
        """prefill_done (state 1) or finished (2). Called from a finalizer or a signal handler that
        interrupted one of this router's calls on the same thread, it is checked at once and done when
        that call leaves its section, so that it never sees or leaves a half-made change."""
        lock = self._lock
        if not lock.enter():  # this thread holds the mutex still (the section it interrupted does)
            self._check_settle(ticket, state)
            ticket.accepted = state  # a second call before this one is applied is refused too
            lock.deferred.append(lambda: self._apply_settle(ticket, state))
            return
        try:
            self._check_settle(ticket, state)
            ticket.accepted = state
            self._apply_settle(ticket, state)
        finally:
            lock.leave()

    def _check_settle(self, ticket: _Ticket, state: int) -> None:
        accepted = ticket.accepted
        if accepted != 2 and ticket.pod not in self._requests:  # only a forged ticket can be here
            raise ValueError("this choice is not one of this router's requests in flight")
        if accepted == 2:
            what = "prefill_done" if state == 1 else "finished"
            raise ValueError(f"{what}: this choice has already finished")
        if state == 1 and accepted == 1:
            raise ValueError("prefill_done: this choice has already been through prefill_done")

    def _apply_settle(self, ticket: _Ticket, state: int) -> None:
        if ticket.state == 2 or ticket.state == state:  # a deferred call that another one overtook
            return
        if ticket.state == 0:
            self._release_prefill(ticket)
        ticket.state = state
        pod = ticket.pod
        if state == 1:
            if self._learn_concurrency:
                decoding = self._requests[pod] - self._prefilling.get(pod, 0)
                if decoding > self._concurrency:
                    self._concurrency = decoding
            return
        left = self._requests[pod] - 1
        if left:
            self._requests[pod] = left
        else:
            del self._requests[pod]

    def _ticket(self, choice: Any, what: str) -> _Ticket:
        if not isinstance(choice, Choice):
            raise TypeError(f"{what} takes a Choice, not {_type_name(choice)}")
        ticket = choice._ticket
        if type(ticket) is not _Ticket or ticket.router is not self:
            raise ValueError(f"{what}: this choice was made by another router")
        return ticket

    def _release_prefill(self, ticket: _Ticket) -> None:
        pod = ticket.pod
        left = self._prefilling[pod] - 1
        if left:
            self._prefilling[pod] = left
        else:
            del self._prefilling[pod]
        tokens = self._pending[pod] - ticket.tokens
        if tokens or pod in self._prefilling:
            self._pending[pod] = tokens
        else:
            del self._pending[pod]

    # -- introspection -----------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Decisions, in-flight work and predictions (see docs/routing.md for each key).

        From a finalizer or a signal handler that interrupted one of this router's calls on the same
        thread, it reads the counts as they are at that moment and expires nothing."""
        now = self._now()
        entered = self._lock.enter()
        try:
            if entered:
                self._expire(now)
            in_flight = {}
            for pod, reqs in self._requests.items():
                pre = self._prefilling.get(pod, 0)
                in_flight[pod] = {"prefilling": pre, "decoding": reqs - pre}
            return {
                "decisions": self._decisions,
                "decisions_by_reason": dict(self._by_reason),
                "in_flight": in_flight,
                "predictions": {pod: {"made": m, "confirmed": c, "expired": e}
                                for pod, (m, c, e, _) in self._made.items()},
                "predicted_entries": self._entries,
            }
        finally:
            if entered:
                self._lock.leave()
