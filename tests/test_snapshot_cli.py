"""python -m prefixindex snapshot-info PATH (issue 12, Deliver 4): a summary of what a snapshot holds,
checked with the loader's own decoder; a bad or missing file is exit status 1 with the loader's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FakeClock
from test_snapshot import TABLE_ARGS, populate
from prefixindex import _core_py, _snapshot

ROOT = Path(__file__).resolve().parent.parent


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "prefixindex", "snapshot-info", *args], capture_output=True,
                          timeout=120, cwd=ROOT, input=stdin)


@pytest.fixture
def snapshot_file(tmp_path):
    clock = FakeClock()
    table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, clock=clock, background_eviction=False, **TABLE_ARGS)
    populate(table, clock)
    path = tmp_path / "index.snapshot"
    table.save(path)
    return path, table


def test_json_summary(snapshot_file):
    path, table = snapshot_file
    proc = run(str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    stats = table.stats()
    assert info["bytes"] == path.stat().st_size and info["format_version"] == 1
    assert info["totals"] == {"contexts": stats["contexts"], "prefixes": stats["prefixes"],
                              "entries": stats["entries"], "pods": stats["pods"], "engine_hashes": 12,
                              "stale_aliases": 2}
    assert info["counters"] == {k: stats[k] for k in info["counters"]} and len(info["counters"]) == 10
    assert info["config"]["max_prefixes_per_context"] == 12 and info["config"]["seed"] == 0
    assert [(c["model"], c["lora_id"]) for c in info["contexts"]] == list(table.snapshot())  # LRU first
    assert [c["idle_seconds"] for c in info["contexts"]] == [26.5, 21.5, 16.5, 16.5]
    assert info["extra_bytes"] == 0


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_json_summary_of_names_the_output_cannot_encode(tmp_path, encoding):
    """Names are any str: a lone surrogate (or, on an ASCII terminal, any non-ASCII name) was a
    UnicodeEncodeError traceback of --json; it is now written as a JSON \\u escape."""
    table = _core_py.SyncPrefixHashTable(seed=0, block_size=4, background_eviction=False)
    table.add_prefix("x\ud800y", -1, "p\u00e9", [1, 2])
    path = tmp_path / "odd.snapshot"
    table.save(path)
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "snapshot-info", str(path), "--json"],
                          capture_output=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONIOENCODING": encoding})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [c["model"] for c in info["contexts"]] == ["x\ud800y"]


def test_text_summary(snapshot_file):
    path, table = snapshot_file
    proc = run(str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "4 contexts, 20 prefixes, 20 entries, 5 pods, 12 engine hashes (2 stale aliases)" in out
    assert "every checksum and rule checked" in out and "'μοντέλο-ß'" in out
    assert "more, see --all" not in out
    short = run(str(path), "--contexts", "1").stdout.decode()
    assert "the 1 most recent; 3 more, see --all" in short and "'m'" not in short.split("contexts,")[1]


def test_stdin_and_extra(snapshot_file, tmp_path):
    path, table = snapshot_file
    with_extra = tmp_path / "extra.snapshot"
    _snapshot.save_table(table, with_extra, extra=b"12345")
    proc = run("-", "--json", stdin=with_extra.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["extra_bytes"] == 5


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    (b"not a snapshot at all", "not a prefixindex snapshot"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.snapshot"
    if content is not None:
        path.write_bytes(content)
    proc = run(str(path))
    assert proc.returncode == 1 and message in proc.stderr.decode() and proc.stdout == b""


def test_a_corrupted_file(snapshot_file):
    path, _ = snapshot_file
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    proc = run(str(path))
    assert proc.returncode == 1 and "corrupted prefixindex snapshot" in proc.stderr.decode()
    proc = run("-", stdin=good[:-3])
    assert proc.returncode == 1 and "truncated" in proc.stderr.decode()


def test_listed_in_the_commands():
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "snapshot-info" in proc.stdout
