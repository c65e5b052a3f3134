"""get_prefix_hashes on prompts of 256, 4,096 and 32,768 tokens (token bytes, block size 16)."""

from __future__ import annotations

from ._common import BACKENDS, MICRO_REPEAT, backend, make_table, rng, token_bytes


class GetPrefixHashes:
    params = (BACKENDS, [256, 4096, 32768])
    param_names = ["backend", "tokens"]
    repeat = MICRO_REPEAT
    rounds = 2

    def setup(self, backend_name: str, tokens: int) -> None:
        self.table = make_table(backend(backend_name))
        self.query = token_bytes(rng(tokens), tokens * 4)

    def time_get_prefix_hashes(self, backend_name: str, tokens: int) -> None:
        self.table.get_prefix_hashes(self.query)
