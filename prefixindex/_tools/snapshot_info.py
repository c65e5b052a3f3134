"""python -m prefixindex snapshot-info PATH: what a snapshot holds, after checking all of it.

Reads the file with the loader's own decoder (prefixindex/_snapshot.py), so every checksum and every
rule of docs/snapshot.md is checked, but builds no table: it is cheap on a large file and also works
as a verifier (exit status 1 and the loader's message when the file is bad). ``-`` reads stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from prefixindex import _snapshot, _snapshot_bounds


def describe(state: Dict[str, Any], extra: bytes, size: int) -> Dict[str, Any]:
    """A summary of a decoded snapshot: configuration, counters, totals and one row per context."""
    contexts: List[Dict[str, Any]] = []
    pods = set()
    for c in state["contexts"]:
        by_pod = _snapshot_bounds.held_by_pod(c["prefixes"], c["entry_pod_counts"], c["entry_pods"], len(c["pods"]))
        stale = 0
        for j, (_, values) in enumerate(c["engine"]):  # D3: values naming a prefix the pod does not hold
            stale += int(np.count_nonzero(~np.isin(values, by_pod[j])))
        pods.update(c["pods"])
        contexts.append({"model": c["model"], "lora_id": c["lora"], "idle_seconds": c["idle"],
                         "prefixes": len(c["prefixes"]), "entries": len(c["entry_pods"]), "pods": len(c["pods"]),
                         "engine_hashes": sum(len(k) for k, _ in c["engine"]), "stale_aliases": stale,
                         "max_pod_idle_seconds": float(c["pod_idle"].max())})
    config = state["config"]
    return {
        "format_version": _snapshot.VERSION, "bytes": size,
        "config": {f: getattr(config, f) for f in ("max_contexts", "max_prefixes_per_context",
                                                   "eviction_interval_seconds", "eviction_duration_minutes",
                                                   "block_size", "seed")},
        "counters": dict(state["counters"]),
        "totals": {"contexts": len(contexts), "prefixes": sum(c["prefixes"] for c in contexts),
                   "entries": sum(c["entries"] for c in contexts), "pods": len(pods),
                   "engine_hashes": sum(c["engine_hashes"] for c in contexts),
                   "stale_aliases": sum(c["stale_aliases"] for c in contexts)},
        "extra_bytes": len(extra),
        "contexts": contexts,  # least recently used first (D5)
    }


def format_summary(info: Dict[str, Any], name: str, limit: Optional[int]) -> str:
    cfg, tot = info["config"], info["totals"]
    per_entry = f", {info['bytes'] / tot['entries']:.1f} bytes per entry" if tot["entries"] else ""
    lines = [
        f"prefixindex snapshot {name}: {info['bytes']:,} bytes{per_entry}; format version "
        f"{info['format_version']}; every checksum and rule checked",
        f"configuration: block_size {cfg['block_size']}, seed {cfg['seed']}, max_contexts {cfg['max_contexts']:,}, "
        f"max_prefixes_per_context {cfg['max_prefixes_per_context']:,}, eviction every "
        f"{cfg['eviction_interval_seconds']:g} s after {cfg['eviction_duration_minutes']:g} min idle",
        f"holds: {tot['contexts']:,} contexts, {tot['prefixes']:,} prefixes, {tot['entries']:,} entries, "
        f"{tot['pods']:,} pods, {tot['engine_hashes']:,} engine hashes ({tot['stale_aliases']:,} stale aliases)",
        "counters: " + ", ".join(f"{k} {v:,}" for k, v in info["counters"].items()),
    ]
    if info["extra_bytes"]:
        lines.append(f"extra section: {info['extra_bytes']:,} bytes (the subscriber's positions)")
    shown = info["contexts"] if limit is None else info["contexts"][-limit:] if limit else []
    if shown:
        lines.append("")
        more = len(info["contexts"]) - len(shown)
        lines.append("contexts, least recently used first" + (f" (the {len(shown)} most recent; "
                                                             f"{more} more, see --all)" if more else "") + ":")
        rows = [["model", "lora", "idle s", "prefixes", "entries", "pods", "engine", "stale"]]
        rows += [[repr(c["model"]), str(c["lora_id"]), f"{c['idle_seconds']:.1f}", f"{c['prefixes']:,}",
                  f"{c['entries']:,}", str(c["pods"]), f"{c['engine_hashes']:,}", f"{c['stale_aliases']:,}"]
                 for c in shown]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                          for i, (cell, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from prefixindex.__main__ import command_prog

    parser = argparse.ArgumentParser(prog=command_prog("snapshot-info"),
                                     description="Check a snapshot written by table.save() and print what it "
                                                 "holds (docs/snapshot.md).")
    parser.add_argument("path", help="the snapshot file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--contexts", type=int, default=20, metavar="N",
                        help="list the N most recently used contexts (default 20, 0 for none)")
    parser.add_argument("--all", action="store_true", help="list every context")
    args = parser.parse_args(argv)
    try:
        source: Any = sys.stdin.buffer if args.path == "-" else args.path
        state, extra, size = _snapshot.read_snapshot(source)
    except (OSError, ValueError) as exc:
        print(f"snapshot-info: {args.path}: {exc}", file=sys.stderr)
        return 1
    info = describe(state, extra, size)
    if args.json:
        text = json.dumps(info, indent=2, ensure_ascii=False)
        try:  # names are any str: lone surrogates, or what this terminal cannot show, go as \u escapes
            text.encode(sys.stdout.encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):
            text = json.dumps(info, indent=2)
        print(text)
    else:
        print(format_summary(info, args.path, None if args.all else max(args.contexts, 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
