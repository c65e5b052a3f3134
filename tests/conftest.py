"""Fixtures shared by the whole suite.

``backend`` is parametrised over every backend that this run can use: the pure-Python one always, the
compiled one unless PREFIXINDEX_NO_EXTENSIONS=1. With PREFIXINDEX_REQUIRE_EXTENSIONS=1 (set by CI) a
compiled core that does not import, or that was built from other sources than the ones checked out,
is an error rather than a silently shorter test run.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import pytest

from prefixindex import _core_py

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "prefixindex"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _load_compiled():
    if _flag("PREFIXINDEX_NO_EXTENSIONS"):
        return None
    try:
        core = importlib.import_module("prefixindex._core")
    except ImportError:
        if _flag("PREFIXINDEX_REQUIRE_EXTENSIONS"):
            raise
        return None
    sources = sorted((p for pattern in ("*.pyx", "*.pxd", "*.pxi", "*.h") for p in PKG.glob(pattern)),
                     key=lambda p: p.name)  # the rule of setup.py's source_hash
    if sources:
        digest = hashlib.sha256()
        for p in sources:
            digest.update(p.read_bytes())
        if core.SOURCE_HASH != digest.hexdigest()[:16]:
            raise RuntimeError(
                f"prefixindex._core ({core.__file__}) was built from other sources than the checked-out "
                "_core.pyx/_core.pxd/_native.h: rebuild it (pip install -e . or "
                "python setup.py build_ext --inplace)")
    return core


COMPILED = _load_compiled()
BACKENDS = {"python": _core_py}
if COMPILED is not None:
    BACKENDS["cython"] = COMPILED


class FakeClock:
    """A clock the tests move by hand: eviction is tested without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The backend module (prefixindex._core_py or prefixindex._core) under test."""
    return BACKENDS[request.param]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_table(backend, clock):
    """make_table(**overrides) -> a table of the backend under test, on the fake clock, with no
    background thread unless asked (background_eviction=True), seed 0 and block_size 4 unless given."""
    made = []

    def make(**overrides):
        overrides.setdefault("seed", 0)
        overrides.setdefault("block_size", 4)
        overrides.setdefault("clock", clock)
        overrides.setdefault("background_eviction", False)
        table = backend.SyncPrefixHashTable(**overrides)
        made.append(table)
        return table

    yield make
    for table in made:
        table.close()
