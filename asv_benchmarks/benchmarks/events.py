"""Event ingestion: process_block_stored at 1, 10 and 100 blocks per event, process_block_removed,
and AllBlocksCleared on a pod holding 100,000 blocks.

The table is the targets' workload (block size 16; 100 contexts, each holding the 64-block chain of a
1,024-token prompt for pod-0). A stored event continues context 0's chain (its parent is the prompt's
last engine hash, as when a pod keeps decoding), with new engine hashes and tokens given as a 2-D
uint8 array. ``setup`` runs before every timed call and puts the table back as the previous call
found it, so every call does the same work: a store places new blocks, a removal removes held ones.
"""

from __future__ import annotations

from ._common import (BACKENDS, HEAVY_REPEAT, LORA, MICRO_REPEAT, POD, PromptTable, api, backend, chain_events,
                      engine_hashes, memo, model, rng, token_bytes)


class _EventState:
    def __init__(self, module, blocks_per_event: int) -> None:
        P = api()
        self.base = PromptTable(module, contexts=100, prompt_tokens=1024)
        self.table = self.base.table
        gen = rng(blocks_per_event)
        hashes = engine_hashes(gen, blocks_per_event)
        tokens = token_bytes(gen, blocks_per_event, 64)
        self.stored = P.BlockStored(hashes, tokens, model(0), LORA, source_pod=POD,
                                    parent_block_hash=int(self.base.engine[0][-1]))
        self.removed = P.BlockRemoved(hashes, model(0), LORA, source_pod=POD)
        self.entries = self.base.entries

    def close(self) -> None:
        self.base.close()


class ProcessBlockStored:
    params = (BACKENDS, [1, 10, 100])
    param_names = ["backend", "blocks_per_event"]
    repeat = MICRO_REPEAT
    rounds = 2

    def setup(self, backend_name: str, blocks_per_event: int) -> None:
        module = backend(backend_name)
        self.state = memo(("events", backend_name, blocks_per_event), lambda: _EventState(module, blocks_per_event))
        self.table = self.state.table
        self.table.process_block_removed(self.state.removed)  # undo the previous sample's store
        self.event = self.state.stored

    def time_process_block_stored(self, backend_name: str, blocks_per_event: int) -> None:
        self.table.process_block_stored(self.event)


class ProcessBlockRemoved:
    params = (BACKENDS, [1, 10, 100])
    param_names = ["backend", "blocks_per_event"]
    repeat = MICRO_REPEAT
    rounds = 2

    def setup(self, backend_name: str, blocks_per_event: int) -> None:
        module = backend(backend_name)
        self.state = memo(("events", backend_name, blocks_per_event), lambda: _EventState(module, blocks_per_event))
        self.table = self.state.table
        self.table.process_block_stored(self.state.stored)  # put back what the previous sample removed
        self.event = self.state.removed

    def time_process_block_removed(self, backend_name: str, blocks_per_event: int) -> None:
        self.table.process_block_removed(self.event)


class _ClearState:
    BUSY = "pod-busy"

    def __init__(self, module, blocks: int) -> None:
        P = api()
        self.base = PromptTable(module, contexts=100, prompt_tokens=1024)
        self.table = self.base.table
        gen = rng(blocks)
        # the busy pod's blocks: chains of 100 in one context, which another pod also uses (so the
        # context itself outlives the clear)
        self.refill = chain_events(gen, blocks, 100, "model-busy", self.BUSY)
        self.table.process_block_stored(chain_events(gen, 64, 64, "model-busy", POD)[0])
        self.clear = P.AllBlocksCleared(self.BUSY)  # every context, as vLLM's AllBlocksCleared
        self.entries = self.base.entries + 64 + blocks

    def close(self) -> None:
        self.base.close()


class AllBlocksCleared:
    """AllBlocksCleared for a pod that holds 100,000 blocks (next to 100 contexts of another pod).

    setup re-stores the 100,000 blocks before every sample: about a second on the pure-Python backend,
    hence few samples.
    """

    params = (BACKENDS, [100_000])
    param_names = ["backend", "blocks"]
    repeat = HEAVY_REPEAT
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup(self, backend_name: str, blocks: int) -> None:
        module = backend(backend_name)
        self.state = memo(("clear", backend_name, blocks), lambda: _ClearState(module, blocks))
        self.table = self.state.table
        for event in self.state.refill:
            self.table.process_block_stored(event)
        self.event = self.state.clear

    def time_all_blocks_cleared(self, backend_name: str, blocks: int) -> None:
        self.table.process_all_blocks_cleared(self.event)
