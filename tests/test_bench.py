"""The benchmark side: ``python -m prefixindex bench`` and the asv suite in asv_benchmarks/.

No timing assertions (the machine is shared and noisy): the tests check that every workload runs on
every available backend, that the numbers are well-formed and positive, and that each asv benchmark's
setup builds the table it claims and its timed call has the effect it claims, on tiny parameters.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import BACKENDS
from prefixindex._tools.bench import memory, report, timing

ROOT = Path(__file__).resolve().parent.parent
ASV_DIR = ROOT / "asv_benchmarks"
BACKEND_NAMES = sorted(BACKENDS)  # "python", and "cython" when the compiled core imports here


# --- python -m prefixindex bench ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_doc():
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "bench", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return json.loads(proc.stdout)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_json_has_every_workload_for_every_backend(bench_doc):

    assert sorted(bench_doc["backends"]) == BACKEND_NAMES
    assert bench_doc["settings"]["sections"] == list(report.SECTIONS)
    assert [(r["section"], r["id"]) for r in bench_doc["results"]] == [
        (section, spec[0]) for section in report.SECTIONS for spec in report.section_rows(section)]
    ids = [r["id"] for r in bench_doc["results"]]
    assert len(set(ids)) == len(ids), "row ids are unique across sections"
    for r in bench_doc["results"]:
        assert sorted(r["values"]) == BACKEND_NAMES, r["id"]
        for name, v in r["values"].items():
            assert "error" not in v, (r["id"], name, v)
            assert _finite_positive(v["median"]), (r["id"], name, v)
            # the core rows judge both backends; the newer sections' targets are the compiled core's
            if r["target"] is None or (r["section"] != "core" and name == "python"):
                assert v["pass"] is None
            else:
                better = v["median"] <= r["target"] if r["better"] == "lower" else v["median"] >= r["target"]
                assert v["pass"] is better
            if r["id"] == "bytes_per_entry":
                # a (pod, block) entry costs more than its 8-byte hash, and far less than 10 kB
                assert 8 < v["median"] < 10_000, (name, v)
                assert v["entries"] == bench_doc["settings"]["memory_entries"][name] > 0
                assert v["method"] in ("tracemalloc", "mallinfo2", "rss")
                if "rss_cross_check" in v:
                    assert _finite_positive(v["rss_cross_check"])
            elif r["section"] == "core":
                assert v["batches"] >= 7 and v["calls"] >= v["batches"]
                assert v["p25"] <= v["median"] <= v["p75"] and _finite_positive(v["best"])
            elif "p25" in v:
                assert v["p25"] <= v["median"] <= v["p75"], (r["id"], name, v)
        if len(BACKEND_NAMES) == 2 and r["unit"] == "x":  # a ratio of ratios would say nothing
            assert r["speedup"] is None and r["speedup_pass"] is None
        elif len(BACKEND_NAMES) == 2:
            assert _finite_positive(r["speedup"])
            assert (r["speedup_pass"] is None) == (r["speedup_target"] is None)
        else:
            assert r["speedup"] is None and r["speedup_pass"] is None


def test_bench_json_describes_the_machine_and_run(bench_doc):
    m, s = bench_doc["machine"], bench_doc["settings"]
    assert m["cpu"] and m["logical_cpus"] >= 1 and m["usable_cpus"] >= 1
    assert m["python"].split()[1] == ".".join(map(str, sys.version_info[:3]))
    assert m["numpy"] == np.__version__
    assert s["quick"] is True and s["block_size"] == 16 and s["contexts"] == 100 and s["prompt_tokens"] == 1024
    assert _finite_positive(s["loop_overhead_ns"])
    assert 0 < bench_doc["elapsed_seconds"] < 600
    for name in BACKEND_NAMES:
        assert bench_doc["backends"][name]["backend"] == name


def test_bench_table_shows_targets_ratios_and_verdicts(bench_doc):

    text = report.format_report(bench_doc)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("workload "))
    for name in ("unit", "target", "python", "cython", "ratio"):
        assert name in header
    for section in report.SECTIONS:
        for row in report.section_rows(section):
            line = next(line for line in lines if line.startswith(row[1]))
            # a verdict wherever a judged backend ran: both for core, the compiled core for the others
            if row[4] is not None and (section == "core" or "cython" in BACKEND_NAMES):
                assert ("pass" in line) or ("MISS" in line), line
            elif row[4] is not None:
                assert "pass" not in line and "MISS" not in line, line
    assert "bytes per entry, python: tracemalloc" in text
    for section in report.SECTIONS:  # how each section measures, above the table
        summary = getattr(report.section_module(section), "SUMMARY", None)
        assert summary is None or f"[{section}] {summary}" in text, section
    assert bench_doc["machine"]["cpu"] in text


def _rows(doc, section):
    return {r["id"]: r for r in doc["results"] if r["section"] == section}


def test_bench_threads_rows_are_same_run_figures_with_their_context(bench_doc):
    rows = _rows(bench_doc, "threads")
    for row_id in ("threads_match_1024_2_vs_1", "threads_gil_held_2_vs_1", "threads_match_32768_2_vs_1",
                   "threads_gil_free_2_vs_1"):
        for name, v in rows[row_id]["values"].items():
            assert 0.05 < v["median"] < 4, (row_id, name, v)  # two threads of two cores: at most ~2x
        notes = rows[row_id]["notes"]
        assert sorted(n.split(":")[0] for n in notes) == BACKEND_NAMES and all("on two" in n for n in notes)
    for name in BACKEND_NAMES:
        assert any(n.startswith(f"{name}: the ingest thread applied ") for n in
                   rows["threads_match_beside_ingest"]["notes"])
        # the flood row is timed per call, batch by batch, on a full table
        assert rows["threads_new_context_at_bound"]["values"][name]["batches"] >= 7
    assert rows["threads_store_beside_3_matchers"]["target"] == 20_000
    assert rows["threads_match_p99_beside_ingest"]["target"] == 20


def test_bench_inputs_rows_cover_every_form_and_say_the_table_size(bench_doc):
    rows = _rows(bench_doc, "inputs")
    for form in ("list", "int64", "int32", "uint8", "bytes"):
        assert f"inputs_match_1024_{form}" in rows
    assert rows["inputs_process_events_100x10"]["speedup_target"] == 20
    sizes = {}
    for note in rows["inputs_match_1024_million"]["notes"]:
        name, rest = note.split(": ", 1)
        sizes[name] = int(rest.split()[0].replace(",", ""))
    assert sorted(sizes) == BACKEND_NAMES and all(n >= 25_000 for n in sizes.values())
    if len(sizes) == 2:  # the memory-heavy table is the compiled core's
        assert sizes["cython"] > sizes["python"]


def test_bench_rejects_an_unknown_section():
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "bench", "--sections", "core,nosuch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown section 'nosuch'" in proc.stderr


def test_a_section_that_returns_other_rows_than_it_declares_is_refused(monkeypatch):
    from prefixindex._tools.bench import core as core_section

    monkeypatch.setattr(core_section, "run", lambda modules, quick, budget, say, memory=True: [])
    with pytest.raises(RuntimeError, match="returned rows"):
        report.run(["python"], quick=True, sections=["core"])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e10"])
def test_bench_rejects_a_budget_no_row_could_use(value, capsys, monkeypatch):
    """0 or less timed nothing, NaN and infinity never ended a row (taken without a word before)."""
    monkeypatch.setattr(report, "run", lambda *a, **k: pytest.fail("the bench ran"))
    with pytest.raises(SystemExit) as exc:
        report.main([f"--seconds-per-row={value}"])
    assert exc.value.code == 2
    assert "--seconds-per-row must be a positive number of seconds" in capsys.readouterr().err


def test_bench_rejects_an_unknown_backend():
    proc = subprocess.run([sys.executable, "-m", "prefixindex", "bench", "--backends", "fortran"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown backend" in proc.stderr


def test_measure_reports_a_failing_workload_instead_of_dying():

    def boom(*_):
        raise RuntimeError("broken")

    out = timing.measure({"ok": timing.loop_op(lambda *a: None, [()] * 10),
                          "bad": timing.loop_op(boom, [()] * 10)}, budget_s=0.01)
    assert out["bad"] == {"error": "RuntimeError: broken"}
    assert out["ok"]["batches"] >= 7 and out["ok"]["median_ns"] > 0


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_memory_probe_counts_the_entries_it_stored(backend_name):

    method = memory.MEMORY_METHOD[backend_name]
    if not memory.memory_methods_available()[method]:
        method = "rss"
    probe = memory.memory_probe(backend_name, 6400, method)
    assert probe["entries"] == probe["blocks"] == 6400 and probe["prefixes"] == 6400
    assert 8 < probe["bytes_per_entry"] < 10_000


@pytest.mark.skipif("cython" not in BACKENDS, reason="PREFIXINDEX_NO_EXTENSIONS=1: no compiled core to probe")
def test_the_compiled_cores_bytes_per_entry_count_the_pools_mapped_slabs(suite):
    # past its first 4 MiB the node pool maps 2 MiB slabs itself, which mallinfo2 does not see: both
    # probes (the bench's and asv's) add them, so that their figure agrees with the resident set's
    if not (memory.memory_methods_available()["mallinfo2"] and memory.memory_methods_available()["rss"]):
        pytest.skip("glibc's mallinfo2 or /proc/self/statm is not available here")
    n = 320_000  # 640,000 nodes, ~15 MB: mostly in mapped slabs
    rss = memory.memory_probe("cython", n, "rss")["bytes_per_entry"]
    bench = memory.memory_probe("cython", n, "mallinfo2")["bytes_per_entry"]
    asv = suite("memory").probe("cython", n, "mallinfo2")
    for figure in (bench, asv):
        assert abs(figure - rss) < 0.15 * rss, (bench, asv, rss)


# --- the asv suite --------------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def test_asv_conf_points_at_the_suite_and_keeps_results_out_of_git():
    conf = json.loads(_strip_comments((ASV_DIR / "asv.conf.json").read_text()))
    assert (ASV_DIR / conf["repo"]).resolve() == ROOT
    assert (ASV_DIR / conf["benchmark_dir"] / "__init__.py").exists()
    for key in ("results_dir", "env_dir", "html_dir"):
        assert (ASV_DIR / conf[key]).resolve().parent == ROOT / ".asv", key
    assert ".asv/" in (ROOT / ".gitignore").read_text().split()


@pytest.fixture
def suite(monkeypatch):
    """import_module for the suite's modules (as asv imports them: the package ``benchmarks``)."""
    monkeypatch.syspath_prepend(str(ASV_DIR))
    # the suite's subprocesses (the memory probe) import the tree under test, not an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    common = importlib.import_module("benchmarks._common")
    common.forget()
    yield lambda name: importlib.import_module(f"benchmarks.{name}")
    common.forget()


OUR_MODULES = ["events", "eviction", "harness", "hashing", "matching", "memory", "threads"]


def test_every_benchmark_class_of_ours_is_exercised_below(suite):
    exercised = {"GetPrefixHashes", "MatchPromptLength", "MatchReadyPods", "MatchContexts", "MatchWalkWay",
                 "ProcessBlockStored",
                 "ProcessBlockRemoved", "AllBlocksCleared", "StalenessPass", "PrefixBoundTrim", "PeakMemStore",
                 "BytesPerEntry", "MatchThreads", "HarnessOverhead"}
    found = set()
    for name in OUR_MODULES:
        module = suite(name)
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and any(
                    a.startswith(("time_", "peakmem_", "track_", "mem_")) for a in dir(obj)):
                found.add(attr)
                if getattr(obj, "params", None):  # parametrised over both backends, backend first
                    assert obj.param_names[0] == "backend" and list(obj.params[0]) == ["python", "cython"], attr
    assert found == exercised


def test_an_absent_backend_is_an_asv_skip(suite, monkeypatch):
    common = suite("_common")
    monkeypatch.setitem(common.MODULES, "cython", "prefixindex._no_such_backend")
    with pytest.raises(NotImplementedError):
        suite("hashing").GetPrefixHashes().setup("cython", 256)


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_get_prefix_hashes(suite, backend_name):
    b = suite("hashing").GetPrefixHashes()
    b.setup(backend_name, 256)
    b.time_get_prefix_hashes(backend_name, 256)
    assert len(b.table.get_prefix_hashes(b.query)) == 256 // 16


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
@pytest.mark.parametrize("hit", ["full", "partial", "miss"])
@pytest.mark.parametrize("cls, param", [("MatchPromptLength", 256), ("MatchReadyPods", 3), ("MatchContexts", 2)])
def test_match(suite, backend_name, hit, cls, param):
    b = getattr(suite("matching"), cls)()
    b.setup(backend_name, hit, param)
    state = b.state
    assert b.table.stats()["entries"] == state.entries
    assert b.table.stats()["contexts"] == state.contexts
    b.time_match_prefix(backend_name, hit, param)
    result, hashes = b.table.match_prefix(b.model, -1, b.query, b.ready)
    assert len(hashes) == state.n_blocks
    assert result == b.expected
    assert len(b.ready) == (param if cls == "MatchReadyPods" else 1)
    if hit == "full":
        assert result == {p: 100 for p in b.ready}
    elif hit == "partial":
        assert result == {p: 50 for p in b.ready}
    else:
        assert result == {}


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
@pytest.mark.parametrize("way", ["measured", "chunked", "beside"])
def test_match_walk_way(suite, backend_name, way):
    # compiled: each way forced (and put back to measured after), full hits either way; the fallback
    # walks one way and is an asv skip
    b = suite("matching").MatchWalkWay()
    if backend_name == "python":
        with pytest.raises(NotImplementedError, match="walks one way only"):
            b.setup(backend_name, way, 1024)
        return
    b.setup(backend_name, way, 1024)
    try:
        b.time_match_prefix(backend_name, way, 1024)
        result, hashes = b.table.match_prefix(b.model, -1, b.query, b.ready)
        assert result == {p: 100 for p in b.ready} and len(hashes) == b.state.n_blocks
    finally:
        b.teardown(backend_name, way, 1024)
    costs = b.core._debug_walk_costs(b.table)["short"]
    if way != "measured":  # a forced way is still timed: its cost is known, the other's maybe not
        assert costs[{"chunked": 0, "beside": 1}[way]] > 0, costs


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_process_block_stored_places_new_blocks_every_sample(suite, backend_name):
    b = suite("events").ProcessBlockStored()
    for _ in range(3):  # asv re-runs setup before every sample
        b.setup(backend_name, 10)
        base = b.state.entries
        assert b.table.stats()["entries"] == base
        b.time_process_block_stored(backend_name, 10)
        stats = b.table.stats()
        assert stats["entries"] == base + 10 and stats["orphan_blocks"] == 0


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_process_block_removed_removes_held_blocks_every_sample(suite, backend_name):
    b = suite("events").ProcessBlockRemoved()
    for _ in range(3):
        b.setup(backend_name, 10)
        base = b.state.entries
        assert b.table.stats()["entries"] == base + 10
        b.time_process_block_removed(backend_name, 10)
        assert b.table.stats()["entries"] == base


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_all_blocks_cleared_clears_the_busy_pod(suite, backend_name):
    b = suite("events").AllBlocksCleared()
    for _ in range(2):
        b.setup(backend_name, 500)
        assert b.table.stats()["entries"] == b.state.entries == 100 * 64 + 64 + 500
        b.time_all_blocks_cleared(backend_name, 500)
        stats = b.table.stats()
        assert stats["entries"] == 100 * 64 + 64 and stats["contexts"] == 101


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
@pytest.mark.parametrize("stale", ["none", "pods", "contexts"])
def test_staleness_pass(suite, backend_name, stale):
    b = suite("eviction").StalenessPass()
    for _ in range(2):
        b.setup(backend_name, 1000, stale)
        before = b.table.stats()
        assert before["entries"] == 1000 and before["contexts"] == 10 and before["pods"] == 10
        b.time_evict_now(backend_name, 1000, stale)
        after = b.table.stats()
        if stale == "none":
            assert after["entries"] == 1000 and after["evicted_pods"] == after["evicted_contexts"] == 0
        elif stale == "pods":
            assert after["entries"] == 0 and after["evicted_pods"] == 100 and after["evicted_contexts"] == 0
        else:
            assert after["entries"] == 0 and after["evicted_contexts"] == 10 and after["evicted_pods"] == 0


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_store_over_the_bound_trims(suite, backend_name):
    b = suite("eviction").PrefixBoundTrim()
    for _ in range(2):
        b.setup(backend_name, 1000)
        assert b.table.stats()["prefixes"] == 1000
        b.time_store_over_bound(backend_name, 1000)
        stats = b.table.stats()
        assert stats["prefixes"] == 750 and stats["evicted_prefixes"] == 251
        assert b.table.match_blocks("model-0000", -1, b.event.tokens.reshape(-1)) == {"pod-1": 1}


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_peakmem_store(suite, backend_name):
    memory = suite("memory")
    b = memory.PeakMemStore()
    b.setup(backend_name, 6400)
    b.peakmem_events_only(backend_name, 6400)
    assert b.table.stats()["entries"] == 0
    b.peakmem_store(backend_name, 6400)
    assert b.table.stats()["entries"] == 6400


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_track_bytes_per_entry(suite, backend_name):
    b = suite("memory").BytesPerEntry()
    b.setup(backend_name, 6400)
    assert 8 < b.track_bytes_per_entry(backend_name, 6400) < 10_000
    assert 8 < b.track_rss_bytes_per_entry(backend_name, 6400) < 10_000
    assert b.track_bytes_per_entry.unit == "bytes"


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_match_threads(suite, backend_name, monkeypatch):
    threads = suite("threads")
    monkeypatch.setattr(threads, "CONTEXTS", 4)
    b = threads.MatchThreads()
    b.setup(backend_name, 2)
    state = b.state
    assert state.table.stats()["entries"] == 4 * 512
    assert [len(c) for c in state.chunks] == [128, 128]
    assert state.run() == threads.MATCHES
    for model, lora, query, ready in state.chunks[1][:4]:
        assert state.table.match_prefix(model, lora, query, ready)[0] == {"pod-0": 100}
    b.time_256_matches_8192_tokens(backend_name, 2)


def test_harness_overhead(suite):
    b = suite("harness").HarnessOverhead()
    b.setup()
    assert b.time_noop() is None
