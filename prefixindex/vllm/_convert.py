"""One pod's wire events as index events (docs/vllm.md, V4). No sockets, no sequence numbers here.

What a converter remembers about its pod's engine is bounded (issue 10, Deliver 6):

- ``lora_blocks``: engine hash -> lora_id for the blocks this pod stored under an adapter, so that a
  ``BlockRemoved`` (which names no adapter) goes to the one context that holds each hash, and a pod
  that used 10,000 adapters still costs one removal per event, not one per adapter. Entries leave with
  the removal, a clear or a restart, and there are never more than ``max_lora_blocks`` (the table's
  ``max_prefixes_per_context`` by default): past it the oldest is forgotten, and a later removal of
  that hash goes to the base model only (the adapter context then drops it by the index's own
  eviction, SPEC 6).
- ``groups``: only the ``group_idx`` decisions that differ from the default (group 0 indexed, others
  not), at most ``MAX_GROUPS``; past it a group is treated by the default.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .._events import AllBlocksCleared, BlockRemoved, BlockStored
from ._wire import (CLEARED_TYPES, FULL_ATTENTION_KINDS, INT_STORED_TYPES, REMOVED_TYPES, STORED_TYPES, UnknownEvent,
                    WireError, hash_from_wire, hash_list, plain_batch_function, token_bytes_function)

__all__ = ["BASE_LORA", "Converted", "MAX_GROUPS", "PodConverter"]

BASE_LORA = -1          # the index's lora_id of the base model
MAX_GROUPS = 1024       # KV-cache groups remembered per pod (a real engine has a handful)
_EMPTY_ARRAY = b"\x90"  # msgpack of []
# group_idx values of a plain store: unset, or 0 (the GPU block pool's, vLLM 0.33): with no spec kind both
# are indexed and change nothing in ``groups`` (_stored_group_ok)
_PLAIN_GROUPS = (None, 0)

Converted = Tuple[str, Any]
"""(kind, payload): ("stored", BlockStored), ("removed", [BlockRemoved, one per context holding the hashes]),
("cleared", AllBlocksCleared), or a skip: ("filtered", reason), ("unknown", tag), ("unmapped_lora",
lora_name), ("placeholder", None)."""


def _error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class PodConverter:
    """Turns one pod's wire events into index events (docs/vllm.md, V4).

    - ``model``: the model name of every context this pod's events go to.
    - LoRA: ``lora_name`` through ``lora_map`` when it is mapped, else the event's ``lora_id``, else -1
      (no adapter) when the event names no adapter. A name that is not mapped, on an event without
      ``lora_id``, cannot be placed: the event is skipped as "unmapped_lora".
    - ``mediums``: the tiers that are indexed (``None`` on the wire counts as "GPU"). Case is ignored.
    - ``spec_kinds``: the ``kv_cache_spec_kind`` values that are indexed. A store without a kind is indexed
      when its ``group_idx`` is absent or 0. A BlockRemoved follows what this pod's stores said about its
      ``group_idx``, and is applied for ``group_idx`` absent or 0 until a store said otherwise.
    - ``block_size``: the table's; a BlockStored with another block size, or whose token count is not
      ``len(block_hashes) * block_size``, is malformed (WireError). ``block_size=0`` with no tokens is an
      offloading connector's placeholder: nothing to index ("placeholder").
    - AllBlocksCleared clears the pod in every context (a pod name stands for one engine and its cache).
    """

    def __init__(self, pod: str, model: str, block_size: int, lora_map: Optional[Mapping[str, int]] = None,
                 mediums: Optional[Iterable[Optional[str]]] = ("GPU",),
                 spec_kinds: Optional[Iterable[str]] = FULL_ATTENTION_KINDS,
                 token_bytes: Optional[Callable[[Any], np.ndarray]] = None,
                 max_lora_blocks: int = 10_000, plain_reader: Optional[Callable[..., Any]] = None) -> None:
        self.pod = pod
        self.model = model
        self.block_size = int(block_size)
        self._block_bytes = 4 * self.block_size  # token bytes per block
        self.lora_map: Dict[str, int] = dict(lora_map or {})
        self.mediums = None if mediums is None else frozenset(
            "GPU" if m is None else str(m).upper() for m in mediums)
        self.spec_kinds = None if spec_kinds is None else frozenset(str(k).lower() for k in spec_kinds)
        self.token_bytes = token_bytes or token_bytes_function()
        # the backend's one-pass reader of plain batches (V13); not with a token reader of the caller's
        self._plain_reader = plain_reader or (plain_batch_function() if token_bytes is None else None)
        self.max_lora_blocks = max(1, int(max_lora_blocks))
        # the tiers a store may name and be indexed without a case-folding lookup (None counts as GPU)
        self._plain_mediums: Optional[frozenset[Optional[str]]] = None if self.mediums is None else \
            frozenset(self.mediums | ({None} if "GPU" in self.mediums else set()))
        self.groups: Dict[int, bool] = {}       # group_idx -> indexed?, only where it is not the default
        self.lora_blocks: Dict[int, int] = {}   # engine hash -> lora_id, for blocks stored under an adapter

    def reset(self) -> None:
        """Forget what was learned about this pod's engine (it restarted, cleared, or was removed)."""
        self.groups.clear()
        self.lora_blocks.clear()

    @property
    def loras(self) -> List[int]:
        """The contexts (lora_ids) this pod holds blocks in as far as its events said, base model first."""
        return [BASE_LORA] + sorted(set(self.lora_blocks.values()) - {BASE_LORA})

    # -- filters -------------------------------------------------------------------------------------

    def _medium_ok(self, medium: Optional[str]) -> bool:
        if self.mediums is None:
            return True
        return ("GPU" if medium is None else medium.upper()) in self.mediums

    def _stored_group_ok(self, kind: Optional[str], group: Optional[int]) -> bool:
        if kind is None:
            return group is None or group == 0
        ok = self.spec_kinds is None or kind.lower() in self.spec_kinds
        if group is not None:
            if ok == (group == 0):
                self.groups.pop(group, None)    # the default: nothing to remember
            elif group in self.groups or len(self.groups) < MAX_GROUPS:
                self.groups[group] = ok
        return ok

    def _removed_group_ok(self, group: Optional[int]) -> bool:
        if group is None:
            return True
        known = self.groups.get(group)
        return (group == 0) if known is None else known

    def _lora(self, lora_name: Optional[str], lora_id: Optional[int]) -> Optional[int]:
        if lora_name is not None:
            mapped = self.lora_map.get(lora_name)
            if mapped is not None:
                return mapped
            return lora_id  # None: unmapped
        return BASE_LORA if lora_id is None else lora_id

    # -- conversion ----------------------------------------------------------------------------------

    def convert(self, ev: Any) -> Converted:
        """One decoded wire event as an index event or a skip; WireError when it is malformed."""
        if isinstance(ev, STORED_TYPES):
            return self._stored(ev)
        if isinstance(ev, REMOVED_TYPES):
            if not self._medium_ok(ev.medium):
                return "filtered", f"medium {ev.medium}"
            if not self._removed_group_ok(ev.group_idx):
                return "filtered", f"group_idx {ev.group_idx}"
            return "removed", self._removed(hash_list(ev.block_hashes))
        if isinstance(ev, CLEARED_TYPES):
            self.lora_blocks.clear()
            return "cleared", AllBlocksCleared(self.pod)
        if isinstance(ev, UnknownEvent):
            return "unknown", ev.tag
        raise WireError(f"not an event: {type(ev).__name__}")

    def read_plain(self, payload: Any) -> Optional[Tuple[Optional[float], List[Any], Optional[int]]]:
        """A batch of plain events as (ts, index events, data_parallel_rank) in one pass, or None for the
        general path (docs/vllm.md, V13). Removals are plain only while this pod has no adapter blocks or
        groups to track: then each is one BlockRemoved of the base model, as ``_removed`` makes it."""
        reader = self._plain_reader
        if reader is None:
            return None
        return reader(payload, self.model, self.pod, self.block_size, self._plain_mediums,  # type: ignore[no-any-return]
                      not self.lora_blocks and not self.groups)

    def plain_stored(self, ev: Any) -> Optional[BlockStored]:
        """The common store, built without the general path's steps, or None for ``convert`` to handle.

        Plain: int hashes (INT_STORED_TYPES), the index's block size, a tier that is indexed, no adapter,
        no group but 0 and no spec kind. Such a store passes every check of ``_stored`` and needs nothing
        tracked, so this gives the event ``_stored`` would; anything else, a bad token count or an
        event the constructor refuses included, returns None, and ``convert`` says what is wrong.
        """
        if (type(ev) not in INT_STORED_TYPES or ev.block_size != self.block_size or ev.lora_name is not None
                or ev.lora_id is not None or ev.group_idx not in _PLAIN_GROUPS or ev.kv_cache_spec_kind is not None
                or (self._plain_mediums is not None and ev.medium not in self._plain_mediums)):
            return None
        hashes = ev.block_hashes
        n = len(hashes)
        try:
            tokens = self.token_bytes(ev.token_ids)
            if len(tokens) != self._block_bytes * n or not n:
                return None
            return BlockStored(hashes, tokens.reshape(n, -1), self.model, BASE_LORA, self.pod,
                               ev.parent_block_hash)
        except (TypeError, ValueError):
            return None

    def _removed(self, hashes: Any) -> List[BlockRemoved]:
        """One BlockRemoved per context that holds some of the hashes (V4: no fan-out per adapter)."""
        lora_blocks = self.lora_blocks
        if not lora_blocks:
            return [_build(BlockRemoved, hashes, self.model, BASE_LORA, self.pod)]
        by_lora: Dict[int, List[Any]] = {}
        for h in hashes:
            key = h & 0xFFFFFFFFFFFFFFFF if type(h) is int else h
            by_lora.setdefault(lora_blocks.pop(key, BASE_LORA), []).append(h)
        if not by_lora:
            by_lora[BASE_LORA] = []
        return [_build(BlockRemoved, group, self.model, lora_id, self.pod) for lora_id, group in by_lora.items()]

    def _stored(self, ev: Any) -> Converted:
        if ev.block_size == 0 and bytes(ev.token_ids) == _EMPTY_ARRAY:
            return "placeholder", None  # an offloading connector's store without content
        if not self._medium_ok(ev.medium):
            return "filtered", f"medium {ev.medium}"
        if not self._stored_group_ok(ev.kv_cache_spec_kind, ev.group_idx):
            return "filtered", f"kv_cache_spec_kind {ev.kv_cache_spec_kind}, group_idx {ev.group_idx}"
        if ev.block_size != self.block_size:
            raise WireError(f"BlockStored has block_size {ev.block_size} but the index uses block_size "
                            f"{self.block_size} (set Config.block_size / AIBRIX_PREFIX_CACHE_BLOCK_SIZE "
                            "to vLLM's --block-size)")
        lora_id = self._lora(ev.lora_name, ev.lora_id)
        if lora_id is None:
            return "unmapped_lora", ev.lora_name
        n = len(ev.block_hashes)
        try:
            tokens = self.token_bytes(ev.token_ids)
        except (TypeError, ValueError) as exc:
            raise WireError(f"bad token_ids: {_error_text(exc)}") from None
        if len(tokens) != 4 * self.block_size * n:
            raise WireError(f"BlockStored has {len(tokens) // 4} token ids for {n} blocks of block_size "
                            f"{self.block_size} (expected {n * self.block_size})")
        parent = ev.parent_block_hash
        if parent is not None:
            parent = hash_from_wire(parent, "parent_block_hash")
        hashes = hash_list(ev.block_hashes)
        event = _build(BlockStored, hashes, tokens.reshape(n, -1) if n else tokens, self.model, lora_id,
                       self.pod, parent_block_hash=parent)
        if event.lora_id != BASE_LORA:
            self._track(event)
        return "stored", event

    def _track(self, event: BlockStored) -> None:
        lora_blocks = self.lora_blocks
        lora_id = event.lora_id
        for h in event.block_hashes.tolist():
            lora_blocks.pop(h, None)  # re-inserted at the end: the dict's order is the age order
            lora_blocks[h] = lora_id
        excess = len(lora_blocks) - self.max_lora_blocks
        if excess > 0:
            for h in list(iter_first(lora_blocks, excess)):
                del lora_blocks[h]


def iter_first(d: Dict[int, int], n: int) -> Iterable[int]:
    """The first n keys of a dict (the oldest inserted)."""
    it = iter(d)
    for _ in range(n):
        yield next(it)


def _build(cls: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise WireError(f"bad {cls.__name__}: {_error_text(exc)}") from None
