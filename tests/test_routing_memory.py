"""The predicted index gives its memory back: 10**6 predictions made and expired leave the process's
resident memory flat (docs/routing.md, "Predicted entries"). Measured in a subprocess of its own, per backend, so
that nothing else in the test run moves the figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil", reason="psutil (the test extra) measures resident memory")

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import importlib, json, sys
import numpy as np, psutil
from prefixindex.routing import Router

backend = importlib.import_module(sys.argv[1])
now = [0.0]
clock = lambda: now[0]
table = backend.SyncPrefixHashTable(seed=0, block_size=4, background_eviction=False, clock=clock)
router = Router(table, clock=clock, predicted_ttl_seconds=1.0, max_predicted_entries=5_000)
proc = psutil.Process()
first = np.arange(8, dtype=np.uint32)  # two blocks: every prompt is new, so every choice predicts
pods = ["a", "b", "c"]

def run(start, stop):
    for i in range(start, stop):
        router.finished(router.choose("m", -1, first + 8 * i, pods))
        now[0] += 0.001  # 1,000 choices per TTL: about 2,000 entries live, the rest expired

run(0, 100_000)
warm = proc.memory_info().rss
run(100_000, 1_000_000)
stats = router.stats()
print(json.dumps({"warm": warm, "end": proc.memory_info().rss, "entries": stats["predicted_entries"],
                  "predictions": stats["predictions"]}))
"""


BACKEND_NAMES = ["prefixindex._core_py", "prefixindex._core"]


@pytest.fixture(scope="module")
def children():
    """Both backends' children start together (each is one busy thread; the machine has two cores), so the
    module takes as long as the slower child rather than the sum of both."""
    from helpers import BACKENDS
    procs = {name: subprocess.Popen([sys.executable, "-c", SCRIPT, name], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name in BACKEND_NAMES if name != "prefixindex._core" or "cython" in BACKENDS}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_a_million_predictions_leave_memory_flat(backend_name, children):
    if backend_name not in children:
        pytest.skip("the compiled core is not built in this run (PREFIXINDEX_NO_EXTENSIONS or no build)")
    proc = children[backend_name]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    made = sum(p["made"] for p in out["predictions"].values())
    expired = sum(p["expired"] for p in out["predictions"].values())
    assert made == 1_000_000
    assert expired >= made - 1_001 and out["entries"] <= 2_002
    # flat: 900,000 more predictions than at the warm mark cost less than 4 MB of resident memory
    # (they would be hundreds of MB if any part of them were kept)
    assert out["end"] - out["warm"] < 4 * 2**20, out
