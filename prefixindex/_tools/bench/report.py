"""The bench command: run the sections, then print one table (or ``--json``) and judge ``--strict``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .._checks import check_seconds
from .common import BACKEND_MODULES, BLOCK_SIZE, POD, RowSpec, available_backends
from .machine import machine_info
from .timing import BATCH_NS, MAX_BATCHES, loop_overhead_ns

# the sections, in the order of the table: each a module of this package (see the package docstring)
SECTIONS = ("core", "threads", "inputs", "routing", "snapshot")


def section_module(name: str) -> Any:
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    return importlib.import_module(f"{__package__}.{name}")


def section_rows(name: str) -> List[RowSpec]:
    """The rows a section declares (its ROWS), in the order its run() returns them."""
    return list(section_module(name).ROWS)


def _check_rows(name: str, section: Any, rows: List[Dict[str, Any]], modules: Dict[str, Any]) -> None:
    """A section returns one result per declared row, in order, each naming only backends that ran."""
    declared = [spec[0] for spec in section.ROWS]
    got = [row.get("id") for row in rows]
    if got != declared:
        raise RuntimeError(f"bench section {name!r} returned rows {got}, but declares {declared}")
    for row in rows:
        unknown = set(row["values"]) - set(modules)
        if unknown:
            raise RuntimeError(f"bench section {name!r}, row {row['id']!r}: values for {sorted(unknown)}, "
                               "which did not run")


def run(backends: Optional[Sequence[str]] = None, quick: bool = False, budget_s: Optional[float] = None,
        memory: bool = True, progress: Optional[Callable[[str], None]] = None,
        sections: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Every section on every available backend; the document that ``--json`` prints."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    chosen = [section_module(name) for name in (sections or SECTIONS)]
    modules, missing = available_backends(backends)
    per_row = (0.25 if quick else 3.0) if budget_s is None else budget_s
    say(f"backends: {', '.join(modules) or 'none'}" + (f"; missing: {missing}" if missing else ""))
    from . import core

    results: List[Dict[str, Any]] = []
    for section in chosen:
        name = section.__name__.rsplit(".", 1)[1]
        say(f"section {name}")
        if section is core:  # the one probe that can be switched off (--no-memory)
            rows = core.run(modules, quick, per_row, say, memory=memory)
        else:
            rows = section.run(modules, quick, per_row, say)
        _check_rows(name, section, rows, modules)
        for row in rows:
            row["section"] = name
        results.extend(rows)
    memory_entries = {name: v["entries"] for r in results if r["id"] == "bytes_per_entry"
                      for name, v in r["values"].items() if "entries" in v}
    return {
        "prefixindex_bench": 1,
        "machine": machine_info(),
        "settings": {
            "quick": quick, "seconds_per_row": per_row, "block_size": BLOCK_SIZE, "contexts": core.CONTEXTS,
            "prompt_tokens": core.PROMPT_TOKENS, "pod": POD, "timer": "time.perf_counter_ns",
            "batch_us": BATCH_NS / 1000, "max_batches": MAX_BATCHES,
            "loop_overhead_ns": loop_overhead_ns(),
            "memory_entries": memory_entries,
            "sections": [s.__name__.rsplit(".", 1)[1] for s in chosen],
        },
        "backends": {name: {"module": BACKEND_MODULES[name], "file": getattr(modules[name], "__file__", None),
                            "backend": getattr(modules[name], "BACKEND", None),
                            "source_hash": getattr(modules[name], "SOURCE_HASH", None)} for name in modules},
        "missing_backends": missing,
        "results": results,
        "elapsed_seconds": time.perf_counter() - started,
    }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(value: Optional[Dict[str, Any]]) -> str:
    if value is None:
        return "n/a"
    if "error" in value:
        return "error"
    text = _fmt(value["median"])
    if "p25" in value and value["median"] > 0:
        spread = (value["p75"] - value["p25"]) / 2 / value["median"] * 100
        text += f" ±{spread:.0f}%"
    return text


def _verdict(ok: Optional[bool]) -> str:
    return "" if ok is None else ("pass" if ok else "MISS")


def format_table(doc: Dict[str, Any]) -> str:
    names = list(doc["backends"]) or ["python"]
    for name in ("python", "cython"):
        if name not in names and name in BACKEND_MODULES:
            names.append(name)
    header = ["workload", "unit", "target"]
    for name in names:
        header += [name, ""]
    header += ["ratio", ""]
    rows = [header]
    section = "core"
    for r in doc["results"]:
        if r.get("section", "core") != section:
            section = r["section"]
            rows.append([f"[{section}]"] + [""] * (len(header) - 1))
        target = "" if r["target"] is None else ("<= " if r["better"] == "lower" else ">= ") + _fmt(r["target"])
        line = [r["title"], r["unit"], target]
        for name in names:
            value = r["values"].get(name)
            line += [_cell(value), _verdict(value.get("pass")) if value else ""]
        if r["speedup"] is None:
            line += ["n/a" if r["speedup_target"] else "", ""]
        else:
            ratio = f"{r['speedup']:.2f}x" if r["speedup"] < 100 else f"{r['speedup']:.0f}x"
            line += [ratio + (f" (>= {r['speedup_target']:.0f}x)" if r["speedup_target"] else ""),
                     _verdict(r["speedup_pass"])]
        rows.append(line)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = set(range(3, len(header)))
    out = []
    for i, row in enumerate(rows):
        cells = [c.rjust(w) if j in numeric and c and i else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_report(doc: Dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    mem = m["memory_bytes"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m["load_average"] else "?"
    lines = [
        f"prefixindex {m['prefixindex']} bench" + (f" at {m['commit']}" if m["commit"] else "")
        + (" (--quick: smoke run, not for comparison)" if s["quick"] else ""),
        f"machine: {m['cpu']} ({m['machine']}), {m['usable_cpus']} of {m['logical_cpus']} CPUs usable, "
        + (f"{mem / 2**30:.1f} GiB" if mem else "? GiB") + f"; load average {load}",
        f"software: {m['python']}, numpy {m['numpy']}, xxhash {m['xxhash']}; {m['platform']}",
        f"core workload: block_size {s['block_size']}; {s['contexts']} contexts, each the {s['prompt_tokens'] // 16}-block "
        f"chain of a {s['prompt_tokens']:,}-token prompt for one pod; token bytes as uint8 arrays",
        f"figures: medians of per-call times over batches of ~{s['batch_us']:.0f} us (at most {s['max_batches']:,} "
        f"batches or {s['seconds_per_row']:g} s per row, backends in turn), ± half the interquartile range; the "
        f"timing loop costs {s['loop_overhead_ns']:.0f} ns per call, included",
        "ratio: how many times better the compiled core (cython) does than the fallback (python), same run",
    ]
    for name in s.get("sections", ()):
        summary = getattr(section_module(name), "SUMMARY", None) if name in SECTIONS else None
        if summary:
            lines.append(f"[{name}] {summary}")
    lines += [
        "",
        format_table(doc),
        "",
    ]
    for r in doc["results"]:
        if r["id"] != "bytes_per_entry":
            continue
        for name, v in r["values"].items():
            how = {"tracemalloc": "tracemalloc", "mallinfo2": "glibc mallinfo2 with PYTHONMALLOC=malloc",
                   "rss": "RSS"}[v["method"]]
            extra = f"; RSS cross-check {v['rss_cross_check']:.0f}" if "rss_cross_check" in v else ""
            lines.append(f"bytes per entry, {name}: {how}, {v['entries']:,} entries in a fresh process{extra}")
    for r in doc["results"]:
        for note in r.get("notes", ()):
            lines.append(f"{r['id']}, {note}")
    for r in doc["results"]:
        for name, v in r["values"].items():
            if "error" in v:
                lines.append(f"error: {r['title']}, {name}: {v['error']}")
    for name, why in doc["missing_backends"].items():
        lines.append(f"{name}: {why}")
    lines.append(f"ran in {doc['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from prefixindex.__main__ import command_prog

    parser = argparse.ArgumentParser(
        prog=command_prog("bench"),
        description="Time every available backend on the standard workloads (same run, same workload "
                    "objects) and print one table of medians, the targets, the ratios and bytes per entry.")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for machines)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run, not for comparisons")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated subset of {','.join(BACKEND_MODULES)} (default: all that import)")
    parser.add_argument("--seconds-per-row", type=float, default=None, dest="budget",
                        help="timing budget per row, all backends together (default 3, 0.25 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the bytes-per-entry probes")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all, in that order)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 unless the compiled backend ran and met every target")
    args = parser.parse_args(argv)
    if args.budget is not None:  # 0, a negative, NaN or infinity: no row could be timed, or none would end
        check_seconds(parser, "--seconds-per-row", args.budget)
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    sections = [n.strip() for n in args.sections.split(",") if n.strip()] if args.sections else None
    try:
        doc = run(names, quick=args.quick, budget_s=args.budget, memory=not args.no_memory, sections=sections,
                  progress=None if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)))
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(doc, indent=2) if args.json else format_report(doc))
    errors = [f"{r['title']} ({name}): {v['error']}" for r in doc["results"] for name, v in r["values"].items()
              if "error" in v]
    if errors:
        print("bench: some rows could not be measured:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    if args.strict:
        failures = strict_failures(doc)
        if failures:
            print(f"bench --strict: {len(failures)} failure(s):\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1
        print("bench --strict: the compiled backend ran and met every target", file=sys.stderr)
    return 0


def strict_failures(doc: Dict[str, Any]) -> List[str]:
    """Why ``--strict`` fails, one line each: the compiled backend did not run, or a row missed its
    target (the compiled core's figure, or the compiled/fallback ratio)."""
    out: List[str] = []
    if "cython" not in doc["backends"]:
        why = doc["missing_backends"].get("cython", "it was not asked for (--backends)")
        out.append(f"the compiled backend (cython) did not run: {why}")
    for r in doc["results"]:
        value = r["values"].get("cython", {})
        if value.get("pass") is False:
            sign = "<=" if r["better"] == "lower" else ">="
            out.append(f"{r['id']}: {r['title']}: cython {_fmt(value['median'])} {r['unit']}, target {sign} "
                       f"{_fmt(r['target'])}")
        if r["speedup_pass"] is False:
            out.append(f"{r['id']}: {r['title']}: compiled/fallback ratio {r['speedup']:.2f}x, target >= "
                       f"{r['speedup_target']:g}x")
    return out


if __name__ == "__main__":
    sys.exit(main())
