"""match_prefix: full hit, partial hit and miss; prompts of 256 to 32,768 tokens; 1 to 64 ready pods;
1 to 1,000 contexts.

The grid is three one-dimensional sweeps around the targets' workload (block size 16; 100 contexts,
each holding the chain of a 1,024-token prompt for one pod; one ready pod) rather than their full
product, whose biggest corner (1,000 contexts x 64 pods x 2,048-block chains) would not fit in memory.
Queries are token bytes (uint8 arrays); ``ready_pods`` is a list of pod names, as a router passes it.
"""

from __future__ import annotations

from ._common import BACKENDS, LORA, MICRO_REPEAT, PromptTable, backend, memo, model

HITS = ["full", "partial", "miss"]


class _Match:
    repeat = MICRO_REPEAT
    rounds = 2

    def _setup(self, backend_name: str, hit: str, contexts: int, tokens: int, pods: int) -> None:
        module = backend(backend_name)
        self.state = memo((backend_name, contexts, tokens, pods),
                          lambda: PromptTable(module, contexts=contexts, prompt_tokens=tokens, pods=pods))
        self.table = self.state.table
        self.model = model(0)
        self.query = self.state.queries[hit]
        self.ready = list(self.state.pods)
        self.expected = {p: self.state.expected[hit] * 100 // self.state.n_blocks for p in self.ready} \
            if self.state.expected[hit] else {}

    def _match(self) -> None:
        self.table.match_prefix(self.model, LORA, self.query, self.ready)


class MatchPromptLength(_Match):
    """100 contexts, one ready pod; the prompt (and every context's chain) of 256 to 32,768 tokens."""

    params = (BACKENDS, HITS, [256, 1024, 4096, 32768])
    param_names = ["backend", "hit", "tokens"]

    def setup(self, backend_name: str, hit: str, tokens: int) -> None:
        self._setup(backend_name, hit, contexts=100, tokens=tokens, pods=1)

    def time_match_prefix(self, backend_name: str, hit: str, tokens: int) -> None:
        self._match()


class MatchReadyPods(_Match):
    """1,024 tokens, 100 contexts; in the queried one, every one of the ready pods holds the prompt."""

    params = (BACKENDS, HITS, [1, 8, 64])
    param_names = ["backend", "hit", "ready_pods"]

    def setup(self, backend_name: str, hit: str, ready_pods: int) -> None:
        self._setup(backend_name, hit, contexts=100, tokens=1024, pods=ready_pods)

    def time_match_prefix(self, backend_name: str, hit: str, ready_pods: int) -> None:
        self._match()


class MatchContexts(_Match):
    """1,024 tokens, one ready pod; 1 to 1,000 contexts in the table, each holding a prompt's chain."""

    params = (BACKENDS, ["full", "miss"], [1, 10, 100, 1000])
    param_names = ["backend", "hit", "contexts"]

    def setup(self, backend_name: str, hit: str, contexts: int) -> None:
        self._setup(backend_name, hit, contexts=contexts, tokens=1024, pods=1)

    def time_match_prefix(self, backend_name: str, hit: str, contexts: int) -> None:
        self._match()


class MatchWalkWay(_Match):
    """The compiled core's two ways of walking a query, each forced, and the table's measured choice
    between them (docs/architecture.md, "The walk"): 100 contexts, one ready pod, full hits. On these
    warm maps walking beside the hash chain is the faster way, so "measured" should read as "beside".
    The fallback walks one way, and commits before the choice cannot force one: skipped there."""

    params = (BACKENDS, ["measured", "chunked", "beside"], [1024, 32768])
    param_names = ["backend", "way", "tokens"]

    def setup(self, backend_name: str, way: str, tokens: int) -> None:
        self.core = backend(backend_name)
        if not hasattr(self.core, "_debug_set_walk_mode"):
            raise NotImplementedError(f"the {backend_name} backend at this commit walks one way only")
        self._setup(backend_name, "full", contexts=100, tokens=tokens, pods=1)
        self.core._debug_set_walk_mode({"measured": 0, "chunked": 1, "beside": 2}[way])

    def teardown(self, backend_name: str, way: str, tokens: int) -> None:
        self.core._debug_set_walk_mode(0)

    def time_match_prefix(self, backend_name: str, way: str, tokens: int) -> None:
        self._match()
