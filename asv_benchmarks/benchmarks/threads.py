"""Throughput of 1, 2 and 4 threads matching 8,192-token prompts against one shared table.

Each timed call makes 256 ``match_prefix`` calls (full hits, 1 ready pod, over the 100 contexts of a
table whose every context holds the 512-block chain of an 8,192-token prompt), split evenly over a
pool of ``threads`` threads that ``setup`` started: throughput = 256 / time. The compiled core hashes
without the GIL (SPEC 7), so its time should fall with more threads, up to the machine's free cores
(the project's 2-core machine delivers about one: docs/performance.md); the pure-Python backend holds
the GIL and does not scale.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ._common import BACKENDS, LORA, MICRO_REPEAT, PromptTable, backend, memo, model

MATCHES = 256
CONTEXTS = 100


class _ThreadState:
    def __init__(self, module, threads: int) -> None:
        self.base = PromptTable(module, contexts=CONTEXTS, prompt_tokens=8192)
        self.table = self.base.table
        ready = list(self.base.pods)
        calls = [(model(i % CONTEXTS), LORA, self.base.prompts[i % CONTEXTS], ready) for i in range(MATCHES)]
        self.chunks = [calls[t::threads] for t in range(threads)]
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-match")
        list(self.pool.map(lambda _: None, range(threads * 4)))  # start the workers now

    def work(self, chunk) -> int:
        match = self.table.match_prefix
        for args in chunk:
            match(*args)
        return len(chunk)

    def run(self) -> int:
        return sum(self.pool.map(self.work, self.chunks))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.base.close()


class MatchThreads:
    params = (BACKENDS, [1, 2, 4])
    param_names = ["backend", "threads"]
    repeat = MICRO_REPEAT
    rounds = 2

    def setup(self, backend_name: str, threads: int) -> None:
        module = backend(backend_name)
        self.state = memo(("threads", backend_name, threads), lambda: _ThreadState(module, threads))

    def time_256_matches_8192_tokens(self, backend_name: str, threads: int) -> None:
        self.state.run()
