"""Latency against prompt length, for every backend that imports here: docs/latency_vs_prompt_length.png.

    python asv_benchmarks/plot_latency.py [--out PATH] [--seconds-per-point S] [--json PATH]

For prompts of 256 to 32,768 tokens (block size 16), on a table of 100 contexts that each hold the
chain of one prompt of that length for one pod, it times ``match_prefix`` (full hit and miss, one
ready pod) and ``get_prefix_hashes`` with the harness of ``python -m prefixindex bench`` (medians of
per-call times over short batches, backends in turn), prints the figures, and plots them on log-log
axes with the targets: 1.5 us for a 1,024-token full hit, and hashing at 4 GB/s of token bytes.
Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "docs", "latency_vs_prompt_length.png")
LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
OPS = ["match_prefix full hit", "match_prefix miss", "get_prefix_hashes"]


def collect(lengths: List[int], seconds_per_point: float) -> Dict[str, Any]:
    from prefixindex._tools.bench import common, core, machine, timing

    modules, missing = common.available_backends()
    data: Dict[str, Any] = {"machine": machine.machine_info(), "missing_backends": missing, "lengths": lengths,
                            "seconds_per_point": seconds_per_point, "median_us": {}, "p25_us": {}, "p75_us": {}}
    for name in modules:
        for key in ("median_us", "p25_us", "p75_us"):
            data[key][name] = {op: [] for op in OPS}
    for tokens in lengths:
        workload = core.Workload(contexts=100, prompt_tokens=tokens, store_pool=1)
        tables = {name: workload.build_table(module) for name, module in modules.items()}
        ready = [common.POD]
        for op in OPS:
            ops = {}
            for name, table in tables.items():
                if op == "get_prefix_hashes":
                    args = [(workload.prompts[i % workload.contexts],) for i in range(256)]
                    ops[name] = timing.loop_op(table.get_prefix_hashes, args)
                else:
                    kind = "full" if "full" in op else "miss"
                    args = [(workload.models[i % workload.contexts], common.LORA,
                             workload.queries[kind][i % workload.contexts], ready) for i in range(1024)]
                    ops[name] = timing.loop_op(table.match_prefix, args)
            for name, stat in timing.measure(ops, seconds_per_point).items():
                if "error" in stat:
                    raise RuntimeError(f"{op} on {name} at {tokens} tokens: {stat['error']}")
                data["median_us"][name][op].append(stat["median_ns"] / 1000)
                data["p25_us"][name][op].append(stat["p25_ns"] / 1000)
                data["p75_us"][name][op].append(stat["p75_ns"] / 1000)
        for table in tables.values():
            table.close()
        print(f"{tokens:>6} tokens: " + "; ".join(
            f"{name} " + ", ".join(f"{op} {data['median_us'][name][op][-1]:.2f} us" for op in OPS)
            for name in modules), flush=True)
    return data


def plot(data: Dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = data["lengths"]
    colors = {"cython": "tab:blue", "python": "tab:orange"}
    styles = {"match_prefix full hit": ("o", "-"), "match_prefix miss": ("s", ":"),
              "get_prefix_hashes": ("^", "--")}
    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    for name in sorted(data["median_us"], key=lambda n: n != "cython"):
        for op in OPS:
            med = data["median_us"][name][op]
            lo = [m - q for m, q in zip(med, data["p25_us"][name][op])]
            hi = [q - m for m, q in zip(med, data["p75_us"][name][op])]
            marker, line = styles[op]
            ax.errorbar(lengths, med, yerr=[lo, hi], marker=marker, linestyle=line, color=colors.get(name, "gray"),
                        markersize=4.5, capsize=2, label=f"{name}: {op}")
    floor = [t * 4 / 4e9 * 1e6 for t in lengths]  # token bytes at 4 GB/s, in us
    ax.plot(lengths, floor, color="gray", linewidth=1, linestyle="-.", label="target: hashing at 4 GB/s")
    ax.plot([1024], [1.5], marker="*", markersize=13, color="crimson", linestyle="none",
            label="target: 1,024-token full hit in 1.5 us")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths)
    ax.set_xticklabels([f"{t:,}" for t in lengths])
    ax.set_xlabel("prompt length (tokens; block size 16)")
    ax.set_ylabel("latency per call (us, median; bars: interquartile range)")
    m = data["machine"]
    ax.set_title("prefixindex: latency against prompt length\n"
                 f"100 contexts, 1 ready pod; {m['cpu']}, {m['python']}"
                 + (f", commit {m['commit']}" if m.get("commit") else ""), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="PNG to write (default: docs/latency_vs_prompt_length.png)")
    parser.add_argument("--seconds-per-point", type=float, default=0.5,
                        help="timing budget per (length, call), all backends together")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated prompt lengths")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    data = collect(lengths, args.seconds_per_point)
    plot(data, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
